"""Tests of rDPO and the LCPO wrapper.

Expected numbers come from NumPy transcriptions of the papers' formulas, and
from identities: rDPO with epsilon = 0 is DPO; rDPO's expectation over label
flips, computed exactly as (1 - eps) L(y_w, y_l) + eps L(y_l, y_w), is the
clean DPO loss; LCPO with noise rate 0 is its inner objective (DPO and IPO).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jalign.objectives import from_sequences
from jalign.objectives.batch import LogProbs
from jalign.objectives.pairwise import DPO, IPO
from jalign.objectives.robust import LCPO, RDPO, flip_pairs

POLICY = np.array([[-3.0, -4.0], [-5.0, -4.5], [-2.0, -2.5], [-7.0, -6.0]], np.float32)
REFERENCE = np.array([[-3.5, -3.0], [-4.0, -4.0], [-2.5, -1.0], [-6.5, -7.0]], np.float32)
H = (POLICY - REFERENCE)[:, 0] - (POLICY - REFERENCE)[:, 1]


@jax.jit
def _per_example(objective, lp):
    """``objective.per_example`` compiled once per objective type (keeps the tests fast)."""
    return objective.per_example(lp)


def _batch(policy=POLICY, reference=REFERENCE, **labels):
    return from_sequences(policy, reference, labels=labels)


def _log_sigmoid(x):
    return -np.log1p(np.exp(-x))


def test_rdpo_matches_numpy():
    beta, eps = 0.5, 0.2
    expected = ((1 - eps) * -_log_sigmoid(beta * H) + eps * _log_sigmoid(-beta * H)) / (1 - 2 * eps)
    np.testing.assert_allclose(_per_example(RDPO(beta=beta, epsilon=eps), _batch())[0], expected, rtol=1e-5)


def test_rdpo_epsilon_zero_is_dpo():
    np.testing.assert_allclose(_per_example(RDPO(beta=0.3, epsilon=0.0), _batch())[0],
                               _per_example(DPO(beta=0.3), _batch())[0], rtol=1e-6)


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.4])
def test_rdpo_is_unbiased_under_flips(eps):
    """(1 - eps) rDPO(y_w, y_l) + eps rDPO(y_l, y_w) equals the clean DPO loss."""
    obj = RDPO(beta=0.7, epsilon=eps)
    expected = (1 - eps) * _per_example(obj, _batch())[0] + eps * _per_example(obj, flip_pairs(_batch()))[0]
    np.testing.assert_allclose(expected, _per_example(DPO(beta=0.7), _batch())[0], rtol=1e-5, atol=1e-6)


def test_flip_pairs_swaps_responses_and_preference():
    lp = _batch(preference=np.array([0.9, 0.2, 1.0, 0.5], np.float32), score=POLICY, example_weight=np.ones(4))
    flipped = flip_pairs(lp)
    np.testing.assert_array_equal(flipped.policy[:, :, 0], POLICY[:, ::-1])
    np.testing.assert_array_equal(flipped.reference[:, :, 0], REFERENCE[:, ::-1])
    np.testing.assert_allclose(flipped.labels["preference"], [0.1, 0.8, 0.0, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(flipped.labels["score"], POLICY[:, ::-1])
    np.testing.assert_array_equal(flipped.labels["example_weight"], np.ones(4))


@pytest.mark.parametrize("inner", [DPO(beta=0.3), IPO(tau=0.5)])
def test_lcpo_noise_zero_is_inner(inner):
    loss, metrics = _per_example(LCPO(inner=inner, noise_rate=0.0), _batch())
    inner_loss, inner_metrics = _per_example(inner, _batch())
    np.testing.assert_allclose(loss, inner_loss, rtol=1e-6)
    np.testing.assert_array_equal(metrics["correct_prob"], 1.0)
    for key, value in inner_metrics.items():
        np.testing.assert_allclose(metrics[key], value)


def test_lcpo_matches_numpy_for_dpo():
    """Posterior w = (1-e) sigma(bh) / ((1-e) sigma(bh) + e sigma(-bh)); loss w L + (1-w) L_flip."""
    beta, eps = 0.5, 0.3
    p = 1 / (1 + np.exp(-beta * H))
    w = (1 - eps) * p / ((1 - eps) * p + eps * (1 - p))
    expected = w * -_log_sigmoid(beta * H) + (1 - w) * -_log_sigmoid(-beta * H)
    loss, metrics = LCPO(inner=DPO(beta=beta), noise_rate=eps).per_example(_batch())
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["correct_prob"], w, rtol=1e-5)
    _, reduced = LCPO(inner=DPO(beta=beta), noise_rate=eps)(_batch())
    np.testing.assert_allclose(reduced["noise_rate_update"], np.mean(1 - w), rtol=1e-5)


def test_lcpo_weights_are_constants():
    """The gradient equals that of w L + (1 - w) L_flip with w held fixed."""
    beta, eps = 0.5, 0.3
    obj = LCPO(inner=DPO(beta=beta), noise_rate=eps)
    w = _per_example(obj, _batch())[1]["correct_prob"]

    def fixed(policy):
        margin = (policy[:, 0] - REFERENCE[:, 0]) - (policy[:, 1] - REFERENCE[:, 1])
        return jnp.mean(w * -jax.nn.log_sigmoid(beta * margin) + (1 - w) * -jax.nn.log_sigmoid(-beta * margin))

    grad = jax.grad(lambda p: obj(_batch(p))[0])(jnp.asarray(POLICY))
    np.testing.assert_allclose(grad, jax.grad(fixed)(jnp.asarray(POLICY)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("obj", [RDPO(), LCPO(), LCPO(inner=IPO())])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_jit_grad_finite_and_reference_constant(obj, scale):
    def loss(p, r):
        return obj(from_sequences(p, r))[0]

    value, (g_pol, g_ref) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        jnp.asarray(POLICY * scale), jnp.asarray(REFERENCE))
    assert np.isfinite(value) and np.all(np.isfinite(g_pol))
    np.testing.assert_array_equal(g_ref, 0.0)


def test_check_grads_vmap_and_bf16():
    for obj in (RDPO(beta=0.5, epsilon=0.2), LCPO(inner=DPO(beta=0.5), noise_rate=0.2)):
        check_grads(jax.jit(lambda p: obj(_batch(p))[0]), (jnp.asarray(POLICY),), order=1, modes=["rev"],
                    atol=1e-2, rtol=1e-2)
        lp = LogProbs(policy=jnp.asarray(POLICY, jnp.bfloat16)[..., None], mask=jnp.ones((4, 2, 1), jnp.bfloat16),
                      reference=jnp.asarray(REFERENCE, jnp.bfloat16)[..., None])
        loss, _ = obj(lp)
        assert loss.dtype == jnp.float32 and np.isfinite(loss)
    rates = jnp.array([0.0, 0.1, 0.3])
    grid = jax.vmap(lambda e: RDPO(epsilon=e)(_batch())[0])(rates)
    np.testing.assert_allclose(grid, [RDPO(epsilon=float(e))(_batch())[0] for e in rates], rtol=1e-5)
    grid = jax.vmap(lambda e: LCPO(noise_rate=e)(_batch())[0])(rates)
    np.testing.assert_allclose(grid, [LCPO(noise_rate=float(e))(_batch())[0] for e in rates], rtol=1e-5)
