"""KV-cache generation, filtering and mixture sampling against explicit computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_tiny import jit_forward, padded_batch
from jalign.models import Decoder, ModelConfig
from jalign.models.sampling import (SamplingConfig, filtered_logprobs, generate, left_align,
                                    mixture_logprobs, sample_token)


def _full_forward_logprobs(model, prompt, mask, generated, gen_mask):
    """Log-softmax of one uncached forward over each row's prompt + generated tokens.

    Rows are rebuilt right-padded (valid prompt tokens, then the generated
    ones); returns [B, N, V] next-token log-probs at the generated positions.
    """
    b, n = generated.shape
    seqs = np.zeros((b, prompt.shape[1] + n), np.int32)
    seq_mask = np.zeros(seqs.shape, bool)
    lengths = mask.sum(-1)
    for i in range(b):
        seqs[i, :lengths[i] + n] = np.concatenate([prompt[i][mask[i]], generated[i]])
        seq_mask[i, :lengths[i] + n] = np.concatenate([np.ones(lengths[i], bool), gen_mask[i]])
    logp = jax.nn.log_softmax(jit_forward(model, jnp.asarray(seqs), jnp.asarray(seq_mask)), -1)
    index = lengths[:, None] - 1 + np.arange(n)                            # [B, N]
    return np.take_along_axis(np.asarray(logp), index[..., None], 1)


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


def test_mixture_generation_matches_explicit(jalign_models):
    """Mixture tokens' log-probs equal the explicit mixture of two full forwards.

    Policy and reference are different models over the same vocabulary
    (gemma2 and llama); the explicit q = pi^(1-b) ref^b / Z is built from
    their uncached forwards over the generated sequences.
    """
    policy, ref = jalign_models("gemma2"), jalign_models("llama")
    tokens, mask, _ = padded_batch(seed=4)
    beta = 0.4
    out = generate(policy, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(2),
                   SamplingConfig(6), NO_STOP, ref_model=ref, beta=beta)
    gen, gen_mask = np.asarray(out.tokens), np.asarray(out.mask)
    lp = _full_forward_logprobs(policy, tokens, mask, gen, gen_mask)
    lr = _full_forward_logprobs(ref, tokens, mask, gen, gen_mask)
    q = np.exp(lp) ** (1 - beta) * np.exp(lr) ** beta
    q /= q.sum(-1, keepdims=True)
    np.testing.assert_allclose(out.logprobs, np.log(_picked(q, gen)), atol=1e-4)


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
