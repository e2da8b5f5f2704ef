"""D2O (Duan et al. 2024, Eq. 3) against a float64 NumPy re-derivation and on a tabular game.

Independent references: Eq. 3 re-derived in float64 from per-token log-probs
(token sums, the anchors' mean, the log-sigmoid); DPO, which D2O is with one
anchor and ``alpha = beta``; and the exact expected loss of a tabular
population written out as a NumPy sum over every (anchor, anchor, negative)
tuple.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jalign.objectives import LogProbs, d2o, dpo, from_sequences
from jalign.tabular import engine, games, policies

from numpy_reference import log_sigmoid
from objective_checks import assert_grid_matches_loop, assert_gradient_reaches_policy_only


def _batch(seed=0, b=3, g=4, t=5, scale=1.0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    policy = -rng.uniform(0.1, 2.0, size=(b, g, t)) * scale
    reference = -rng.uniform(0.1, 2.0, size=(b, g, t)) * scale
    mask = np.ones((b, g, t))
    mask[:, :, -2:] = rng.integers(0, 2, size=(b, g, 2))
    lp = LogProbs(policy=jnp.asarray(policy, dtype), mask=jnp.asarray(mask, jnp.float32),
                  reference=jnp.asarray(reference, dtype))
    return lp, policy, reference, mask


def _reference_loss(policy, reference, mask, beta, alpha):
    ratios = ((policy - reference) * mask).sum(-1)                 # [B, G] float64
    return -log_sigmoid(beta * ratios[:, :-1].mean(-1) - alpha * ratios[:, -1])


def test_matches_float64_rederivation_of_eq3():
    lp, policy, reference, mask = _batch()
    losses, metrics = d2o(beta=0.3, alpha=0.2).per_example(lp)
    np.testing.assert_allclose(losses, _reference_loss(policy, reference, mask, 0.3, 0.2), rtol=1e-5)
    ratios = ((policy - reference) * mask).sum(-1)
    np.testing.assert_allclose(metrics["negative_log_ratio"], ratios[:, -1], rtol=1e-5)


def test_one_anchor_with_alpha_equal_beta_is_dpo():
    lp, *_ = _batch(g=2)
    np.testing.assert_allclose(d2o(beta=0.2, alpha=0.2)(lp)[0], dpo(beta=0.2)(lp)[0], rtol=1e-6)


def test_extreme_log_ratios_and_bf16_stay_finite():
    lp, policy, reference, mask = _batch(scale=5e3)
    loss, grads = jax.jit(jax.value_and_grad(lambda p: d2o()(lp.replace(policy=p))[0]))(lp.policy)
    assert np.isfinite(loss) and np.all(np.isfinite(grads))
    np.testing.assert_allclose(loss, _reference_loss(policy, reference, mask, 0.1, 0.1).mean(), rtol=1e-4)
    low, *_ = _batch(dtype=jnp.bfloat16)
    loss16 = jax.jit(lambda batch: d2o()(batch)[0])(low)
    assert loss16.dtype == jnp.float32 and np.isfinite(loss16)


def test_traced_hyperparameters_and_gradient_targets():
    lp, *_ = _batch()
    grid = (jnp.array([0.1, 0.5, 1.0]), jnp.array([0.05, 0.1, 0.3]))
    assert_grid_matches_loop(lambda beta, alpha, batch: d2o(beta=beta, alpha=alpha)(batch)[0], grid, lp)
    assert_gradient_reaches_policy_only(lambda batch: d2o()(batch)[0], lp)


def _tabular():
    """A 3-action game; data: two anchors drawn from the reference, the negative always action 2."""
    ref_logits = jnp.array([[0.3, -0.2, 0.5]])
    game = games.make_game(games.bradley_terry(jnp.array([[1.0, 0.0, -1.0]])), ref_logits)
    ref = np.exp(np.asarray(policies.log_policy(ref_logits), np.float64))[0]
    data = jnp.asarray(np.einsum("a,b,c->abc", ref, ref, np.array([0.0, 0.0, 1.0]))[None])  # [C, K, K, K]
    return game, ref, data


def test_tabular_population_loss_is_the_exact_expectation():
    """The engine's exact loss is the NumPy expectation over all 9 anchor pairs (y_1, y_2) with y_l = 2."""
    game, ref, data = _tabular()
    logits = jnp.array([[0.1, 0.4, -0.3]])
    objective = d2o(beta=0.5, alpha=0.3)
    loss = jax.jit(lambda theta: objective(engine.batch_for(
        objective, game, engine.Policies(*(policies.log_policy(theta),) * 3), data=data))[0])(logits)
    ratio = np.asarray(policies.log_policy(logits), np.float64)[0] - np.log(ref)
    expected = sum(ref[a] * ref[b] * -log_sigmoid(0.5 * (ratio[a] + ratio[b]) / 2 - 0.3 * ratio[2])
                   for a in range(3) for b in range(3))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.slow
def test_tabular_training_negates_the_negative():
    game, ref, data = _tabular()
    final, history = engine.train(d2o(beta=0.5, alpha=0.3), game, jnp.array([[0.1, 0.4, -0.3]]), optax.sgd(0.5),
                                  steps=200, data=data)
    pi = np.exp(np.asarray(policies.log_policy(final)))[0]
    assert pi[2] < ref[2] / 2 and history["loss"][-1] < history["loss"][0]


def test_sequences_enter_one_token_per_response():
    lp = from_sequences(jnp.array([[-1.0, -2.0, -3.0]]), jnp.array([[-1.5, -2.0, -2.0]]))
    expected = -log_sigmoid(0.1 * (0.5 + 0.0) / 2 - 0.1 * (-1.0))
    np.testing.assert_allclose(jax.jit(lambda batch: d2o()(batch)[0])(lp), expected, rtol=1e-6)
