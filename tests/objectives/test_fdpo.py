"""f-DPO against the paper's f'(u) written naively in NumPy, and its DPO identity.

Independent sources: the derivatives f'(u) of each f-divergence from Wang et
al. (2023)'s table, evaluated at u = pi / pi_ref in float64 NumPy on moderate
log-ratios where the naive form is exact; the registered DPO objective for
"reverse KL f-DPO is DPO"; the closed-form limits of the alpha family
(alpha = 1 is forward KL, alpha -> 0 is reverse KL).
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

from jalign.objectives import from_sequences
from jalign.objectives.fdpo import DIVERGENCES, FDPO, fdpo_loss
from jalign.objectives.pairwise import DPO
from jalign.objectives.registry import make

ALPHA = 0.3

# f'(u) as printed in the paper (constants included), in NumPy.
NUMPY_F_PRIME = {
    "reverse_kl": lambda u: np.log(u) + 1.0,
    "forward_kl": lambda u: -1.0 / u,
    "js": lambda u: np.log(2.0 * u / (1.0 + u)),
    "alpha": lambda u: (1.0 - u ** (-ALPHA)) / ALPHA,
}


def _np_fdpo(chosen, rejected, beta, divergence):
    f_prime = NUMPY_F_PRIME[divergence]
    logits = beta * (f_prime(np.exp(chosen)) - f_prime(np.exp(rejected)))
    return np.logaddexp(0.0, -logits)  # -log sigmoid


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_fdpo_matches_numpy_f_prime(divergence, beta):
    """-log sigmoid(beta f'(u_w) - beta f'(u_l)) with the paper's f', per example and batch mean."""
    lp, ratios = padded_pair_batch()
    objective = FDPO(beta=beta, alpha=ALPHA, divergence=divergence)
    losses, metrics = objective.per_example(lp)
    expected = _np_fdpo(ratios[:, 0], ratios[:, 1], beta, divergence)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    np.testing.assert_allclose(objective(lp)[0], expected.mean(), rtol=1e-5)
    # Implicit rewards are beta * f'(u) up to a constant: their margin is exact.
    f_prime = NUMPY_F_PRIME[divergence]
    margin = beta * (f_prime(np.exp(ratios[:, 0])) - f_prime(np.exp(ratios[:, 1])))
    np.testing.assert_allclose(metrics["rewards/margin"], margin, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_reverse_kl_fdpo_equals_dpo(beta, average):
    """f(u) = u log u gives f'(u) = log u + 1: the constant cancels and f-DPO is DPO."""
    lp = batch_for(DPO().requires, seed=11, log_ratio_scale=20.0)
    fdpo, _ = make("fdpo", beta=beta, divergence="reverse_kl", average=average).per_example(lp)
    dpo, _ = DPO(beta=beta, average=average).per_example(lp)
    np.testing.assert_allclose(fdpo, dpo, rtol=1e-6)


def test_alpha_family_limits():
    """alpha = 1 is forward KL exactly (f' = 1 - 1/u); alpha -> 0 tends to reverse KL."""
    lp = batch_for(DPO().requires, seed=12, log_ratio_scale=3.0)
    forward, _ = FDPO(divergence="forward_kl").per_example(lp)
    alpha_one, _ = FDPO(divergence="alpha", alpha=1.0).per_example(lp)
    np.testing.assert_allclose(alpha_one, forward, rtol=1e-6)
    reverse, _ = FDPO(divergence="reverse_kl").per_example(lp)
    alpha_small, _ = FDPO(divergence="alpha", alpha=1e-4).per_example(lp)
    np.testing.assert_allclose(alpha_small, reverse, rtol=1e-3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_finite_at_log_ratios_of_plus_minus_1e4(dtype):
    """Every divergence: finite loss and gradients when r_w, r_l are +/-1e4 in any combination."""
    signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1], [0, -1], [-1, 0]], np.float32)
    policy = jnp.asarray(1e4 * signs - 1e4, dtype)
    lp = from_sequences(policy, jnp.asarray(np.full(signs.shape, -1e4), dtype))

    def total(batch):
        return jnp.stack([FDPO(divergence=d)(batch)[0] for d in DIVERGENCES])

    losses, grad = jax.jit(lambda batch: (total(batch), jax.grad(lambda b: total(b).sum())(batch)))(lp)
    assert losses.dtype == jnp.float32 and np.all(np.isfinite(losses)), losses
    assert np.all(np.isfinite(np.asarray(grad.policy, np.float32)))


@pytest.mark.parametrize("divergence", ["forward_kl", "alpha"])
def test_gradient_direction_survives_overflowing_ratios(divergence):
    """At r_w = -1e4 (u_w^-1 overflows) the loss is finite and still pushes log pi(y_w) up."""
    lp = from_sequences(jnp.array([[-1e4, -1.0]]), jnp.array([[0.0, -1.0]]))
    grad = jax.jit(jax.grad(lambda batch: FDPO(divergence=divergence)(batch)[0]))(lp)
    assert grad.policy[0, 0, 0] < 0.0  # descending the loss raises the chosen log-prob
    assert np.isfinite(grad.policy[0, 0, 0])


def test_jit_vmap_over_beta_and_alpha_and_no_reference_gradient():
    """A vmapped (beta, alpha) grid equals one jitted call per point; d/d reference = 0."""
    lp = batch_for(DPO().requires, seed=13, log_ratio_scale=6.0)

    def loss(beta, alpha, batch):
        return FDPO(beta=beta, alpha=alpha, divergence="alpha")(batch)[0]

    assert_grid_matches_loop(loss, (jnp.array([0.05, 0.2, 1.0]), jnp.array([0.1, 0.5, 0.9])), lp)
    assert_gradient_reaches_policy_only(lambda batch: sum(FDPO(divergence=d)(batch)[0] for d in DIVERGENCES), lp)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_gradients_match_finite_differences(divergence):
    chosen, rejected = jnp.array([-2.0, -0.3, 0.8, 1.7]), jnp.array([0.5, -1.2, 0.1, -2.5])
    check_grads(lambda w, l: fdpo_loss(w, l, beta=0.5, divergence=divergence, alpha=ALPHA), (chosen, rejected),
                order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)


def test_unknown_divergence_is_an_error():
    with pytest.raises(ValueError, match="unknown divergence"):
        FDPO(divergence="hellinger")
