"""Sampling inside one jit on a (fsdp=4, tensor=2) mesh equals sampling on one device.

Run by test_sampling_sharded.py with 8 simulated CPU devices. A tiny random
llama with LoRA adapters (all weights random, so the policy differs from its base):
greedy, temperature 1, and the temperature-1 geometric mixture with the LoRA
base view as reference (``beta`` traced); only temperature 1 without ``--all``.
The reference is `generate` on one device with the unsharded model.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jalign.models import Decoder, ModelConfig
from jalign.models.lora import add_lora, reference_view
from jalign.models.sampling import SamplingConfig, generate, sample
from jalign.sharding import DEFAULT_RULES, MeshConfig, activate, make_mesh, state_shardings

assert jax.device_count() == 8
B, PROMPT, NEW = 8, 6, 10
cfg = ModelConfig("llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64)


def lora_decoder():
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    add_lora(model, rank=4, alpha=8.0, targets=("q_proj", "v_proj"), rngs=nnx.Rngs(1))
    return model


# Every array, LoRA B and scales included, drawn with NumPy: no initialisation programs to compile,
# and placing host arrays on the mesh slices them on the host.
graphdef, shapes = nnx.split(nnx.eval_shape(lora_decoder))
weights = np.random.default_rng(10)
params = jax.tree.map(lambda s: 0.3 * weights.normal(size=s.shape).astype(s.dtype), shapes)
model = nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))

rng = np.random.default_rng(0)
prompt = rng.integers(3, 64, (B, PROMPT)).astype(np.int32)
mask = np.ones((B, PROMPT), bool)
mask[1, 4:] = mask[2, :3] = mask[5, :5] = False              # right-, left-padded, one-token rows
prompt[~mask] = 0
key = jax.random.key(7)
stops = jnp.array([5, 9, 17, 33], jnp.int32)                    # some rows end early

mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
param_sharding = state_shardings(params, mesh, DEFAULT_RULES)
placed = jax.device_put(params, param_sharding)
embed = placed["embed"].get_value()
assert embed.addressable_shards[0].data.shape == (64 // 2, 32 // 4), embed.sharding  # vocab over tensor, embed over fsdp
rows = NamedSharding(mesh, P(("data", "fsdp"), None))
replicated = NamedSharding(mesh, P())


def on_mesh(params, prompt, mask, key, beta, *, run, mixture):
    """The trainer's use: merge, sample and (with ``mixture``) the LoRA base view, in one traced step."""
    with activate(mesh, DEFAULT_RULES):
        policy = nnx.merge(graphdef, params)
        ref = reference_view(policy) if mixture else None
        return sample(policy, prompt, mask, key, run, stops, ref_model=ref, beta=beta)


cases = [("greedy", SamplingConfig(NEW, temperature=0.0), False),
         ("temperature 1", SamplingConfig(NEW), False),
         ("mixture with the LoRA base", SamplingConfig(NEW), True)]
for name, run, mixture in cases if "--all" in sys.argv else cases[1:2]:
    jitted = jax.jit(functools.partial(on_mesh, run=run, mixture=mixture),
                     in_shardings=(param_sharding, rows, rows, replicated, replicated))
    args = (placed, jnp.asarray(prompt), jnp.asarray(mask), key, jnp.float32(0.3))
    compiled = jitted.lower(*args).compile()
    got = compiled(*args)
    want = generate(model, jnp.asarray(prompt), jnp.asarray(mask), key, run, stops,
                    ref_model=reference_view(model) if mixture else None, beta=0.3)
    np.testing.assert_array_equal(got.tokens, want.tokens, err_msg=name)
    np.testing.assert_array_equal(got.mask, want.mask, err_msg=name)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5, err_msg=name)
    assert got.tokens.addressable_shards[0].data.shape == (B // 4, NEW), (name, got.tokens.sharding)
    # The partitioned program holds per-device caches [L, B/4, P+N, K/2, D], never a whole one.
    hlo = compiled.as_text()
    size = PROMPT + NEW
    assert f"f32[2,{B // 4},{size},1,8]" in hlo, f"{name}: no per-device KV cache in the program"
    assert f"f32[2,{B},{size},2,8]" not in hlo, f"{name}: a whole KV cache on one device"
    assert f"f32[2,{B},{size},1,8]" not in hlo, f"{name}: a KV cache with the whole batch on one device"
    print(name, "OK:", np.asarray(got.mask).sum(-1))
print("OK")
