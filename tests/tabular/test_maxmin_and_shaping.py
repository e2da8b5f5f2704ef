"""MaxMin-RLHF's EM and max-min policy, and shaped rewards in the tabular engine, against independent computations.

- EM: users drawn from two Bradley-Terry groups (one a minority) are split
  back into their groups, and each group's rewards come back near the truth
  (centred), from sampled comparisons.
- Max-min policy: no policy among 20,000 random ones (float64 NumPy) beats the
  solver's worst-group value; the dual value equals the primal one; with one
  group it is the RLHF optimum ``ref exp(r / beta)``.
- LSC: online DPO on the judge's preference ``sigma(u_a - u_b)`` of the
  transformed reward converges to ``pi_0(y) sigma(r - r_ref)^(1/beta)``
  (Wang et al. 2024's target), written in NumPy.
- PAR: with every action as a reference response under a uniform reference,
  PAR is the exact win probability against the reference policy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jalign import tabular as tb
from jalign.objectives import make
from jalign.objectives.reward_transforms import lsc, par
from jalign.tabular.maxmin import em_reward_mixture, group_values, maxmin_policy, user_log_likelihood

TRUE = np.array([[2.0, 1.0, 0.0, -1.0], [-1.0, 0.0, 1.0, 2.0]])


def _counts(groups, comparisons, seed=0):
    rng = np.random.default_rng(seed)
    k = TRUE.shape[1]
    counts = np.zeros((len(groups), k, k))
    for u, g in enumerate(groups):
        for _ in range(comparisons):
            i, j = rng.choice(k, 2, replace=False)
            if rng.uniform() < 1 / (1 + np.exp(-(TRUE[g, i] - TRUE[g, j]))):
                counts[u, i, j] += 1
            else:
                counts[u, j, i] += 1
    return counts


def test_e_step_scores_each_user_by_the_log_likelihood_of_their_comparisons():
    counts = _counts(np.array([0, 1, 1]), 5)
    expected = np.zeros((3, 2))
    for u, g, i, j in np.ndindex(3, 2, 4, 4):
        expected[u, g] += counts[u, i, j] * np.log(1 / (1 + np.exp(-(TRUE[g, i] - TRUE[g, j]))))
    np.testing.assert_allclose(user_log_likelihood(counts, TRUE), expected, rtol=1e-12)


@pytest.mark.slow  # compiling the M-step's L-BFGS fit takes ~5 s
def test_em_recovers_a_minority_group_and_its_rewards():
    groups = np.array([0] * 14 + [1] * 6)
    mixture = em_reward_mixture(_counts(groups, 60), 2, iterations=3)
    # Labels are arbitrary: match each recovered group to the true group of its first member.
    label = {mixture.assignment[0]: 0, mixture.assignment[-1]: 1}
    assert len(label) == 2
    np.testing.assert_array_equal([label[a] for a in mixture.assignment], groups)
    for found, true in label.items():
        np.testing.assert_allclose(mixture.rewards[found], TRUE[true] - TRUE[true].mean(), atol=0.35)
    # Each user is more likely under its own group's rewards.
    assert np.all(mixture.log_likelihood[np.arange(20), mixture.assignment]
                  >= mixture.log_likelihood.max(axis=1))


def test_maxmin_policy_beats_every_random_policy_and_closes_the_duality_gap():
    ref, beta = np.array([0.4, 0.3, 0.2, 0.1]), 0.5
    solution = maxmin_policy(ref, TRUE, beta)
    assert abs(solution.value - solution.dual_value) < 1e-7
    np.testing.assert_allclose(solution.values, solution.value, atol=1e-6)  # both groups bind here
    rng = np.random.default_rng(1)
    candidates = rng.dirichlet(np.full(4, 0.5), size=20000)
    worst = np.array([group_values(p, ref, TRUE, beta).min() for p in candidates])
    assert worst.max() <= solution.value + 1e-9
    # The worst group under the majority's RLHF optimum does worse than under the max-min policy.
    majority = ref * np.exp(TRUE[0] / beta)
    assert group_values(majority / majority.sum(), ref, TRUE, beta).min() < solution.value - 0.1


def test_maxmin_policy_of_one_group_is_the_rlhf_optimum():
    ref, beta = np.array([0.1, 0.2, 0.3, 0.4]), 2.0
    expected = ref * np.exp(TRUE[1] / beta)
    np.testing.assert_allclose(maxmin_policy(ref, TRUE[1:], beta).policy, expected / expected.sum(), atol=1e-9)


def test_online_dpo_on_lsc_preferences_reaches_the_good_response_target():
    rewards, ref_logits, beta, r_ref = np.array([1.5, 0.0, -1.0, 3.0]), np.array([0.0, 1.0, 0.5, -0.5]), 0.5, 0.7
    utility = lsc(jnp.asarray(rewards), r_ref)
    game = tb.make_game(tb.bradley_terry(utility), jnp.asarray(ref_logits))
    final, _ = jax.jit(lambda: tb.train(make("online_dpo", beta=beta), game, game.log_ref, optax.adam(0.05),
                                        steps=1500))()
    pi0 = np.exp(ref_logits) / np.exp(ref_logits).sum()
    target = pi0 * (1 / (1 + np.exp(-(rewards - r_ref)))) ** (1 / beta)
    policy = np.exp(np.asarray(final[0], np.float64))
    np.testing.assert_allclose(policy / policy.sum(), target / target.sum(), atol=3e-3)


def test_par_over_all_actions_is_the_win_probability_against_a_uniform_reference():
    rewards = jnp.asarray([[0.3, -1.2, 2.0, 0.0, 0.7]])
    log_uniform = jnp.log(jnp.full((1, 5), 0.2))
    exact = tb.win_probs(tb.bradley_terry(rewards), log_uniform)
    shaped = par(rewards, jnp.broadcast_to(rewards[:, None, :], (1, 5, 5)))
    np.testing.assert_allclose(shaped, exact, rtol=1e-6)
