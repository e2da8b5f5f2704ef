"""Tabular BT and GPM fits against SciPy fits written here in NumPy, and closed forms.

Every expected number is computed independently of ``jalign``: the BT and GPM
cross-entropies and their gradients are written below in float64 NumPy and
minimised by ``scipy.optimize.minimize``; exact BT games are built with NumPy's
logistic function; the best BT accuracy on a ``K``-cycle is ``(K - 1) / K``
(any order of the actions breaks at least one edge of the cycle, and breaking
one is enough); GPM accuracies are recomputed from the returned embeddings.
"""

import jax
import numpy as np
import pytest
from scipy import optimize, stats

from jalign import tabular as tb

K = 5


def _log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def _cross_entropy(logits, p, w):
    """Weighted mean over ordered pairs of the BT/GPM cross-entropy, and its gradient in the logits."""
    loss = np.sum(w * (-p * _log_sigmoid(logits) - (1 - p) * _log_sigmoid(-logits))) / w.sum()
    return loss, w * (1.0 / (1.0 + np.exp(-logits)) - p) / w.sum()


def scipy_bt(p, w):
    """Maximum-likelihood BT rewards, mean 0 (float64 BFGS)."""

    def f(r):
        loss, g = _cross_entropy(r[:, None] - r[None, :], p, w)
        return loss, g.sum(1) - g.sum(0)

    r = optimize.minimize(f, np.zeros(len(p)), jac=True, method="BFGS", options={"gtol": 1e-12}).x
    return r - r.mean(), f(r)[0]


def _gpm_logits(v, tau=1.0):
    even, odd = v[:, 0::2], v[:, 1::2]
    return (even @ odd.T - odd @ even.T) / tau


def scipy_gpm(p, rank, w, starts=20):
    """Best of ``starts`` BFGS fits of the GPM cross-entropy; returns (logits, loss)."""
    k = len(p)

    def f(x):
        v = x.reshape(k, 2 * rank)
        loss, g = _cross_entropy(_gpm_logits(v), p, w)
        skew = g - g.T
        grad = np.zeros_like(v)
        grad[:, 0::2], grad[:, 1::2] = skew @ v[:, 1::2], -skew @ v[:, 0::2]
        return loss, grad.ravel()

    rng = np.random.default_rng(0)
    fits = [optimize.minimize(f, rng.normal(size=k * 2 * rank), jac=True, method="BFGS",
                              options={"gtol": 1e-10}) for _ in range(starts)]
    best = min(fits, key=lambda fit: fit.fun)
    return _gpm_logits(best.x.reshape(k, 2 * rank)), best.fun


def _off_diagonal(k):
    return 1.0 - np.eye(k)


@pytest.fixture(scope="module")
def bt_games():
    """[4, K, K]: Thurstone (transitive, not BT), random non-transitive, exact BT, and weighted counts."""
    rng = np.random.default_rng(1)
    r = rng.normal(size=K)
    thurstone = stats.norm.cdf(r[:, None] - r[None, :])
    nontransitive = np.asarray(tb.random_game(jax.random.PRNGKey(2), K), np.float64)
    exact_rewards = rng.normal(size=K)
    exact = 1.0 / (1.0 + np.exp(-(exact_rewards[:, None] - exact_rewards[None, :])))
    counts = rng.integers(0, 4, size=(K, K)) * _off_diagonal(K)
    counts[0, 1] = counts[1, 0] = 0  # one pair never compared
    counts[2, 3] = 1 + counts[2, 3]
    preference = np.stack([thurstone, nontransitive, exact, nontransitive])
    weights = np.stack([_off_diagonal(K)] * 3 + [counts])
    return preference, weights, exact_rewards


@pytest.fixture(scope="module")
def bt_fit(bt_games):
    preference, weights, _ = bt_games
    return tb.fit_bt(preference, weights)


def test_fit_bt_matches_scipy_mle(bt_games, bt_fit):
    preference, weights, _ = bt_games
    assert bt_fit.params.shape == (4, K)
    for c in range(4):
        rewards, loss = scipy_bt(preference[c], weights[c])
        np.testing.assert_allclose(bt_fit.params[c], rewards, atol=1e-4)
        np.testing.assert_allclose(bt_fit.logloss[c], loss, rtol=1e-5)
        assert bt_fit.grad_norm[c] < 1e-5


def test_fit_bt_recovers_exact_bt_rewards(bt_games, bt_fit):
    _, _, rewards = bt_games
    np.testing.assert_allclose(bt_fit.params[2], rewards - rewards.mean(), atol=1e-4)
    np.testing.assert_allclose(bt_fit.logloss[2], bt_fit.entropy[2], rtol=1e-5)  # exact model: floor reached
    np.testing.assert_allclose(np.mean(np.asarray(bt_fit.params), axis=1), 0.0, atol=1e-6)  # the gauge


def test_fit_bt_on_three_cycle_is_all_equal_rewards():
    """Soft and hard (P in {0, 1}) 3-cycles: the gradient sum_ij w (sigma(0) - P_ij) vanishes at r = 0."""
    fit = tb.fit_bt(np.stack([tb.cyclic_game(3, margin=0.4), tb.cyclic_game(3, margin=0.5)]))
    np.testing.assert_allclose(fit.params, 0.0, atol=1e-5)
    np.testing.assert_allclose(fit.logloss, np.log(2.0), rtol=1e-6)  # sigma(0) on every pair
    np.testing.assert_allclose(fit.accuracy, 0.5)  # three ties, each half right
    h = -0.9 * np.log(0.9) - 0.1 * np.log(0.1)
    np.testing.assert_allclose(fit.entropy, [h, 0.0], atol=1e-6)  # hard labels: floor 0, not NaN


@pytest.mark.parametrize("rank", [1, 2])
def test_fit_gpm_matches_scipy(rank):
    """K = 4 random game: rank 1 is a real low-rank fit; rank 2 is full rank, so logits = logit(P)."""
    p = np.asarray(tb.random_game(jax.random.PRNGKey(5), 4), np.float64)
    fit = tb.fit_gpm(p, rank, key=jax.random.PRNGKey(1))
    logits, loss = scipy_gpm(p, rank, _off_diagonal(4))
    assert fit.params.shape == (4, 2 * rank)
    np.testing.assert_allclose(fit.logloss, loss, rtol=1e-5)
    np.testing.assert_allclose(fit.logits, logits, atol=2e-3)
    np.testing.assert_allclose(_gpm_logits(np.asarray(fit.params, np.float64)), logits, atol=2e-3)
    if rank == 2:
        np.testing.assert_allclose(fit.logits, np.log(p / p.T), atol=2e-3)


@pytest.fixture(scope="module")
def cycles():
    """The 3-, 4- and 5-cycles padded to [3, 5, 5]; padding pairs get weight 0."""
    preference, weights = np.full((3, K, K), 0.5), np.zeros((3, K, K))
    for c, k in enumerate((3, 4, 5)):
        preference[c, :k, :k] = tb.cyclic_game(k, margin=0.4)
        weights[c, :k, :k] = _off_diagonal(k)
    return preference, weights


def _accuracy_np(logits, p, w):
    """Decided pairs i < j with the right logit sign (recomputed here; ties do not occur)."""
    i, j = np.triu_indices(len(p), 1)
    decided = (np.abs(p[i, j] - 0.5) > 1e-6) & (w[i, j] + w[j, i] > 0)
    return np.mean(np.sign(logits[i, j][decided]) == np.sign(p[i, j][decided] - 0.5))


def test_gpm_fits_cycles_that_bt_cannot(cycles):
    preference, weights = cycles
    gpm = tb.fit_gpm(preference, 1, weights)
    bt = tb.fit_bt(preference, weights)
    best_bt = tb.bt_best_accuracy(preference, weights)
    for c, k in enumerate((3, 4, 5)):
        accuracy = _accuracy_np(_gpm_logits(np.asarray(gpm.params[c], np.float64)), preference[c], weights[c])
        assert accuracy >= 0.98 and gpm.accuracy[c] >= 0.98
        np.testing.assert_allclose(best_bt[c], (k - 1) / k, atol=1e-6)
        assert bt.accuracy[c] <= best_bt[c] + 1e-6
    assert best_bt[0] <= 2 / 3 + 0.02 and bt.accuracy[0] <= 2 / 3 + 0.02
    # A rank-1 GPM reproduces the 3- and 4-cycles exactly: every logit is logit(P) on compared pairs.
    for c, k in enumerate((3, 4)):
        p = preference[c, :k, :k]
        np.testing.assert_allclose(gpm.logits[c, :k, :k], np.log(p / p.T), atol=2e-3)
    np.testing.assert_allclose(gpm.logloss[:2], gpm.entropy[:2], rtol=1e-5)


def test_pairwise_accuracy_counts_ties_half_and_skips_undecided():
    p = np.asarray(tb.cyclic_game(4, margin=0.3))
    logits = np.log(p / p.T)
    logits[0, 1], logits[1, 0] = 0.0, 0.0  # tie on a decided pair
    logits[0, 2], logits[2, 0] = 5.0, -5.0  # undecided pair: ignored
    logits[1, 2], logits[2, 1] = -1.0, 1.0  # wrong sign
    assert float(tb.pairwise_accuracy(logits, p)) == pytest.approx((0.5 + 0 + 1 + 1) / 4)


def test_bt_best_accuracy_rejects_large_games():
    with pytest.raises(ValueError, match="too many"):
        tb.bt_best_accuracy(np.full((9, 9), 0.5))
