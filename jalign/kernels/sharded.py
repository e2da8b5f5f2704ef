"""Sequence log-probs with tokens and vocabulary sharded over a mesh.

Tokens are split over the token axes (the batch axes) and the vocabulary
(weight columns, bias) over one vocabulary axis. Each device runs the fused
op (chunked, or a Pallas kernel: Mosaic and Triton calls cannot be
partitioned automatically, so `shard_map` is how they run on many chips) on
its ``[N / tokens, H] x [H, V / vocab]`` piece; the per-token running
statistics are merged across vocabulary shards with `pmax`/`psum`
(`softmax_stats.combine`), so the log-sum-exp, entropy and KL are exact and
no ``[N, V]`` logits or logits all-reduce exist anywhere. In the backward
pass the hidden-state gradient is summed over vocabulary shards and the
weight gradient over token shards.

Pallas in interpret mode (CPU tests) runs under ``check_vma=False``, where
`shard_map` transposes replicated cotangents differently from what the
backward's psums assume: there only the forward values are meaningful.
Compiled Pallas kernels and the chunked op run under ``check_vma=True`` and
their gradients are exact.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jalign.kernels import logprobs
from jalign.kernels.head import Head


def sharded_sequence_logprobs(hidden, weight, targets, mask, *, mesh,
                              vocab_axis="tensor", token_axes=("data", "fsdp"),
                              bias=None, softcap=None, ref_hidden=None,
                              ref_weight=None, ref_bias=None, extras=(),
                              top_k=None, impl="auto", block_n=None,
                              block_v=None, block_sizes=None,
                              interpret=False):
    """`logprobs.sequence_logprobs` under `jax.shard_map` on ``mesh``.

    Args:
        hidden: ``[..., H]``; the tokens (leading dims, flattened) are padded
            with masked rows to a multiple of the token shards.
        weight: ``[H, V]``, V divisible by the size of ``vocab_axis``.
        targets, mask: ``[...]``. mesh: a `jax.sharding.Mesh` or
            `AbstractMesh` (its axes `AxisType.Auto`, or the inputs already
            sharded as the specs here).
        vocab_axis: mesh axis over which the vocabulary is split, or None
            (every device holds the whole vocabulary).
        token_axes: mesh axes over which tokens are split (axes missing from
            the mesh are ignored).
        Other arguments: as `logprobs.sequence_logprobs` (not "naive"); with
            ``interpret=True`` only the forward values are meaningful.
    Returns:
        `TokenLogProbs` with ``[...]`` fields (tokens sharded over
        ``token_axes``).
    """
    extras = tuple(extras)
    head, ref = logprobs.heads(hidden, weight, bias, ref_hidden, ref_weight,
                               ref_bias)
    logprobs.check_inputs(head, ref, targets, mask, extras=extras,
                          top_k=top_k)
    impl = logprobs.resolve_impl(impl)
    if impl == "naive":
        raise ValueError("the sharded op has no naive implementation")
    token_axes = tuple(a for a in token_axes if a in mesh.axis_names)
    n_vocab_shards = 1 if vocab_axis is None else mesh.shape[vocab_axis]
    if weight.shape[1] % n_vocab_shards:
        raise ValueError(f"V={weight.shape[1]} not divisible by "
                         f"{n_vocab_shards} {vocab_axis!r} shards")
    cfg = logprobs.OpConfig(
        impl, block_sizes or logprobs.block_sizes_for(
            impl, block_n=block_n, block_v=block_v),
        softcap, top_k, extras, interpret, vocab_axis=vocab_axis,
        token_axes=token_axes)
    lead = hidden.shape[:-1]
    n = math.prod(lead)
    pad = (-n) % math.prod(mesh.shape[a] for a in token_axes)

    def rows(x):  # [..., *] -> [n + pad, *], padding rows masked out
        x = x.reshape((n,) + x.shape[len(lead):])
        return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))

    def local_head(hd):
        # The weight enters in the compute dtype (each tile is cast to it
        # anyway): an fp32 master weight is all-gathered at half the bytes.
        weight = hd.weight.astype(hd.hidden.dtype)
        return hd.with_bias()._replace(hidden=rows(hd.hidden), weight=weight)

    tok = token_axes or None
    head = local_head(head)
    head_specs = Head(P(tok, None), P(None, vocab_axis), P(vocab_axis))
    operands = [head, rows(targets.astype(jnp.int32)), rows(mask)]
    specs = [head_specs, P(tok), P(tok)]
    if cfg.with_ref:
        operands.append(local_head(ref))
        specs.append(head_specs)

    def local(head, t, m, ref=None):
        offset = 0
        if vocab_axis is not None:
            offset = jax.lax.axis_index(vocab_axis) * head.weight.shape[1]
        return logprobs.fused_logprobs(head, ref, t - offset, m, cfg)

    names = ("logprobs",) + extras
    out = jax.shard_map(
        local, mesh=mesh, in_specs=tuple(specs),
        out_specs={k: P(tok) for k in names},
        # Pallas' interpreter trips over its own varying-axes checks (see
        # the module docstring).
        check_vma=not interpret,
    )(*operands)
    return logprobs.TokenLogProbs(
        **{k: v[:n].reshape(lead) for k, v in out.items()})
