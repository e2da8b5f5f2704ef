"""Per-device memory of the real train step at 1B-8B scale, compiled ahead of time on simulated devices.

Nothing is allocated: parameters are abstract (``nnx.eval_shape``), the step is
the trainer's own (`make_step` + `jit_step`: DPO, the reference on device as a
frozen copy, AdamW), and each configuration is lowered and compiled for a mesh
of simulated CPU devices (``--xla_force_host_platform_device_count``, one
subprocess per device count). XLA's ``memory_analysis()`` of the compiled step
gives per-device bytes of arguments (this device's shards of parameters, both
Adam moments, the reference and the batch), temporaries (activations,
gathered weights, gradients) and outputs; ``peak`` is their sum less the
donated state that outputs reuse. FLOPs are the model's, counted by formula:
``6 P t`` for the policy's forward and backward plus ``2 P t`` for the
reference forward, ``P`` the parameters the tokens pass through (the output
projection counted, the embedding lookup not) and ``t`` the tokens of one
step (each prompt once, each response once: prompts are encoded once and
shared by chosen and rejected); attention adds ``12 L T^2 d`` per sequence
for the policy and ``4 L T^2 d`` for the reference (``T`` prompt + response,
causal halves).

After the table come the issue's ratios, each against a baseline measured in
the same run: per-device temporaries at 1 pair per device as fsdp grows
8 -> 16 -> 64 (against fsdp=8), temporaries at 16 vs 8 pairs on fsdp=8, and the
compile time of 32 layers against 4.

    python benchmarks/scale.py                        # every configuration (~15 min on 2 cores)
    python benchmarks/scale.py --only 1b-fsdp8-8pairs --only 8b-fsdp64-64pairs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

from jalign.models import ModelConfig
from jalign.models.config import llama3_1_8b, llama3_2_1b

GIB = 2**30
LLAMA_1B, LLAMA_8B = llama3_2_1b(), llama3_1_8b()  # the published configurations (jalign.models.PRESETS)


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    shape: ModelConfig
    pairs: int
    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    remat: str = "none"
    prompt: int = 512
    response: int = 512

    @property
    def devices(self) -> int:
        return self.data * self.fsdp * self.tensor


def _with(shape: ModelConfig, layers: int) -> ModelConfig:
    return shape.replace(num_layers=layers)


CONFIGS = [
    Config("1b-fsdp8-8pairs", LLAMA_1B, 8, fsdp=8),
    Config("1b-fsdp8-8pairs-remat", LLAMA_1B, 8, fsdp=8, remat="full"),
    Config("1b-fsdp8-16pairs", LLAMA_1B, 16, fsdp=8),
    Config("1b-fsdp8-16pairs-remat", LLAMA_1B, 16, fsdp=8, remat="full"),
    Config("1b-fsdp4-tp2-8pairs", LLAMA_1B, 8, fsdp=4, tensor=2),
    Config("1b-fsdp4-tp2-8pairs-remat", LLAMA_1B, 8, fsdp=4, tensor=2, remat="full"),
    Config("1b-dp2-fsdp4-8pairs", LLAMA_1B, 8, data=2, fsdp=4),
    Config("1b-dp2-fsdp4-8pairs-remat", LLAMA_1B, 8, data=2, fsdp=4, remat="full"),
    Config("1b-fsdp16-16pairs-remat", LLAMA_1B, 16, fsdp=16, remat="full"),
    Config("1b-fsdp64-64pairs-remat", LLAMA_1B, 64, fsdp=64, remat="full"),
    Config("8b-fsdp8-8pairs-remat", LLAMA_8B, 8, fsdp=8, remat="full"),
    Config("8b-fsdp64-64pairs-remat", LLAMA_8B, 64, fsdp=64, remat="full"),
    Config("1b-4layers-fsdp8-8pairs-remat", _with(LLAMA_1B, 4), 8, fsdp=8, remat="full"),
    Config("1b-32layers-fsdp8-8pairs-remat", _with(LLAMA_1B, 32), 8, fsdp=8, remat="full"),
]


def model_flops(cfg: Config) -> float:
    """Model FLOPs of one DPO step (module docstring): policy fwd+bwd and reference fwd."""
    s = cfg.shape
    per_layer = (s.hidden_size * s.head_dim * (s.num_heads + 2 * s.num_kv_heads)
                 + s.num_heads * s.head_dim * s.hidden_size + 3 * s.hidden_size * s.mlp_dim)
    params = s.num_layers * per_layer + s.hidden_size * s.vocab_size
    tokens = cfg.pairs * (cfg.prompt + 2 * cfg.response)
    length = cfg.prompt + cfg.response
    attention = 2 * cfg.pairs * 2 * s.num_layers * length**2 * s.num_heads * s.head_dim  # QK^T and PV, causal half
    return 8 * params * tokens + 4 * attention


def measure(cfg: Config) -> dict:
    """Compiles ``cfg``'s step for ``cfg.devices`` simulated devices; per-device bytes and compile time."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jalign.models import Decoder
    from jalign.objectives import dpo
    from jalign.sharding import MeshConfig, make_mesh
    from jalign.train.provider import Plan
    from jalign.train.step import FrozenModels, TrainState, jit_step, make_step

    model_cfg = cfg.shape.replace(dtype="bfloat16", param_dtype="float32", remat=cfg.remat)
    abstract = nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    tx = optax.adamw(1e-6)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, jax.eval_shape(tx.init, params),
                       jax.eval_shape(lambda: jax.random.key(0)))
    frozen = FrozenModels(rest=rest, reference=params)
    b, p, r = cfg.pairs, cfg.prompt, cfg.response
    batch = dict(prompt_tokens=jax.ShapeDtypeStruct((b, p), jnp.int32),
                 prompt_mask=jax.ShapeDtypeStruct((b, p), jnp.int32),
                 response_tokens=jax.ShapeDtypeStruct((b, 2, r), jnp.int32),
                 response_mask=jax.ShapeDtypeStruct((b, 2, r), jnp.int32),
                 labels={"example_weight": jax.ShapeDtypeStruct((b,), jnp.float32)})
    mesh = make_mesh(MeshConfig(data=cfg.data, fsdp=cfg.fsdp, tensor=cfg.tensor))
    objective = dpo(beta=0.1)
    step = make_step(graphdef, tx, Plan(reference="frozen"), impl="chunked")
    jitted, _, _ = jit_step(step, mesh, state, frozen, batch, objective, tx)
    start = time.perf_counter()
    compiled = jitted.lower(state, frozen, batch, objective).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    peak = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes)
    return {"name": cfg.name, "devices": cfg.devices, "arguments": memory.argument_size_in_bytes,
            "temporaries": memory.temp_size_in_bytes, "outputs": memory.output_size_in_bytes,
            "aliased": memory.alias_size_in_bytes, "peak": peak, "compile_s": seconds,
            "flops": model_flops(cfg)}


def _run_in_subprocess(cfg: Config) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={cfg.devices}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, __file__, "--child", cfg.name], env=env, capture_output=True, text=True)
    if out.returncode:
        return {"name": cfg.name, "devices": cfg.devices, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", help="configuration name (repeatable); default: all")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    by_name = {c.name: c for c in CONFIGS}
    if args.child:
        print(json.dumps(measure(by_name[args.child])))
        return
    chosen = [by_name[n] for n in args.only] if args.only else CONFIGS
    print(f"{'configuration':<32} {'dev':>4} {'args GiB':>9} {'temp GiB':>9} {'out GiB':>8} {'peak GiB':>9} "
          f"{'compile s':>9} {'TFLOP/step':>10}")
    rows = []
    for cfg in chosen:
        row = _run_in_subprocess(cfg)
        rows.append(row)
        if "error" in row:
            print(f"{cfg.name:<32} {cfg.devices:>4} failed: {row['error'][:200]}", flush=True)
            continue
        print(f"{row['name']:<32} {row['devices']:>4} {row['arguments'] / GIB:>9.2f} {row['temporaries'] / GIB:>9.2f} "
              f"{row['outputs'] / GIB:>8.2f} {row['peak'] / GIB:>9.2f} {row['compile_s']:>9.1f} "
              f"{row['flops'] / 1e12:>10.1f}", flush=True)
    _print_ratios({r["name"]: r for r in rows if "error" not in r})


def _print_ratios(rows: dict) -> None:
    """The issue's targets, as ratios against baselines measured in this run."""
    scaling = [rows.get(n) for n in ("1b-fsdp8-8pairs-remat", "1b-fsdp16-16pairs-remat", "1b-fsdp64-64pairs-remat")]
    if all(scaling):
        base = scaling[0]["temporaries"]
        print("temporaries at 1 pair/device, fsdp 8 -> 16 -> 64, relative to fsdp 8: "
              + " -> ".join(f"{r['temporaries'] / base:.3f}" for r in scaling))
    depth = [rows.get(n) for n in ("1b-4layers-fsdp8-8pairs-remat", "1b-32layers-fsdp8-8pairs-remat")]
    if all(depth):
        print(f"compile time 32 layers / 4 layers: {depth[1]['compile_s'] / depth[0]['compile_s']:.2f}x")
    batch = [rows.get(n) for n in ("1b-fsdp8-8pairs", "1b-fsdp8-16pairs")]
    if all(batch):
        print(f"temporaries 16 pairs / 8 pairs at fsdp=8: {batch[1]['temporaries'] / batch[0]['temporaries']:.2f}x")


if __name__ == "__main__":
    main()
