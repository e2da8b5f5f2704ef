"""Fused sequence log-probs against the naive full-logits op, in one run.

For each vocabulary size V the script builds bf16 hidden states [N, H] and an
output projection [H, V] and reports, for the forward pass (sum of
log-probs) and forward+backward (gradients of hidden and weight):

* peak memory: `compiled.memory_analysis()` of the jitted function, temp +
  output bytes (arguments excluded: both ops get the same inputs). Needs only
  compilation, so it is taken at ``--mem-tokens`` (default 8192) even where
  running the naive op would not fit;
* inputs are bf16 on accelerators and fp32 on CPU (``--dtype``);
* time: median wall-clock of ``--reps`` runs after one warm-up, at
  ``--tokens`` (default 512 on CPU, 8192 elsewhere);
* both as ratios naive / fused, and model TFLOP/s (2NHV forward, 6NHV
  forward+backward) with the fraction of ``--peak-tflops`` on accelerators.

Usage: python benchmarks/logprobs.py [--impl auto] [--vocab 32768 131072]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jalign.kernels import block_sizes_for, resolve_impl, sequence_logprobs

H100_BF16_DENSE_TFLOPS = 989.0


def _functions(impl, block_sizes=None):
    kw = {"impl": impl, "block_sizes": block_sizes}

    def fwd(h, w, t, m):
        return jnp.sum(sequence_logprobs(h, w, t, m, **kw).logprobs)

    return {"fwd": jax.jit(fwd),
            "fwd+bwd": jax.jit(jax.grad(fwd, argnums=(0, 1)))}


def _block_sizes(impl, spec):
    """The impl's BlockSizes from "field=value,..." (None: default)."""
    if not spec:
        return None
    fields = dict(kv.split("=") for kv in spec.split(","))
    return block_sizes_for(impl, **{k: int(v) for k, v in fields.items()})


def _inputs(n, h, v, dtype, valid_fraction, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k[0], (n, h), dtype)
    weight = (jax.random.normal(k[1], (h, v), jnp.float32)
              / h ** 0.5).astype(dtype)
    targets = jax.random.randint(k[2], (n,), 0, v)
    return hidden, weight, targets, jax.random.bernoulli(k[3], valid_fraction,
                                                         (n,))


def _abstract(n, h, v, dtype):
    s = jax.ShapeDtypeStruct
    return (s((n, h), dtype), s((h, v), dtype),
            s((n,), jnp.int32), s((n,), jnp.bool_))


def peak_bytes(fn, args):
    """temp + output bytes of the compiled function (no execution)."""
    mem = fn.lower(*args).compile().memory_analysis()
    return mem.temp_size_in_bytes + mem.output_size_in_bytes


def median_seconds(fn, args, reps):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_vocab(v, args, fused_impl):
    """One row per pass (fwd, fwd+bwd) for vocabulary size v."""
    naive = _functions("naive")
    fused = _functions(fused_impl, _block_sizes(fused_impl, args.blocks))
    dtype = jnp.dtype(args.dtype)
    mem_args = _abstract(args.mem_tokens, args.hidden, v, dtype)
    run_args = _inputs(args.tokens, args.hidden, v, dtype,
                       args.valid_fraction)
    rows = []
    for name in ("fwd", "fwd+bwd"):
        mem_n = peak_bytes(naive[name], mem_args)
        mem_f = peak_bytes(fused[name], mem_args)
        t_n = median_seconds(naive[name], run_args, args.reps)
        t_f = median_seconds(fused[name], run_args, args.reps)
        flops = (2 if name == "fwd" else 6) * args.tokens * args.hidden * v
        rows.append((v, name, mem_n, mem_f, t_n, t_f, flops))
    return rows


def main():
    backend = jax.default_backend()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, nargs="+",
                   default=[32768, 131072, 262144])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--tokens", type=int,
                   default=512 if backend == "cpu" else 8192)
    p.add_argument("--mem-tokens", type=int, default=8192)
    p.add_argument("--impl", default="auto",
                   help="fused implementation (auto, chunked, pallas_tpu, "
                        "pallas_gpu)")
    p.add_argument("--blocks", default="",
                   help='tile sizes of the fused impl, e.g. '
                        '"block_n=64,block_v=128,block_k=64,num_warps=4"')
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--valid-fraction", type=float, default=1.0,
                   help="fraction of unmasked tokens in the timed runs (the "
                        "fused op skips masked ones; TFLOP/s count all N)")
    p.add_argument("--dtype", default="float32" if backend == "cpu"
                   else "bfloat16",
                   help="hidden/weight dtype (CPU default float32: XLA:CPU "
                        "has no bf16 matmul and hoists an fp32 copy of the "
                        "whole bf16 weight out of the vocabulary loop)")
    p.add_argument("--peak-tflops", type=float,
                   default=H100_BF16_DENSE_TFLOPS)
    args = p.parse_args()
    impl = resolve_impl(args.impl)
    print(f"backend={backend} device={jax.devices()[0].device_kind} "
          f"fused={impl} blocks={args.blocks or 'default'} "
          f"H={args.hidden} N(time)={args.tokens} "
          f"N(memory)={args.mem_tokens} {args.dtype} inputs, fp32 "
          f"log-sum-exp, valid fraction {args.valid_fraction}")
    print(f"{'V':>7} {'pass':>8} {'naive MiB':>10} {'fused MiB':>10} "
          f"{'mem x':>7} {'naive ms':>9} {'fused ms':>9} {'speed x':>8} "
          f"{'naive TF/s':>10} {'fused TF/s':>10}"
          + ("" if backend == "cpu" else f" {'fused %peak':>11}"))
    for v in args.vocab:
        for v_, name, mem_n, mem_f, t_n, t_f, flops in bench_vocab(
                v, args, impl):
            line = (f"{v_:>7} {name:>8} {mem_n / 2**20:>10.1f} "
                    f"{mem_f / 2**20:>10.1f} {mem_n / mem_f:>7.1f} "
                    f"{t_n * 1e3:>9.1f} {t_f * 1e3:>9.1f} {t_n / t_f:>8.2f} "
                    f"{flops / t_n / 1e12:>10.2f} {flops / t_f / 1e12:>10.2f}")
            if backend != "cpu":
                peak = 100 * flops / t_f / 1e12 / args.peak_tflops
                line += f" {peak:>10.1f}%"
            print(line, flush=True)


if __name__ == "__main__":
    main()
