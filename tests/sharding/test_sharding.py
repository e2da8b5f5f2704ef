"""Mesh sizing, logical-to-mesh rules, and parameter/optimizer shardings on 8 CPU devices.

The 8-device checks run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set
before jax starts).
"""

import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from jalign.sharding import DEFAULT_RULES, MeshConfig, logical_to_spec


class _FakeMesh:
    shape = {"data": 2, "fsdp": 2, "tensor": 2}


def test_mesh_config_fills_the_free_axis_and_rejects_bad_sizes():
    assert MeshConfig(data=-1, fsdp=2, tensor=2).sizes(8) == (2, 2, 2)
    assert MeshConfig().sizes(8) == (8, 1, 1)
    with pytest.raises(ValueError, match="needs 4 devices; have 8"):
        MeshConfig(data=2, fsdp=2, tensor=1).sizes(8)
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        MeshConfig(data=-1, fsdp=-1).sizes(8)


def test_rules_map_names_replicate_indivisible_dims_and_never_reuse_an_axis():
    """Specs written out by hand from DEFAULT_RULES for a 2x2x2 mesh."""
    mesh = _FakeMesh()
    assert logical_to_spec(("embed", "mlp"), (8, 16), mesh, DEFAULT_RULES) == P("fsdp", "tensor")
    assert logical_to_spec(("vocab", "embed"), (7, 8), mesh, DEFAULT_RULES) == P(None, "fsdp")  # 7 % 2 != 0
    assert logical_to_spec(("heads", "kv_heads"), (4, 4), mesh, DEFAULT_RULES) == P("tensor", None)  # tensor taken
    assert logical_to_spec(("batch", "length"), (8, 3), mesh, DEFAULT_RULES) == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="no sharding rule for logical axis 'experts'"):
        logical_to_spec(("experts",), (4,), mesh, DEFAULT_RULES)


EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, optax
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from jalign.sharding import MeshConfig, make_mesh, optimizer_shardings, state_shardings

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}, mesh.shape
    params = {
        "up": nnx.Param(jnp.ones((8, 16)), out_sharding=("embed", "mlp"), eager_sharding=False),
        "norm": nnx.Param(jnp.ones((8,)), out_sharding=("norm",), eager_sharding=False),
        "plain": jnp.ones((3,)),
    }
    shardings = state_shardings(params, mesh)
    assert shardings["up"].spec == P("fsdp", "tensor"), shardings["up"]
    assert shardings["norm"].spec == P(None), shardings["norm"]
    assert shardings["plain"].spec == P(), shardings["plain"]

    arrays = {k: (v.get_value() if isinstance(v, nnx.Variable) else v) for k, v in params.items()}
    placed = jax.device_put(arrays, shardings)
    assert len(placed["up"].addressable_shards) == 8
    assert placed["up"].addressable_shards[0].data.shape == (4, 8)

    tx = optax.adamw(1e-3)
    opt = optimizer_shardings(tx, arrays, shardings, mesh)
    mu = opt[0].mu
    assert mu["up"].spec == P("fsdp", "tensor"), mu["up"]
    assert opt[0].count.spec == P(), opt[0].count
    state = jax.jit(tx.init, out_shardings=opt)(placed)
    assert state[0].mu["up"].sharding.spec == P("fsdp", "tensor")
    print("OK")
""")


def test_parameter_and_optimizer_shardings_on_eight_devices():
    """Params placed by their logical names; Adam moments follow their parameter."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", EIGHT_DEVICE_SCRIPT], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]


def test_mesh_section_refuses_unknown_axes_and_bad_sizes_by_field():
    with pytest.raises(ValueError, match=r"mesh.rules.embed: unknown mesh axes \['fdsp'\]"):
        MeshConfig(rules={"embed": "fdsp"})
    with pytest.raises(ValueError, match="mesh.fsdp must be a positive device count or -1"):
        MeshConfig(fsdp=0)
    assert MeshConfig(rules={"batch": ("data", "fsdp"), "embed": None}).rule_table()["embed"] is None
