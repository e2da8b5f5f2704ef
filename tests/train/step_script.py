"""A few train steps of a tiny decoder on a given mesh; prints losses and a parameter digest.

Run as a script under XLA_FLAGS=--xla_force_host_platform_device_count=8 by the
sharding tests; ``run(mesh_config, devices)`` is the shared body.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jalign.models import Decoder, ModelConfig
from jalign.objectives import dpo, sft
from jalign.sharding import MeshConfig, make_mesh
from jalign.train.step import TrainState, jit_step, make_step

CFG = ModelConfig("llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64)


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
    """Losses and final parameters (as a flat NumPy dict) after ``steps`` steps."""
    graphdef, params, rest = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)), nnx.Param, ...)
    reference = jax.tree.map(jnp.copy, params)
    tx = optax.adamw(1e-2)
    objective = dpo(beta=0.5) + 0.1 * sft()
    batch = _batch()
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(0))
    mesh = make_mesh(mesh_config, devices)
    jitted, sharding = jit_step(make_step(graphdef, rest, tx, impl="chunked"), mesh, state, reference,
                                batch, objective, tx)
    state = jax.device_put(state, sharding)
    losses = []
    for _ in range(steps):
        state, metrics = jitted(state, reference, batch, objective)
        losses.append(float(metrics["loss"]))
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
    return losses, flat, state


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
