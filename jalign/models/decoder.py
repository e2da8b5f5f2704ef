"""The decoder: one implementation for Llama, Mistral, Qwen2/3, Gemma/Gemma 2, GPT-2.

Three ways to run it, all through the same blocks:

* ``model(tokens, mask)``: a padded batch [B, T] -> fp32 logits [B, T, V], or
  final-normed hidden states [B, T, E] with ``return_hidden=True`` for the
  fused log-prob kernels (they take `Decoder.output_projection`).
* ``encode_prompt`` then ``forward_completions``: a prompt [B, P] is encoded
  once and G completions [B, G, C] attend to its keys without copying them.
* ``init_cache`` then ``decode``: a fixed-size KV cache for generation
  (`jalign.models.sampling`).

The L blocks are one `Block` whose parameters carry a leading layer axis
(logical name "layers"), run by ``jax.lax.scan``: the block is traced once,
so the program and its compile time do not grow with depth. What differs
between layers (the sliding window of Gemma 2's alternating layers) is a
per-layer array scanned alongside the parameters. ``cfg.remat`` names the
``jax.checkpoint`` policy applied to each block.

Padding may be left or right; positions default to ``cumsum(mask) - 1``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.models.attention import Attention, Context
from jalign.models.config import ModelConfig
from jalign.models.layers import MLP, Norm, Projection, constrain, param, rope_frequencies

# A full-attention layer among sliding-window ones: q_pos - k_pos is always below this.
_NO_WINDOW = np.iinfo(np.int32).max

# Logical axes of the residual stream [B, G, T, E]: each block's output and so the scan's carry.
_RESIDUAL = ("batch", None, "length", "act_embed")

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_all": jax.checkpoint_policies.checkpoint_dots,
}


class PromptCache(NamedTuple):
    """Keys/values of an encoded prompt (also the generation KV cache).

    k, v: stacked over layers [L, B, S, K, D]; positions [B, S] int32;
    valid [B, S] bool; length: int32 scalar, the number of filled slots.
    """

    k: jax.Array
    v: jax.Array
    positions: jax.Array
    valid: jax.Array
    length: jax.Array


class OutputProjection(NamedTuple):
    """What a fused log-prob kernel needs: logits = softcap(hidden @ kernel + bias)."""

    kernel: jax.Array          # [E, V]
    bias: jax.Array | None     # [V]
    softcap: float | None      # final-logit soft-cap: cap * tanh(logits / cap)


def default_positions(mask: jax.Array) -> jax.Array:
    """Positions of valid tokens counted from 0 in each row: mask [..., T] -> [..., T]."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


class Block(nnx.Module):
    """Pre-norm residual block; Gemma 2 adds norms after attention and MLP."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e = cfg.hidden_size
        self.input_norm = Norm(e, cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = Norm(e, cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)
        self.post_attn_norm = Norm(e, cfg, rngs=rngs) if cfg.post_norms else None
        self.post_mlp_norm = Norm(e, cfg, rngs=rngs) if cfg.post_norms else None

    def __call__(self, x, ctx: Context, inv_freq, kv, window):
        """x [B, G, T, E] -> ([B, G, T, E], kept keys/values; see `Attention`)."""
        h, kv = self.attn(self.input_norm(x), ctx, inv_freq, kv, window)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        x = x + h
        h = self.mlp(self.mlp_norm(x))
        if self.post_mlp_norm is not None:
            h = self.post_mlp_norm(h)
        return constrain(x + h, _RESIDUAL), kv


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    """``cfg.num_layers`` independently initialised blocks as one `Block` with [L, ...] parameters."""
    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(rngs):
        return Block(cfg, rngs=rngs)
    return build(rngs)


class Decoder(nnx.Module):
    """Decoder-only transformer configured by a `ModelConfig`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e, v = cfg.hidden_size, cfg.vocab_size
        self.embed = param(rngs, (v, e), ("vocab", "embed"), cfg.param_dtype)
        self.pos_embed = (param(rngs, (cfg.max_positions, e), ("positions", "embed"),
                                cfg.param_dtype) if cfg.positions == "learned" else None)
        self.layers = stacked_blocks(cfg, rngs)
        self.final_norm = Norm(e, cfg, rngs=rngs)
        self.lm_head = None if cfg.tie_embeddings else Projection(
            "E", "V", (e,), (v,), ("embed", "vocab"), bias=False, dtype=cfg.dtype,
            param_dtype=cfg.param_dtype, rngs=rngs)

    def output_projection(self) -> OutputProjection:
        """The [E, V] output kernel (the embedding transposed when tied)."""
        kernel = self.embed[...].T if self.lm_head is None else self.lm_head.kernel[...]
        return OutputProjection(kernel, None, self.cfg.final_softcap)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., E] -> fp32 logits [..., V], soft-capped when configured."""
        out = self.output_projection()
        logits = jnp.einsum("...E,EV->...V", hidden, out.kernel.astype(hidden.dtype),
                            preferred_element_type=jnp.float32)
        if out.softcap is not None:
            logits = jnp.tanh(logits / out.softcap) * out.softcap
        return logits

    def token_embeddings(self, tokens: jax.Array) -> jax.Array:
        """The embedding rows of ``tokens`` [..., T] -> [..., T, E] in the parameter dtype.

        What Hugging Face calls ``inputs_embeds``: before Gemma's scaling and
        GPT-2's position embeddings, which the decoder adds to whatever
        embeddings it is given.
        """
        return self.embed[...][tokens]

    def _embed(self, tokens: jax.Array, positions: jax.Array, embeddings: jax.Array | None = None) -> jax.Array:
        rows = self.token_embeddings(tokens) if embeddings is None else embeddings
        x = rows.astype(self.cfg.dtype)                                    # [..., T, E]
        if self.cfg.embed_scale:
            x = x * jnp.asarray(self.cfg.hidden_size ** 0.5, self.cfg.dtype)
        if self.pos_embed is not None:
            x = x + self.pos_embed[...][positions].astype(self.cfg.dtype)
        return x

    def _windows(self) -> jax.Array | None:
        """Per-layer sliding windows [L] int32, or None when no layer has one."""
        windows = self.cfg.windows()
        if all(w is None for w in windows):
            return None
        return jnp.asarray([_NO_WINDOW if w is None else w for w in windows], jnp.int32)

    def _run(self, tokens, ctx: Context, kvs, return_hidden: bool | str, *, keep_kv: bool = False,
             embeddings: jax.Array | None = None):
        """tokens [B, G, T] -> (logits [B, G, T, V], hidden, or per-layer states; kept k/v or None).

        ``kvs``: None, or a prompt's or cache's (k, v) [L, B, S, K, D], read only.
        ``return_hidden="layers"`` returns every block's output ``[L, B, G, T, E]``
        (the residual stream before the final norm) instead of the final hidden states.
        ``keep_kv`` keeps each layer's own (k, v), stacked [L, B, G, T, K, D].
        ``embeddings`` [B, G, T, E], when given, replace the rows of ``tokens``
        (see :meth:`token_embeddings`).
        """
        # The carry enters the scan with the layout each block gives it (an explicit mesh checks).
        x = constrain(self._embed(tokens, ctx.q_pos, embeddings), _RESIDUAL)
        inv_freq = rope_frequencies(self.cfg)
        graphdef, layers = nnx.split(self.layers)

        def body(x, per_layer):
            layer, window, kv = per_layer
            x, own = nnx.merge(graphdef, layer)(x, ctx, inv_freq, kv, window)
            return x, (own if keep_kv else None, x if return_hidden == "layers" else None)

        if self.cfg.remat != "none":
            # Under scan, XLA cannot merge the recomputation into the forward, so the CSE guard is not needed
            # (jax.checkpoint's documentation recommends prevent_cse=False there).
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        x, (kept, states) = jax.lax.scan(body, x, (layers, self._windows(), kvs))
        if return_hidden == "layers":
            return states, kept
        x = self.final_norm(x)
        return (x if return_hidden else self.logits(x)), kept

    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None,
                 positions: jax.Array | None = None, *, return_hidden: bool = False):
        """tokens, mask, positions [B, T] -> logits [B, T, V] (or hidden [B, T, E])."""
        mask = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
        positions = default_positions(mask) if positions is None else positions
        ctx = Context(positions[:, None], jnp.arange(tokens.shape[1]), mask[:, None])
        out, _ = self._run(tokens[:, None], ctx, None, return_hidden)
        return out[:, 0]

    def encode_prompt(self, tokens: jax.Array, mask: jax.Array | None = None, *,
                      embeddings: jax.Array | None = None) -> PromptCache:
        """Encodes a prompt [B, P] once; completions then attend to its keys.

        ``embeddings`` [B, P, E], when given, replace the token rows (see
        :meth:`token_embeddings`).
        """
        mask = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
        positions = default_positions(mask)
        ctx = Context(positions[:, None], jnp.arange(tokens.shape[1]), mask[:, None])
        given = None if embeddings is None else embeddings[:, None]
        _, (k, v) = self._run(tokens[:, None], ctx, None, return_hidden=True, keep_kv=True, embeddings=given)
        return PromptCache(k[:, :, 0], v[:, :, 0], positions, mask,                # [L, B, P, K, D]
                           jnp.asarray(tokens.shape[1], jnp.int32))

    def forward_completions(self, prompt: PromptCache, tokens: jax.Array,
                            mask: jax.Array | None = None, *, return_hidden: bool | str = False,
                            embeddings: jax.Array | None = None):
        """G completions per prompt, tokens/mask [B, G, C] -> logits [B, G, C, V].

        Equals running the model on each prompt+completion concatenation, with
        the completion positions continuing the prompt's. ``return_hidden``:
        True gives the final hidden states [B, G, C, E]; ``"layers"`` every
        block's output [L, B, G, C, E]. ``embeddings`` [B, G, C, E], when
        given, are fed in place of the rows of ``tokens`` (Hugging Face's
        ``inputs_embeds``; IFT's mixed inputs, `jalign.models.scoring`).
        """
        mask = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
        start = prompt.valid.sum(-1).astype(jnp.int32)[:, None, None]       # [B, 1, 1]
        positions = start + default_positions(mask)
        q_idx = prompt.length + jnp.arange(tokens.shape[-1])
        ctx = Context(positions, q_idx, mask, prompt.positions,
                      jnp.arange(prompt.valid.shape[1]), prompt.valid)
        out, _ = self._run(tokens, ctx, (prompt.k, prompt.v), return_hidden, embeddings=embeddings)
        return out

    def init_cache(self, batch: int, size: int) -> PromptCache:
        """An empty KV cache of ``size`` slots per row, [L, batch, size, K, D] keys and values."""
        shape = (self.cfg.num_layers, batch, size, self.cfg.num_kv_heads, self.cfg.head_dim)
        zeros = jnp.zeros(shape, self.cfg.dtype)
        return PromptCache(zeros, zeros, jnp.zeros((batch, size), jnp.int32),
                           jnp.zeros((batch, size), bool), jnp.asarray(0, jnp.int32))

    def decode(self, tokens: jax.Array, mask: jax.Array, positions: jax.Array,
               cache: PromptCache, *, return_hidden: bool = False) -> tuple[jax.Array, PromptCache]:
        """Appends tokens [B, T] at slot ``cache.length``: -> (logits [B, T, V], cache).

        ``return_hidden`` gives the final hidden states [B, T, E] instead (a
        prefill needs only the last position's logits, `Decoder.logits`).
        """
        t = tokens.shape[1]
        at = cache.length
        kv_pos = jax.lax.dynamic_update_slice(cache.positions, positions.astype(jnp.int32), (0, at))
        kv_valid = jax.lax.dynamic_update_slice(cache.valid, mask.astype(bool), (0, at))
        ctx = Context(positions[:, None], at + jnp.arange(t), mask[:, None].astype(bool),
                      kv_pos, jnp.arange(cache.valid.shape[1]), kv_valid, at)
        logits, own = self._run(tokens[:, None], ctx, (cache.k, cache.v), return_hidden, keep_kv=True)
        # The scan only reads the cache; writing the new slots after it lets XLA update it in place.
        k, v = (jax.lax.dynamic_update_slice(c, o[:, :, 0].astype(c.dtype), (0, 0, at, 0, 0))
                for c, o in zip((cache.k, cache.v), own))                  # [L, B, S, K, D]
        new = PromptCache(k, v, kv_pos, kv_valid, at + t)
        return logits[:, 0], new
