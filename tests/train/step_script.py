"""A few train steps of a tiny decoder on a given mesh; prints losses and a parameter digest.

Run as a script under XLA_FLAGS=--xla_force_host_platform_device_count=8 by the
sharding tests; ``run(mesh_config, devices)`` is the shared body.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jalign.models import Decoder, ModelConfig
from jalign.objectives import dpo, sft
from jalign.sharding import MeshConfig, global_batch, initialize, make_mesh, place
from jalign.train.provider import Plan
from jalign.train.step import FrozenModels, TrainState, jit_step, make_step

# Scanned layers with the full remat policy, as at scale; on a mesh of several devices the log-prob
# op runs under shard_map.
CFG = ModelConfig("llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64, remat="full")


def _batch(batch_size=8):
    rng = np.random.default_rng(0)
    prompt_mask = np.ones((batch_size, 4), np.int32)
    prompt_mask[::2, :2] = 0  # ragged, left-padded prompts
    response_mask = np.ones((batch_size, 2, 5), np.int32)
    response_mask[1::2, 1, 3:] = 0
    return dict(prompt_tokens=rng.integers(1, 64, (batch_size, 4)).astype(np.int32), prompt_mask=prompt_mask,
                response_tokens=rng.integers(1, 64, (batch_size, 2, 5)).astype(np.int32),
                response_mask=response_mask, labels={"example_weight": np.ones(batch_size, np.float32)})


def run(mesh_config: MeshConfig, devices=None, steps=3):
    """Losses and final parameters (as a flat NumPy dict) after ``steps`` steps.

    Under several processes each one feeds its own rows of the batch, assembled
    into global arrays with ``global_batch``.
    """
    graphdef, params, rest = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)), nnx.Param, ...)
    reference = FrozenModels(rest=rest, reference=jax.tree.map(jnp.copy, params))
    # Adam with eps = 1e-3 keeps a sharded optimizer state in the step while bounding how much
    # reduction-order noise in a gradient can move an update: |d update| <= lr / eps * |d grad| per
    # coordinate. With the default eps = 1e-8 a near-zero gradient's update is +-lr whatever its
    # sign noise, and an elementwise comparison at rtol 1e-4 could flake (issue 13).
    tx = optax.adamw(1e-2, eps=1e-3)
    objective = dpo(beta=0.5) + 0.1 * sft()
    batch = _batch()
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(0))
    mesh = make_mesh(mesh_config, devices)
    if jax.process_count() > 1:
        rows = len(batch["prompt_tokens"]) // jax.process_count()
        local = jax.tree.map(lambda x: x[jax.process_index() * rows:(jax.process_index() + 1) * rows], batch)
        batch = global_batch(local, mesh)
    step = make_step(graphdef, tx, Plan(reference="frozen"), impl="chunked")
    jitted, sharding, frozen_sharding = jit_step(step, mesh, state, reference, batch, objective, tx)
    state = place(state, sharding)
    reference = place(reference, frozen_sharding)
    losses = []
    for _ in range(steps):
        state, metrics = jitted(state, reference, batch, objective)
        losses.append(float(metrics["loss"]))
    gather = jax.jit(lambda x: x, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    flat = {jax.tree_util.keystr(k): np.asarray(gather(v)) for k, v in
            jax.tree_util.tree_leaves_with_path(state.params)}
    return losses, flat, state


def _multiprocess() -> None:
    """One of several processes: prints its losses and a digest of the parameters."""
    assert initialize()
    losses, params, _ = run(MeshConfig(data=-1))
    digest = {k: float(np.abs(v).sum()) for k, v in params.items()}
    print("RESULT", json.dumps({"losses": losses, "digest": digest}))


def _single() -> None:
    losses, params, _ = run(MeshConfig(), devices=jax.devices()[:1])
    print("RESULT", json.dumps({"losses": losses, "digest": {k: float(np.abs(v).sum()) for k, v in params.items()}}))


if __name__ == "__main__" and len(sys.argv) > 1:
    {"multiprocess": _multiprocess, "single": _single}[sys.argv[1]]()
    sys.exit(0)

if __name__ == "__main__":
    single_losses, single, _ = run(MeshConfig(), devices=jax.devices()[:1])
    sharded_losses, sharded, state = run(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded_leaf = jax.tree.leaves(state.params)[0]
    assert len(sharded_leaf.sharding.device_set) == 8, sharded_leaf.sharding
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=2e-5)
    for key in single:
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-4, atol=1e-6, err_msg=key)
    print("losses", single_losses, sharded_losses)
    print("OK")
    sys.exit(0)
