"""Grouped-query attention over blocks of keys: own tokens, a shared prompt, a cache.

Shapes: B batch, G completions sharing one prompt (1 outside prompt sharing),
T query tokens, S key tokens, K kv heads, R query heads per kv head
(N = K * R), D head_dim, E hidden.

A query attends to several key blocks at once with one joint softmax:
its own tokens (causal), a prompt encoded once and shared by the G
completions (keys [B, S, K, D] with no G axis, so never copied G times), or
a fixed-size KV cache during generation. A key is visible when it is valid,
not after the query (by sequence index) and, for sliding-window layers,
``q_pos - k_pos < window`` (the Hugging Face convention).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jalign.models.config import ModelConfig
from jalign.models.layers import Norm, Projection, apply_rope, constrain

_MASKED = -1e30


class Context(NamedTuple):
    """Where the queries sit and what context keys they see (shared by all layers).

    q_pos [B, G, T] positions; q_idx [T] sequence indices; q_valid [B, G, T]
    marks real (non-pad) tokens, the only ones visible as keys. kv_pos [B, S],
    kv_idx [S], kv_valid [B, S] describe a prompt or cache (None without one).
    ``write_at`` (int32 scalar) switches to cache mode: own keys are written
    into the cache at that index and the queries attend to the cache only.
    """

    q_pos: jax.Array
    q_idx: jax.Array
    q_valid: jax.Array
    kv_pos: jax.Array | None = None
    kv_idx: jax.Array | None = None
    kv_valid: jax.Array | None = None
    write_at: jax.Array | None = None


class KeyBlock(NamedTuple):
    """One block of keys/values with their positions, indices and validity."""

    k: jax.Array       # [B, S, K, D] (shared over G) or [B, G, S, K, D]
    v: jax.Array       # like k
    pos: jax.Array     # [B, S] or [B, G, S]
    idx: jax.Array     # [S]
    valid: jax.Array   # [B, S] or [B, G, S]


def attend(q: jax.Array, blocks: list[KeyBlock], q_pos: jax.Array, q_idx: jax.Array, *,
           scale: float, softcap: float | None, window: jax.Array | int | None) -> jax.Array:
    """Softmax attention of q [B, G, T, K, R, D] over key blocks -> [B, G, T, K, R, D].

    Scores, soft-capping (``cap * tanh(s / cap)``) and the softmax are fp32.
    ``window`` is None (no window) or an int32 scalar, possibly traced (the
    layer's window inside the scan over layers).
    """
    scores = []
    for blk in blocks:
        shared = blk.k.ndim == 4
        spec = "BGTKRD,BSKD->BGKRTS" if shared else "BGTKRD,BGSKD->BGKRTS"
        s = jnp.einsum(spec, q, blk.k, preferred_element_type=jnp.float32) * scale
        if softcap is not None:
            s = jnp.tanh(s / softcap) * softcap
        k_pos = blk.pos[:, None] if shared else blk.pos                   # [B, G|1, S]
        k_valid = blk.valid[:, None] if shared else blk.valid
        mask = k_valid[:, :, None, :] & (blk.idx[None, None, None, :] <= q_idx[:, None])
        if window is not None:
            mask &= (q_pos[..., :, None] - k_pos[..., None, :]) < window    # [B, G, T, S]
        scores.append(jnp.where(mask[:, :, None, None], s, _MASKED))
    probs = jax.nn.softmax(jnp.concatenate(scores, -1), axis=-1).astype(q.dtype)
    out, start = 0.0, 0
    for blk in blocks:
        size = blk.k.shape[-3]
        p = probs[..., start:start + size]                                 # [B, G, K, R, T, S]
        spec = "BGKRTS,BSKD->BGTKRD" if blk.v.ndim == 4 else "BGKRTS,BGSKD->BGTKRD"
        out = out + jnp.einsum(spec, p, blk.v)
        start += size
    return out


class Attention(nnx.Module):
    """Multi-head attention with the family switches of `ModelConfig`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, n, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.q_proj = Projection("E", "NH", (e,), (n, d), ("embed", "heads", "head_dim"),
                                 bias=cfg.qkv_bias, **kw)
        self.k_proj = Projection("E", "NH", (e,), (k, d), ("embed", "kv_heads", "head_dim"),
                                 bias=cfg.qkv_bias, **kw)
        self.v_proj = Projection("E", "NH", (e,), (k, d), ("embed", "kv_heads", "head_dim"),
                                 bias=cfg.qkv_bias, **kw)
        self.o_proj = Projection("NH", "E", (n, d), (e,), ("heads", "head_dim", "embed"),
                                 bias=cfg.out_bias, **kw)
        self.q_norm = Norm(d, cfg, kind="rms", rngs=rngs) if cfg.qk_norm else None
        self.k_norm = Norm(d, cfg, kind="rms", rngs=rngs) if cfg.qk_norm else None
        self.kv_heads, self.head_dim = k, d
        self.scale, self.softcap = cfg.scale, cfg.attn_softcap
        self.rope = cfg.positions == "rope"

    def __call__(self, x: jax.Array, ctx: Context, inv_freq: jax.Array,
                 kv: tuple[jax.Array, jax.Array] | None, window: jax.Array | None):
        """x [B, G, T, E] -> ([B, G, T, E], own keys/values (k, v) [B, G, T, K, D]).

        ``kv`` is None (own tokens only), a prompt's (k, v) [B, S, K, D] shared
        over G, or a cache's (k, v) [B, S, K, D] when ``ctx.write_at`` is set
        (the queries then see the cache with their own keys written at
        ``write_at``; the caller stores them in its cache).
        ``window``: this layer's sliding window (int32 scalar) or None.
        """
        q = self.q_proj(x)                                                 # [B, G, T, N, D]
        k, v = self.k_proj(x), self.v_proj(x)                              # [B, G, T, K, D]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q, k = apply_rope(q, ctx.q_pos, inv_freq), apply_rope(k, ctx.q_pos, inv_freq)
        q = constrain(q, ("batch", None, "length", "act_heads", None))
        own = KeyBlock(k, v, ctx.q_pos, ctx.q_idx, ctx.q_valid)
        if ctx.write_at is not None:
            start = (0, ctx.write_at, 0, 0)
            k_cache = jax.lax.dynamic_update_slice(kv[0], k[:, 0].astype(kv[0].dtype), start)
            v_cache = jax.lax.dynamic_update_slice(kv[1], v[:, 0].astype(kv[1].dtype), start)
            blocks = [KeyBlock(k_cache, v_cache, ctx.kv_pos, ctx.kv_idx, ctx.kv_valid)]
        elif kv is not None:
            blocks = [KeyBlock(kv[0], kv[1], ctx.kv_pos, ctx.kv_idx, ctx.kv_valid), own]
        else:
            blocks = [own]
        b, g, t, n, d = q.shape
        q = q.reshape(b, g, t, self.kv_heads, n // self.kv_heads, d)      # [B, G, T, K, R, D]
        out = attend(q, blocks, ctx.q_pos, ctx.q_idx, scale=self.scale,
                     softcap=self.softcap, window=window)
        return self.o_proj(out.reshape(b, g, t, n, d)), (k, v)
