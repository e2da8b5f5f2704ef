"""The unregularised Nash solver against an independent SciPy LP and closed forms.

Independent sources: preference matrices are computed here from dice faces;
the game value and one equilibrium come from the textbook LP of a general
(not necessarily symmetric) zero-sum game, written here with
``scipy.optimize.linprog`` (payoffs shifted positive, ``min 1^T u`` s.t.
``B^T u >= 1``, value ``1 / 1^T u``); every returned strategy is checked to be
an equilibrium by its best response in NumPy; and the equilibrium sets are
derived by hand in the docstrings.
"""

import numpy as np
import pytest
from scipy import optimize

from jalign import tabular as tb

EFRON = [[4, 4, 4, 4, 0, 0], [3, 3, 3, 3, 3, 3], [6, 6, 2, 2, 2, 2], [5, 5, 5, 1, 1, 1]]
THREE_DICE = [[2, 2, 4, 4, 9, 9], [1, 1, 6, 6, 8, 8], [3, 3, 5, 5, 7, 7]]


def dice_preference(dice):
    """``P(i ≻ j)`` of fair dice: P(roll_i > roll_j) + P(tie) / 2."""
    faces = np.asarray(dice, np.float64)
    greater = (faces[:, None, :, None] > faces[None, :, None, :]).mean(axis=(2, 3))
    ties = (faces[:, None, :, None] == faces[None, :, None, :]).mean(axis=(2, 3))
    return greater + 0.5 * ties


def textbook_lp(payoff):
    """Value and a maximin strategy of the zero-sum game with row payoff ``payoff`` (any matrix)."""
    shift = 1.0 - payoff.min()
    b = payoff + shift  # all entries >= 1, so the value is positive
    k = b.shape[0]
    result = optimize.linprog(np.ones(k), A_ub=-b.T, b_ub=-np.ones(b.shape[1]), bounds=[(0, None)] * k,
                              method="highs-ipm")
    assert result.status == 0
    total = result.x.sum()
    return 1.0 / total - shift, result.x / total


def best_response_gain(p, strategy):
    """``max_y P(y ≻ pi) - 1/2``: 0 at an equilibrium, positive if some action exploits pi."""
    return np.max(p @ strategy) - 0.5


def _check_all_equilibria(p, solution):
    for strategy in np.concatenate([solution.strategy[None], solution.extremes]):
        assert strategy.min() >= 0 and strategy.sum() == pytest.approx(1.0, abs=1e-12)
        assert best_response_gain(p, strategy) <= 1e-8
    assert solution.exploitability <= 1e-8


def test_efron_dice_has_a_segment_of_equilibria():
    """Efron's dice: each beats the next with 2/3, A ≻ C with 4/9, B ~ D at 1/2.

    By hand, ``A pi <= 0`` forces ``pi_A = pi_C = 3 (pi_B - pi_D)``: the
    equilibria are the segment from (3/7, 1/7, 3/7, 0) to (0, 1/2, 0, 1/2).
    """
    p = dice_preference(EFRON)
    np.testing.assert_allclose(p[[0, 1, 2, 3], [1, 2, 3, 0]], 2 / 3)
    solution = tb.nash_equilibrium(p)
    value, maximin = textbook_lp(p - 0.5)
    assert abs(value) < 1e-9 and abs(solution.value) < 1e-9
    assert best_response_gain(p, maximin) <= 1e-8
    _check_all_equilibria(p, solution)
    assert not solution.unique
    ends = np.array([[3 / 7, 1 / 7, 3 / 7, 0.0], [0.0, 0.5, 0.0, 0.5]])
    np.testing.assert_allclose(solution.lower, ends.min(axis=0), atol=1e-9)
    np.testing.assert_allclose(solution.upper, ends.max(axis=0), atol=1e-9)
    for t in np.linspace(0, 1, 5):  # the whole segment consists of equilibria, and so does the returned one
        assert best_response_gain(p, (1 - t) * ends[0] + t * ends[1]) <= 1e-12
    assert solution.strategy[0] == pytest.approx(3 * (solution.strategy[1] - solution.strategy[3]), abs=1e-9)


def test_three_dice_have_the_unique_uniform_equilibrium():
    """Each die beats the next with 5/9: ``A pi <= 0`` and ``1^T A pi = 0`` force ``A pi = 0``, so pi is uniform."""
    p = dice_preference(THREE_DICE)
    np.testing.assert_allclose(p[[0, 1, 2], [1, 2, 0]], 5 / 9)
    solution = tb.nash_equilibrium(p)
    value, maximin = textbook_lp(p - 0.5)
    assert abs(value) < 1e-9
    np.testing.assert_allclose(maximin, 1 / 3, atol=1e-7)
    np.testing.assert_allclose(solution.strategy, 1 / 3, atol=1e-9)
    np.testing.assert_allclose(solution.lower, 1 / 3, atol=1e-9)
    np.testing.assert_allclose(solution.upper, 1 / 3, atol=1e-9)
    assert solution.unique
    _check_all_equilibria(p, solution)


def test_four_cycle_equilibria_and_batched_contexts():
    """4-cycle: ``(A pi)_y = m (pi_{y+1} - pi_{y-1}) <= 0`` gives ``pi = (a, b, a, b)``, a in [0, 1/2].

    Batched with a transitive BT game, whose unique equilibrium is its best action.
    """
    cycle = np.asarray(tb.cyclic_game(4, margin=0.3), np.float64)
    rewards = np.array([0.0, 1.0, -1.0, 0.5])
    transitive = 1.0 / (1.0 + np.exp(-(rewards[:, None] - rewards[None, :])))
    solution = tb.nash_equilibrium(np.stack([cycle, transitive]))
    assert solution.strategy.shape == (2, 4) and solution.extremes.shape == (2, 8, 4)
    np.testing.assert_array_equal(solution.unique, [False, True])
    np.testing.assert_allclose(solution.lower[0], 0.0, atol=1e-9)
    np.testing.assert_allclose(solution.upper[0], 0.5, atol=1e-9)
    np.testing.assert_allclose(solution.strategy[1], [0, 1, 0, 0], atol=1e-9)
    for c, p in enumerate((cycle, transitive)):
        for strategy in solution.extremes[c]:
            assert best_response_gain(p, strategy) <= 1e-8


def test_nash_equilibrium_rejects_non_preference_matrices():
    with pytest.raises(ValueError, match="not a preference matrix"):
        tb.nash_equilibrium(np.full((3, 3), 0.7))
    with pytest.raises(ValueError, match="must be"):
        tb.nash_equilibrium(np.full((3, 4), 0.5))
