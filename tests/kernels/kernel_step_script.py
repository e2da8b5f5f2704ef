"""The real train step with the log-prob op under `shard_map`, on 8 simulated CPU devices.

Run as ``python kernel_step_script.py MODE`` with
XLA_FLAGS=--xla_force_host_platform_device_count=8 by ``test_sharded_step.py``
(pytest imports jax once, with one device). Every mode builds the step with
``make_step`` + ``jit_step`` (or the step's own ``make_logprobs``) on a tiny
Llama-like decoder, DPO against a frozen reference, traced inside
``jalign.sharding.activate(mesh, DEFAULT_RULES)`` as the trainer traces it:
tokens over the batch axes, the vocabulary over ``tensor``. Modes print one ``RESULT {json}`` line.
"""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jalign.models import Decoder, ModelConfig
from jalign.objectives import dpo
from jalign.sharding import DEFAULT_RULES, MeshConfig, activate, make_mesh, place, state_shardings
from jalign.train.provider import Plan
from jalign.train.step import FrozenModels, TrainState, jit_step, make_logprobs, make_step

MESHES = {"fsdp8": MeshConfig(fsdp=8), "dp2_fsdp2_tp2": MeshConfig(data=2, fsdp=2, tensor=2),
          "one": MeshConfig()}
# (platform, kernel, mesh, compute dtype, parameter dtype) of each exported step (issue 9's "Done when").
EXPORTS = [("tpu", "pallas_tpu", "fsdp8", "float32", "float32"),
           ("tpu", "pallas_tpu", "dp2_fsdp2_tp2", "float32", "float32"),
           ("cuda", "pallas_gpu", "one", "bfloat16", "float32"),
           ("cuda", "pallas_gpu", "dp2_fsdp2_tp2", "bfloat16", "float32")]
# Triton custom calls carry no cross-version compatibility guarantee.
TRITON_CHECK = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")


def config(vocab=256, hidden=64, **kw) -> ModelConfig:
    """A 2-layer Llama-like decoder (GQA 4/2 heads, SwiGLU), vocabulary ``vocab``, width ``hidden``."""
    return ModelConfig("llama", vocab_size=vocab, hidden_size=hidden, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=16, mlp_dim=128, **kw)


def batch(vocab, pairs=8, prompt=8, response=24, seed=0) -> dict:
    """Left-padded prompts and ragged right-padded chosen/rejected responses."""
    rng = np.random.default_rng(seed)
    prompt_mask = np.ones((pairs, prompt), np.int32)
    prompt_mask[::2, :3] = 0
    response_mask = (np.arange(response)[None, None] < rng.integers(3, response + 1, (pairs, 2, 1))).astype(np.int32)
    return dict(prompt_tokens=rng.integers(1, vocab, (pairs, prompt)).astype(np.int32), prompt_mask=prompt_mask,
                response_tokens=rng.integers(1, vocab, (pairs, 2, response)).astype(np.int32),
                response_mask=response_mask, labels={"example_weight": np.ones(pairs, np.float32)})


def step_for(cfg: ModelConfig, mesh_name: str, impl: str, data: dict):
    """(jitted step, its arguments) of the real train step on a named mesh."""
    graphdef, params, rest = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = optax.adam(1e-3)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(0))
    frozen = FrozenModels(rest=rest, reference=params)
    mesh = make_mesh(MESHES[mesh_name], jax.devices()[:1] if mesh_name == "one" else None)
    step = make_step(graphdef, tx, Plan(reference="frozen"), impl=impl)
    objective = dpo(beta=0.1)
    jitted, _, _ = jit_step(step, mesh, state, frozen, data, objective, tx)
    return jitted, (state, frozen, data, objective)


def export(platform: str, impl: str, mesh_name: str, dtype: str, param_dtype: str) -> dict:
    """Exports the step's StableHLO for ``platform`` and names the kernel custom calls in it."""
    cfg = config(dtype=dtype, param_dtype=param_dtype)
    jitted, args = step_for(cfg, mesh_name, impl, batch(cfg.vocab_size))
    exported = jax.export.export(jitted, platforms=[platform], disabled_checks=[TRITON_CHECK])(*args)
    text = exported.mlir_module()
    return {"platforms": list(exported.platforms), "devices": exported.nr_devices,
            "mosaic": text.count("tpu_custom_call"), "triton": text.count("__gpu$xla.gpu.triton")}


def token_vocab_buffers(impl: str) -> dict:
    """Shapes in the compiled step's HLO (data=2 x fsdp=2 x tensor=2, V=16384 larger than every other
    dimension) that hold a token dimension (a multiple of the response length 24; no model dimension
    is one) and at least a device's whole shard of the vocabulary (V / 2 columns; the fused op's tiles
    are 4096 wide)."""
    cfg = config(vocab=16384)
    jitted, args = step_for(cfg, "dp2_fsdp2_tp2", impl, batch(cfg.vocab_size))
    hlo = jitted.lower(*args).compile().as_text()
    shapes = {m.group(0): [int(d) for d in m.group(1).split(",")]
              for m in re.finditer(r"[a-z]+[0-9]*\[([0-9,]+)\]", hlo)}
    vocab = {s: d for s, d in shapes.items() if max(d) >= cfg.vocab_size // 2}
    return {"token_vocab": sorted(s for s, d in vocab.items() if any(x % 24 == 0 for x in d)),
            "vocab_shapes": sorted(vocab)}


def equality() -> dict:
    """Token log-probs and DPO gradients: 2x2x2 mesh with the sharded op vs one device, plain op."""
    cfg = config(vocab=128, hidden=32)
    graphdef, params, rest = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    ref_params = jax.tree.map(lambda x: x * 0.9, params)
    logprobs = make_logprobs(graphdef, Plan(reference="frozen"), impl="chunked")
    objective = dpo(beta=0.5)
    data = batch(cfg.vocab_size, pairs=4, response=7, seed=1)

    def loss(params, ref, data):
        lp = logprobs(params, FrozenModels(rest=rest, reference=ref), data)
        return objective(lp)[0], lp.policy

    grad = jax.grad(loss, has_aux=True)
    single_g, single_lp = jax.jit(grad)(params, ref_params, data)
    mesh = make_mesh(MESHES["dp2_fsdp2_tp2"])
    shardings = state_shardings(params, mesh)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    def grad_under_rules(*args):  # as jit_step traces the step
        with activate(mesh, DEFAULT_RULES):
            return grad(*args)

    sharded = jax.jit(grad_under_rules, in_shardings=(shardings, shardings, rows))
    got_g, got_lp = sharded(place(params, shardings), place(ref_params, shardings), data)
    text = sharded.lower(params, ref_params, data).as_text()
    grad_err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(b))) + 1e-30))
                   for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(single_g)))
    return {"logprob_err": float(np.max(np.abs(np.asarray(got_lp) - np.asarray(single_lp)))),
            "grad_rel_err": grad_err, "manual": "sdy.manual_computation" in text,
            "n_valid": int(np.sum(data["response_mask"]))}


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    mode = sys.argv[1]
    result = {"export": lambda: {"/".join(spec): export(*spec) for spec in EXPORTS},
              "hlo": lambda: {impl: token_vocab_buffers(impl) for impl in ("chunked", "naive")},
              "equality": equality}[mode]()
    print("RESULT", json.dumps(result))
