"""MaxMin-RLHF on tabular games: an EM mixture of Bradley-Terry rewards, and the max-min policy.

Chakraborty et al. 2024 (*MaxMin-RLHF: Alignment with Diverse Human
Preferences*) learn one reward model per hidden user group from preference
data labelled with annotator ids, by expectation-maximisation, then align the
policy to the worst-off group:

.. math::
    \\pi^* = \\arg\\max_\\pi \\min_{u} \\; \\mathbb{E}_{y \\sim \\pi}[r_u(y)]
      - \\beta\\, \\mathrm{KL}(\\pi \\,\\|\\, \\pi_{\\mathrm{ref}}).

:func:`em_reward_mixture` is the authors' hard EM (``test_data_multiple.py``):
users start in group ``user % G``; each iteration fits every group's reward
by maximum likelihood on its users' comparisons (M-step, here the exact
:func:`~jalign.tabular.preference_models.fit_bt`), then moves every user to
the group under whose reward their comparisons are most likely (E-step:
``argmax_g sum log sigma(r_g(chosen) - r_g(rejected))``); ten iterations by
default, as in the authors' script.

:func:`maxmin_policy` solves the max-min problem exactly through its convex
dual: by the minimax theorem the value is
``min_{w in simplex} beta log sum_y ref(y) exp(sum_u w_u r_u(y) / beta)``, and
the optimum is the RLHF optimum of the mixed reward ``sum_u w*_u r_u``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jalign.tabular.preference_models import fit_bt

EM_ITERATIONS = 10  # the authors' num_EM_iterations


@dataclasses.dataclass(frozen=True)
class RewardMixture:
    """An EM fit of ``G`` Bradley-Terry rewards to ``U`` users' comparisons over ``K`` actions.

    Attributes:
      rewards: ``[G, K]`` each group's rewards (mean 0).
      assignment: ``[U]`` each user's group.
      log_likelihood: ``[U, G]`` each user's comparisons' log-likelihood under each group's rewards.
      history: ``[iterations, U]`` the assignment after each iteration.
    """

    rewards: np.ndarray
    assignment: np.ndarray
    log_likelihood: np.ndarray
    history: np.ndarray


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def user_log_likelihood(counts: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """``[U, G]``: ``sum_ij n_u[i, j] log sigma(r_g[i] - r_g[j])`` (``n_u[i, j]``: times user u preferred i to j)."""
    margins = rewards[:, :, None] - rewards[:, None, :]                       # [G, K, K]
    return np.einsum("uij,gij->ug", counts, _log_sigmoid(margins))


def em_reward_mixture(counts, num_groups: int, *, iterations: int = EM_ITERATIONS,
                      max_iter: int = 500) -> RewardMixture:
    """Hard-EM mixture of ``num_groups`` Bradley-Terry reward models (MaxMin-RLHF's reward learning).

    Args:
      counts: ``[U, K, K]`` comparison counts per user: ``counts[u, i, j]`` is
        how often user ``u`` preferred action ``i`` to ``j``.
      num_groups: ``G``.
      iterations: EM iterations (the authors' 10).
      max_iter: L-BFGS iterations of each M-step fit.

    Returns:
      :class:`RewardMixture`. A group left without users keeps its previous
      rewards (the authors' script skips training it).
    """
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 3 or counts.shape[1] != counts.shape[2]:
        raise ValueError(f"counts must be [U, K, K]; got {counts.shape=}")
    num_users, num_actions = counts.shape[0], counts.shape[1]
    assignment = np.arange(num_users) % num_groups
    rewards = np.zeros((num_groups, num_actions))
    history = []
    for _ in range(iterations):
        members = np.eye(num_groups)[assignment].T                           # [G, U]
        pooled = np.einsum("gu,uij->gij", members, counts)                    # [G, K, K]
        shown = pooled + np.swapaxes(pooled, 1, 2)
        preference = np.where(shown > 0, pooled / np.maximum(shown, 1e-12), 0.5)
        empty = members.sum(1) == 0                                           # [G]
        # An empty group's fit gets placeholder weights (its result is discarded) so no weight sum is 0.
        weights = np.where(empty[:, None, None], 1.0, shown)
        fitted = np.asarray(fit_bt(preference, weights, max_iter=max_iter).params, np.float64)
        rewards = np.where(empty[:, None], rewards, fitted)
        log_likelihood = user_log_likelihood(counts, rewards)
        assignment = np.argmax(log_likelihood, axis=1)
        history.append(assignment)
    return RewardMixture(rewards, assignment, user_log_likelihood(counts, rewards), np.stack(history))


@dataclasses.dataclass(frozen=True)
class MaxMinPolicy:
    """The max-min policy of ``U`` groups' rewards over ``K`` actions (one context).

    Attributes:
      policy: ``[K]`` the optimal ``pi*``.
      weights: ``[U]`` the dual weights ``w*`` (``pi* ∝ ref exp(w* . r / beta)``).
      values: ``[U]`` each group's ``E_pi*[r_u] - beta KL(pi* || ref)``.
      value: ``min_u values[u]``, the max-min value.
      dual_value: the dual objective at ``w*``; equal to ``value`` at the optimum.
    """

    policy: np.ndarray
    weights: np.ndarray
    values: np.ndarray
    value: float
    dual_value: float


def group_values(policy: np.ndarray, ref: np.ndarray, group_rewards: np.ndarray, beta: float) -> np.ndarray:
    """``[U]``: ``E_pi[r_u] - beta KL(pi || ref)`` of each group."""
    support = policy > 0
    kl = np.sum(policy[support] * (np.log(policy[support]) - np.log(ref[support])))
    return group_rewards @ policy - beta * kl


def maxmin_policy(ref, group_rewards, beta: float) -> MaxMinPolicy:
    """``argmax_pi min_u E_pi[r_u] - beta KL(pi || ref)``, through the convex dual over group weights.

    The dual ``g(w) = beta log sum_y ref(y) exp(w . r(y) / beta)`` is convex on
    the simplex with gradient ``E_{pi_w}[r_u]``; it is minimised by SciPy's
    SLSQP in float64, and ``pi* = pi_{w*} ∝ ref exp(w* . r / beta)``.

    Args:
      ref: ``[K]`` reference policy (positive, sums to 1).
      group_rewards: ``[U, K]`` each group's rewards.
      beta: KL strength (> 0).

    Returns:
      :class:`MaxMinPolicy`.
    """
    from scipy import optimize  # a dependency of jax; imported here to keep `import jalign` light

    ref = np.asarray(ref, np.float64)
    rewards = np.asarray(group_rewards, np.float64)
    if rewards.ndim != 2 or rewards.shape[1] != ref.shape[0]:
        raise ValueError(f"group_rewards must be [U, K] with K = len(ref); got {rewards.shape=}, {ref.shape=}")
    log_ref = np.log(ref)

    def policy_of(w):
        logits = log_ref + w @ rewards / beta
        logits = logits - logits.max()
        p = np.exp(logits)
        return p / p.sum()

    def dual(w):
        logits = log_ref + w @ rewards / beta
        top = logits.max()
        return beta * (top + np.log(np.sum(np.exp(logits - top)))), rewards @ policy_of(w)

    num_groups = rewards.shape[0]
    result = optimize.minimize(dual, np.full(num_groups, 1.0 / num_groups), jac=True, method="SLSQP",
                               bounds=[(0.0, 1.0)] * num_groups,
                               constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0,
                                             "jac": lambda w: np.ones_like(w)}],
                               options={"ftol": 1e-14, "maxiter": 1000})
    weights = np.clip(result.x, 0.0, None)
    weights = weights / weights.sum()
    policy = policy_of(weights)
    values = group_values(policy, ref, rewards, beta)
    return MaxMinPolicy(policy, weights, values, float(values.min()), float(dual(weights)[0]))
