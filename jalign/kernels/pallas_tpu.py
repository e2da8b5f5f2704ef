"""Pallas TPU (Mosaic) forward kernel for fused sequence log-probs.

Grid ``(token blocks, vocabulary tiles)``; the vocabulary axis is innermost
and sequential. Each step projects a ``[block_n, H]`` hidden block onto a
``[H, block_v]`` weight tile on the MXU and folds the fp32 logits into the
running statistics of `softmax_stats`, which live in the output blocks
themselves (their block index does not change along the vocabulary axis, so
they stay in VMEM until the token block is done). Per-row statistics are stored
replicated over 128 lanes, like flash attention's ``m`` and ``l``.

The number of valid (compacted) rows is a prefetched scalar: token blocks
past it skip all compute and their index maps repeat the previous block, so
no hidden or weight tile is copied for them either.

The backward pass is `chunked.backward` (see `logprobs`).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jalign.kernels import chunked, softmax_stats
from jalign.kernels.head import project

LANES = 128
SUBLANES = 8
DEFAULT_BLOCK_N = 256
DEFAULT_BLOCK_V = 512


@dataclasses.dataclass(frozen=True)
class BlockSizes(chunked.KernelBlockSizes):
    """Token rows and vocabulary columns per grid step (keywords only)."""

    block_n: int = DEFAULT_BLOCK_N
    block_v: int = DEFAULT_BLOCK_V

    def __post_init__(self):
        if self.block_n <= 0 or self.block_n % SUBLANES:
            raise ValueError(f"block_n must be a positive multiple of "
                             f"{SUBLANES}, got {self.block_n}")
        if self.block_v <= 0 or self.block_v % LANES:
            raise ValueError(f"block_v must be a positive multiple of "
                             f"{LANES}, got {self.block_v}")


def forward(head, ref, targets, n_valid, *, block_sizes, softcap, top_k,
            entropy, sq_sum, interpret=False):
    """Raw online statistics of every token (see `chunked.forward`).

    Args:
        head, ref: `Head` values with biases (ref None without a reference);
            N a multiple of ``block_n``.
        targets: ``[N]`` int32.
        n_valid: scalar int32; rows >= n_valid are skipped (garbage out).
    Returns:
        `softmax_stats.Stats` with ``[N]`` fields (``topk`` ``[N, 128]``).
    """
    n, hid = head.hidden.shape
    v = head.weight.shape[1]
    with_ref = ref is not None
    bn = block_sizes.block_n
    bv = v if v <= block_sizes.block_v else block_sizes.block_v
    if n % bn:
        raise ValueError(f"rows {n} must be a multiple of block_n={bn}")
    if top_k is not None and top_k > LANES:
        raise ValueError(f"pallas_tpu supports top_k <= {LANES}, got {top_k}")
    grid = (n // bn, pl.cdiv(v, bv))
    ops, specs = _operands(head, ref, targets, bn, bv, grid[1])
    out = softmax_stats.out_struct((n, LANES), jnp.float32, ops[0])
    fields = softmax_stats.row_fields(entropy=entropy, sq_sum=sq_sum,
                                with_ref=with_ref)
    fields += ("topk",) if top_k else ()
    kernel = functools.partial(
        _kernel, fields=fields, block_v=bv, vocab=v, softcap=softcap,
        top_k=top_k, entropy=entropy, sq_sum=sq_sum, with_ref=with_ref)
    outs = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=grid, in_specs=specs,
            out_specs=[pl.BlockSpec((bn, LANES), _out_map)] * len(fields)),
        out_shape=[out] * len(fields),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary")),
        cost_estimate=pl.CostEstimate(
            flops=2 * n * v * (hid + (ref.hidden.shape[1] if with_ref
                                      else 0)),
            transcendentals=n * v * (2 if with_ref else 1),
            bytes_accessed=sum(x.size * x.dtype.itemsize for x in ops)),
        interpret=interpret,
    )(softmax_stats.match_vma(n_valid.reshape(1), *ops), *ops)
    st = {f: (o if f == "topk" else o[:, 0]) for f, o in zip(fields, outs)}
    return softmax_stats.Stats(**st)


def _operands(head, ref, targets, bn, bv, n_vtiles):
    """Kernel operands (2-D, vma-matched) and their BlockSpecs."""
    n, v = targets.shape[0], head.weight.shape[1]

    def last_block(nv_ref):  # last token block holding a valid row
        # lax.div truncates: jnp's // lowers to `sign`, which Mosaic can
        # only lower when it knows the chip.
        return jnp.maximum(jax.lax.div(nv_ref[0] + bn - 1, bn) - 1, 0)

    def row_map(i, j, nv_ref):
        return jnp.minimum(i, last_block(nv_ref)), 0

    def col_map(i, j, nv_ref):  # skipped blocks keep the last tile resident
        return 0, jnp.where(i <= last_block(nv_ref), j, n_vtiles - 1)

    ops, specs = [], []
    for hd in (head,) if ref is None else (head, ref):
        hid = hd.hidden.shape[1]
        ops += [hd.hidden, hd.weight, hd.bias.reshape(1, v)]
        specs += [pl.BlockSpec((bn, hid), row_map),
                  pl.BlockSpec((hid, bv), col_map),
                  pl.BlockSpec((1, bv), col_map)]
    ops.append(targets.reshape(n, 1))
    specs.append(pl.BlockSpec((bn, 1), row_map))
    return softmax_stats.match_vma(ops, *ops), specs


def _out_map(i, j, nv_ref):
    return i, 0


def _kernel(nv_ref, *refs, fields, block_v, vocab, softcap, top_k, entropy,
            sq_sum, with_ref):
    """One (token block i, vocabulary tile j) step; refs are inputs then outs.

    Inputs: h [bn, H], w [H, bv], b [1, bv], (rh [bn, Hr], rw [Hr, bv],
    rb [1, bv]), targets [bn, 1] int32. Outputs: one [bn, 128] fp32 block per
    statistic in ``fields``.
    """
    n_in = 7 if with_ref else 4
    ins, outs = refs[:n_in], dict(zip(fields, refs[n_in:]))
    i, j = pl.program_id(0), pl.program_id(1)
    bn = ins[0].shape[0]

    @pl.when(i * bn < nv_ref[0])
    def _step():
        @pl.when(j == 0)
        def _init():
            st = softmax_stats.init(bn, entropy=entropy, sq_sum=sq_sum,
                              with_ref=with_ref,
                              topk_width=LANES if top_k else 0)
            _store(outs, st)

        st = softmax_stats.Stats(**{f: (r[...] if f == "topk" else
                                        jnp.max(r[...], axis=1))
                                    for f, r in outs.items()})
        z = project(ins[0][...], ins[1][...], ins[2][...], softcap)  # [bn, bv]
        zq = None
        if with_ref:
            zq = project(ins[3][...], ins[4][...], ins[5][...],
                         softcap)                          # [bn, bv]
        cols = j * block_v + jax.lax.broadcasted_iota(
            jnp.int32, (bn, block_v), 1)                   # [bn, bv]
        valid = cols < vocab
        hit = valid & (cols == ins[-1][...])               # [bn, bv]
        _store(outs, softmax_stats.update(st, z, zq, valid, hit, top_k=top_k))


def _store(outs, st):
    for f, r in outs.items():
        x = getattr(st, f)
        r[...] = x if f == "topk" else jnp.broadcast_to(x[:, None], r.shape)
