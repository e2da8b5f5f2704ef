"""Exact solutions that tabular runs should approach.

- The KL-regularised Nash equilibrium of a preference game, the unique
  fixed point ``pi* ∝ ref exp(P pi* / tau)`` (Munos et al. 2023, NLHF).
- Tabular Nash-MD, the mirror-descent iteration of the same paper, and the
  bound its last-iterate convergence theorem gives.
- The Bradley-Terry / RLHF optimum lives in :func:`policies.rlhf_optimum`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
