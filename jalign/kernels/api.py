"""`sequence_logprobs`: per-token log pi(target) without ``[N, V]`` logits.

One entry point picks an implementation for the backend:

    impl          forward                          backward
    "chunked"     XLA loops over [bn, bv] tiles     chunked (recompute)
    "pallas_tpu"  Mosaic kernel                     chunked (recompute)
    "pallas_gpu"  Triton kernel                     chunked (recompute)
    "naive"       full fp32 logits (tests, benchmarks only; autodiff)

"auto" is "pallas_tpu" on TPU, "pallas_gpu" on GPU and "chunked" elsewhere.

Masked tokens are compacted to the end (a stable sort of the mask) and the
fused implementations stop after the last block holding a valid token, so
prompt and padding positions cost no projection work.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jalign.kernels import _online, chunked, pallas_gpu, pallas_tpu
from jalign.kernels.naive import naive_sequence_logprobs

IMPLS = ("auto", "pallas_tpu", "pallas_gpu", "chunked", "naive")
_MODULES = {"chunked": chunked, "pallas_tpu": pallas_tpu,
            "pallas_gpu": pallas_gpu}
_DIFFERENTIABLE = ("logprobs", "entropy", "ref_kl")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["logprobs", "entropy", "ref_kl", "topk_mass",
                                "topk_entropy", "log_prob_sq_sum"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class TokenLogProbs:
    """Per-token outputs, each ``[...]`` fp32 (the leading dims of hidden).

    ``logprobs`` is log pi(target); ``entropy`` the entropy of pi; ``ref_kl``
    KL(pi_ref || pi) of the next-token distributions (TDPO's direction);
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
    topk_mass: jax.Array | None = None
    topk_entropy: jax.Array | None = None
    log_prob_sq_sum: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static configuration of one fused op (hashable: keys the VJP cache)."""

    impl: str
    block_sizes: object
    softcap: float | None
    top_k: int | None
    extras: tuple
    with_ref: bool
    interpret: bool = False
    vocab_axis: str | None = None
    token_axes: tuple = ()


def resolve_impl(impl):
    """Concrete implementation name for ``impl`` on the default backend."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(
        jax.default_backend(), "chunked")


def sequence_logprobs(hidden, weight, targets, mask, *, bias=None,
                      softcap=None, ref_hidden=None, ref_weight=None,
                      ref_bias=None, extras=(), top_k=None, impl="auto",
                      block_n=None, block_v=None, block_sizes=None,
                      interpret=False):
    """Per-token log-probs of ``targets`` under ``softmax(hidden @ weight)``.

    .. math::
        z = c \\tanh((h W + b) / c), \\quad
        \\log \\pi(y_t) = z_{y_t} - \\log \\textstyle\\sum_v e^{z_v}

    computed over vocabulary tiles with an online log-sum-exp in fp32.

    Args:
        hidden: ``[..., H]`` final hidden states (any float dtype).
        weight: ``[H, V]`` output projection.
        targets: ``[...]`` int target ids in ``[0, V)``.
        mask: ``[...]`` bool; False positions (prompt, padding) return 0 and
            cost no work.
        bias: optional ``[V]``. softcap: optional float c (Gemma-style).
        ref_hidden, ref_weight, ref_bias: the reference model's ``[..., Hr]``,
            ``[Hr, V]``, ``[V]``; needed for ``ref_kl``; constants (no
            gradient). The reference uses the same ``softcap``.
        extras: tuple of names from ("entropy", "ref_kl", "topk_mass",
            "topk_entropy", "log_prob_sq_sum"); the last is
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
        ref_kl only; ``topk_*`` and ``log_prob_sq_sum`` have zero gradient
        (treat them as constants).
    """
    lead = hidden.shape[:-1]
    _check_args(hidden, weight, targets, mask, bias, ref_hidden, ref_weight,
                extras, top_k)
    flat = lambda x: None if x is None else x.reshape(-1, x.shape[-1])
    h, rh = flat(hidden), flat(ref_hidden)
    t, m = targets.reshape(-1).astype(jnp.int32), mask.reshape(-1)
    impl = resolve_impl(impl)
    if impl == "naive":
        out = naive_sequence_logprobs(
            h, weight, t, m, bias=bias, softcap=softcap, ref_hidden=rh,
            ref_weight=ref_weight, ref_bias=ref_bias, extras=extras,
            top_k=top_k)
    else:
        cfg = _Config(impl, block_sizes or _block_sizes(impl, block_n,
                                                         block_v),
                      softcap, top_k, tuple(extras), "ref_kl" in extras,
                      interpret)
        out = fused_logprobs(h, weight, bias, rh, ref_weight, ref_bias, t, m,
                             cfg)
    return TokenLogProbs(**{k: v.reshape(lead) for k, v in out.items()})


def _block_sizes(impl, block_n, block_v):
    sizes = {k: v for k, v in (("block_n", block_n), ("block_v", block_v))
             if v is not None}
    return _MODULES[impl].BlockSizes(**sizes)


def _check_args(hidden, weight, targets, mask, bias, ref_hidden, ref_weight,
                extras, top_k):
    if weight.ndim != 2 or hidden.shape[-1] != weight.shape[0]:
        raise ValueError(f"need hidden [..., H] and weight [H, V]; got "
                         f"{hidden.shape=} {weight.shape=}")
    if targets.shape != hidden.shape[:-1] or mask.shape != targets.shape:
        raise ValueError(f"targets and mask must be hidden.shape[:-1]; got "
                         f"{hidden.shape=} {targets.shape=} {mask.shape=}")
    if bias is not None and bias.shape != weight.shape[1:]:
        raise ValueError(f"bias must be [V]; got {bias.shape=}")
    unknown = set(extras) - set(_online.EXTRAS)
    if unknown:
        raise ValueError(f"unknown extras {unknown}; known {_online.EXTRAS}")
    if "ref_kl" in extras and (ref_hidden is None or ref_weight is None):
        raise ValueError("extras 'ref_kl' needs ref_hidden and ref_weight")
    if ref_hidden is not None and (
            ref_hidden.shape[:-1] != hidden.shape[:-1]
            or ref_weight.shape != (ref_hidden.shape[-1], weight.shape[1])):
        raise ValueError(f"need ref_hidden [..., Hr], ref_weight [Hr, V]; got "
                         f"{ref_hidden.shape=} {ref_weight.shape=}")
    if ({"topk_mass", "topk_entropy"} & set(extras)) and not (
            top_k and 0 < top_k <= weight.shape[1]):
        raise ValueError(f"top-k extras need 0 < top_k <= V; got {top_k=}")


def fused_logprobs(h, w, b, rh, rw, rb, targets, mask, cfg):
    """Compacts valid tokens first, runs the fused op, scatters back.

    Args:
        h: ``[N, H]``; w: ``[H, V]``; b: ``[V]`` or None; rh, rw, rb: the
            reference head or None; targets, mask: ``[N]``.
    Returns:
        dict of ``[N]`` fp32 outputs, zero where ``mask`` is False.
    """
    n = h.shape[0]
    order = jnp.argsort(~mask, stable=True)  # valid tokens first
    n_valid = jnp.sum(mask, dtype=jnp.int32)
    pad = (-n) % cfg.block_sizes.row_multiple
    take = lambda x: None if x is None else jnp.pad(
        jnp.take(x, order, axis=0), [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    zeros_v = jnp.zeros(w.shape[1:], jnp.float32)
    b = zeros_v if b is None else b
    if cfg.with_ref:
        rh, rw = jax.lax.stop_gradient(take(rh)), jax.lax.stop_gradient(rw)
        rb = zeros_v if rb is None else jax.lax.stop_gradient(rb)
    else:
        rh = rw = rb = None
    out = _fused_op(cfg)(take(h), w, b, rh, rw, rb, take(targets), n_valid)
    live = jnp.arange(n) < n_valid
    return {k: jnp.zeros((n,), jnp.float32).at[order].set(
        jnp.where(live, v[:n], 0.0)) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def _fused_op(cfg):
    """custom_vjp op ``(h, w, b, rh, rw, rb, targets, n_valid) -> outputs``."""
    names = ("logprobs",) + tuple(e for e in _online.EXTRAS
                                  if e in cfg.extras)

    def run(h, w, b, rh, rw, rb, targets, n_valid):
        inputs = (h, w, b, rh, rw, rb, targets)
        mod = _MODULES[cfg.impl]
        kw = {"interpret": cfg.interpret} if cfg.impl != "chunked" else {}
        st = mod.forward(inputs, n_valid, block_sizes=cfg.block_sizes,
                         softcap=cfg.softcap, top_k=cfg.top_k,
                         entropy="entropy" in cfg.extras,
                         sq_sum="log_prob_sq_sum" in cfg.extras,
                         with_ref=cfg.with_ref, **kw)
        if cfg.vocab_axis is not None:
            st = _online.combine(st, cfg.vocab_axis)
        return _online.finalize(st, top_k=cfg.top_k)

    @jax.custom_vjp
    def op(h, w, b, rh, rw, rb, targets, n_valid):
        full = run(h, w, b, rh, rw, rb, targets, n_valid)
        return {k: full[k] for k in names}

    def fwd(h, w, b, rh, rw, rb, targets, n_valid):
        full = run(h, w, b, rh, rw, rb, targets, n_valid)
        res = {k: full[k] for k in ("lse", "entropy", "lse_q") if k in full}
        return {k: full[k] for k in names}, (h, w, b, rh, rw, rb, targets,
                                             n_valid, res)

    def bwd(saved, g):
        h, w, b, rh, rw, rb, targets, n_valid, res = saved
        cot = {k: g[k] for k in _DIFFERENTIABLE if k in g}
        dh, dw, db = chunked.backward(
            (h, w, b, rh, rw, rb, targets), n_valid, res, cot,
            block_sizes=cfg.block_sizes.backward, softcap=cfg.softcap,
            with_ref=cfg.with_ref)
        if cfg.vocab_axis is not None:
            dh = jax.lax.psum(dh, cfg.vocab_axis)
        if cfg.token_axes:
            dw, db = jax.lax.psum((dw, db), cfg.token_axes)
        return (dh.astype(h.dtype), dw.astype(w.dtype), db.astype(b.dtype),
                None, None, None, None, None)

    op.defvjp(fwd, bwd)
    return op
