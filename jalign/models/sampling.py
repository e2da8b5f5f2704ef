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

Three layers, so a trainer can put generation inside its own jitted step:

* `start` (prefill), `step_logprobs` (the distribution the next token is
  drawn from) and `advance` (draw one token, extend the caches) act on a
  `DecodeState`, the loop's carry;
* `sample` runs them: a pure, un-jitted function of the model(s), usable
  inside any ``jax.jit`` and traced under ``jalign.sharding.activate`` so the
  KV caches and outputs are sharded like activations (batch over the
  ``batch`` rule's axes, kv heads over ``act_kv_heads``);
* `generate` is ``sample`` under ``nnx.jit`` for standalone use.

The sources an online objective declares map to arguments: the policy, the
reference or a frozen previous iterate is ``model`` alone; the mixture is
``model`` (the policy) with ``ref_model`` and ``beta``. In a trainer's step,
with ``graphdef, params = nnx.split(policy)`` placed on the mesh::

    def rollout(params, prompt, prompt_mask, key, beta):
        with jalign.sharding.activate(mesh, rules):
            policy = nnx.merge(graphdef, params)
            return sample(policy, prompt, prompt_mask, key, cfg,
                          ref_model=reference_view(policy), beta=beta)

    jax.jit(rollout, in_shardings=(param_shardings, rows, rows, replicated, replicated))

`Generation.logprobs` at temperature 1 without top-k/top-p or a mixture
are the policy's log-probs of the tokens, as `jalign.models.scoring.score`
computes them for ``response_tokens=tokens[:, None]``,
``response_mask=mask[:, None]``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jalign.models.decoder import Decoder, PromptCache, default_positions
from jalign.models.layers import constrain

_NEG_INF = -jnp.inf

# Logical axes of the generation state: caches [L, B, S, K, D], per-slot [B, S], per-row [B, ...].
_CACHE_KV = (None, "batch", "length", "act_kv_heads", None)
_PER_SLOT = ("batch", "length")
_PER_ROW = ("batch", None)


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


def _draw(key: jax.Array, logp: jax.Array, cfg: SamplingConfig):
    """One token per row from log-probs [B, V] -> (tokens [B], their log-probs [B])."""
    if cfg.temperature > 0:
        token = jax.random.categorical(key, logp, axis=-1)
    else:
        token = jnp.argmax(logp, axis=-1)
    return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], -1)[:, 0]


def sample_token(key: jax.Array, logits: jax.Array, cfg: SamplingConfig):
    """Draws tokens from logits [B, V] -> (tokens [B], their log-probs [B])."""
    return _draw(key, filtered_logprobs(logits, cfg), cfg)


def left_align(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Moves each row's valid tokens to the right end: [B, T] -> [B, T] (stable)."""
    order = jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True)
    return jnp.take_along_axis(tokens, order, -1), jnp.take_along_axis(mask, order, -1)


def _shard_cache(cache: PromptCache) -> PromptCache:
    """The cache laid out like activations (a no-op without an active mesh and rules)."""
    return PromptCache(constrain(cache.k, _CACHE_KV), constrain(cache.v, _CACHE_KV),
                       constrain(cache.positions, _PER_SLOT), constrain(cache.valid, _PER_SLOT),
                       cache.length)


def _prefill(model: Decoder, tokens, mask, size):
    """Runs the left-aligned prompt [B, P] into a fresh cache of ``size`` slots -> (logits [B, V], cache)."""
    cache = _shard_cache(model.init_cache(tokens.shape[0], size))
    hidden, cache = model.decode(tokens, mask, default_positions(mask), cache, return_hidden=True)
    # Only the last position predicts a token: no [B, P, V] logits.
    return constrain(model.logits(hidden[:, -1]), _PER_ROW), _shard_cache(cache)


def _extend(model: Decoder, cache, token, live, positions):
    """Appends one token per row [B] -> (next logits [B, V], cache)."""
    logits, cache = model.decode(token[:, None], live[:, None], positions[:, None], cache)
    return constrain(logits[:, 0], _PER_ROW), _shard_cache(cache)


class DecodeState(NamedTuple):
    """The decode loop's carry after ``step`` tokens (``ref_*`` None without a reference).

    cache / ref_cache: KV caches of P + N slots, [L, B, P + N, K, D];
    logits / ref_logits [B, V]: each model's next-token logits; positions [B]:
    position of the next token; stops [B, S]; done [B]: rows that emitted a
    stop token; out: what has been generated so far.
    """

    step: jax.Array
    key: jax.Array
    cache: PromptCache
    logits: jax.Array
    ref_cache: PromptCache | None
    ref_logits: jax.Array | None
    positions: jax.Array
    stops: jax.Array
    done: jax.Array
    out: Generation


def start(model: Decoder, prompt: jax.Array, prompt_mask: jax.Array, key: jax.Array,
          cfg: SamplingConfig, stop_tokens: jax.Array | None = None,
          ref_model: Decoder | None = None) -> DecodeState:
    """Left-aligns and prefills prompts [B, P] (and the reference's cache): the state at step 0."""
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
    return DecodeState(jnp.asarray(0, jnp.int32), key, cache, logits, ref_cache, ref_logits,
                       mask.sum(-1).astype(jnp.int32), stops, jnp.zeros((b,), bool),
                       Generation(*(constrain(x, _PER_ROW) for x in out)))


def step_logprobs(state: DecodeState, cfg: SamplingConfig, beta=0.0) -> jax.Array:
    """Log-probs [B, V] of the distribution the next token is drawn from.

    The policy's logits, or with a reference the normalised geometric mixture
    pi^(1-beta) ref^beta, then temperature, top-k and top-p (`filtered_logprobs`).
    """
    logits = state.logits if state.ref_logits is None else mixture_logprobs(
        state.logits, state.ref_logits, beta)
    return filtered_logprobs(logits, cfg)


def advance(state: DecodeState, model: Decoder, cfg: SamplingConfig,
            ref_model: Decoder | None = None, beta=0.0) -> DecodeState:
    """Draws one token per live row from `step_logprobs` and appends it to the caches."""
    key, sub = jax.random.split(state.key)
    token, logp = _draw(sub, step_logprobs(state, cfg, beta), cfg)
    live = ~state.done
    token = jnp.where(live, token, cfg.pad_token)
    at = state.step
    out = Generation(state.out.tokens.at[:, at].set(token), state.out.mask.at[:, at].set(live),
                     state.out.logprobs.at[:, at].set(jnp.where(live, logp, 0.0)))
    done = state.done | (token[:, None] == state.stops).any(-1)
    logits, cache = _extend(model, state.cache, token, live, state.positions)
    ref_logits, ref_cache = (None, None) if ref_model is None else _extend(
        ref_model, state.ref_cache, token, live, state.positions)
    return DecodeState(at + 1, key, cache, logits, ref_cache, ref_logits, state.positions + 1,
                       state.stops, done, out)


def sample(model: Decoder, prompt: jax.Array, prompt_mask: jax.Array, key: jax.Array,
           cfg: SamplingConfig, stop_tokens: jax.Array | None = None,
           ref_model: Decoder | None = None, beta=0.0) -> Generation:
    """Samples up to ``cfg.max_new_tokens`` continuations of prompts [B, P]; not jitted.

    ``stop_tokens`` [S] (all rows) or [B, S] (per row; pad with -1) end a row
    once emitted. With ``ref_model``, tokens come from the geometric mixture
    pi^(1-beta) ref^beta of the two models' next-token distributions
    (``beta`` is traced: changing it does not recompile). ``ref_model`` may
    be `jalign.models.lora.reference_view` of ``model``. Put it in a
    ``jax.jit`` traced under ``jalign.sharding.activate(mesh, rules)`` to run
    it on a mesh; shapes are static and the loop stays on the devices.
    """
    state = start(model, prompt, prompt_mask, key, cfg, stop_tokens, ref_model)

    def cond(state):
        return (state.step < cfg.max_new_tokens) & ~jnp.all(state.done)

    def body(state):
        return advance(state, model, cfg, ref_model, beta)

    return jax.lax.while_loop(cond, body, state).out


@nnx.jit(static_argnames=("cfg",))
def generate(model: Decoder, prompt: jax.Array, prompt_mask: jax.Array, key: jax.Array,
             cfg: SamplingConfig, stop_tokens: jax.Array | None = None,
             ref_model: Decoder | None = None, beta=0.0) -> Generation:
    """`sample` compiled on its own (``cfg`` static), for generation outside a trainer's step."""
    return sample(model, prompt, prompt_mask, key, cfg, stop_tokens, ref_model, beta)
