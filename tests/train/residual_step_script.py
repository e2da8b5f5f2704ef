"""IFT's temporal residual connection in the real train step: 8 simulated devices against one.

Run as a script under XLA_FLAGS=--xla_force_host_platform_device_count=8 by
``test_ift_residual_plan.py``: two steps of ``ift()`` (the provider's
``Plan(residual=0.2)``) on data x fsdp x tensor = 2x2x2 must give the losses
and parameters of the same step compiled for one device. Prints ``OK``.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jalign.models import Decoder
from jalign.objectives import ift
from jalign.sharding import MeshConfig, make_mesh, place
from jalign.train.provider import plan_inputs
from jalign.train.step import FrozenModels, TrainState, jit_step, make_step
from step_script import CFG, _batch


def run(mesh_config: MeshConfig, devices=None, steps=2):
    graphdef, params, rest = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)), nnx.Param, ...)
    frozen = FrozenModels(rest=rest)
    tx = optax.adamw(1e-2, eps=1e-3)  # bounded updates under reduction-order noise, as in step_script
    objective = ift()
    plan = plan_inputs(objective, data_kind="paired", columns=("prompt", "chosen", "rejected"))
    assert plan.residual == 0.2
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(0))
    mesh = make_mesh(mesh_config, devices)
    step = make_step(graphdef, tx, plan, impl="chunked")
    batch = _batch()
    jitted, sharding, frozen_sharding = jit_step(step, mesh, state, frozen, batch, objective, tx)
    state, frozen = place(state, sharding), place(frozen, frozen_sharding)
    losses = []
    for _ in range(steps):
        state, metrics = jitted(state, frozen, batch, objective)
        losses.append(float(metrics["loss"]))
    gather = jax.jit(lambda x: x, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    return losses, {jax.tree_util.keystr(k): np.asarray(gather(v))
                    for k, v in jax.tree_util.tree_leaves_with_path(state.params)}


if __name__ == "__main__":
    single_losses, single = run(MeshConfig(), devices=jax.devices()[:1])
    sharded_losses, sharded = run(MeshConfig(data=2, fsdp=2, tensor=2))
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=2e-5)
    for key in single:
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-4, atol=1e-6, err_msg=key)
    print("losses", single_losses, sharded_losses)
    print("OK")
    sys.exit(0)
