"""Games, policies, solvers and metrics against NumPy, SciPy and Monte Carlo.

Every expected number is computed here independently of ``jalign.tabular``:
NumPy formulas in float64, SciPy root-finding / optimisation, or sampling.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from jalign import tabular as tb



def _np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def game():
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    return tb.make_game(tb.random_game(k1, 6), jax.random.normal(k2, (6,)))


def test_random_and_cyclic_games_are_preference_matrices():
    for preference in (tb.random_game(jax.random.PRNGKey(0), 7), tb.cyclic_game(5, margin=0.3)):
        p = np.asarray(preference)
        np.testing.assert_allclose(p + p.T, 1.0, atol=1e-6)
        assert p.min() >= 0 and p.max() <= 1
        tb.check_preference(preference)
    with pytest.raises(ValueError, match="not a preference matrix"):
        tb.check_preference(jnp.full((3, 3), 0.7))


def test_bradley_terry_matches_logistic_formula():
    r = np.array([0.3, -1.0, 2.0])
    expected = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :]) / 0.5))
    np.testing.assert_allclose(tb.bradley_terry(r, scale=0.5), expected, rtol=1e-6)


def test_geometric_mixture_endpoints_and_formula():
    log_pi = tb.log_policy(jnp.array([[1.0, 0.0, -2.0]]))
    log_ref = tb.log_policy(jnp.array([[0.0, 1.0, 0.5]]))
    np.testing.assert_allclose(tb.geometric_mixture(log_pi, log_ref, 0.0), log_pi, atol=1e-6)
    np.testing.assert_allclose(tb.geometric_mixture(log_pi, log_ref, 1.0), log_ref, atol=1e-6)
    pi, ref = np.exp(np.asarray(log_pi, np.float64)), np.exp(np.asarray(log_ref, np.float64))
    mix = pi**0.7 * ref**0.3
    np.testing.assert_allclose(np.exp(tb.geometric_mixture(log_pi, log_ref, 0.3)), mix / mix.sum(), rtol=1e-5)


def test_exact_expectations_match_monte_carlo(game):
    """P(pi ≻ pi') exactly vs the mean of 200k sampled Bernoulli comparisons."""
    log_pi = tb.log_policy(jnp.linspace(-1, 1, 6)[None])
    exact = float(tb.preference_prob(game, log_pi, game.log_ref))
    rng = np.random.default_rng(0)
    pi, ref = np.exp(np.asarray(log_pi[0], np.float64)), np.exp(np.asarray(game.log_ref[0], np.float64))
    y, z = rng.choice(6, 200_000, p=pi / pi.sum()), rng.choice(6, 200_000, p=ref / ref.sum())
    wins = rng.random(200_000) < np.asarray(game.preference[0])[y, z]
    assert abs(wins.mean() - exact) < 4e-3
    np.testing.assert_allclose(float(tb.win_rate(game, log_pi)), exact, rtol=1e-6)


def test_kl_matches_numpy_and_handles_zeros():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.25, 0.5])
    value = tb.kl(jnp.log(jnp.asarray(p))[None], jnp.log(jnp.asarray(q))[None])
    np.testing.assert_allclose(value, [np.sum(p[:2] * np.log(p[:2] / q[:2]))], rtol=1e-6)


def test_rlhf_optimum_maximises_regularised_reward():
    """pi* ∝ ref exp(r/beta) vs SciPy maximisation of E[r] - beta KL over softmax logits."""
    r, ref_logits, beta = np.array([1.0, 0.2, -0.5, 0.7]), np.array([0.3, -0.2, 0.0, 0.5]), 0.4
    ref = _np_softmax(ref_logits)

    def negative_objective(theta):
        pi = _np_softmax(theta)
        return -(pi @ r - beta * np.sum(pi * np.log(pi / ref)))

    solution = optimize.minimize(negative_objective, np.zeros(4), method="BFGS", options={"gtol": 1e-10})
    ours = np.exp(tb.rlhf_optimum(tb.log_policy(ref_logits), jnp.asarray(r)[None], beta)[0])
    np.testing.assert_allclose(ours, _np_softmax(solution.x), atol=1e-5)


def _numpy_nash(preference, ref, tau, iters=200_000, damping=0.02):
    """Damped fixed-point iteration pi <- (1-d) pi + d softmax(log ref + P pi / tau), float64."""
    pi = ref.copy()
    for _ in range(iters):
        pi_new = (1 - damping) * pi + damping * _np_softmax(np.log(ref) + preference @ pi / tau)
        if np.max(np.abs(pi_new - pi)) < 1e-15:
            break
        pi = pi_new
    return pi


@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_regularized_nash_solves_fixed_point_and_matches_numpy(game, tau):
    star = tb.regularized_nash(game.preference, game.log_ref, tau)
    assert float(tb.fixed_point_residual(game.preference, game.log_ref, tau, star)) < 1e-4
    p, ref = np.asarray(game.preference[0], np.float64), np.exp(np.asarray(game.log_ref[0], np.float64))
    expected = _numpy_nash(p, ref / ref.sum(), tau)
    np.testing.assert_allclose(np.exp(star[0]), expected, atol=2e-5)


def test_scipy_root_of_fixed_point_equation(game):
    """A second independent solve: SciPy root of log pi = log softmax(log ref + P pi / tau)."""
    tau = 0.2
    p, log_ref = np.asarray(game.preference[0], np.float64), np.asarray(game.log_ref[0], np.float64)

    def equation(x):
        return x - np.log(_np_softmax(log_ref + p @ np.exp(x) / tau))

    root = optimize.root(equation, log_ref, tol=1e-12).x
    star = tb.regularized_nash(game.preference, game.log_ref, tau)
    np.testing.assert_allclose(np.exp(star[0]), np.exp(root), atol=2e-5)


def test_duality_gap_zero_at_equilibrium_and_matches_brute_force(game):
    tau = 0.2
    star = tb.regularized_nash(game.preference, game.log_ref, tau)
    assert abs(float(tb.duality_gap(game, star, tau))) < 1e-5
    log_pi = tb.log_policy(jnp.arange(6.0)[None] * 0.3)
    p, ref = np.asarray(game.preference[0], np.float64), np.exp(np.asarray(game.log_ref[0], np.float64))
    pi = np.exp(np.asarray(log_pi[0], np.float64))

    def payoff(a, b):  # J(a, b) = P(a ≻ b) - tau KL(a, ref) + tau KL(b, ref)
        return a @ p @ b - tau * np.sum(a * np.log(a / ref)) + tau * np.sum(b * np.log(b / ref))

    best = optimize.minimize(lambda t: -payoff(_np_softmax(t), pi), np.zeros(6), method="BFGS").x
    worst = optimize.minimize(lambda t: payoff(pi, _np_softmax(t)), np.zeros(6), method="BFGS").x
    brute = payoff(_np_softmax(best), pi) - payoff(pi, _np_softmax(worst))
    np.testing.assert_allclose(float(tb.duality_gap(game, log_pi, tau)), brute, atol=1e-5)
    assert brute > 1e-3


def test_nash_md_step_matches_numpy_formula(game):
    tau, eta = 0.3, 0.5
    log_pi = tb.log_policy(jnp.linspace(1, -1, 6)[None])
    p, ref = np.asarray(game.preference[0], np.float64), np.exp(np.asarray(game.log_ref[0], np.float64))
    pi = np.exp(np.asarray(log_pi[0], np.float64))
    mix = pi ** (1 - eta * tau) * ref ** (eta * tau)
    mix /= mix.sum()
    expected = mix * np.exp(eta * p @ mix)
    ours = np.exp(tb.nash_md_step(game.preference, log_pi, game.log_ref, tau, eta)[0])
    np.testing.assert_allclose(ours, expected / expected.sum(), rtol=1e-5)


def test_exploitability_of_uniform_in_cyclic_game_is_zero():
    game = tb.make_game(tb.cyclic_game(5), jnp.zeros(5))
    assert abs(float(tb.exploitability(game, game.log_ref))) < 1e-6
    assert float(tb.exploitability(game, tb.log_policy(jnp.arange(5.0)[None]))) > 0.05
