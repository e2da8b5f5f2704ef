"""The model's greedy next token per position, tile by tile, never as ``[N, V]`` logits.

``argmax_v (h @ W + b)_v`` per token: a plain-XLA pass over row blocks and
vocabulary tiles (like `jalign.kernels.teacher`'s total variation), so it runs
on every backend and no buffer larger than ``[block_n, block_v]`` logits is
built. A final-logit soft-cap is monotonic and leaves the arg-max unchanged,
so it is not applied. Ties go to the lowest index, as ``torch.argmax`` and
``numpy.argmax`` break them. Integer outputs carry no gradient.

IFT's temporal residual connection reads it (``jalign.models.scoring``): the
policy's own prediction at each response position, mixed into the next input.
"""

import jax
import jax.numpy as jnp

from jalign.kernels.head import Head, project

DEFAULT_BLOCK_N = 256
DEFAULT_BLOCK_V = 4096


def _block_argmax(head: Head, hidden, bv):
    """``[bn]`` int32 arg-max over the vocabulary of one row block ``hidden`` ``[bn, H]``."""
    v = head.weight.shape[1]
    rows = hidden.shape[0]

    def tile(j, carry):
        best, index = carry
        col0 = jnp.minimum(j * bv, v - bv)                                   # the last tile shifted back
        columns = col0 + jax.lax.broadcasted_iota(jnp.int32, (1, bv), 1)     # [1, bv]
        w = jax.lax.dynamic_slice_in_dim(head.weight, col0, bv, 1)
        b = jax.lax.dynamic_slice_in_dim(head.bias, col0, bv, 0)
        z = jnp.where(columns >= j * bv, project(hidden, w, b, None), -jnp.inf)  # [bn, bv]
        local = jnp.argmax(z, axis=1)                                        # [bn], first maximum in the tile
        top = jnp.take_along_axis(z, local[:, None], axis=1)[:, 0]
        # Strictly greater: an equal value in a later tile keeps the earlier (lower) index.
        better = top > best
        return jnp.where(better, top, best), jnp.where(better, col0 + local.astype(jnp.int32), index)

    start = (jnp.full((rows,), -jnp.inf, jnp.float32), jnp.zeros((rows,), jnp.int32))
    return jax.lax.fori_loop(0, -(-v // bv), tile, start)[1]


def greedy_tokens(head: Head, *, block_n: int = DEFAULT_BLOCK_N, block_v: int = DEFAULT_BLOCK_V) -> jax.Array:
    """``argmax_v`` of each row's logits: ``[N]`` int32.

    Args:
      head: hidden ``[N, H]``, weight ``[H, V]``, bias ``[V]`` or None.
      block_n, block_v: rows and vocabulary columns per tile.
    """
    n, v = head.hidden.shape[0], head.weight.shape[1]
    if head.hidden.shape[1] != head.weight.shape[0]:
        raise ValueError(f"greedy_tokens: {head.hidden.shape=} does not meet {head.weight.shape=}")
    head = head.with_bias()
    bn, bv = max(1, min(block_n, n)), min(block_v, v)
    blocks = -(-n // bn)
    hidden = jax.lax.stop_gradient(head.hidden)
    rows = jnp.pad(hidden, ((0, blocks * bn - n), (0, 0))).reshape(blocks, bn, hidden.shape[1])
    frozen = Head(None, jax.lax.stop_gradient(head.weight), jax.lax.stop_gradient(head.bias))
    return jax.lax.map(lambda h: _block_argmax(frozen, h, bv), rows).reshape(-1)[:n]


def greedy_tokens_reference(head: Head) -> jax.Array:
    """The naive version over full ``[N, V]`` fp32 logits (tests only)."""
    head = head.with_bias()
    return jnp.argmax(project(head.hidden, head.weight, head.bias, None), axis=-1).astype(jnp.int32)
