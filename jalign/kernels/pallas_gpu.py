"""Pallas GPU (Triton) forward kernel for fused sequence log-probs.

Grid ``(token blocks, vocabulary splits)``. Triton keeps no state between
programs, so each program walks its whole share of the vocabulary itself: a
`fori_loop` over ``block_v`` column tiles, each tile's logits accumulated
over ``block_k`` slices of the hidden dimension with fp32 tensor-core dots,
then folded into the running statistics of `softmax_stats` held in
registers. The per-split statistics are merged afterwards
(`softmax_stats.combine_splits`, a few
``[S, N]`` XLA ops). Splitting the vocabulary keeps every multiprocessor
busy when there are few token blocks (8192 tokens are only 128 blocks of 64
on a 132-SM H100), which is also what lets skipped masked blocks save time.

The last vocabulary tile is shifted back to end at V (its columns already
seen are masked), so V needs no padding. Programs whose rows are all past
the number of valid (compacted) rows exit at once.

The backward pass is `chunked.backward` (see `logprobs`).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jalign.kernels import chunked, softmax_stats
from jalign.kernels.head import precision

# Fastest of a small sweep on an H100 at H=1024 (benchmarks/README.md).
DEFAULT_BLOCK_N = 64
DEFAULT_BLOCK_V = 256
DEFAULT_BLOCK_K = 64
DEFAULT_NUM_WARPS = 8
DEFAULT_NUM_STAGES = 4
# The backward pass is XLA matmuls: larger tiles than the CPU default pay.
DEFAULT_BLOCK_N_BWD = 2048
DEFAULT_BLOCK_V_BWD = 8192
MIN_DOT = 16  # smallest dot dimension Triton accepts


def _is_pow2(x):
    return x > 0 and not x & (x - 1)


@dataclasses.dataclass(frozen=True)
class BlockSizes(chunked.KernelBlockSizes):
    """Tokens per program, vocabulary columns per tile, hidden slice width
    (keywords only)."""

    block_n: int = DEFAULT_BLOCK_N
    block_v: int = DEFAULT_BLOCK_V
    block_n_bwd: int = DEFAULT_BLOCK_N_BWD
    block_v_bwd: int = DEFAULT_BLOCK_V_BWD
    block_k: int = DEFAULT_BLOCK_K
    num_warps: int = DEFAULT_NUM_WARPS
    num_stages: int = DEFAULT_NUM_STAGES
    # Programs per token block along V; None: enough for ~512 programs.
    vocab_splits: int | None = None

    def __post_init__(self):
        for name in ("block_n", "block_v", "block_k"):
            x = getattr(self, name)
            if not _is_pow2(x) or x < MIN_DOT:
                raise ValueError(f"{name} must be a power of 2 >= {MIN_DOT}, "
                                 f"got {x}")

    def splits(self, n_blocks, n_vtiles):
        """(vocabulary splits, tiles per split), no split left empty."""
        want = self.vocab_splits or max(1, min(8, 512 // n_blocks))
        per = pl.cdiv(n_vtiles, min(want, n_vtiles))
        return pl.cdiv(n_vtiles, per), per


def forward(head, ref, targets, n_valid, *, block_sizes, softcap, top_k,
            entropy, sq_sum, interpret=False):
    """Raw online statistics of every token (see `chunked.forward`).

    Args:
        head, ref: `Head` values with biases (ref None without a reference);
            N a multiple of ``block_n``; H, Hr and V at least 16, H and Hr
            multiples of 16.
        targets: ``[N]`` int32.
        n_valid: scalar int32; rows >= n_valid are skipped (garbage out).
    Returns:
        `softmax_stats.Stats` with ``[N]`` fields (``topk``
        ``[N, pow2 >= k]``).
    """
    n, v = head.hidden.shape[0], head.weight.shape[1]
    with_ref = ref is not None
    bs = block_sizes
    bv = min(bs.block_v, pl.next_power_of_2(v + 1) // 2)  # pow2 <= V
    for name, hd in (("H", head), ("Hr", ref)):
        if hd is not None and hd.hidden.shape[1] % MIN_DOT:
            raise ValueError(f"pallas_gpu needs {name} % {MIN_DOT} == 0, "
                             f"got {hd.hidden.shape[1]}")
    if n % bs.block_n or v < MIN_DOT:
        raise ValueError(f"need rows % block_n == 0 and V >= {MIN_DOT}; got "
                         f"{n=} {bs.block_n=} {v=}")
    fields = softmax_stats.row_fields(entropy=entropy, sq_sum=sq_sum,
                                with_ref=with_ref)
    width = max(pl.next_power_of_2(top_k), MIN_DOT) if top_k else 0
    ops = (*head, *(ref or ()), targets)
    ops = softmax_stats.match_vma(ops, *ops)
    n_splits, per_split = bs.splits(n // bs.block_n, pl.cdiv(v, bv))
    row = pl.BlockSpec((None, bs.block_n), lambda i, s: (s, i))
    out_specs = [row] * len(fields)
    out_shape = [softmax_stats.out_struct((n_splits, n), jnp.float32, ops[0])
                 ] * len(fields)
    if top_k:
        out_specs.append(pl.BlockSpec((None, bs.block_n, width),
                                      lambda i, s: (s, i, 0)))
        out_shape.append(softmax_stats.out_struct((n_splits, n, width),
                                            jnp.float32, ops[0]))
    kernel = functools.partial(
        _kernel, block_n=bs.block_n, block_v=bv, block_k=bs.block_k,
        per_split=per_split, softcap=softcap, top_k=top_k, width=width,
        entropy=entropy, sq_sum=sq_sum, with_ref=with_ref)
    outs = pl.pallas_call(
        kernel,
        grid=(n // bs.block_n, n_splits),
        in_specs=[pl.no_block_spec] * (len(ops) + 1),
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(
            num_warps=bs.num_warps, num_stages=bs.num_stages),
        interpret=interpret,
    )(softmax_stats.match_vma(n_valid.reshape(1), *ops), *ops)
    return softmax_stats.combine_splits(softmax_stats.Stats(
        **dict(zip(fields + (("topk",) if top_k else ()), outs))))


def _logits(h_ref, w_ref, b_ref, rows, col0, *, block_n, block_v, block_k):
    """``[block_n, block_v]`` fp32 ``h[rows] @ w[:, col0:col0+bv] + b``.

    Dots run in the hidden states' dtype: Triton refuses mixed operands
    (bf16 activations against fp32 master weights), so weight slices are
    cast first.
    """
    hid = h_ref.shape[1]
    bk = block_k if hid % block_k == 0 else MIN_DOT
    cols = pl.ds(col0, block_v)

    def k_step(k, acc):
        hk = h_ref[rows, pl.ds(k * bk, bk)]                # [bn, bk]
        wk = w_ref[pl.ds(k * bk, bk), cols].astype(hk.dtype)  # [bk, bv]
        return acc + jnp.dot(hk, wk, precision=precision(hk.dtype),
                             preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(0, hid // bk, k_step,
                            jnp.zeros((block_n, block_v), jnp.float32))
    return acc + b_ref[cols].astype(jnp.float32)[None, :]


def _kernel(nv_ref, *refs, block_n, block_v, block_k, per_split, softcap,
            top_k, width, entropy, sq_sum, with_ref):
    """Token block i against vocabulary tiles [s * per_split, +per_split).

    Refs: h [N, H], w [H, V], b [V], (rh, rw, rb), targets [N] (whole
    arrays), then one ``[block_n]`` output block per statistic (and topk
    ``[block_n, width]``) of split s. Tiles past V contribute nothing.
    """
    n_in = 7 if with_ref else 4
    ins, outs = refs[:n_in], refs[n_in:]
    i, s = pl.program_id(0), pl.program_id(1)
    v = ins[1].shape[1]
    dims = dict(block_n=block_n, block_v=block_v, block_k=block_k)

    @pl.when(i * block_n < nv_ref[0])
    def _block():
        rows = pl.ds(i * block_n, block_n)
        tgt = ins[-1][rows]                                  # [bn]

        def tile(j, st):
            col0 = jnp.minimum(j * block_v, v - block_v)
            cols = col0 + jnp.arange(block_v, dtype=jnp.int32)[None, :]
            fresh = cols >= j * block_v                      # [1, bv]
            z = _logits(*ins[:3], rows, col0, **dims)        # [bn, bv]
            zq = None
            if with_ref:
                zq = _logits(*ins[3:6], rows, col0, **dims)  # [bn, bv]
            if softcap is not None:
                z = softcap * jnp.tanh(z / softcap)
                zq = None if zq is None else softcap * jnp.tanh(zq / softcap)
            hit = fresh & (cols == tgt[:, None])             # [bn, bv]
            return softmax_stats.update(st, z, zq, fresh, hit, top_k=top_k)

        st = softmax_stats.init(block_n, entropy=entropy, sq_sum=sq_sum,
                          with_ref=with_ref, topk_width=width)
        st = jax.lax.fori_loop(0, per_split,
                               lambda t, st: tile(s * per_split + t, st), st)
        for ref, x in zip(outs, [f for f in st if f is not None]):
            ref[...] = x
