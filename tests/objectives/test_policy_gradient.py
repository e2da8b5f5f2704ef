"""REINFORCE, RLOO, GRPO, PPO-clip, CoPG and RSO against float64 NumPy re-derivations of their papers' formulas.

Independent references: each loss's value and its gradient with respect to the
per-token policy log-probs, written out in NumPy from the equations cited in
the objectives' docstrings (Ahmadian et al. 2024 Sec. 3.3; Shao et al. 2024
Eq. 3-4; Schulman et al. 2017 Eq. 7; the CoPG loss as given in Command A;
Liu et al. 2023 Eq. 8 and 10). REINFORCE's and PPO-clip's value checks and all but GRPO's
extreme-input check run with --runslow (the default suite's time budget).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jalign.objectives import LogProbs, copg, grpo, online_copg, ppo_clip, reinforce, rloo, rso
from jalign.objectives.policy_gradient import clipped_surrogate

from numpy_reference import log_sigmoid


def _group_batch(g, *, seed=0, b=3, t=4, scale=1.0, dtype=jnp.float32, reward_key="reward"):
    rng = np.random.default_rng(seed)
    policy = -rng.uniform(0.1, 3.0, size=(b, g, t)) * scale
    reference = -rng.uniform(0.1, 3.0, size=(b, g, t)) * scale
    mask = np.ones((b, g, t))
    mask[:, :, -1] = rng.integers(0, 2, size=(b, g))
    reward = rng.normal(size=(b, g))
    lp = LogProbs(policy=jnp.asarray(policy, dtype), mask=jnp.asarray(mask, jnp.float32),
                  reference=jnp.asarray(reference, dtype), labels={reward_key: jnp.asarray(reward, jnp.float32)})
    return lp, policy.astype(np.float64), reference.astype(np.float64), mask, reward


def _grad(obj, lp):
    return np.asarray(jax.grad(lambda p: obj(lp.replace(policy=p))[0])(lp.policy), np.float64)


def _seq(x, mask):
    return (x * mask).sum(-1)


@pytest.mark.slow
def test_reinforce_is_the_kl_shaped_reward_times_the_score_function():
    lp, pi, ref, mask, r = _group_batch(1)
    beta = 0.3
    shaped = r[:, 0] - beta * _seq(pi - ref, mask)[:, 0]
    loss, _ = reinforce(beta=beta)(lp)
    np.testing.assert_allclose(loss, np.mean(-shaped * _seq(pi, mask)[:, 0]), rtol=1e-5)
    expected = -shaped[:, None, None] * mask / pi.shape[0]
    np.testing.assert_allclose(_grad(reinforce(beta=beta), lp), expected, rtol=1e-5, atol=1e-7)


def test_rloo_uses_the_leave_one_out_baseline():
    k = 3
    lp, pi, ref, mask, r = _group_batch(k, seed=k)
    beta = 0.05
    shaped = r - beta * _seq(pi - ref, mask)
    baseline = np.stack([np.delete(shaped, i, axis=1).mean(1) for i in range(k)], 1)
    advantage = shaped - baseline
    loss, _ = rloo(beta=beta, k=k)(lp)
    np.testing.assert_allclose(loss, np.mean(-(advantage * _seq(pi, mask)).mean(1)), rtol=1e-5)
    expected = -advantage[..., None] * mask / (k * pi.shape[0])
    np.testing.assert_allclose(_grad(rloo(beta=beta, k=k), lp), expected, rtol=1e-5, atol=1e-7)


def test_grpo_is_eq3_with_group_normalised_advantages_and_the_k3_kl():
    g, beta = 4, 0.04
    lp, pi, ref, mask, r = _group_batch(g, seed=3)
    adv = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    length = mask.sum(-1)
    k3 = np.exp(ref - pi) - (ref - pi) - 1
    per_token = -adv[..., None] + beta * k3  # ratio 1: min(rho A, clip(rho) A) = A
    expected_loss = np.mean(((per_token * mask).sum(-1) / length).mean(1))
    loss, metrics = grpo(beta=beta, group_size=g)(lp)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    grad_token = (-adv[..., None] + beta * (1 - np.exp(ref - pi))) * mask / length[..., None]
    np.testing.assert_allclose(_grad(grpo(beta=beta, group_size=g), lp), grad_token / (g * pi.shape[0]),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(metrics["kl"], np.mean(((k3 * mask).sum(-1) / length).mean(1)), rtol=1e-5)


@pytest.mark.slow
def test_ppo_clip_is_the_clipped_surrogate_of_the_leave_one_out_advantage():
    k, beta = 3, 0.05
    lp, pi, ref, mask, r = _group_batch(k, seed=5)
    shaped = r - beta * _seq(pi - ref, mask)
    advantage = shaped - np.stack([np.delete(shaped, i, axis=1).mean(1) for i in range(k)], 1)
    length = mask.sum(-1)
    grad_token = -advantage[..., None] * mask / length[..., None] / (k * pi.shape[0])
    np.testing.assert_allclose(_grad(ppo_clip(beta=beta, k=k), lp), grad_token, rtol=1e-5, atol=1e-7)
    # Leave-one-out advantages sum to 0 per group, so at ratio 1 the loss value is 0.
    np.testing.assert_allclose(ppo_clip(beta=beta, k=k)(lp)[0], np.mean(-advantage.mean(1)), atol=1e-6)


def test_clipped_surrogate_matches_eq7_and_clips_the_gradient():
    """Schulman et al. Eq. 7 for ratios inside and outside [1 - eps, 1 + eps], both advantage signs."""
    logp = np.log(np.array([[[0.5, 1.5, 0.9, 1.1]]])) + np.log(0.3)  # ratios 0.5, 1.5, 0.9, 1.1 to old
    old = np.full_like(logp, np.log(0.3))
    for a in (2.0, -2.0):
        rho = np.exp(logp - old)
        expected = -np.minimum(rho * a, np.clip(rho, 0.8, 1.2) * a)
        got = clipped_surrogate(jnp.asarray(logp), jnp.asarray(old), jnp.full((1, 1), a), epsilon=0.2)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        grad = jax.grad(lambda x: clipped_surrogate(x, jnp.asarray(old), jnp.full((1, 1), a), epsilon=0.2).sum())(
            jnp.asarray(logp, jnp.float32))
        # The clipped branch is active (zero gradient) where the ratio is beyond the range in the advantage's direction.
        clipped = (rho > 1.2) if a > 0 else (rho < 0.8)
        np.testing.assert_allclose(np.asarray(grad), np.where(clipped, 0.0, -rho * a), rtol=1e-5)


def test_copg_is_the_contrastive_square_over_pairs_and_groups():
    beta = 0.2
    lp, pi, ref, mask, r = _group_batch(2, seed=7, reward_key="score")
    reg = r - beta * _seq(pi - ref, mask)
    np.testing.assert_allclose(copg(beta=beta)(lp)[0], np.mean((reg[:, 0] - reg[:, 1]) ** 2), rtol=1e-5)
    lp, pi, ref, mask, r = _group_batch(4, seed=8)
    reg = r - beta * _seq(pi - ref, mask)
    pairs = sum((reg[:, i] - reg[:, j]) ** 2 for i in range(4) for j in range(i))
    np.testing.assert_allclose(online_copg(beta=beta, k=4)(lp)[0], np.mean(pairs / 3), rtol=1e-5)


@pytest.mark.parametrize("loss", ["sigmoid_norm", "hinge_norm"])
def test_rso_losses_are_eq8_and_eq10(loss):
    gamma = 0.05
    lp, pi, ref, mask, _ = _group_batch(2, seed=9, scale=30.0)
    h = _seq(pi - ref, mask) @ np.array([1.0, -1.0])
    expected = -log_sigmoid(gamma * h) if loss == "sigmoid_norm" else np.maximum(0.0, 1 - gamma * h)
    np.testing.assert_allclose(rso(gamma=gamma, loss=loss)(lp)[0], expected.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="loss must be one of"):
        rso(loss="hinge")


OBJECTIVES = [(reinforce(), 1), (rloo(), 2), (grpo(group_size=4), 4), (ppo_clip(), 2), (online_copg(k=3), 3),
              (rso(), 2)]


# GRPO's (the exponential KL estimator) runs by default; the others with --runslow (the default suite's time budget).
@pytest.mark.parametrize("obj,g", [pytest.param(o, g, marks=() if o.name == "grpo" else pytest.mark.slow)
                                   for o, g in OBJECTIVES], ids=[o.name for o, _ in OBJECTIVES])
def test_finite_loss_and_gradients_at_extreme_log_ratios_in_bf16(obj, g):
    """bf16 log-probs of order -1e4 (log-ratios of order 1e4): finite loss and gradient, none to the reference."""
    lp, *_ = _group_batch(g, seed=11, scale=1e4, dtype=jnp.bfloat16)
    loss, metrics = obj(lp)
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    grads = jax.grad(lambda x: obj(x)[0])(lp)
    assert np.all(np.isfinite(np.asarray(grads.policy, np.float32)))
    assert np.all(np.asarray(grads.reference, np.float32) == 0.0)
