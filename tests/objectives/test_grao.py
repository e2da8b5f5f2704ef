"""GRAO against a float64 NumPy transcription of Wang et al. 2025, Eq. 3-4 (value and gradient)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jalign.objectives import LogProbs, grao


def _batch(g, *, seed=0, b=3, t=4, scale=1.0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    policy = -rng.uniform(0.1, 3.0, size=(b, g + 1, t)) * scale
    mask = np.ones((b, g + 1, t))
    mask[:, :, -1] = rng.integers(0, 2, size=(b, g + 1))
    reward = rng.normal(size=(b, g + 1))
    lp = LogProbs(policy=jnp.asarray(policy, dtype), mask=jnp.asarray(mask, jnp.float32),
                  labels={"reward": jnp.asarray(reward, jnp.float32)})
    return lp, policy.astype(np.float64), mask, reward


def test_grao_is_eq3_with_the_group_of_samples_and_reference_answer():
    g, beta, lam = 4, 0.5, 0.6
    lp, pi, mask, r = _batch(g)
    length = mask.sum(-1)
    j = (pi * mask).sum(-1) / length  # J(o_i), then J(y) last
    adv = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-4)  # Eq. 4 over the G + 1 rewards
    a_o, a_y = adv[:, :g], adv[:, g:]
    expected = -np.mean(a_o * j[:, :g] + beta * a_y * j[:, g:] + lam * a_o * (j[:, :g] - j[:, g:]), axis=1)
    objective = grao(beta=beta, lam=lam, group_size=g)
    np.testing.assert_allclose(objective(lp)[0], expected.mean(), rtol=1e-5)
    grad = np.asarray(jax.grad(lambda p: objective(lp.replace(policy=p))[0])(lp.policy))
    per_sample = -(1 + lam) * a_o / g  # d(-J)/dJ(o_i)
    per_answer = -(beta * a_y[:, 0] - lam * a_o.mean(1))  # d(-J)/dJ(y)
    weights = np.concatenate([per_sample, per_answer[:, None]], 1) / pi.shape[0]
    np.testing.assert_allclose(grad, weights[..., None] * mask / length[..., None], rtol=1e-4, atol=1e-7)


def test_grao_declares_g_samples_then_the_reference_answer():
    sampling = grao(group_size=3).sampling
    assert sampling.responses == ("policy", "policy", "policy", "data") and sampling.labels == ("reward",)
    assert not grao().requires.reference


@pytest.mark.slow
def test_grao_is_finite_at_extreme_log_probs_in_bf16():
    lp, *_ = _batch(3, seed=1, scale=1e4, dtype=jnp.bfloat16)
    loss, metrics = grao(group_size=3)(lp)
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda x: grao(group_size=3)(x)[0])(lp).policy, np.float32)))
