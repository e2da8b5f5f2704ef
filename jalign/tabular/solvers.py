"""Exact solutions that tabular runs should approach.

- The KL-regularised Nash equilibrium of a preference game, the unique
  fixed point ``pi* ∝ ref exp(P pi* / tau)`` (Munos et al. 2023, NLHF).
- The unregularised Nash equilibria (von Neumann winners) of a preference
  game, a polytope found by linear programming, with a uniqueness check.
- Tabular Nash-MD, the mirror-descent iteration of the same paper, and the
  bound its last-iterate convergence theorem gives.
- The Bradley-Terry / RLHF optimum lives in :func:`policies.rlhf_optimum`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jalign.tabular.games import win_probs
from jalign.tabular.policies import Array, geometric_mixture


def _prox(log_pi: Array, log_ref: Array, payoff: Array, tau, eta) -> Array:
    """``argmax_p eta (<p, payoff> - tau KL(p, ref)) - KL(p, pi)`` in log space."""
    return jax.nn.log_softmax((log_pi + eta * payoff + eta * tau * log_ref) / (1.0 + eta * tau), axis=-1)


def regularized_nash(preference: Array, log_ref: Array, tau, *, steps: int = 20_000, eta=1.0) -> Array:
    """The KL-regularised Nash equilibrium of a preference game.

    Solves the fixed point

    .. math::
        \\pi^*(y) \\propto \\pi_{ref}(y) \\exp\\left(\\frac{P(y \\succ \\pi^*)}{\\tau}\\right)

    of the game ``max_pi min_pi' P(pi ≻ pi') - tau KL(pi, ref) + tau KL(pi', ref)``
    by mirror prox (extragradient with the entropic mirror map), which
    converges linearly on this strongly monotone game for ``eta <= 1``
    (payoffs in [0, 1]). Check the result with :func:`fixed_point_residual`.

    Args:
      preference: ``[C, K, K]`` preference matrix.
      log_ref: ``[C, K]`` reference log-probabilities.
      tau: regularisation strength > 0 (may be traced).
      steps: mirror-prox iterations; the error shrinks roughly like
        ``(1 + eta tau)^(-steps)``.
      eta: step size.

    Returns:
      ``[C, K]`` log pi*.

    References:
      Munos et al., *Nash Learning from Human Feedback*, 2023 (the regularised
      Nash equilibrium); Nemirovski, *Prox-method with rate of convergence
      O(1/t)*, 2004 (mirror prox).
    """

    def step(_, log_pi):
        half = _prox(log_pi, log_ref, win_probs(preference, log_pi), tau, eta)
        return _prox(log_pi, log_ref, win_probs(preference, half), tau, eta)

    return jax.lax.fori_loop(0, steps, step, jnp.asarray(log_ref, jnp.float32))


def fixed_point_residual(preference: Array, log_ref: Array, tau, log_pi: Array) -> Array:
    """``max |log pi - log softmax(log ref + P pi / tau)|``: 0 exactly at the equilibrium."""
    target = jax.nn.log_softmax(log_ref + win_probs(preference, log_pi) / tau, axis=-1)
    return jnp.max(jnp.abs(log_pi - target))


def nash_md_step(preference: Array, log_pi: Array, log_ref: Array, tau, eta) -> Array:
    """One exact step of tabular Nash-MD.

    .. math::
        \\pi^\\mu_t \\propto \\pi_t^{1 - \\eta\\tau} \\pi_{ref}^{\\eta\\tau}, \\qquad
        \\pi_{t+1}(y) \\propto \\pi^\\mu_t(y) \\exp(\\eta P(y \\succ \\pi^\\mu_t))

    Args:
      preference: ``[C, K, K]``; log_pi, log_ref: ``[C, K]``.
      tau: regularisation; eta: learning rate (``eta * tau <= 1``).

    Returns:
      ``[C, K]`` log pi_{t+1}.

    References:
      Munos et al., *Nash Learning from Human Feedback*, 2023, the Nash-MD
      algorithm (mirror descent against the geometric mixture).
    """
    log_mix = geometric_mixture(log_pi, log_ref, eta * tau)
    return jax.nn.log_softmax(log_mix + eta * win_probs(preference, log_mix), axis=-1)


def nash_md_bound(kl0, tau, eta, steps: int) -> Array:
    """Nash-MD's last-iterate bound on ``KL(pi*, pi_t)`` for ``t = 0..steps``.

    Unrolls the per-step inequality of Munos et al.'s convergence theorem for
    Nash-MD (payoffs in [0, 1]):

    .. math::
        KL(\\pi^*_\\tau, \\pi_{t+1}) \\le (1 - \\eta\\tau) KL(\\pi^*_\\tau, \\pi_t) + 2\\eta^2

    Returns:
      ``[steps + 1]`` bounds, starting at ``kl0``.
    """

    def step(bound, _):
        nxt = (1.0 - eta * tau) * bound + 2.0 * eta**2
        return nxt, nxt

    _, tail = jax.lax.scan(step, jnp.asarray(kl0, jnp.float32), None, length=steps)
    return jnp.concatenate([jnp.asarray(kl0, jnp.float32)[None], tail])


@dataclasses.dataclass(frozen=True)
class NashEquilibrium:
    """The equilibrium set of a symmetric zero-sum preference game (NumPy, float64).

    Shapes are for a ``[K, K]`` game; a ``[C, K, K]`` game adds a leading ``C``.

    Attributes:
      strategy: ``[K]`` an equilibrium (a vertex of the set, from the classic LP).
      value: ``[]`` the LP's game value ``max_pi min_y P(pi ≻ y) - 1/2`` (0 in theory).
      lower, upper: ``[K]`` the least and greatest probability of each action
        over the equilibrium set.
      unique: ``[]`` bool, ``max(upper - lower) <= atol``: the set is one point.
      extremes: ``[2K, K]`` the equilibria attaining ``lower`` (rows ``0..K-1``)
        and ``upper`` (rows ``K..2K-1``); their mean has the largest support.
      exploitability: ``[]`` the largest ``max_y P(y ≻ pi) - 1/2`` over
        ``strategy`` and ``extremes``: about 0 when all are equilibria.
    """

    strategy: np.ndarray
    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    unique: np.ndarray
    extremes: np.ndarray
    exploitability: np.ndarray


def _linprog(cost, a_ub, a_eq, bounds):
    """One HiGHS dual-simplex solve (a vertex solution) at tight tolerances; raises unless optimal."""
    from scipy import optimize  # a dependency of jax; imported here to keep `import jalign` light

    result = optimize.linprog(cost, A_ub=a_ub, b_ub=np.zeros(a_ub.shape[0]), A_eq=a_eq, b_eq=[1.0],
                              bounds=bounds, method="highs-ds",
                              options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if result.status != 0:
        raise RuntimeError(f"linear program failed: {result.message}")
    return result.x


def _on_simplex(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, None)
    return x / x.sum()


def _nash_one(preference: np.ndarray, atol: float) -> dict:
    num_actions = preference.shape[-1]
    payoff = 0.5 * (preference - preference.T)  # = P - 1/2 when P + P^T = 1; exactly skew-symmetric
    # Classic LP: max v s.t. (A^T pi)_y >= v for every pure reply y, pi in the simplex.
    a_ub = np.concatenate([-payoff.T, np.ones((num_actions, 1))], axis=1)
    a_eq = np.concatenate([np.ones((1, num_actions)), np.zeros((1, 1))], axis=1)
    cost = np.zeros(num_actions + 1)
    cost[-1] = -1.0
    solution = _linprog(cost, a_ub, a_eq, [(0, None)] * num_actions + [(None, None)])
    strategy, value = _on_simplex(solution[:-1]), solution[-1]
    # The value of a skew-symmetric game is 0, so the equilibria are {pi in the simplex : A pi <= 0}.
    extremes = []
    for sign in (1.0, -1.0):
        for y in range(num_actions):
            cost = np.zeros(num_actions)
            cost[y] = sign
            extremes.append(_on_simplex(_linprog(cost, payoff, np.ones((1, num_actions)), [(0, None)] * num_actions)))
    extremes = np.stack(extremes)
    lower, upper = np.diag(extremes[:num_actions]), np.diag(extremes[num_actions:])
    gains = np.concatenate([strategy[None], extremes]) @ payoff.T  # [2K + 1, K]: P(y ≻ pi) - 1/2
    return {"strategy": strategy, "value": np.asarray(value + 0.0), "lower": lower, "upper": upper,
            "unique": np.asarray(np.max(upper - lower) <= atol), "extremes": extremes,
            "exploitability": np.asarray(np.max(gains))}


def nash_equilibrium(preference, *, atol: float = 1e-7) -> NashEquilibrium:
    """The unregularised Nash equilibria of a symmetric two-player zero-sum preference game.

    With payoff ``A = P - 1/2`` (skew-symmetric), a mixed strategy is an
    equilibrium (a von Neumann winner: it is preferred to every action at
    least half the time) iff

    .. math::
        \\pi \\in \\Delta_K, \\qquad A \\pi \\le 0 \\quad (P(y \\succ \\pi) \\le 1/2 \\ \\forall y),

    and the game's value is 0. The set is a polytope; it is found by linear
    programming (SciPy's HiGHS dual simplex): the classic LP ``max v s.t.
    A^T pi >= v`` gives one equilibrium and the value, and ``2K`` more LPs
    minimise and maximise each ``pi(y)`` over the set. The set is a single
    point iff every such range is (within ``atol``). Unlike
    :func:`regularized_nash` this runs on the host (not traceable).

    Args:
      preference: ``[K, K]`` or ``[C, K, K]`` preference matrix (``P + P^T = 1``).
      atol: largest range of ``pi(y)`` that still counts as a unique equilibrium.

    Returns:
      :class:`NashEquilibrium` (float64 NumPy arrays).

    References:
      von Neumann, *Zur Theorie der Gesellschaftsspiele*, 1928 (minimax);
      Dantzig, *A proof of the equivalence of the programming problem and the
      game problem*, 1951 (the LP); Dudík et al., *Contextual Dueling
      Bandits*, 2015 (the von Neumann winner of a preference matrix).
    """
    preference = np.asarray(preference, np.float64)
    if preference.ndim not in (2, 3) or preference.shape[-1] != preference.shape[-2]:
        raise ValueError(f"preference must be [K, K] or [C, K, K]; got {preference.shape=}")
    skew = np.max(np.abs(preference + np.swapaxes(preference, -1, -2) - 1.0))
    if skew > 1e-5:
        raise ValueError(f"not a preference matrix: max |P + P^T - 1| = {skew:.2e}")
    if preference.ndim == 2:
        return NashEquilibrium(**_nash_one(preference, atol))
    per_context = [_nash_one(p, atol) for p in preference]
    return NashEquilibrium(**{k: np.stack([c[k] for c in per_context]) for k in per_context[0]})
