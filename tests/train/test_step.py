"""The train step: sharded equals unsharded; the non-finite guard keeps the state."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

HERE = pathlib.Path(__file__).parent


def test_sharded_step_matches_single_device_step():
    """data x fsdp x tensor = 2x2x2 on 8 simulated CPU devices vs one device: same losses and params.

    The reference is the same step compiled for one device (no partitioning),
    so the check isolates the sharding layer: specs, optimizer-state
    placement, batch sharding and the partitioned kernels.
    """
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(HERE / "step_script.py")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-4000:]


def test_nonfinite_loss_leaves_state_unchanged_and_flags_it():
    """A batch whose label makes the loss NaN: parameters, optimizer state and step stay as they were."""
    sys.path.insert(0, str(HERE))
    from step_script import CFG, _batch
    from jalign.objectives import dpo
    from jalign.sharding import MeshConfig, make_mesh
    from jalign.train.step import TrainState, jit_step, make_step
    from jalign.models import Decoder

    graphdef, params, rest = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = optax.adam(1e-2)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(0))
    batch = _batch()
    bad = dpo(beta=float("nan"))
    jitted, sharding = jit_step(make_step(graphdef, rest, tx, impl="chunked"), make_mesh(MeshConfig()),
                                state, params, batch, bad, tx)
    before = jax.tree.map(np.asarray, state.params)
    after, metrics = jitted(jax.device_put(state, sharding), params, batch, bad)
    assert not bool(metrics["finite"])
    assert int(after.step) == 0
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(after.params)):
        np.testing.assert_array_equal(old, new)
