"""Chunked XLA sequence log-probs: the CPU default and the fused reference.

Tokens are walked in blocks of ``block_n`` rows (a `while_loop` that stops
after the last valid row, so masked tokens compacted to the end cost
nothing) and, inside each block, the vocabulary in tiles of ``block_v``
columns. No buffer larger than ``[block_n, block_v]`` logits is built, in
the forward or in the backward pass.

Ragged edges are handled without padding copies: the last block (rows or
columns) is shifted back to end at the array's edge and the rows/columns
already covered by the previous block are masked out.

The backward pass here also serves the Pallas implementations: it recomputes
each tile's logits from the saved per-token residuals (lse, entropy, lse_q).
"""

import dataclasses

import jax
import jax.numpy as jnp

from jalign.kernels import softmax_stats
from jalign.kernels.head import precision, project

DEFAULT_BLOCK_N = 1024
DEFAULT_BLOCK_V = 4096


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the chunked op (clamped to the array sizes)."""

    block_n: int = DEFAULT_BLOCK_N
    block_v: int = DEFAULT_BLOCK_V

    def __post_init__(self):
        for name in ("block_n", "block_v"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got "
                                 f"{getattr(self, name)}")

    @property
    def row_multiple(self):
        """Token-axis padding callers must apply: none (edges are shifted)."""
        return 1

    @property
    def backward(self):
        """Block sizes of the backward pass: the same tiles."""
        return self

    def clamp(self, n, v):
        """Block sizes no larger than the arrays ``[n, .]`` and ``[., v]``."""
        return BlockSizes(min(self.block_n, max(n, 1)), min(self.block_v, v))


@dataclasses.dataclass(frozen=True)
class KernelBlockSizes:
    """What the Pallas kernels' ``BlockSizes`` share: token rows per program
    (callers pad to them) and the tiles of their backward pass, which is
    `backward` here (XLA matmuls). Subclasses set the defaults and add their
    own knobs; construct them with keywords."""

    block_n: int
    block_v: int
    block_n_bwd: int = DEFAULT_BLOCK_N
    block_v_bwd: int = DEFAULT_BLOCK_V

    @property
    def row_multiple(self):
        """Callers pad the token axis to a multiple of this."""
        return self.block_n

    @property
    def backward(self):
        """Block sizes of the chunked backward pass."""
        return BlockSizes(self.block_n_bwd, self.block_v_bwd)


def _tile(x, start, size, axis):
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis)


def _num_blocks(count, size):
    return (count + size - 1) // size


def _tiles(head, ref, blk, bn, j, bv, *, softcap):
    """Logits of row block ``blk`` and vocabulary tile ``j`` (shifted edges).

    Args:
        head, ref: `Head` values with biases (ref None without a reference).
    Returns:
        (row0, col0, y [bn, bv] policy logits before the cap, zq [bn, bv] or
        None, cols [1, bv] column ids, fresh [1, bv] columns not seen before).
    """
    n, v = head.hidden.shape[0], head.weight.shape[1]
    row0 = jnp.minimum(blk * bn, n - bn)
    col0 = jnp.minimum(j * bv, v - bv)
    cols = col0 + jax.lax.broadcasted_iota(jnp.int32, (1, bv), 1)
    fresh = cols >= j * bv

    def logits(hd, cap):
        return project(_tile(hd.hidden, row0, bn, 0),
                       _tile(hd.weight, col0, bv, 1),
                       _tile(hd.bias, col0, bv, 0), cap)

    y = logits(head, None)
    zq = None if ref is None else logits(ref, softcap)
    return row0, col0, y, zq, cols, fresh


def forward(head, ref, targets, n_valid, *, block_sizes, softcap, top_k,
            entropy, sq_sum):
    """Raw online statistics of every token over this vocabulary (shard).

    Args:
        head: `Head` with hidden ``[N, H]``, weight ``[H, V]``, bias ``[V]``.
        ref: the reference `Head` (``[N, Hr]``, ``[Hr, V]``, ``[V]``) or None.
        targets: ``[N]`` int32. Rows >= n_valid are skipped.
        n_valid: scalar int32, number of leading valid rows.
    Returns:
        `softmax_stats.Stats` with ``[N]`` fields (rows past the last valid
        block hold the empty statistics).
    """
    h, w = head.hidden, head.weight
    operands = (*head, *(ref or ()), targets)
    with_ref = ref is not None
    bs = block_sizes.clamp(h.shape[0], w.shape[1])
    bn, bv = bs.block_n, bs.block_v
    width = top_k or 0
    n_vtiles = _num_blocks(w.shape[1], bv)

    def block(blk, out):
        def tile(j, st):
            row0, _, y, zq, cols, fresh = _tiles(head, ref, blk, bn, j, bv,
                                                 softcap=softcap)
            z = y if softcap is None else softcap * jnp.tanh(y / softcap)
            tb = _tile(targets, row0, bn, 0)[:, None]
            hit = fresh & (cols == tb)
            return softmax_stats.update(st, z, zq, fresh, hit, top_k=top_k)

        st = softmax_stats.init(bn, entropy=entropy, sq_sum=sq_sum,
                                with_ref=with_ref, topk_width=width)
        st = jax.lax.fori_loop(0, n_vtiles, tile,
                               softmax_stats.match_vma(st, *operands))
        row0 = jnp.minimum(blk * bn, h.shape[0] - bn)
        return jax.tree.map(
            lambda o, s: jax.lax.dynamic_update_slice_in_dim(o, s, row0, 0),
            out, st)

    out = softmax_stats.init(h.shape[0], entropy=entropy, sq_sum=sq_sum,
                             with_ref=with_ref, topk_width=width)
    out = softmax_stats.match_vma(out, *operands)
    n_blocks = _num_blocks(n_valid, bn)
    return jax.lax.while_loop(
        lambda c: c[0] < n_blocks, lambda c: (c[0] + 1, block(c[0], c[1])),
        (jnp.int32(0), out))[1]


def backward(head, ref, targets, n_valid, res, cot, *, block_sizes, softcap,
             dw_dtype=None):
    """Gradients of hidden, weight and bias, recomputing logits tile by tile.

    The vocabulary is the outer loop, so a weight tile's gradient is
    accumulated in fp32 over all token blocks and written once in the
    weight's dtype: the only full-size fp32 accumulator is ``[N, H]``.

    Matmuls run in the hidden states' dtype, as in the forward pass.

    Args:
        head, ref, targets, n_valid: as in `forward`.
        res: dict of ``[N]`` residuals from `softmax_stats.finalize`.
        cot: dict of ``[N]`` output cotangents (zero on rows >= n_valid).
        dw_dtype: dtype of d_weight (None: weight.dtype; fp32 when it is
            summed over token shards afterwards).
    Returns:
        (d_hidden [N, H] fp32, d_weight [H, V] in dw_dtype,
        d_bias [V] fp32).
    """
    h, w = head.hidden, head.weight
    operands = (*head, *(ref or ()), targets)
    bs = block_sizes.clamp(h.shape[0], w.shape[1])
    bn, bv = bs.block_n, bs.block_v
    rows = jax.lax.broadcasted_iota(jnp.int32, (bn, 1), 0)
    n_blocks = _num_blocks(n_valid, bn)

    def token_block(j, blk, acc):
        dh, dwt, dbt = acc
        row0, col0, y, zq, cols, fresh = _tiles(head, ref, blk, bn, j, bv,
                                                softcap=softcap)
        live = (row0 + rows >= blk * bn) & (row0 + rows < n_valid)
        tb = _tile(targets, row0, bn, 0)[:, None]
        rb = jax.tree.map(lambda r: _tile(r, row0, bn, 0), res)
        cb = jax.tree.map(lambda c: _tile(c, row0, bn, 0), cot)
        dy = softmax_stats.tile_grad(y, zq, live & fresh, fresh & (cols == tb),
                               rb, cb, softcap)                # [bn, bv]
        hb = _tile(h, row0, bn, 0)
        wt = _tile(w, col0, bv, 1).astype(h.dtype)
        dy_c = dy.astype(h.dtype)
        dhb = jnp.dot(dy_c, wt.T, precision=precision(h.dtype),
                      preferred_element_type=jnp.float32)      # [bn, H]
        dh = jax.lax.dynamic_update_slice_in_dim(
            dh, _tile(dh, row0, bn, 0) + dhb, row0, 0)
        dwt += jnp.dot(hb.T, dy_c, precision=precision(h.dtype),
                       preferred_element_type=jnp.float32)     # [H, bv]
        return dh, dwt, dbt + jnp.sum(dy, axis=0)

    def vocab_tile(j, carry):
        dh, dw, db = carry
        col0 = jnp.minimum(j * bv, w.shape[1] - bv)
        fresh = col0 + jnp.arange(bv) >= j * bv                # [bv]
        acc = softmax_stats.match_vma(
            (dh, jnp.zeros((w.shape[0], bv), jnp.float32),
             jnp.zeros((bv,), jnp.float32)), *operands, *cot.values())
        dh, dwt, dbt = jax.lax.while_loop(
            lambda c: c[0] < n_blocks,
            lambda c: (c[0] + 1, token_block(j, c[0], c[1])),
            (jnp.int32(0), acc))[1]
        dw = jax.lax.dynamic_update_slice_in_dim(
            dw, jnp.where(fresh, dwt.astype(dw.dtype),
                          _tile(dw, col0, bv, 1)),
            col0, 1)
        db = jax.lax.dynamic_update_slice_in_dim(
            db, jnp.where(fresh, dbt, _tile(db, col0, bv, 0)), col0, 0)
        return dh, dw, db

    init = (jnp.zeros(h.shape, jnp.float32),
            jnp.zeros(w.shape, dw_dtype or w.dtype),
            jnp.zeros(w.shape[1:], jnp.float32))
    init = softmax_stats.match_vma(init, *operands, *cot.values())
    return jax.lax.fori_loop(0, _num_blocks(w.shape[1], bv), vocab_tile, init)
