"""Generation with a KV cache: temperature, top-k, top-p, stop tokens, mixtures.

Prompts come as a padded batch [B, P] (left or right padding); they are
left-aligned so every row's next token goes to the same cache slot, then
prefilled in one pass. The decode loop is a ``lax.while_loop`` that stops
when every row has emitted a stop token or ``max_new_tokens`` are out.

Mixture sampling (Nash-MD, IPO-MD) draws from the per-token geometric
mixture of a policy and a reference model,

    log q(y) = (1 - b) log_softmax(policy)(y) + b log_softmax(ref)(y) - log Z,

i.e. q ∝ pi^(1-b) ref^b; the reference keeps its own KV cache. With LoRA the
reference is the same weights with adapters disabled (`jalign.models.lora`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jalign.models.decoder import Decoder, default_positions

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling settings (part of the compiled program)."""

    max_new_tokens: int
    temperature: float = 1.0          # 0 means greedy (argmax)
    top_k: int | None = None          # keep the k most likely tokens
    top_p: float | None = None        # keep the smallest set with mass >= top_p
    pad_token: int = 0                 # written after a row has stopped


class Generation(NamedTuple):
    """tokens [B, N] (pad after a stop), mask [B, N] (stop token included),
    logprobs [B, N]: log-prob of each token under the distribution it was drawn
    from (after mixing, temperature, top-k, top-p; temperature 1 when greedy)."""

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array


def mixture_logprobs(policy_logits: jax.Array, ref_logits: jax.Array, beta) -> jax.Array:
    """Normalised log q of q ∝ pi^(1-beta) ref^beta; logits [..., V] -> [..., V] fp32."""
    mixed = ((1.0 - beta) * jax.nn.log_softmax(policy_logits.astype(jnp.float32), -1)
             + beta * jax.nn.log_softmax(ref_logits.astype(jnp.float32), -1))
    return jax.nn.log_softmax(mixed, -1)


def filtered_logprobs(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Log-probs [..., V] of the sampling distribution: temperature, top-k, top-p.

    Removed tokens get -inf. top-p keeps a token when the mass of strictly
    more likely tokens is below ``top_p`` (so at least one token survives).
    """
    logits = logits.astype(jnp.float32)
    if cfg.temperature > 0:
        logits = logits / cfg.temperature
    if cfg.top_k is not None:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][..., -1:]                # [..., 1]
        logits = jnp.where(logits >= kth, logits, _NEG_INF)
    if cfg.top_p is not None:
        sorted_logits = -jnp.sort(-logits, axis=-1)                      # descending
        sorted_probs = jax.nn.softmax(sorted_logits, -1)
        mass_before = jnp.cumsum(sorted_probs, -1) - sorted_probs
        kept = jnp.where(mass_before < cfg.top_p, sorted_logits, jnp.inf)
        cutoff = jnp.min(kept, axis=-1, keepdims=True)                     # [..., 1]
        logits = jnp.where(logits >= cutoff, logits, _NEG_INF)
    return jax.nn.log_softmax(logits, -1)


def sample_token(key: jax.Array, logits: jax.Array, cfg: SamplingConfig):
    """Draws tokens from logits [B, V] -> (tokens [B], their log-probs [B])."""
    logp = filtered_logprobs(logits, cfg)
    if cfg.temperature > 0:
        token = jax.random.categorical(key, logp, axis=-1)
    else:
        token = jnp.argmax(logp, axis=-1)
    return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], -1)[:, 0]


def left_align(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Moves each row's valid tokens to the right end: [B, T] -> [B, T] (stable)."""
    order = jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True)
    return jnp.take_along_axis(tokens, order, -1), jnp.take_along_axis(mask, order, -1)


def _prefill(model: Decoder, tokens, mask, size):
    positions = default_positions(mask)
    logits, cache = model.decode(tokens, mask, positions, model.init_cache(tokens.shape[0], size))
    return logits[:, -1], cache


def _next_logits(logits, ref_logits, beta):
    """What to sample from: the policy's logits, or the geometric mixture's log-probs."""
    if ref_logits is None:
        return logits
    return mixture_logprobs(logits, ref_logits, beta)


@nnx.jit(static_argnames=("cfg",))
def generate(model: Decoder, prompt: jax.Array, prompt_mask: jax.Array, key: jax.Array,
             cfg: SamplingConfig, stop_tokens: jax.Array | None = None,
             ref_model: Decoder | None = None, beta=0.0) -> Generation:
    """Samples up to ``cfg.max_new_tokens`` continuations of prompts [B, P].

    ``stop_tokens`` [S] (all rows) or [B, S] (per row; pad with -1) end a row
    once emitted. With ``ref_model``, tokens come from the geometric mixture
    pi^(1-beta) ref^beta of the two models' next-token distributions
    (``beta`` is traced: changing it does not recompile).
    """
    tokens, mask = left_align(prompt, prompt_mask.astype(bool))
    b, n = tokens.shape[0], cfg.max_new_tokens
    size = tokens.shape[1] + n
    if model.cfg.positions == "learned" and size > model.cfg.max_positions:
        raise ValueError(f"prompt + {n} new tokens = {size} exceeds {model.cfg.max_positions=}")
    logits, cache = _prefill(model, tokens, mask, size)
    ref_logits, ref_cache = (None, None) if ref_model is None else _prefill(
        ref_model, tokens, mask, size)
    stops = jnp.full((b, 1), -1, jnp.int32) if stop_tokens is None else jnp.broadcast_to(
        stop_tokens, (b,) + stop_tokens.shape[-1:]).astype(jnp.int32)   # [B, S]
    out = Generation(jnp.full((b, n), cfg.pad_token, jnp.int32), jnp.zeros((b, n), bool),
                     jnp.zeros((b, n), jnp.float32))
    positions = mask.sum(-1).astype(jnp.int32)                             # [B]

    def cond(carry):
        step, done = carry[0], carry[-1]
        return (step < n) & ~jnp.all(done)

    def body(carry):
        step, key, cache, logits, ref_cache, ref_logits, out, done = carry
        key, sub = jax.random.split(key)
        token, logp = sample_token(sub, _next_logits(logits, ref_logits, beta), cfg)
        live = ~done
        token = jnp.where(live, token, cfg.pad_token)
        out = Generation(out.tokens.at[:, step].set(token), out.mask.at[:, step].set(live),
                         out.logprobs.at[:, step].set(jnp.where(live, logp, 0.0)))
        done = done | (token[:, None] == stops).any(-1)
        pos = (positions + step)[:, None]
        logits, cache = model.decode(token[:, None], live[:, None], pos, cache)
        if ref_model is not None:
            ref_logits, ref_cache = ref_model.decode(token[:, None], live[:, None], pos, ref_cache)
            ref_logits = ref_logits[:, 0]
        return step + 1, key, cache, logits[:, 0], ref_cache, ref_logits, out, done

    carry = (jnp.asarray(0), key, cache, logits, ref_cache, ref_logits, out,
             jnp.zeros((b,), bool))
    return jax.lax.while_loop(cond, body, carry)[-2]
