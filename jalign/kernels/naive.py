"""Naive sequence log-probs from full ``[N, V]`` fp32 logits.

For tests and benchmarks only: this is what every peer does, and what the
fused implementations avoid. Gradients come from plain autodiff.
"""

import jax
import jax.numpy as jnp


def full_logits(hidden, weight, bias, softcap):
    """``[N, V]`` fp32 logits ``softcap * tanh((hidden @ weight + b) / cap)``.

    Args:
        hidden: ``[N, H]``. weight: ``[H, V]``. bias: ``[V]`` or None.
    """
    precision = (jax.lax.Precision.HIGHEST if hidden.dtype == jnp.float32
                 else None)
    y = jnp.dot(hidden, weight, precision=precision,
                preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    if softcap is not None:
        y = softcap * jnp.tanh(y / softcap)
    return y


def naive_sequence_logprobs(hidden, weight, targets, mask, *, bias=None,
                            softcap=None, ref_hidden=None, ref_weight=None,
                            ref_bias=None, extras=(), top_k=None):
    """Per-token log-probs and extras from materialised logits.

    Args:
        hidden: ``[N, H]``. weight: ``[H, V]``. targets: ``[N]`` int.
        mask: ``[N]`` bool. Other arguments as `sequence_logprobs`.
    Returns:
        dict of ``[N]`` fp32 arrays: ``logprobs`` and each requested extra,
        zero where ``mask`` is False.
    """
    logp = jax.nn.log_softmax(full_logits(hidden, weight, bias, softcap))
    p = jnp.exp(logp)
    out = {"logprobs": jnp.take_along_axis(
        logp, targets[:, None].astype(jnp.int32), axis=1)[:, 0]}
    if "entropy" in extras:
        out["entropy"] = -jnp.sum(p * logp, axis=1)
    if "log_prob_sq_sum" in extras:
        out["log_prob_sq_sum"] = jax.lax.stop_gradient(
            jax.nn.logsumexp(2.0 * logp, axis=1))
    if "ref_kl" in extras:
        logq = jax.nn.log_softmax(full_logits(
            jax.lax.stop_gradient(ref_hidden),
            jax.lax.stop_gradient(ref_weight),
            None if ref_bias is None else jax.lax.stop_gradient(ref_bias),
            softcap))
        out["ref_kl"] = jnp.sum(jnp.exp(logq) * (logq - logp), axis=1)
    if "topk_mass" in extras or "topk_entropy" in extras:
        top = jax.lax.stop_gradient(jax.lax.top_k(logp, top_k)[0])
        pk = jnp.exp(top)
        if "topk_mass" in extras:
            out["topk_mass"] = jnp.sum(pk, axis=1)
        if "topk_entropy" in extras:
            out["topk_entropy"] = -jnp.sum(pk * top, axis=1)
    return {k: jnp.where(mask, v, 0.0) for k, v in out.items()}
