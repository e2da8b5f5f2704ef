"""PoFT (Fan et al. 2024, Eqs. 5-8) against float64 NumPy and the paper's closed-form gradient.

Independent references: Eq. 5 re-derived in float64 from per-token log-probs;
Eq. 7-8, the gradient as the SFT gradient ``-1/T`` per token scaled by
``tau = sigmoid(mean_j r_j - r_theta)``; and, on a tabular policy trained to
convergence, the stationarity condition of the softmax optimum: with data
``d(y)`` the exact gradient vanishes only where
``d(y) tau(y) - pi(y) sum_y' d(y') tau(y')`` is zero for every action.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jalign.objectives import LogProbs, from_sequences, poft, sft
from jalign.tabular import engine, games, policies

from numpy_reference import log_sigmoid
from objective_checks import assert_grid_matches_loop


def _batch(seed=0, b=4, g=2, t=6, m=3, scale=1.0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    policy = -rng.uniform(0.1, 3.0, size=(b, g, t)) * scale
    mask = np.ones((b, g, t))
    mask[:, :, -3:] = rng.integers(0, 2, size=(b, g, 3))
    aligned = -rng.uniform(0.1, 3.0, size=(b, g, m)) * scale
    lp = LogProbs(policy=jnp.asarray(policy, dtype), mask=jnp.asarray(mask, jnp.float32),
                  labels={"aligned_logps": jnp.asarray(aligned, jnp.float32)})
    return lp, policy, mask, aligned


def _reference_loss(policy, mask, aligned, beta=1.0, gamma=0.0):
    own = (policy[:, 0] * mask[:, 0]).sum(-1) / mask[:, 0].sum(-1)
    return -log_sigmoid(beta * (own - aligned[:, 0].mean(-1)) + gamma)


def test_matches_float64_rederivation_of_eq5():
    lp, policy, mask, aligned = _batch()
    losses = jax.jit(lambda objective, batch: objective.per_example(batch)[0])
    np.testing.assert_allclose(losses(poft(), lp), _reference_loss(policy, mask, aligned), rtol=1e-5)
    np.testing.assert_allclose(losses(poft(beta=2.0, gamma=0.5), lp),
                               _reference_loss(policy, mask, aligned, 2.0, 0.5), rtol=1e-5)


def test_one_aligned_model_may_be_a_scalar_per_response():
    lp, policy, mask, aligned = _batch(m=1)
    flat = lp.replace(labels={"aligned_logps": lp.labels["aligned_logps"][..., 0]})
    loss = jax.jit(lambda batch: poft()(batch)[0])
    np.testing.assert_allclose(loss(flat), loss(lp), rtol=1e-6)


def test_gradient_is_the_sft_gradient_scaled_by_tau_eq8():
    lp, policy, mask, aligned = _batch(b=1)
    grad = jax.jit(jax.grad(lambda p: poft().per_example(lp.replace(policy=p))[0][0]))(lp.policy)
    sft_grad = jax.jit(jax.grad(lambda p: sft().per_example(lp.replace(policy=p))[0][0]))(lp.policy)
    own = (policy[0, 0] * mask[0, 0]).sum() / mask[0, 0].sum()
    tau = 1.0 / (1.0 + np.exp(own - aligned[0, 0].mean()))
    np.testing.assert_allclose(grad, tau * np.asarray(sft_grad), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(poft().per_example(lp)[1]["weight"], [tau], rtol=1e-5)


def test_extreme_likelihoods_and_bf16_stay_finite():
    lp, *_ = _batch(scale=1e4)
    loss, grads = jax.jit(jax.value_and_grad(lambda p: poft()(lp.replace(policy=p))[0]))(lp.policy)
    assert np.isfinite(loss) and np.all(np.isfinite(grads))
    low, policy, mask, aligned = _batch(dtype=jnp.bfloat16)
    loss16 = jax.jit(lambda batch: poft()(batch)[0])(low)
    assert loss16.dtype == jnp.float32
    np.testing.assert_allclose(loss16, _reference_loss(np.asarray(low.policy, np.float64), mask, aligned).mean(),
                               rtol=1e-3)


def test_traced_hyperparameters():
    lp, *_ = _batch()
    grid = (jnp.array([0.5, 1.0, 2.0]), jnp.array([0.0, 0.1, -0.2]))
    assert_grid_matches_loop(lambda beta, gamma, batch: poft(beta=beta, gamma=gamma)(batch)[0], grid, lp)


def test_tabular_optimum_satisfies_the_softmax_stationarity_condition():
    data_probs = np.array([0.5, 0.3, 0.2, 0.0])
    aligned = np.array([-0.5, -3.0, -1.0, -1.0])                  # log-likelihood of each action under the baseline
    game = games.make_game(games.bradley_terry(jnp.zeros((1, 4))), jnp.zeros((1, 4)))
    data = jnp.asarray(data_probs[None])
    labels = {"aligned_logps": jnp.asarray(aligned[None, :, None])}   # [C, K, G=1], gathered per response
    final, _ = engine.train(poft(), game, jnp.zeros((1, 4)), optax.adam(0.1), steps=1500, data=data, labels=labels)
    pi = np.exp(np.asarray(policies.log_policy(final), np.float64))[0]
    tau = 1.0 / (1.0 + np.exp(np.log(pi) - aligned))
    stationary = data_probs * tau - pi * np.sum(data_probs * tau)
    np.testing.assert_allclose(stationary, 0.0, atol=2e-4)
    # A response the aligned model finds unlikely (action 1) gets less mass than SFT's optimum (the data) gives it.
    assert pi[1] < data_probs[1]


def test_sequences_enter_one_token_per_response():
    lp = from_sequences(jnp.array([[-1.0]]), labels={"aligned_logps": jnp.array([[[-2.0, -0.5]]])})
    np.testing.assert_allclose(poft()(lp)[0], -log_sigmoid(-1.0 + 1.25), rtol=1e-6)
