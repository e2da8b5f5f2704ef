"""Mixed precision: fp32 parameters with bf16 compute, and bf16 parameters with fp32 optimizer moments.

References: the same step in full fp32 (for the gradients of bf16 compute), and
optax's own Adam run on fp32 copies of bf16 parameters (for `fp32_state`).
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jalign.models import Decoder
from jalign.objectives import dpo
from jalign.sharding import MeshConfig, make_mesh
from jalign.train.optim import OptimizerConfig, fp32_state, make_optimizer
from jalign.train.provider import Plan
from jalign.train.step import FrozenModels, TrainState, jit_step, make_logprobs, make_step

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from step_script import CFG, _batch  # noqa: E402


def _gradients(cfg, batch):
    graphdef, params, rest = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    logprobs = make_logprobs(graphdef, Plan(reference="frozen"), impl="chunked")
    frozen = FrozenModels(rest=rest, reference=jax.tree.map(jnp.copy, params))

    def loss(p):
        return dpo(beta=0.1)(logprobs(p, frozen, batch))[0]

    grads = jax.jit(jax.grad(loss))(params)
    return params, np.concatenate([np.ravel(np.asarray(g, np.float32)) for g in jax.tree.leaves(grads)])


def test_bf16_compute_with_fp32_parameters_follows_the_fp32_gradient():
    """Same weights, bf16 activations: fp32 gradients pointing where the fp32 step's do.

    bf16 keeps 8 significant bits (relative rounding 2^-9 per operation), so
    two layers of bf16 activations perturb each gradient entry by a few
    percent; the direction of the whole gradient must still agree to a cosine
    above 0.99 and its norm within 5%. A wrong cast (e.g. a bf16 log-sum-exp
    over the vocabulary, or gradients flowing to the wrong dtype) breaks these.
    """
    batch = _batch()
    params32, g32 = _gradients(CFG, batch)
    params_mixed, g_mixed = _gradients(CFG.replace(dtype="bfloat16"), batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params_mixed))
    assert not np.array_equal(g32, g_mixed)  # bf16 compute did run
    cosine = g32 @ g_mixed / np.linalg.norm(g32) / np.linalg.norm(g_mixed)
    assert cosine > 0.99, cosine
    assert abs(np.linalg.norm(g_mixed) / np.linalg.norm(g32) - 1) < 0.05


def test_fp32_state_keeps_fp32_moments_and_matches_adam_on_fp32_copies():
    """bf16 parameters: moments are fp32, and the update is fp32 Adam's, cast to bf16 at the end."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.bfloat16)}
    grads = [{"w": jnp.asarray(rng.normal(size=(4, 3)) * 1e-3, jnp.bfloat16)} for _ in range(3)]
    tx, reference = fp32_state(optax.adamw(1e-2, weight_decay=0.1)), optax.adamw(1e-2, weight_decay=0.1)
    state = tx.init(params)
    up = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)  # noqa: E731
    ref_state = reference.init(up(params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating))
    for g in grads:
        updates, state = tx.update(g, state, params)
        expected, ref_state = reference.update(up(g), ref_state, up(params))
        assert updates["w"].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(updates["w"]), np.asarray(expected["w"].astype(jnp.bfloat16)))
        params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(np.asarray(state[0].mu["w"]), np.asarray(ref_state[0].mu["w"]))


def test_a_bf16_parameter_step_keeps_parameters_bf16_and_moments_fp32():
    """The trainer's optimizer on a bf16 model: a finite step that changes bf16 parameters, fp32 state."""
    cfg = CFG.replace(dtype="bfloat16", param_dtype="bfloat16")
    graphdef, params, rest = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, schedule="constant"), total_updates=2)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(0))
    frozen = FrozenModels(rest=rest, reference=jax.tree.map(jnp.copy, params))
    batch, objective = _batch(), dpo(beta=0.1)
    step = make_step(graphdef, tx, Plan(reference="frozen"), impl="chunked")
    jitted, sharding, _ = jit_step(step, make_mesh(MeshConfig(), jax.devices()[:1]), state, frozen, batch,
                                   objective, tx)
    before = jax.tree.map(np.asarray, params)
    after, metrics = jitted(jax.device_put(state, sharding), frozen, batch, objective)
    assert bool(metrics["finite"])
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(after.params))
    moments = [x for x in jax.tree.leaves(after.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert moments and all(x.dtype == jnp.float32 for x in moments)
    changed = [not np.array_equal(b, np.asarray(a)) for b, a in zip(jax.tree.leaves(before),
                                                                  jax.tree.leaves(after.params))]
    assert sum(changed) > len(changed) // 2


def test_the_model_section_sets_the_dtypes_and_remat_of_a_random_or_loaded_model(tmp_path):
    """The run's policy, random (``model.arch``) or loaded (``model.hf_dir``), has the section's dtypes and
    remat policy ("dots", not the architecture's "full"); without them, the architecture's."""
    import dataclasses

    from jalign.models import save_hf
    from jalign.train.loop import build_model
    from tiny_experiment import experiment

    save_hf(Decoder(CFG, rngs=nnx.Rngs(0)), str(tmp_path / "hf"))
    exp = experiment(tmp_path, 1)
    mesh = make_mesh(MeshConfig())
    for source in (dict(arch=CFG), dict(arch=None, hf_dir=str(tmp_path / "hf"))):
        section = dataclasses.replace(exp.model, **source, dtype="bfloat16", param_dtype="bfloat16", remat="dots")
        model, _ = build_model(dataclasses.replace(exp, model=section), None, mesh, exp.mesh.rule_table())
        assert (model.cfg.dtype, model.cfg.param_dtype, model.cfg.remat) == ("bfloat16", "bfloat16", "dots")
        assert model.embed[...].dtype == jnp.bfloat16
    model, _ = build_model(dataclasses.replace(exp, model=dataclasses.replace(exp.model, arch=CFG)), None, mesh,
                           exp.mesh.rule_table())
    assert (model.cfg.dtype, model.cfg.remat) == (CFG.dtype, CFG.remat)
