"""Shared reductions from per-token log-probs to per-response quantities.

Objectives never sum tokens themselves: they call these helpers, so length
normalisation, masking, float32 accumulation and the stop-gradient on the
reference are the same everywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs


def _f32(x: Array) -> Array:
    return jnp.asarray(x, jnp.float32)


def lengths(lp: LogProbs) -> Array:
    """Number of response tokens, ``[B, G]`` float32 (at least 1)."""
    return jnp.maximum(jnp.sum(_f32(lp.mask), axis=-1), 1.0)


def masked_sum(values: Array, lp: LogProbs) -> Array:
    """Sums ``[B, G, T]`` values over response tokens in float32: ``[B, G]``."""
    return jnp.sum(jnp.where(lp.mask > 0, _f32(values), 0.0), axis=-1)


def masked_mean(values: Array, lp: LogProbs) -> Array:
    """Mean over response tokens in float32: ``[B, G]``."""
    return masked_sum(values, lp) / lengths(lp)


def _reduce(values: Array, lp: LogProbs, average: bool) -> Array:
    return masked_mean(values, lp) if average else masked_sum(values, lp)


def require_reference(lp: LogProbs) -> Array:
    """The reference log-probs as a constant, or a clear error."""
    if lp.reference is None:
        raise ValueError("this objective needs reference log-probs; batch has reference=None")
    return jax.lax.stop_gradient(lp.reference)


def policy_logps(lp: LogProbs, *, average: bool = False) -> Array:
    """log pi_theta(y | x) per response, ``[B, G]``; ``average`` divides by length."""
    return _reduce(lp.policy, lp, average)


def reference_logps(lp: LogProbs, *, average: bool = False) -> Array:
    """log pi_ref(y | x) per response as a constant, ``[B, G]``."""
    return _reduce(require_reference(lp), lp, average)


def token_log_ratios(lp: LogProbs) -> Array:
    """log pi_theta(y_t) - log pi_ref(y_t) per token, zero on padding: ``[B, G, T]``."""
    ratio = _f32(lp.policy) - _f32(require_reference(lp))
    return jnp.where(lp.mask > 0, ratio, 0.0)


def log_ratios(lp: LogProbs, *, average: bool = False) -> Array:
    """log pi_theta(y|x) - log pi_ref(y|x) per response, ``[B, G]``.

    The implicit reward of DPO divided by beta. With ``average`` the ratio is
    divided by the response length.
    """
    return _reduce(token_log_ratios(lp), lp, average)


def require_pairs(values: Array) -> tuple[Array, Array]:
    """Splits ``[B, 2, ...]`` into chosen ``[B, ...]`` and rejected ``[B, ...]``."""
    if values.ndim < 2 or values.shape[1] != 2:
        raise ValueError(f"a pairwise objective needs G = 2 responses (chosen first); got {values.shape=}")
    return values[:, 0], values[:, 1]


def pair_margin(values: Array) -> Array:
    """Chosen minus rejected, ``[B, 2] -> [B]``."""
    chosen, rejected = require_pairs(values)
    return chosen - rejected


def extra(lp: LogProbs, name: str) -> Array:
    """A per-token extra ``[B, G, T]``, or an error listing what the batch has."""
    if name not in lp.extras:
        raise ValueError(f"this objective needs extras[{name!r}]; batch has extras {sorted(lp.extras)}")
    return lp.extras[name]


def label(lp: LogProbs, name: str) -> Array:
    """A label array, or an error listing what the batch has."""
    if name not in lp.labels:
        raise ValueError(f"this objective needs labels[{name!r}]; batch has labels {sorted(lp.labels)}")
    return lp.labels[name]


# Log-probs at or above this are treated as -LOG_PROB_CEILING: log(1 - P) and the
# log-odds stay finite (|log-odds| <= ~16) for P -> 1 and for invalid log-probs > 0.
LOG_PROB_CEILING = 1e-7
_LN2 = 0.6931471805599453


def log1mexp(x: Array) -> Array:
    """``log(1 - exp(x))`` for ``x < 0``, float32, stable at both ends.

    Uses ``log(-expm1(x))`` near 0 and ``log1p(-exp(x))`` far from it
    (Maechler, *Accurately Computing log(1 - exp(-|a|))*, 2012). Inputs are
    clamped to ``<= -LOG_PROB_CEILING``; each branch sees only inputs where it
    is finite, so the gradient is finite everywhere.
    """
    x = jnp.minimum(_f32(x), -LOG_PROB_CEILING)
    near_zero = x > -_LN2
    near = jnp.log(-jnp.expm1(jnp.where(near_zero, x, -1.0)))
    far = jnp.log1p(-jnp.exp(jnp.where(near_zero, -1.0, x)))
    return jnp.where(near_zero, near, far)


# exp(50) ~ 5e21: far beyond any useful loss, yet its products with O(1e4)
# log-ratios (the linear continuation) stay well inside float32 (max ~3.4e38).
EXP_CAP = 50.0


def capped_exp(x: Array) -> Array:
    """``exp(x)`` in float32, continued linearly above ``x = EXP_CAP``.

    Value and slope match at the cap, so the function stays increasing,
    convex and C^1; losses built on it remain finite, with finite non-zero
    gradients pointing the right way, for log-ratios of +/-1e4 where the exact
    exponential overflows. Below the cap it is exactly ``exp``.
    """
    x = jnp.asarray(x, jnp.float32)
    # exp of the clipped value keeps the untaken branch (and its gradient) finite.
    inside = jnp.exp(jnp.minimum(x, EXP_CAP))
    beyond = jnp.exp(EXP_CAP) * (1.0 + (x - EXP_CAP))
    return jnp.where(x > EXP_CAP, beyond, inside)


def capped_expm1(x: Array) -> Array:
    """``expm1(x)`` (accurate near 0) with the same linear continuation as :func:`capped_exp`."""
    x = jnp.asarray(x, jnp.float32)
    inside = jnp.expm1(jnp.minimum(x, EXP_CAP))
    beyond = jnp.exp(EXP_CAP) * (1.0 + (x - EXP_CAP)) - 1.0
    return jnp.where(x > EXP_CAP, beyond, inside)
