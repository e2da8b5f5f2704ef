"""Exact softmax policies over K actions, optionally one per context.

A tabular policy is a ``[C, K]`` array of log-probabilities: ``C`` contexts
(prompts), ``K`` actions (responses). A bandit has ``C = 1``. Everything is in
log space and float32; probabilities are only formed where an expectation
needs them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def log_policy(logits: Array) -> Array:
    """Log-probabilities of the softmax policy with these logits.

    Args:
      logits: ``[C, K]`` (or ``[K]``) unnormalised logits.

    Returns:
      ``[C, K]`` float32 ``log softmax(logits)``, with a context axis added to
      ``[K]`` inputs.
    """
    logits = jnp.asarray(logits, jnp.float32)
    return jax.nn.log_softmax(jnp.atleast_2d(logits), axis=-1)


def uniform(num_contexts: int, num_actions: int) -> Array:
    """The uniform policy, ``[C, K]`` log-probabilities."""
    return jnp.full((num_contexts, num_actions), -jnp.log(float(num_actions)), jnp.float32)


def probs(log_pi: Array) -> Array:
    """``[C, K]`` probabilities of a log-policy."""
    return jnp.exp(log_pi)


def geometric_mixture(log_pi: Array, log_ref: Array, b) -> Array:
    """The geometric mixture ``pi^(1-b) ref^b``, normalised, in log space.

    .. math::
        \\pi^b(y) = \\frac{\\pi(y)^{1-b} \\pi_{ref}(y)^b}{\\sum_{y'} \\pi(y')^{1-b} \\pi_{ref}(y')^b}

    This is the regularised opponent of Nash-MD (Munos et al. 2023) and the
    sampling policy of IPO-MD (Calandriello et al. 2024). ``b`` may be traced.

    Args:
      log_pi: ``[C, K]`` log pi.
      log_ref: ``[C, K]`` log pi_ref.
      b: mixture coefficient in ``[0, 1]``; 0 gives pi, 1 gives pi_ref.

    Returns:
      ``[C, K]`` log-probabilities of the mixture.
    """
    return jax.nn.log_softmax((1.0 - b) * log_pi + b * log_ref, axis=-1)


def kl(log_p: Array, log_q: Array) -> Array:
    """``KL(p || q) = sum_y p(y) (log p(y) - log q(y))`` per context, ``[C]``.

    Terms with ``p(y) = 0`` contribute 0 (no ``0 * inf`` NaNs).
    """
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def entropy(log_p: Array) -> Array:
    """Shannon entropy per context, ``[C]``."""
    p = jnp.exp(log_p)
    return -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)


def expected(values: Array, log_pi: Array, context_probs: Array | None = None) -> Array:
    """``E_{x ~ rho, y ~ pi(.|x)}[values(x, y)]``: a scalar.

    Args:
      values: ``[C, K]`` (or broadcastable) per-action values, e.g. rewards.
      log_pi: ``[C, K]`` log-policy.
      context_probs: ``[C]`` context distribution rho (uniform if ``None``).
    """
    per_context = jnp.sum(jnp.exp(log_pi) * values, axis=-1)
    return context_mean(per_context, context_probs)


def context_mean(per_context: Array, context_probs: Array | None = None) -> Array:
    """Averages a ``[C]`` quantity over contexts with weights rho (uniform if ``None``)."""
    if context_probs is None:
        return jnp.mean(per_context)
    return jnp.sum(per_context * context_probs)


def rlhf_optimum(log_ref: Array, rewards: Array, beta) -> Array:
    """The KL-regularised reward maximiser ``pi* ∝ ref exp(r / beta)``.

    .. math::
        \\pi^* = \\arg\\max_\\pi E_\\pi[r] - \\beta KL(\\pi || \\pi_{ref}),
        \\quad \\pi^*(y) \\propto \\pi_{ref}(y) \\exp(r(y) / \\beta)

    It is also the population optimum of DPO under Bradley-Terry preferences
    with rewards ``r`` (Rafailov et al. 2023, Eq. 4).

    Args:
      log_ref: ``[C, K]`` reference log-probabilities.
      rewards: ``[C, K]`` rewards.
      beta: KL strength (may be traced).

    Returns:
      ``[C, K]`` log pi*.
    """
    return jax.nn.log_softmax(log_ref + rewards / beta, axis=-1)
