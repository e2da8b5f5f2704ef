"""Reward transforms and the multi-objective reward loss against float64 NumPy written from the sources.

- LSC: ``log sigma(r - r_ref)`` (Wang et al. 2024); its reference point the
  0.85 quantile of a normal fit of the reference rewards with the sample
  standard deviation plus 1e-5, transcribed from the PAR authors'
  ``RewardShaper`` with Python's ``statistics`` module (``stdev``,
  ``NormalDist.inv_cdf``) rather than scipy/jax.
- PAR: the authors' loop ``sum_m 1 / (1 + exp(-k (r - r_m))) / M``.
- Max-min: the authors' per-sample ``min`` over groups; directional: ``v . r``.
- ``multi_reward``: mean over responses of the squared error summed over attributes.
Each loss is also checked at extreme inputs and on bfloat16 inputs.
"""

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from jalign.objectives import LogProbs, multi_reward
from jalign.objectives.reward_transforms import (
    directional_reward, lsc, lsc_combined, lsc_reference, maxmin_reward, par,
)

RNG = np.random.default_rng(3)


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def test_lsc_and_its_reference_point_match_the_authors_formulas():
    references = RNG.normal(size=(6, 10)) * 2.0
    expected_ref = [statistics.fmean(row) + (statistics.stdev(row) + 1e-5) * statistics.NormalDist().inv_cdf(0.85)
                    for row in references.tolist()]
    np.testing.assert_allclose(lsc_reference(references), expected_ref, rtol=1e-5)
    rewards = RNG.normal(size=6) * 3
    np.testing.assert_allclose(lsc(rewards, lsc_reference(references)),
                               _log_sigmoid(rewards - np.asarray(expected_ref)), rtol=1e-5, atol=1e-6)


def test_lsc_combined_is_the_sum_over_reward_models():
    rewards, references = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3))
    np.testing.assert_allclose(lsc_combined(rewards, references),
                               _log_sigmoid(rewards - references).sum(-1), rtol=1e-5)


def test_par_matches_the_authors_loop():
    rewards, references, k = RNG.normal(size=4), RNG.normal(size=(4, 10)), 2.0
    expected = [sum(1 / (1 + math.exp(-k * (r - rr))) for rr in row) / len(row)
                for r, row in zip(rewards.tolist(), references.tolist())]
    np.testing.assert_allclose(par(rewards, references, slope=k), expected, rtol=1e-5)


def test_maxmin_and_directional_rewards():
    groups = RNG.normal(size=(7, 3))
    np.testing.assert_allclose(maxmin_reward(groups), groups.min(-1), rtol=1e-6)
    direction = np.array([math.cos(-0.26), math.sin(-0.26)])
    attributes = RNG.normal(size=(7, 2))
    np.testing.assert_allclose(directional_reward(attributes, direction), attributes @ direction, rtol=1e-5)


def test_transforms_are_finite_with_finite_gradients_at_extreme_rewards_and_in_bfloat16():
    extreme = jnp.asarray([-1e4, -50.0, 0.0, 50.0, 1e4], jnp.float32)
    refs = jnp.zeros((5, 3))
    for fn in (lambda r: lsc(r, 0.0), lambda r: par(r, refs), lambda r: lsc_combined(jnp.stack([r, -r], -1),
                                                                                    jnp.zeros(2))):
        fn = jax.jit(fn)
        values, grads = fn(extreme), jax.jit(jax.grad(lambda r: jnp.sum(fn(r))))(extreme)
        assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))
        bf16 = fn(extreme.astype(jnp.bfloat16))
        assert bf16.dtype == jnp.float32
        np.testing.assert_allclose(bf16, values, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(lsc(extreme, 0.0)[0], -1e4, rtol=1e-6)  # log sigma(x) ~ x far below, no -inf


def _batch(scores, attributes, dtype=jnp.float32):
    return LogProbs(policy=None, mask=None, scores=jnp.asarray(scores, dtype),
                    labels={"attributes": jnp.asarray(attributes, jnp.float32)})


def test_multi_reward_is_the_squared_error_summed_over_attributes_and_averaged_over_responses():
    predicted, target = RNG.normal(size=(3, 2, 5)), RNG.normal(size=(3, 2, 5))
    losses, metrics = multi_reward().per_example(_batch(predicted, target))
    np.testing.assert_allclose(losses, ((predicted - target) ** 2).sum(-1).mean(-1), rtol=1e-5)
    np.testing.assert_allclose(metrics["sq_error/4"], ((predicted - target) ** 2)[..., 4].mean(-1), rtol=1e-5)
    loss, _ = jax.jit(multi_reward())(_batch(predicted, target))
    np.testing.assert_allclose(loss, ((predicted - target) ** 2).sum(-1).mean(), rtol=1e-5)


def test_multi_reward_gradient_is_twice_the_error_and_bfloat16_scores_accumulate_in_float32():
    predicted, target = RNG.normal(size=(2, 2, 3)) * 1e3, RNG.normal(size=(2, 2, 3))
    grad = jax.grad(lambda s: multi_reward()(_batch(s, target))[0])(jnp.asarray(predicted, jnp.float32))
    np.testing.assert_allclose(grad, 2 * (predicted - target) / (2 * 2), rtol=1e-4)
    losses, _ = multi_reward().per_example(_batch(predicted, target, jnp.bfloat16))
    assert losses.dtype == jnp.float32 and np.all(np.isfinite(losses))
    np.testing.assert_allclose(losses, ((predicted - target) ** 2).sum(-1).mean(-1), rtol=1e-2)
