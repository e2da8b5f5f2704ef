"""GPO family and SLiC against NumPy formulas, and the identities GPO unifies.

Independent sources: the GPO table of convex functions written out in NumPy
(Tang et al. 2024, Sec. 2), SLiC-HF's calibration term in NumPy (Zhao et al.
2023), and the registered DPO / IPO objectives for the identities
logistic = DPO, squared(beta = 2 tau) = 4 tau^2 IPO, hinge(beta) = beta SLiC(1/beta).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from objective_checks import (
    assert_gradient_reaches_policy_only,
    assert_grid_matches_loop,
)
from random_batches import batch_for

from jalign.objectives import LogProbs, from_sequences
from jalign.objectives.gpo import gpo_loss
from jalign.objectives.pairwise import DPO, IPO
from jalign.objectives.registry import make
from jalign.objectives.sequence import EXP_CAP, capped_exp

GPO_NAMES = ["gpo_logistic", "gpo_hinge", "gpo_squared", "gpo_exponential", "gpo_truncated_quadratic",
             "gpo_savage"]

# The paper's table, f(rho) with rho = beta * h, written independently in NumPy.
NUMPY_F = {
    "gpo_logistic": lambda x: np.log1p(np.exp(-x)),
    "gpo_hinge": lambda x: np.maximum(0.0, 1.0 - x),
    "gpo_squared": lambda x: (x - 1.0) ** 2,
    "gpo_exponential": lambda x: np.exp(-x),
    "gpo_truncated_quadratic": lambda x: np.maximum(0.0, 1.0 - x) ** 2,
    "gpo_savage": lambda x: 1.0 / (1.0 + np.exp(x)) ** 2,
}


def _token_batch():
    """Two prompts, T = 3 with padding: sequence log-ratios computed by hand below."""
    policy = np.array([[[-1.0, -2.0, -5.0], [-0.5, -0.5, -0.5]],
                       [[-0.2, -0.3, -0.1], [-4.0, -1.0, -3.0]]])
    reference = np.array([[[-1.5, -1.0, -9.0], [-1.0, -0.2, -0.3]],
                          [[-2.0, -1.0, -0.5], [-1.0, -1.0, -1.0]]])
    mask = np.array([[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]],
                     [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]])
    lp = LogProbs(policy=jnp.asarray(policy), mask=jnp.asarray(mask), reference=jnp.asarray(reference))
    ratios = ((policy - reference) * mask).sum(-1)  # [B, 2]
    return lp, ratios[:, 0] - ratios[:, 1]


@pytest.mark.parametrize("name", GPO_NAMES)
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_gpo_matches_numpy_table(name, beta):
    """Per-example losses and their mean equal f(beta * h) from the paper's table."""
    lp, h = _token_batch()
    objective = make(name, beta=beta)
    losses, metrics = objective.per_example(lp)
    np.testing.assert_allclose(losses, NUMPY_F[name](beta * h), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(objective(lp)[0], NUMPY_F[name](beta * h).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/margin"], beta * h, rtol=1e-5)


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
def test_gpo_logistic_equals_dpo(beta, average):
    """log(1 + exp(-beta h)) is DPO's -log sigmoid(beta h), per example."""
    lp = batch_for(DPO().requires, seed=3, log_ratio_scale=8.0)
    gpo, _ = make("gpo_logistic", beta=beta, average=average).per_example(lp)
    dpo, _ = DPO(beta=beta, average=average).per_example(lp)
    np.testing.assert_allclose(gpo, dpo, rtol=1e-6)


@pytest.mark.parametrize("tau", [0.05, 0.1, 1.0])
def test_gpo_squared_is_four_tau_squared_ipo(tau):
    """(beta h - 1)^2 = beta^2 (h - 1/beta)^2; at beta = 2 tau this is 4 tau^2 (h - 1/(2 tau))^2."""
    lp = batch_for(IPO().requires, seed=4, log_ratio_scale=5.0)
    gpo, _ = make("gpo_squared", beta=2.0 * tau).per_example(lp)
    ipo, _ = IPO(tau=tau).per_example(lp)
    np.testing.assert_allclose(gpo, 4.0 * tau**2 * ipo, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5, 3.0])
def test_gpo_hinge_is_beta_times_slic(beta):
    """max(0, 1 - beta h) = beta * max(0, 1/beta - h): gpo_hinge(beta) == beta * slic(delta = 1/beta)."""
    lp = batch_for(DPO().requires, seed=5, log_ratio_scale=10.0)
    gpo, _ = make("gpo_hinge", beta=beta).per_example(lp)
    slic, _ = make("slic", delta=1.0 / beta).per_example(lp)
    np.testing.assert_allclose(gpo, beta * slic, rtol=1e-5, atol=1e-6)


def test_slic_matches_numpy_and_reference_free_form():
    """max(0, delta - h) on log-ratios; with a zero reference it is SLiC-HF's likelihood margin."""
    lp, h = _token_batch()
    losses, _ = make("slic", delta=2.5).per_example(lp)
    np.testing.assert_allclose(losses, np.maximum(0.0, 2.5 - h), rtol=1e-6)

    policy = np.array([[-3.0, -5.0], [-2.0, -1.5], [-7.0, -2.0]])
    zero_reference = from_sequences(policy, np.zeros_like(policy))
    losses, _ = make("slic", delta=1.0).per_example(zero_reference)
    np.testing.assert_allclose(losses, np.maximum(0.0, 1.0 - (policy[:, 0] - policy[:, 1])))


def _all_losses(value, batch):
    """Mean loss of every objective of this module at hyperparameter ``value``: ``[7]``."""
    gpo = [make(name, beta=value)(batch)[0] for name in GPO_NAMES]
    return jnp.stack(gpo + [make("slic", delta=value)(batch)[0]])


def test_jit_vmap_over_hyperparameter_and_no_reference_gradient():
    """Jit equals eager; a vmapped grid (beta, or SLiC's delta) equals one call per value; d/d ref = 0."""
    lp = batch_for(DPO().requires, seed=6, log_ratio_scale=4.0)
    assert_grid_matches_loop(_all_losses, (jnp.array([0.05, 0.3, 1.5]),), lp)
    assert_gradient_reaches_policy_only(lambda batch: _all_losses(0.3, batch).sum(), lp)


@pytest.mark.parametrize("name", GPO_NAMES)
def test_gradients_match_finite_differences(name):
    """Analytic gradients of f(beta h) match finite differences away from the hinge kinks."""
    margin = jnp.array([-2.3, -0.7, 0.4, 3.1])  # beta h = -1.15 ... 1.55, never exactly 1
    check_grads(lambda m: gpo_loss(m, beta=0.5, loss=name.removeprefix("gpo_")), (margin,), order=1,
                modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_finite_at_extreme_log_ratios(dtype):
    """Log-ratios of +/-1e4 in every sign pattern: finite float32 losses and gradients, every objective."""
    signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
    lp = from_sequences(jnp.asarray(1e4 * signs - 1e4, dtype), jnp.asarray(np.full((4, 2), -1e4), dtype))
    losses = _all_losses(0.1, lp)
    grad = jax.jit(jax.grad(lambda batch: _all_losses(0.1, batch).sum()))(lp)
    assert losses.dtype == jnp.float32 and np.all(np.isfinite(losses))
    assert np.all(np.isfinite(np.asarray(grad.policy, np.float32)))


def test_exponential_loss_keeps_pushing_beyond_the_cap():
    """Past the cap the loss is linear with exp(cap) slope: still decreasing in the margin."""
    margin = jnp.array([-1e4, -1e3])
    grads = jax.grad(lambda m: gpo_loss(m, beta=1.0, loss="exponential").sum())(margin)
    np.testing.assert_allclose(grads, -np.exp(EXP_CAP), rtol=1e-5)


def test_capped_exp_is_exp_below_cap_and_tangent_above():
    """exp(x) exactly up to the cap; above it exp(cap) * (1 + x - cap), the tangent line."""
    below = jnp.array([-80.0, -3.0, 0.0, 2.0, EXP_CAP])
    np.testing.assert_allclose(capped_exp(below), np.exp(np.asarray(below, np.float64)), rtol=1e-6)
    above = np.array([EXP_CAP + 1.0, 1e4])
    np.testing.assert_allclose(capped_exp(jnp.asarray(above)), np.exp(EXP_CAP) * (1.0 + above - EXP_CAP), rtol=1e-6)
    slope = jax.grad(lambda x: capped_exp(x))(jnp.float32(1e4))
    np.testing.assert_allclose(slope, np.exp(EXP_CAP), rtol=1e-6)


def test_unknown_gpo_loss_name_is_an_error():
    with pytest.raises(ValueError, match="unknown GPO loss"):
        gpo_loss(jnp.zeros(2), beta=0.1, loss="quartic")
