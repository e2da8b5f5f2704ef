"""Exact metrics of tabular policies in a preference game.

All take ``[C, K]`` log-policies and a :class:`~jalign.tabular.games.Game`
and return scalars averaged over the context distribution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.tabular.games import Game, preference_prob, win_probs
from jalign.tabular.policies import Array, context_mean, kl


def best_response(game: Game, log_pi: Array, tau) -> Array:
    """The regularised best response to pi: ``argmax_pi' P(pi' ≻ pi) - tau KL(pi', ref)``.

    Closed form ``pi' ∝ ref exp(P(. ≻ pi) / tau)``; ``[C, K]`` log-probabilities.
    """
    return jax.nn.log_softmax(game.log_ref + win_probs(game.preference, log_pi) / tau, axis=-1)


def duality_gap(game: Game, log_pi: Array, tau) -> Array:
    """Duality gap of pi in the KL-regularised preference game.

    With ``J(pi1, pi2) = P(pi1 ≻ pi2) - tau KL(pi1, ref) + tau KL(pi2, ref)``
    (a constant-sum game, ``J(pi1, pi2) + J(pi2, pi1) = 1``),

    .. math::
        \\mathrm{Gap}(\\pi) = \\max_{\\pi'} J(\\pi', \\pi) - \\min_{\\pi'} J(\\pi, \\pi')
        = 2 \\max_{\\pi'} J(\\pi', \\pi) - 1,

    and ``max_pi' J(pi', pi) = tau log E_ref exp(P(y ≻ pi)/tau) + tau KL(pi, ref)``.
    It is >= 0 with equality exactly at the regularised Nash equilibrium.

    References:
      Zhou et al., *Extragradient Preference Optimization (EGPO)*, 2025 (the
      duality gap plotted in its numerical simulations).
    """
    payoff = win_probs(game.preference, log_pi)
    best = tau * jax.nn.logsumexp(game.log_ref + payoff / tau, axis=-1) + tau * kl(log_pi, game.log_ref)
    return context_mean(2.0 * best - 1.0, game.context_probs)


def exploitability(game: Game, log_pi: Array) -> Array:
    """Unregularised exploitability ``max_y P(y ≻ pi) - 1/2``: 0 at a Nash equilibrium."""
    return context_mean(jnp.max(win_probs(game.preference, log_pi), axis=-1) - 0.5, game.context_probs)


def kl_to(log_target: Array, log_pi: Array, context_probs: Array | None = None) -> Array:
    """``KL(target || pi)``, e.g. to the regularised equilibrium as in Nash-MD's theorem."""
    return context_mean(kl(log_target, log_pi), context_probs)


def win_rate(game: Game, log_pi: Array, log_opponent: Array | None = None) -> Array:
    """``P(pi ≻ opponent)``; against the reference when ``log_opponent`` is ``None``."""
    return preference_prob(game, log_pi, game.log_ref if log_opponent is None else log_opponent)
