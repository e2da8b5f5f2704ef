"""DPO train step: tokens/s and peak memory, fused log-prob kernel vs. full logits.

One run measures the same jitted train step (policy + reference forward, DPO,
backward, AdamW) twice: with ``logprob_impl`` set to the fused kernel
("chunked" on CPU, the Pallas kernel on GPU/TPU via "auto") and to "naive",
which materialises [tokens, vocab] logits as every peer does. Peak memory is
XLA's compiled estimate (temporaries + arguments + outputs, from
``memory_analysis()``); throughput counts response tokens of chosen and
rejected per second, median of the timed steps. Model FLOPs utilisation is
the training loop's (`jalign.train.mfu`): per token, the policy's forward
and backward and the reference forward, ``8 N`` plus attention, over all
tokens of the step (each prompt once: chosen and rejected share it), per
second, over the device's dense bf16 peak; printed where that peak is known.

    python benchmarks/train_step.py                 # CPU defaults, ~2 minutes
    python benchmarks/train_step.py --vocab 128256 --hidden 512 --layers 4 --batch 8
    python benchmarks/train_step.py --preset llama3_2_1b --batch 8 --prompt 512 --response 512 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jalign.models import PRESETS, REMAT_POLICIES, Decoder, ModelConfig
from jalign.objectives import dpo
from jalign.sharding import MeshConfig, make_mesh
from jalign.train.mfu import device_peak, train_flops_per_token
from jalign.train.provider import Plan
from jalign.train.step import FrozenModels, TrainState, jit_step, make_step


def _batch(args, vocab: int) -> dict:
    rng = np.random.default_rng(0)
    b, p, r = args.batch, args.prompt, args.response
    return dict(prompt_tokens=rng.integers(4, vocab, (b, p)).astype(np.int32),
                prompt_mask=np.ones((b, p), np.int32),
                response_tokens=rng.integers(4, vocab, (b, 2, r)).astype(np.int32),
                response_mask=np.ones((b, 2, r), np.int32),
                labels={"example_weight": np.ones(b, np.float32)})


def model_config(args) -> ModelConfig:
    """``--preset``'s configuration (a `jalign.models.PRESETS` name), else the shape flags' Llama."""
    precision = dict(dtype=args.dtype, param_dtype=args.param_dtype or args.dtype, remat=args.remat)
    if args.preset:
        return PRESETS[args.preset](**precision)
    heads = args.heads or args.hidden // args.head_dim
    return ModelConfig("llama", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                       num_heads=heads, num_kv_heads=args.kv_heads or max(heads // 2, 1), head_dim=args.head_dim,
                       mlp_dim=args.mlp or args.hidden * 4, tie_embeddings=args.tied, **precision)


def measure(args, impl: str) -> dict:
    """Peak bytes, seconds per step, tokens/s and model FLOPs utilisation of the step with ``impl``."""
    cfg = model_config(args)
    graphdef, params, rest = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    reference = FrozenModels(rest=rest, reference=jax.tree.map(jnp.copy, params))
    tx = optax.adamw(1e-4)
    batch, objective = _batch(args, cfg.vocab_size), dpo(beta=0.1)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(0))
    step = make_step(graphdef, tx, Plan(reference="frozen"), impl=impl)
    jitted, sharding, _ = jit_step(step, make_mesh(MeshConfig(), jax.devices()[:1]), state, reference, batch,
                                objective, tx)
    memory = jitted.lower(state, reference, batch, objective).compile().memory_analysis()
    peak = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    state = jax.device_put(state, sharding)
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        state, metrics = jitted(state, reference, batch, objective)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[args.warmup:])
    tokens = args.batch * 2 * args.response
    peak_flops = device_peak(jax.devices()[0].device_kind)
    flops = (train_flops_per_token(cfg, args.prompt + args.response, reference_forward=True)
             * args.batch * (args.prompt + 2 * args.response))
    mfu = None if peak_flops is None else flops / seconds / peak_flops
    return {"impl": impl, "peak_gib": peak / 2**30, "temp_gib": memory.temp_size_in_bytes / 2**30,
            "step_s": seconds, "tokens_per_s": tokens / seconds, "mfu": mfu,
            "all_tokens_per_s": args.batch * (args.prompt + 2 * args.response) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a published model's configuration, jalign.models.PRESETS (overrides the shape flags)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=0, help="default hidden / head_dim")
    parser.add_argument("--kv-heads", type=int, default=0, help="default heads / 2")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--mlp", type=int, default=0, help="default 4 x hidden")
    parser.add_argument("--tied", action="store_true", help="tie the output projection to the embedding")
    parser.add_argument("--param-dtype", default=None, help="parameter dtype (default: --dtype)")
    parser.add_argument("--remat", choices=REMAT_POLICIES, default="none")
    parser.add_argument("--skip-naive", action="store_true", help="measure the fused step only")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--response", type=int, default=192)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fused", default="auto", help="fused implementation to compare ('auto' per backend)")
    args = parser.parse_args()
    cfg = model_config(args)
    print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
          f"model={args.preset or cfg.model_type} vocab={cfg.vocab_size} hidden={cfg.hidden_size} "
          f"layers={cfg.num_layers} "
          f"batch={args.batch}x2 prompt={args.prompt} response={args.response} dtype={args.dtype}")
    fused = measure(args, args.fused)
    naive = None if args.skip_naive else measure(args, "naive")
    for row in (naive, fused):
        if row is None:
            continue
        mfu = "" if row["mfu"] is None else f", MFU {100 * row['mfu']:.1f}%"
        print(f"  {row['impl']:>8}: peak {row['peak_gib']:.3f} GiB (temp {row['temp_gib']:.3f}), "
              f"{row['step_s'] * 1e3:.1f} ms/step, {row['tokens_per_s']:.0f} response tokens/s, "
              f"{row['all_tokens_per_s']:.0f} tokens/s{mfu}", flush=True)
    if naive is None:
        return
    print(f"peak memory naive/fused: {naive['peak_gib'] / fused['peak_gib']:.2f}x   "
          f"temporaries naive/fused: {naive['temp_gib'] / fused['temp_gib']:.2f}x   "
          f"throughput fused/naive: {fused['tokens_per_s'] / naive['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
