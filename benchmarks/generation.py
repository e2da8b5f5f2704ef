"""KV-cache generation against recomputing the whole prefix every token, in one run.

Both decode greedily, inside one compiled program each (no host round trip per
token), from the same random-weight Llama-style decoder and prompts [B, P]:

* ``kv cache``: `jalign.models.sampling.generate` (prefill once, then one
  token per step against a cache of P + N slots);
* ``recompute``: a ``lax.fori_loop`` of N full forwards over a fixed
  [B, P + N] buffer with a validity mask (tokens not generated yet are
  masked out and, being later in the sequence, invisible to the causal
  attention anyway); only the hidden state predicting the next token goes
  through the output projection. One compile, as fair to it as to the cache.

The two must produce the same tokens (asserted). Time is the median of
``--reps`` runs after one warm-up (which includes compilation, reported
separately); tokens/s counts the B * N generated tokens.

    python benchmarks/generation.py                          # CPU defaults
    python benchmarks/generation.py --batch 16 --prompt 512 --new 512 --hidden 1024 --layers 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.models import Decoder, ModelConfig
from jalign.models.sampling import SamplingConfig, generate, left_align


@nnx.jit(static_argnames=("new",))
def recompute(model: Decoder, prompt: jax.Array, prompt_mask: jax.Array, new: int) -> jax.Array:
    """Greedy tokens [B, new]: each one from a full forward over prompt [B, P] + tokens so far."""
    tokens, mask = left_align(prompt, prompt_mask.astype(bool))
    b, p = tokens.shape
    buffer = jnp.concatenate([tokens, jnp.zeros((b, new), jnp.int32)], 1)      # [B, P + N]
    valid = jnp.concatenate([mask, jnp.zeros((b, new), bool)], 1)

    def body(t, carry):
        buffer, valid = carry
        hidden = model(buffer, valid, return_hidden=True)                    # [B, P + N, E]
        last = jax.lax.dynamic_index_in_dim(hidden, p + t - 1, axis=1, keepdims=False)  # [B, E]
        token = jnp.argmax(model.logits(last), -1).astype(jnp.int32)          # [B]
        return buffer.at[:, p + t].set(token), valid.at[:, p + t].set(True)

    buffer, _ = jax.lax.fori_loop(0, new, body, (buffer, valid))
    return buffer[:, p:]


def timed(fn, reps: int) -> tuple[float, float, object]:
    """(first call incl. compile, median of ``reps`` later calls) in seconds, and the output."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new", type=int, default=64, help="tokens generated per row")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtype", default="float32" if jax.default_backend() == "cpu" else "bfloat16")
    args = p.parse_args()
    heads = args.hidden // args.head_dim
    cfg = ModelConfig("llama", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                      num_heads=heads, num_kv_heads=max(heads // 2, 1), head_dim=args.head_dim,
                      mlp_dim=4 * args.hidden, dtype=args.dtype, param_dtype=args.dtype)
    model = nnx.jit(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))()
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(3, args.vocab, (args.batch, args.prompt)), jnp.int32)
    mask = jnp.ones(prompt.shape, bool)
    greedy = SamplingConfig(args.new, temperature=0.0)
    print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} {args.dtype} "
          f"llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, {n_params / 1e6:.1f}M params; "
          f"batch {args.batch}, prompt {args.prompt}, new tokens {args.new}, greedy")
    runs = {"kv cache": lambda: generate(model, prompt, mask, jax.random.key(0), greedy).tokens,
            "recompute": lambda: recompute(model, prompt, mask, args.new)}
    results = {name: timed(fn, args.reps) for name, fn in runs.items()}
    kv_tokens, naive_tokens = (np.asarray(results[n][2]) for n in runs)
    same = kv_tokens == naive_tokens
    assert same.all(), f"greedy tokens differ at {np.argwhere(~same)[:5].tolist()} (row, step)"
    print(f"{'method':>10} {'first s':>8} {'median ms':>10} {'tokens/s':>10}")
    for name, (first, median, _) in results.items():
        print(f"{name:>10} {first:>8.1f} {median * 1e3:>10.1f} {args.batch * args.new / median:>10.0f}")
    speedup = results["recompute"][1] / results["kv cache"][1]
    print(f"kv cache / recompute tokens/s: {speedup:.2f}x   (same greedy tokens: {same.size} of {same.size})")


if __name__ == "__main__":
    main()
