"""KV-cache generation, filtering and mixture sampling against explicit computations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_tiny import jit_forward, padded_batch
from jalign.models import Decoder, ModelConfig, load_hf
from jalign.models.lora import add_lora, reference_view
from jalign.models.sampling import (SamplingConfig, advance, filtered_logprobs, generate, left_align,
                                    mixture_logprobs, sample, sample_token, start, step_logprobs)
from jalign.models.scoring import score


def _full_forward_logits(model, prompt, mask, generated, gen_mask):
    """Logits of one uncached forward over each row's prompt + generated tokens.

    Rows are rebuilt right-padded (valid prompt tokens, then the generated
    ones); returns float64 [B, N, V] next-token logits at the generated positions.
    """
    b, n = generated.shape
    seqs = np.zeros((b, prompt.shape[1] + n), np.int32)
    seq_mask = np.zeros(seqs.shape, bool)
    lengths = mask.sum(-1)
    for i in range(b):
        seqs[i, :lengths[i] + n] = np.concatenate([prompt[i][mask[i]], generated[i]])
        seq_mask[i, :lengths[i] + n] = np.concatenate([np.ones(lengths[i], bool), gen_mask[i]])
    logits = np.asarray(jit_forward(model, jnp.asarray(seqs), jnp.asarray(seq_mask)), np.float64)
    index = lengths[:, None] - 1 + np.arange(n)                            # [B, N]
    return np.take_along_axis(logits, index[..., None], 1)


def _log_softmax(logits):
    """float64 NumPy log-softmax over the last axis."""
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _full_forward_logprobs(model, prompt, mask, generated, gen_mask):
    """float64 next-token log-probs [B, N, V] of the uncached forward (see `_full_forward_logits`)."""
    return _log_softmax(_full_forward_logits(model, prompt, mask, generated, gen_mask))


def _picked(logp, tokens):
    return np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]


NO_STOP = jnp.full((3, 1), -1, jnp.int32)


@pytest.mark.parametrize("family,temperature", [("gemma2", 1.0), ("gpt2", 1.0), ("qwen3", 0.0)])
def test_cached_generation_matches_full_forward(family, temperature, jalign_models):
    """Each generated token's log-prob equals log_softmax of a full uncached forward.

    Prompts are full, right-padded and left-padded; gemma2's window (4) is
    shorter than prompt + 8 generated tokens, gpt2 uses learned positions.
    Greedy (temperature 0) tokens are the full-forward argmax.
    """
    model = jalign_models(family)
    tokens, mask, _ = padded_batch(seed=2)
    out = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
                   SamplingConfig(8, temperature=temperature), NO_STOP)
    assert out.mask.all()
    logp = _full_forward_logprobs(model, tokens, mask, np.asarray(out.tokens),
                                  np.asarray(out.mask))
    np.testing.assert_allclose(out.logprobs, _picked(logp, out.tokens), atol=1e-4)
    if temperature == 0.0:
        np.testing.assert_array_equal(out.tokens, logp.argmax(-1))


def test_per_row_stop_tokens(jalign_models):
    """A row ends after its own stop token (kept, mask True), then pads follow.

    Reference: the same run (same key, same compiled program) without stops;
    rows are independent, so draws before the stop are identical.
    """
    model = jalign_models("gemma2")
    tokens, mask, _ = padded_batch(seed=2)
    run = SamplingConfig(8)
    free = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), run, NO_STOP)
    stops = jnp.array([[int(free.tokens[0, 2])], [int(free.tokens[1, 4])], [-1]], jnp.int32)
    stopped = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), run, stops)
    for b in range(3):
        hits = np.flatnonzero(np.asarray(free.tokens[b]) == int(stops[b, 0]))
        end = hits[0] + 1 if len(hits) else 8
        np.testing.assert_array_equal(stopped.mask[b], np.arange(8) < end)
        np.testing.assert_array_equal(stopped.tokens[b, :end], free.tokens[b, :end])
        assert (np.asarray(stopped.tokens[b, end:]) == run.pad_token).all()
    assert not stopped.mask[0, 3:].any() and stopped.mask[2].all()


def test_mixture_logprobs_explicit():
    """Equals pi^(1-b) ref^b / Z computed with numpy probabilities."""
    rng = np.random.default_rng(0)
    pol, ref = rng.normal(size=(2, 4, 7)) * 2
    for beta in (0.0, 0.3, 1.0):
        p = np.exp(pol) / np.exp(pol).sum(-1, keepdims=True)
        r = np.exp(ref) / np.exp(ref).sum(-1, keepdims=True)
        q = p ** (1 - beta) * r ** beta
        q /= q.sum(-1, keepdims=True)
        got = np.exp(mixture_logprobs(jnp.asarray(pol), jnp.asarray(ref), beta))
        np.testing.assert_allclose(got, q, atol=1e-6)


@nnx.jit
def _score(model, batch):
    return score(model, batch)


def test_generation_logprobs_equal_the_scoring_path(jalign_models):
    """At temperature 1 (no top-k/p, no mixture) `Generation.logprobs` are what training scores.

    The online trainer scores sampled responses with `jalign.models.scoring`:
    the original prompt [B, P] (any padding) and the generation as one
    right-padded response per prompt [B, 1, N]. Rows stop at different
    lengths (per-row stop tokens taken from a free run, as in
    `test_per_row_stop_tokens`, whose compiled program this reuses).
    Independent path: prompt encoded once, completions through the fused
    log-prob kernel; no KV cache.
    """
    model = jalign_models("gemma2")
    tokens, mask, _ = padded_batch(seed=2)
    run = SamplingConfig(8)
    free = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), run, NO_STOP)
    stops = jnp.array([[int(free.tokens[0, 2])], [int(free.tokens[1, 5])], [-1]], jnp.int32)
    out = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0), run, stops)
    lengths = np.asarray(out.mask).sum(-1)
    assert lengths[2] == 8 and lengths[0] <= 3 and lengths[1] <= 6, lengths
    batch = dict(prompt_tokens=jnp.asarray(tokens), prompt_mask=jnp.asarray(mask),
                 response_tokens=out.tokens[:, None], response_mask=out.mask[:, None])
    logprobs, target_mask = _score(model, batch)                              # [B, 1, N]
    np.testing.assert_array_equal(target_mask[:, 0], out.mask)
    np.testing.assert_allclose(np.where(out.mask, logprobs[:, 0], 0.0), out.logprobs, atol=1e-5, rtol=0)


def _explicit_filtered(logits, temperature, top_k, top_p):
    p = np.exp(logits / temperature)
    p /= p.sum()
    order = np.argsort(-p)
    keep = np.zeros_like(p, bool)
    keep[order[:top_k or len(p)]] = True
    if top_p is not None:    # on the top-k renormalised distribution, as HF warpers chain
        p = np.where(keep, p, 0) / p[keep].sum()
        mass = 0.0
        for i in order:
            keep[i] &= mass < top_p
            mass += p[i]
    q = np.where(keep, p, 0)
    return q / q.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.5, None, None), (1.0, 3, None),
                                                    (1.0, None, 0.7), (2.0, 4, 0.8)])
def test_filtering_and_sampling_frequencies(temperature, top_k, top_p):
    """Filtered distribution equals a loop-based numpy filter; 40k draws match it."""
    logits = np.array([2.0, 1.5, 0.3, -0.2, 1.0, -1.0], np.float32)
    cfg = SamplingConfig(1, temperature=temperature, top_k=top_k, top_p=top_p)
    want = _explicit_filtered(logits.astype(np.float64), temperature, top_k, top_p)
    np.testing.assert_allclose(np.exp(filtered_logprobs(jnp.asarray(logits), cfg)), want,
                               atol=1e-6)
    keys = jax.random.split(jax.random.key(0), 40_000)
    draws, _ = jax.vmap(lambda k: sample_token(k, jnp.asarray(logits)[None], cfg))(keys)
    freq = np.bincount(np.asarray(draws[:, 0]), minlength=len(logits)) / len(keys)
    np.testing.assert_allclose(freq, want, atol=0.012)


def _lora_policy(directory):
    """The checkpoint with LoRA adapters whose B matrices are redrawn, so policy != base."""
    policy = load_hf(directory)
    add_lora(policy, rank=4, alpha=8.0, targets=("q_proj", "v_proj", "up_proj"), rngs=nnx.Rngs(1))
    rng = np.random.default_rng(3)
    nnx.update(policy, jax.tree.map(lambda x: x if x.any() else 0.3 * rng.normal(size=x.shape).astype(np.float32),
                                    nnx.state(policy, nnx.LoRAParam)))
    return policy


@nnx.jit(static_argnames=("cfg",))
@chex.assert_max_traces(n=1)
def _mixture_steps(policy, prompt, mask, key, beta, cfg):
    """The LoRA base view as reference, inside one jit: the sampler's per-step log-probs.

    Runs `start`, then `advance` N times, keeping `step_logprobs` before each
    draw: logps [N, B, V], the generation, and `sample`'s own generation with
    the same key (the loop `sample` runs is made of these same steps).
    """
    ref = reference_view(policy)

    def step(state, _):
        return advance(state, policy, cfg, ref, beta), step_logprobs(state, cfg, beta)

    state, logps = jax.lax.scan(step, start(policy, prompt, mask, key, cfg, None, ref), length=cfg.max_new_tokens)
    return logps, state.out, sample(policy, prompt, mask, key, cfg, ref_model=ref, beta=beta)


def test_mixture_distribution_equals_normalised_product_of_full_logits(hf_checkpoints):
    """The mixture sampler's next-token distribution is normalise(pi^(1-b) ref^b), b in {0, 0.3, 1}.

    pi is a gemma2 checkpoint with LoRA adapters, ref its LoRA base view
    (`reference_view`, same module, one jit). Independent reference: each
    model's plain forward ``model(tokens, mask)`` over prompt + generated
    prefix (ref: the checkpoint loaded without adapters), softmax in float64
    NumPy, powers multiplied and renormalised; compared to 1e-5 at all 6
    decode positions (beyond gemma2's window of 4). ``beta`` is traced: the
    three values share one trace (``chex.assert_max_traces``).
    """
    directory, _ = hf_checkpoints("gemma2")
    policy, base = _lora_policy(directory), load_hf(directory)
    tokens, mask, _ = padded_batch(seed=4)
    cfg = SamplingConfig(6)
    for beta in (0.0, 0.3, 1.0):
        logps, out, sampled = _mixture_steps(policy, jnp.asarray(tokens), jnp.asarray(mask),
                                             jax.random.key(2), jnp.float32(beta), cfg)
        np.testing.assert_array_equal(out.tokens, sampled.tokens)
        np.testing.assert_array_equal(out.logprobs, sampled.logprobs)
        gen, gen_mask = np.asarray(out.tokens), np.asarray(out.mask)
        assert gen_mask.all()
        lp = _full_forward_logprobs(policy, tokens, mask, gen, gen_mask)       # [B, N, V]
        lr = _full_forward_logprobs(base, tokens, mask, gen, gen_mask)
        q = np.exp((1 - beta) * lp + beta * lr)
        q /= q.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.exp(np.asarray(logps)).transpose(1, 0, 2), q, atol=1e-5, rtol=0,
                                   err_msg=f"{beta=}")
        if beta == 0.3:   # the two endpoints differ, so the mixture is a real mixture
            assert np.abs(np.exp(lp) - np.exp(lr)).max() > 1e-2


def test_left_align():
    """Valid tokens move to the right end in order; left-padded rows are unchanged."""
    tokens = jnp.array([[5, 6, 7, 0], [0, 0, 8, 9]])
    mask = tokens > 0
    aligned, amask = left_align(tokens, mask)
    np.testing.assert_array_equal(aligned, [[0, 5, 6, 7], [0, 0, 8, 9]])
    np.testing.assert_array_equal(amask, [[False, True, True, True], [False, False, True, True]])


def test_decode_updates_the_stacked_cache_in_place():
    """One decode step with the cache donated needs far less temporary memory than the cache itself.

    The layers are scanned over a stacked [L, B, S, K, D] cache; a copy of it per step (or per layer)
    would show up in XLA's temporaries. The bound is XLA's own memory analysis of the compiled step.
    """
    cfg = ModelConfig("llama", vocab_size=64, hidden_size=32, num_layers=4, num_heads=4, num_kv_heads=2,
                      head_dim=16, mlp_dim=64)
    graphdef, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    cache = Decoder(cfg, rngs=nnx.Rngs(0)).init_cache(2, 1024)
    cache_bytes = cache.k.nbytes + cache.v.nbytes

    def step(state, cache, token):
        model = nnx.merge(graphdef, state)
        return model.decode(token, jnp.ones_like(token, bool), jnp.zeros_like(token), cache)[1]

    token = jnp.zeros((2, 1), jnp.int32)
    compiled = jax.jit(step, donate_argnums=1).lower(state, cache, token).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < cache_bytes / 2
