"""PPO with a learned critic against a float64 NumPy transcription of the DR-PO authors' computation.

Independent reference: ``_authors_ppo`` below re-types the loop of
``Cornell-RL/drpo`` ``src/tldr/drpo.py`` (steps "4. compute rewards" to
"6. compute advantages and returns" and the PPO loss: ``whiten``, the
backwards ``lastgaelam`` recursion, ``pg_losses``/``pg_losses2``,
``vf_losses1``/``vf_losses2``) row by row, each row cut to its own response
length, in float64 NumPy. The tabular check is the one-token closed form
``A = r - beta log(pi/pi_ref) - V``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jalign.objectives import LogProbs, ppo
from jalign.objectives.policy_gradient import clipped_surrogate
from jalign.objectives.ppo import clipped_value_loss, gae


def _whiten(values, shift_mean=True):
    mean, var = values.mean(), values.var()
    whitened = (values - mean) / np.sqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def _authors_ppo(pi, ref, values, mask, score, *, kl_coef=0.05, vf_coef=0.1, gamma=1.0, lam=0.95,
                 whiten_rewards=True):
    """The authors' rollout statistics and loss with pi_old = pi and V_old = V; returns (loss, A, R)."""
    lengths = mask[:, 0].sum(-1).astype(int)
    rows = range(pi.shape[0])
    rewards = [-kl_coef * (pi[b, 0, :n] - ref[b, 0, :n]) for b, n in zip(rows, lengths)]
    for b, n in zip(rows, lengths):
        rewards[b][n - 1] += score[b, 0]
    if whiten_rewards:
        flat = _whiten(np.concatenate(rewards), shift_mean=False)
        rewards = np.split(flat, np.cumsum(lengths)[:-1])
    advantages, returns = [], []
    for b, n in zip(rows, lengths):
        v = values[b, 0, :n]
        lastgaelam, reversed_ = 0.0, []
        for t in reversed(range(n)):
            nextvalues = v[t + 1] if t < n - 1 else 0.0
            delta = rewards[b][t] + gamma * nextvalues - v[t]
            lastgaelam = delta + gamma * lam * lastgaelam
            reversed_.append(lastgaelam)
        adv = np.array(reversed_[::-1])
        advantages.append(adv)
        returns.append(adv + v)
    white = _whiten(np.concatenate(advantages))
    pg_loss = np.mean(-white)                                   # ratio = 1: max(-A, -A clip(1)) = -A
    vf_loss = 0.5 * np.mean(np.square(np.concatenate([values[b, 0, :n] for b, n in zip(rows, lengths)])
                                      - np.concatenate(returns)))
    return pg_loss + vf_coef * vf_loss, np.split(white, np.cumsum(lengths)[:-1]), returns


def _batch(*, seed=0, b=4, t=5, scale=1.0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    pi = -rng.uniform(0.1, 3.0, size=(b, 1, t)) * scale
    ref = -rng.uniform(0.1, 3.0, size=(b, 1, t)) * scale
    values = rng.normal(size=(b, 1, t))
    lengths = rng.integers(1, t + 1, size=b)
    mask = (np.arange(t)[None, None, :] < lengths[:, None, None]).astype(np.float64)
    score = rng.normal(size=(b, 1))
    lp = LogProbs(policy=jnp.asarray(pi, dtype), mask=jnp.asarray(mask, jnp.float32),
                  reference=jnp.asarray(ref, dtype), labels={"reward": jnp.asarray(score, jnp.float32)},
                  extras={"values": jnp.asarray(values, dtype)})
    return lp, pi, ref, values, mask, score


@pytest.mark.parametrize("whiten_rewards", [True, False])
def test_ppo_loss_matches_the_authors_loop(whiten_rewards):
    lp, pi, ref, values, mask, score = _batch(seed=int(whiten_rewards))
    expected, _, _ = _authors_ppo(pi, ref, values, mask, score, whiten_rewards=whiten_rewards)
    loss, metrics = ppo(whiten_rewards=whiten_rewards)(lp)
    np.testing.assert_allclose(loss, expected, rtol=2e-5, atol=1e-6)
    assert np.isfinite(metrics["value_loss"])


def test_gradients_are_minus_the_whitened_advantage_and_the_value_error():
    """d/dlog pi_t = -A_hat_t / N and d/dV_t = vf_coef (V_t - R_t) / N, N the batch's tokens (ratio 1, no clip)."""
    lp, pi, ref, values, mask, score = _batch(seed=3)
    _, white, returns = _authors_ppo(pi, ref, values, mask, score)
    n = mask.sum()
    objective = ppo()

    def loss(policy, v):
        return objective(lp.replace(policy=policy, extras={"values": v}))[0]

    g_pi, g_v = jax.grad(loss, argnums=(0, 1))(lp.policy, lp.extras["values"])
    lengths = mask[:, 0].sum(-1).astype(int)
    for b, length in enumerate(lengths):
        np.testing.assert_allclose(g_pi[b, 0, :length], -white[b] / n, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(g_v[b, 0, :length], 0.1 * (values[b, 0, :length] - returns[b]) / n,
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(g_pi[b, 0, length:], 0.0)
        np.testing.assert_array_equal(g_v[b, 0, length:], 0.0)


def test_gae_matches_the_recursion_for_any_gamma_and_lambda():
    rng = np.random.default_rng(5)
    rewards, values = rng.normal(size=(2, 1, 6)), rng.normal(size=(2, 1, 6))
    mask = np.array([[[1, 1, 1, 1, 0, 0]], [[1, 1, 1, 1, 1, 1]]], np.float64)
    gamma, lam = 0.9, 0.7
    advantages, returns = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma=gamma, lam=lam)
    for b, n in enumerate((4, 6)):
        expected, running = np.zeros(n), 0.0
        for t in reversed(range(n)):
            nxt = values[b, 0, t + 1] if t < n - 1 else 0.0
            running = rewards[b, 0, t] + gamma * nxt - values[b, 0, t] + gamma * lam * running
            expected[t] = running
        np.testing.assert_allclose(advantages[b, 0, :n], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(returns[b, 0, :n], expected + values[b, 0, :n], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(advantages[0, 0, 4:], 0.0)


def test_the_clipped_forms_bind_when_old_values_differ():
    """The authors' pg_losses/pg_losses2 and vf_losses1/vf_losses2 with pi_old != pi and V_old != V."""
    rng = np.random.default_rng(7)
    logp, old = rng.normal(size=(3, 1, 4)), rng.normal(size=(3, 1, 4))
    adv, v, v_old, ret = (rng.normal(size=(3, 1, 4)) for _ in range(4))
    ratio = np.exp(logp - old)
    expected_pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2))
    np.testing.assert_allclose(clipped_surrogate(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), epsilon=0.2),
                               expected_pg, rtol=1e-5, atol=1e-6)
    expected_vf = 0.5 * np.maximum((v - ret) ** 2, (np.clip(v, v_old - 0.2, v_old + 0.2) - ret) ** 2)
    got = clipped_value_loss(jnp.asarray(v), jnp.asarray(v_old), jnp.asarray(ret), clip=0.2)
    np.testing.assert_allclose(got, expected_vf, rtol=1e-5, atol=1e-6)
    assert np.any(np.abs(v - v_old) > 0.2) and not np.allclose(expected_vf, 0.5 * (v - ret) ** 2)


def test_one_token_responses_reduce_to_reward_minus_value():
    """Tabular form: A = r - beta log(pi/pi_ref) - V, whitened; the value regresses on r - beta log-ratio."""
    lp, pi, ref, values, _, score = _batch(seed=9, t=1)
    beta = 0.3
    shaped = score[:, 0] - beta * (pi - ref)[:, 0, 0]
    advantage = shaped - values[:, 0, 0]
    white = (advantage - advantage.mean()) / np.sqrt(advantage.var() + 1e-8)
    expected = np.mean(-white) + 0.1 * 0.5 * np.mean((values[:, 0, 0] - shaped) ** 2)
    loss, _ = ppo(beta=beta, whiten_rewards=False)(lp)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


def test_a_padding_row_with_zero_weight_changes_nothing():
    lp, *_ = _batch(seed=11)
    weighted = lp.replace(labels={**lp.labels, "example_weight": jnp.array([1.0, 1.0, 1.0, 0.0])})
    trimmed = jax.tree.map(lambda x: x[:3], lp)
    np.testing.assert_allclose(ppo()(weighted)[0], ppo()(trimmed)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_extreme_log_ratios_and_bf16_give_finite_loss_and_gradients(dtype):
    lp, *_ = _batch(seed=13, scale=60.0, dtype=dtype)

    def loss(policy, v):
        return ppo()(lp.replace(policy=policy, extras={"values": v}))[0]

    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(lp.policy, lp.extras["values"])
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)


def test_the_tabular_engine_refuses_ppo_by_its_missing_critic():
    """A tabular policy has no learned value: the batch lacks extras['values'] and the objective says so."""
    import jalign.tabular as tb

    game = tb.make_game(jnp.full((3, 3), 0.5), jnp.zeros((1, 3)))
    policies = tb.Policies(game.log_ref, game.log_ref, game.log_ref)
    batch = tb.batch_for(ppo(), game, policies, reward=jnp.asarray([[0.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"ppo: needs extras\['values'\]"):
        ppo()(batch)
