"""`sequence_logprobs`: per-token log pi(target) without ``[N, V]`` logits.

This module is the op: its entry point, the custom VJP that every fused
implementation shares, and `reference_logprobs`, the naive full-logits
version the tests and benchmarks compare against. One entry point picks an
implementation for the backend:

    impl          forward                          backward
    "chunked"     XLA loops over [bn, bv] tiles     chunked (recompute)
    "pallas_tpu"  Mosaic kernel                     chunked (recompute)
    "pallas_gpu"  Triton kernel                     chunked (recompute)
    "naive"       full fp32 logits (tests, benchmarks only; autodiff)

"auto" is "pallas_tpu" on TPU, "pallas_gpu" on GPU and "chunked" elsewhere.

Masked tokens are compacted to the end (a stable sort of the mask) and the
fused implementations stop after the last block holding a valid token, so
prompt and padding positions cost no projection work. `jalign.kernels.sharded`
runs the same op per shard of a mesh (`OpConfig.vocab_axis`,
`OpConfig.token_axes` name the collectives it needs).
"""

import dataclasses
import functools
from typing import Literal, get_args

import jax
import jax.numpy as jnp

from jalign.kernels import chunked, pallas_gpu, pallas_tpu, softmax_stats
from jalign.kernels.head import Head, project

LogprobImpl = Literal["auto", "pallas_tpu", "pallas_gpu", "chunked", "naive"]
IMPLS = get_args(LogprobImpl)
_MODULES = {"chunked": chunked, "pallas_tpu": pallas_tpu,
            "pallas_gpu": pallas_gpu}
_DIFFERENTIABLE = ("logprobs", "entropy", "ref_kl", "policy_kl")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["logprobs", "entropy", "ref_kl", "policy_kl", "topk_mass",
                                "topk_entropy", "log_prob_sq_sum"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class TokenLogProbs:
    """Per-token outputs, each ``[...]`` fp32 (the leading dims of hidden).

    ``logprobs`` is log pi(target); ``entropy`` the entropy of pi; ``ref_kl``
    KL(pi_ref || pi) of the next-token distributions (TDPO's direction) and
    ``policy_kl`` KL(pi || pi_ref), the usual direction (RLHF's KL penalty);
    ``topk_mass`` the probability of the k likeliest tokens and
    ``topk_entropy`` ``-sum_{top k} p log p``; ``log_prob_sq_sum`` is
    ``log sum_v pi(v)^2`` (WPO's calibrated weight, Zhou et al. 2024).
    Unrequested extras are None; masked positions are 0. ``topk_*`` are
    diagnostics and ``log_prob_sq_sum`` a constant of the objective (used
    inside a stop-gradient weight): they carry no gradient.
    """

    logprobs: jax.Array
    entropy: jax.Array | None = None
    ref_kl: jax.Array | None = None
    policy_kl: jax.Array | None = None
    topk_mass: jax.Array | None = None
    topk_entropy: jax.Array | None = None
    log_prob_sq_sum: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class OpConfig:
    """Static configuration of one fused op (hashable: keys the VJP cache).

    ``vocab_axis`` and ``token_axes`` are mesh axes when the op runs per
    shard inside `shard_map` (vocabulary columns split over the first,
    tokens over the second); None and () outside.
    """

    impl: str
    block_sizes: object
    softcap: float | None = None
    top_k: int | None = None
    extras: tuple = ()
    interpret: bool = False
    vocab_axis: str | None = None
    token_axes: tuple = ()

    @property
    def with_ref(self):
        """Whether the op reads a reference head (for ``ref_kl``, ``policy_kl``)."""
        return bool(set(softmax_stats.REFERENCE_EXTRAS) & set(self.extras))


def resolve_impl(impl):
    """Concrete implementation name for ``impl`` on the default backend."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(
        jax.default_backend(), "chunked")


def block_sizes_for(impl, **fields):
    """The ``BlockSizes`` of a fused ``impl`` with ``fields`` set (fields
    given as None keep their defaults)."""
    impl = resolve_impl(impl)
    if impl not in _MODULES:
        raise ValueError(f"{impl!r} has no block sizes")
    return _MODULES[impl].BlockSizes(
        **{k: v for k, v in fields.items() if v is not None})


def check_inputs(head, ref, targets, mask, *, extras, top_k):
    """Raises ValueError naming the shapes when the operands do not fit.

    Args:
        head: `Head` with hidden ``[..., H]``, weight ``[H, V]``, bias
            ``[V]`` or None. ref: the reference `Head` (``[..., Hr]``) or
            None. targets, mask: ``[...]``.
    """
    hidden, weight = head.hidden, head.weight
    if weight.ndim != 2 or hidden.shape[-1] != weight.shape[0]:
        raise ValueError(f"need hidden [..., H] and weight [H, V]; got "
                         f"{hidden.shape=} {weight.shape=}")
    if targets.shape != hidden.shape[:-1] or mask.shape != targets.shape:
        raise ValueError(f"targets and mask must be hidden.shape[:-1]; got "
                         f"{hidden.shape=} {targets.shape=} {mask.shape=}")
    if head.bias is not None and head.bias.shape != weight.shape[1:]:
        raise ValueError(f"bias must be [V]; got {head.bias.shape=}")
    unknown = set(extras) - set(softmax_stats.EXTRAS)
    if unknown:
        raise ValueError(f"unknown extras {unknown}; known "
                         f"{softmax_stats.EXTRAS}")
    for name in set(softmax_stats.REFERENCE_EXTRAS) & set(extras):
        if ref is None or ref.hidden is None or ref.weight is None:
            raise ValueError(f"extras {name!r} needs ref_hidden and ref_weight")
    if ref is not None and ref.hidden is not None and (
            ref.weight is None or ref.hidden.shape[:-1] != hidden.shape[:-1]
            or ref.weight.shape != (ref.hidden.shape[-1], weight.shape[1])):
        ref_weight = None if ref.weight is None else ref.weight.shape
        raise ValueError(f"need ref_hidden [..., Hr], ref_weight [Hr, V]; got "
                         f"{ref.hidden.shape=} {ref_weight=}")
    if ({"topk_mass", "topk_entropy"} & set(extras)) and not (
            top_k and 0 < top_k <= weight.shape[1]):
        raise ValueError(f"top-k extras need 0 < top_k <= V; got {top_k=}")


def heads(hidden, weight, bias=None, ref_hidden=None, ref_weight=None,
          ref_bias=None):
    """The policy `Head` and the reference `Head` (None when neither
    reference operand is given) from `sequence_logprobs`' operands."""
    ref = None
    if ref_hidden is not None or ref_weight is not None:
        ref = Head(ref_hidden, ref_weight, ref_bias)
    return Head(hidden, weight, bias), ref


def sequence_logprobs(hidden, weight, targets, mask, *, bias=None,
                      softcap=None, ref_hidden=None, ref_weight=None,
                      ref_bias=None, extras=(), top_k=None, impl="auto",
                      block_n=None, block_v=None, block_sizes=None,
                      interpret=False):
    """Per-token log-probs of ``targets`` under ``softmax(hidden @ weight)``.

    .. math::
        z = c \\tanh((h W + b) / c), \\quad
        \\log \\pi(y_t) = z_{y_t} - \\log \\textstyle\\sum_v e^{z_v}

    computed over vocabulary tiles with an online log-sum-exp in fp32. The
    matmuls run in hidden's dtype (the weight is cast to it).

    Args:
        hidden: ``[..., H]`` final hidden states (any float dtype).
        weight: ``[H, V]`` output projection (any float dtype).
        targets: ``[...]`` int target ids in ``[0, V)``.
        mask: ``[...]`` bool; False positions (prompt, padding) return 0 and
            cost no work.
        bias: optional ``[V]``. softcap: optional float c (Gemma-style).
        ref_hidden, ref_weight, ref_bias: the reference model's ``[..., Hr]``,
            ``[Hr, V]``, ``[V]``; needed for ``ref_kl`` and ``policy_kl``;
            constants (no
            gradient). The reference uses the same ``softcap``.
        extras: tuple of names from ("entropy", "ref_kl", "policy_kl",
            "topk_mass", "topk_entropy", "log_prob_sq_sum"): ``ref_kl`` is
            KL(ref || pi) per token, ``policy_kl`` KL(pi || ref); the last is
            ``log sum_v pi(v)^2`` per token, the statistic of WPO's
            calibrated weight (Zhou et al., *WPO: Enhancing RLHF with
            Weighted Preference Optimization*, 2024).
        top_k: k for the ``topk_*`` extras.
        impl: one of "auto", "pallas_tpu", "pallas_gpu", "chunked", "naive".
        block_n, block_v: tile sizes (None: the implementation's default).
        block_sizes: the implementation's own ``BlockSizes`` (all its tuning
            knobs); overrides block_n and block_v.
        interpret: run Pallas kernels in interpret mode (CPU tests).
    Returns:
        `TokenLogProbs` with ``[...]`` fp32 fields. Gradients flow to
        ``hidden``, ``weight`` and ``bias`` through logprobs, entropy and
        ref_kl, policy_kl only; ``topk_*`` and ``log_prob_sq_sum`` have zero gradient
        (treat them as constants).
    """
    extras = tuple(extras)
    head, ref = heads(hidden, weight, bias, ref_hidden, ref_weight, ref_bias)
    check_inputs(head, ref, targets, mask, extras=extras, top_k=top_k)
    ref = ref if set(softmax_stats.REFERENCE_EXTRAS) & set(extras) else None
    lead = hidden.shape[:-1]
    flat = lambda hd: None if hd is None else hd._replace(
        hidden=hd.hidden.reshape(-1, hd.hidden.shape[-1]))
    t, m = targets.reshape(-1).astype(jnp.int32), mask.reshape(-1)
    impl = resolve_impl(impl)
    if impl == "naive":
        out = reference_logprobs(flat(head), t, m, ref=flat(ref),
                                 softcap=softcap, extras=extras, top_k=top_k)
    else:
        sizes = block_sizes or block_sizes_for(impl, block_n=block_n,
                                               block_v=block_v)
        cfg = OpConfig(impl, sizes, softcap, top_k, extras, interpret)
        out = fused_logprobs(flat(head), flat(ref), t, m, cfg)
    return TokenLogProbs(**{k: v.reshape(lead) for k, v in out.items()})


def fused_logprobs(head, ref, targets, mask, cfg):
    """Compacts valid tokens first, runs the fused op, scatters back.

    Args:
        head: `Head` with hidden ``[N, H]``, weight ``[H, V]``, bias ``[V]``
            or None. ref: the reference `Head` (a constant) or None.
        targets, mask: ``[N]``. cfg: `OpConfig`.
    Returns:
        dict of ``[N]`` fp32 outputs, zero where ``mask`` is False.
    """
    n = head.hidden.shape[0]
    order = jnp.argsort(~mask, stable=True)  # valid tokens first
    n_valid = jnp.sum(mask, dtype=jnp.int32)
    pad = (-n) % cfg.block_sizes.row_multiple

    def take(x):
        return jnp.pad(jnp.take(x, order, axis=0),
                       [(0, pad)] + [(0, 0)] * (x.ndim - 1))

    head = head.with_bias()._replace(hidden=take(head.hidden))
    if ref is not None:
        ref = jax.lax.stop_gradient(
            ref.with_bias()._replace(hidden=take(ref.hidden)))
    out = _fused_op(cfg)(head, ref, take(targets), n_valid)
    live = jnp.arange(n) < n_valid
    return {k: jnp.zeros((n,), jnp.float32).at[order].set(
        jnp.where(live, v[:n], 0.0)) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def _fused_op(cfg):
    """custom_vjp op ``(head, ref, targets, n_valid) -> outputs``."""
    names = ("logprobs",) + tuple(e for e in softmax_stats.EXTRAS
                                  if e in cfg.extras)

    def run(head, ref, targets, n_valid):
        kw = {"interpret": cfg.interpret} if cfg.impl != "chunked" else {}
        st = _MODULES[cfg.impl].forward(
            head, ref, targets, n_valid, block_sizes=cfg.block_sizes,
            softcap=cfg.softcap, top_k=cfg.top_k,
            entropy="entropy" in cfg.extras,
            sq_sum="log_prob_sq_sum" in cfg.extras, **kw)
        if cfg.vocab_axis is not None:
            st = softmax_stats.combine(st, cfg.vocab_axis)
        return softmax_stats.finalize(st, top_k=cfg.top_k)

    @jax.custom_vjp
    def op(head, ref, targets, n_valid):
        full = run(head, ref, targets, n_valid)
        return {k: full[k] for k in names}

    def fwd(head, ref, targets, n_valid):
        full = run(head, ref, targets, n_valid)
        res = {k: full[k] for k in ("lse", "entropy", "lse_q", "policy_kl")
               if k in full}
        return {k: full[k] for k in names}, (head, ref, targets, n_valid, res)

    def bwd(saved, g):
        head, ref, targets, n_valid, res = saved
        cot = {k: g[k] for k in _DIFFERENTIABLE if k in g}
        # Partial weight gradients of token shards are summed in fp32.
        dh, dw, db = chunked.backward(
            head, ref, targets, n_valid, res, cot,
            block_sizes=cfg.block_sizes.backward, softcap=cfg.softcap,
            dw_dtype=jnp.float32 if cfg.token_axes else None)
        if cfg.vocab_axis is not None:
            dh = jax.lax.psum(dh, cfg.vocab_axis)
        if cfg.token_axes:
            dw, db = jax.lax.psum((dw, db), cfg.token_axes)
        grads = Head(*(d.astype(x.dtype) for d, x in zip((dh, dw, db), head)))
        return grads, None, None, None

    op.defvjp(fwd, bwd)
    return op


def reference_logprobs(head, targets, mask, *, ref=None, softcap=None,
                       extras=(), top_k=None):
    """Per-token log-probs and extras from materialised ``[N, V]`` logits.

    For tests and benchmarks only: this is what every peer does, and what
    the fused implementations avoid. The logits are `head.project` of the
    whole arrays (the same compute dtype as the fused op); gradients come
    from plain autodiff.

    Args:
        head: `Head` with hidden ``[N, H]``, weight ``[H, V]``, bias ``[V]``
            or None. ref: the reference `Head` or None (needed for
            ``ref_kl`` and ``policy_kl``; a constant). targets, mask: ``[N]``.
    Returns:
        dict of ``[N]`` fp32 arrays: ``logprobs`` and each requested extra,
        zero where ``mask`` is False.
    """
    logp = jax.nn.log_softmax(project(*head.with_bias(), softcap))
    p = jnp.exp(logp)
    out = {"logprobs": jnp.take_along_axis(
        logp, targets[:, None].astype(jnp.int32), axis=1)[:, 0]}
    if "entropy" in extras:
        out["entropy"] = -jnp.sum(p * logp, axis=1)
    if "log_prob_sq_sum" in extras:
        out["log_prob_sq_sum"] = jax.lax.stop_gradient(
            jax.nn.logsumexp(2.0 * logp, axis=1))
    if set(softmax_stats.REFERENCE_EXTRAS) & set(extras):
        ref = jax.lax.stop_gradient(ref.with_bias())
        logq = jax.nn.log_softmax(project(*ref, softcap))
    if "ref_kl" in extras:
        out["ref_kl"] = jnp.sum(jnp.exp(logq) * (logq - logp), axis=1)
    if "policy_kl" in extras:
        out["policy_kl"] = jnp.sum(p * (logp - logq), axis=1)
    if "topk_mass" in extras or "topk_entropy" in extras:
        top = jax.lax.stop_gradient(jax.lax.top_k(logp, top_k)[0])
        pk = jnp.exp(top)
        if "topk_mass" in extras:
            out["topk_mass"] = jnp.sum(pk, axis=1)
        if "topk_entropy" in extras:
            out["topk_entropy"] = -jnp.sum(pk * top, axis=1)
    return {k: jnp.where(mask, v, 0.0) for k, v in out.items()}
