"""NCA, SPPO-hard and APO against NumPy formulas, plus their anchoring properties.

Independent sources: each paper's per-response formula written in float64
NumPy (NCA: Chen et al. 2024, pairwise NCA; SPPO: Wu et al. 2024, the square
loss of Algorithm 1 with win probabilities 1 / 0; APO: D'Oosterlinck et al.
2024, Eqs. 7 and 8), the algebraic rescalings between SPPO's published forms,
and closed-form gradient signs of APO-zero.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from numpy_reference import padded_pair_batch
from objective_checks import (
    assert_gradient_reaches_policy_only,
    assert_grid_matches_loop,
)
from random_batches import batch_for

import jalign.objectives.anchored as anchored
from jalign.objectives import from_sequences
from jalign.objectives.registry import make

NAMES = ["nca", "sppo_hard", "apo_zero", "apo_down"]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_loss(name, r_w, r_l, beta):
    if name == "nca":
        return -np.log(_sigmoid(beta * r_w)) - 0.5 * np.log(_sigmoid(-beta * r_w)) - 0.5 * np.log(
            _sigmoid(-beta * r_l))
    if name == "sppo_hard":
        eta = 1.0 / beta
        return 0.5 * ((r_w - eta * (1.0 - 0.5)) ** 2 + (r_l - eta * (0.0 - 0.5)) ** 2)
    if name == "apo_zero":
        return (1.0 - _sigmoid(beta * r_w)) + _sigmoid(beta * r_l)
    return _sigmoid(beta * r_w) + (1.0 - _sigmoid(beta * (r_w - r_l)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta", [0.3, 2.0])
def test_matches_numpy_formula(name, beta):
    """Per-example losses, batch mean and reward margin against the paper's formula."""
    lp, ratios = padded_pair_batch()
    objective = make(name, beta=beta)
    losses, metrics = objective.per_example(lp)
    expected = _np_loss(name, ratios[:, 0], ratios[:, 1], beta)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    np.testing.assert_allclose(objective(lp)[0], expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/chosen"], beta * ratios[:, 0], rtol=1e-5)


def test_length_normalised_log_ratios():
    """``average=True`` divides each response's log-ratio by its own length."""
    lp, ratios = padded_pair_batch()
    lengths = np.asarray(lp.mask).sum(-1)
    losses, _ = make("nca", beta=0.5, average=True).per_example(lp)
    expected = _np_loss("nca", ratios[:, 0] / lengths[:, 0], ratios[:, 1] / lengths[:, 1], 0.5)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.001, 0.1, 1.0])
def test_sppo_hard_scalings(beta):
    """The three published forms differ by constants: TRL's sppo_hard is 2x this loss and
    (beta r_w - 1/2)^2 + (beta r_l + 1/2)^2 is 2 beta^2 x it; all vanish at r_w = -r_l = 1/(2 beta)."""
    lp = batch_for(make("sppo_hard").requires, seed=21, log_ratio_scale=50.0)
    losses, metrics = make("sppo_hard", beta=beta).per_example(lp)
    r_w, r_l = np.asarray(metrics["logratio/chosen"], np.float64), np.asarray(metrics["logratio/rejected"], np.float64)
    trl = (r_w - 0.5 / beta) ** 2 + (r_l + 0.5 / beta) ** 2
    np.testing.assert_allclose(2.0 * np.asarray(losses), trl, rtol=1e-4)
    scaled = (beta * r_w - 0.5) ** 2 + (beta * r_l + 0.5) ** 2
    np.testing.assert_allclose(2.0 * beta**2 * np.asarray(losses), scaled, rtol=1e-4)
    optimum = anchored.sppo_hard_loss(jnp.array([0.5 / beta]), jnp.array([-0.5 / beta]), beta=beta)
    np.testing.assert_allclose(optimum, 0.0, atol=1e-6)


def test_apo_zero_raises_chosen_and_lowers_rejected():
    """d loss / d r_w = -beta s'(beta r_w) < 0 and d loss / d r_l = beta s'(beta r_l) > 0, s = sigmoid."""
    r_w, r_l = jnp.array([-3.0, 0.0, 2.0]), jnp.array([1.0, -0.5, 4.0])
    beta = 0.7
    grad_w, grad_l = jax.grad(lambda w, l: anchored.apo_zero_loss(w, l, beta=beta).sum(), argnums=(0, 1))(r_w, r_l)
    s = lambda x: _sigmoid(x) * (1.0 - _sigmoid(x))  # noqa: E731
    np.testing.assert_allclose(grad_w, -beta * s(beta * np.asarray(r_w)), rtol=1e-5)
    np.testing.assert_allclose(grad_l, beta * s(beta * np.asarray(r_l)), rtol=1e-5)


def test_nca_gradient_on_chosen_never_pushes_it_below_the_anchor():
    """NCA's chosen gradient, -beta s(-b r_w) + beta s(b r_w)/2, is negative while r_w < log(2)/beta:
    descending the loss raises the chosen likelihood until its reward reaches log 2."""
    beta = 0.5
    r_w = jnp.array([-20.0, -1.0, 0.0, 1.3])  # all below log(2) / beta ~ 1.386
    grad_w = jax.grad(lambda w: anchored.nca_loss(w, jnp.zeros_like(w), beta=beta).sum())(r_w)
    assert np.all(np.asarray(grad_w) < 0.0)
    above = jax.grad(lambda w: anchored.nca_loss(w, jnp.zeros_like(w), beta=beta).sum())(jnp.array([1.5]))
    assert above[0] > 0.0


def _all_losses(beta, batch):
    return jnp.stack([make(name, beta=beta)(batch)[0] for name in NAMES])


def test_jit_vmap_over_beta_and_no_reference_gradient():
    """Jit equals eager; a vmapped beta grid equals one jitted call per value; d/d reference = 0."""
    lp = batch_for(make("nca").requires, seed=22, log_ratio_scale=5.0)
    assert_grid_matches_loop(_all_losses, (jnp.array([0.01, 0.1, 1.0]),), lp)
    assert_gradient_reaches_policy_only(lambda batch: _all_losses(0.1, batch).sum(), lp)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_finite_at_extreme_log_ratios(dtype):
    """Log-ratios of +/-1e4 in every sign pattern, default hyperparameters: finite loss and gradients."""
    signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
    lp = from_sequences(jnp.asarray(1e4 * signs - 1e4, dtype), jnp.asarray(np.full((4, 2), -1e4), dtype))

    def total(batch):
        return jnp.stack([make(name)(batch)[0] for name in NAMES])

    losses, grad = jax.jit(lambda batch: (total(batch), jax.grad(lambda b: total(b).sum())(batch)))(lp)
    assert losses.dtype == jnp.float32 and np.all(np.isfinite(losses))
    assert np.all(np.isfinite(np.asarray(grad.policy, np.float32)))


@pytest.mark.parametrize("fn", [anchored.nca_loss, anchored.sppo_hard_loss, anchored.apo_zero_loss,
                                anchored.apo_down_loss])
def test_gradients_match_finite_differences(fn):
    chosen, rejected = jnp.array([-2.0, -0.3, 0.8, 1.7]), jnp.array([0.5, -1.2, 0.1, -2.5])
    check_grads(lambda w, l: fn(w, l, beta=0.5), (chosen, rejected), order=1, modes=["rev"], eps=1e-3,
                atol=1e-2, rtol=1e-2)
