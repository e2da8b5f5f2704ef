"""Decoder features: hidden-state output, shared-prompt encoding, sharding names, remat/bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_tiny import jit_forward, next_token_logprobs, padded_batch
from jalign.models import PRESETS, Decoder, load_hf

LOGICAL_NAMES = {"layers", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", "positions"}


@nnx.jit
def _hidden(model, tokens, mask):
    return model(tokens, mask, return_hidden=True)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
def test_hidden_states_times_output_projection_are_logits(family, jalign_models):
    """softcap(hidden @ kernel + bias) from `output_projection` equals the logits.

    llama ties the head to the embedding, qwen3 has its own lm_head, gemma2
    soft-caps the final logits.
    """
    model = jalign_models(family)
    tokens, mask, _ = padded_batch()
    hidden = _hidden(model, tokens, mask)
    assert hidden.shape == (3, 12, model.cfg.hidden_size)
    out = model.output_projection()
    logits = hidden @ out.kernel + (0.0 if out.bias is None else out.bias)
    if out.softcap is not None:
        logits = out.softcap * jnp.tanh(logits / out.softcap)
    np.testing.assert_allclose(logits, jit_forward(model, tokens, mask), atol=1e-5)


@nnx.jit
def _shared(model, prompt, prompt_mask, completions, completion_mask):
    cache = model.encode_prompt(prompt, prompt_mask)
    return model.forward_completions(cache, completions, completion_mask)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gpt2"])
def test_shared_prompt_equals_concatenated_forward(family, jalign_models):
    """Prompt encoded once + G=3 completions == forward over each concatenation.

    The reference is the plain forward over [prompt ; completion] rows (prompt
    left-padded, completions right-padded). Windows (mistral 5, gemma2 4)
    reach back across the prompt/completion boundary.
    """
    model = jalign_models(family)
    rng = np.random.default_rng(6)
    prompt = rng.integers(3, 128, (2, 6)).astype(np.int32)
    prompt_mask = np.ones((2, 6), bool)
    prompt_mask[1, :2] = False
    comp = rng.integers(3, 128, (2, 3, 5)).astype(np.int32)
    comp_mask = np.arange(5) < np.array([[5, 3, 1], [4, 5, 2]])[..., None]
    got = _shared(model, prompt, prompt_mask, comp, comp_mask)             # [2, 3, 5, V]
    rows = np.concatenate([np.repeat(prompt[:, None], 3, 1), comp], -1).reshape(6, 11)
    rows_mask = np.concatenate([np.repeat(prompt_mask[:, None], 3, 1), comp_mask], -1)
    want = jit_forward(model, rows, rows_mask.reshape(6, 11)).reshape(2, 3, 11, -1)[:, :, 6:]
    np.testing.assert_allclose(got[comp_mask], want[comp_mask], atol=1e-4)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_parameter_has_logical_axis_names(name):
    """Abstract preset models: one known logical name per dimension of every Param."""
    model = nnx.eval_shape(lambda: Decoder(PRESETS[name](), rngs=nnx.Rngs(0)))
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata()["out_sharding"]
        assert len(names) == len(var.shape), path
        assert set(names) <= LOGICAL_NAMES, (path, names)


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_logical_rules_map_to_mesh_axes_and_constrain_under_mesh(axis_type, hf_checkpoints,
                                                                 jalign_models):
    """Under a 1-device mesh with rules, partition specs use mesh axes and the
    constrained forward gives the same logits as the shared model without a mesh."""
    model = load_hf(hf_checkpoints("llama")[0])     # fresh: the mesh run re-places its arrays
    rules = (("batch", "data"), ("embed", "fsdp"), ("vocab", "tensor"), ("heads", "tensor"),
             ("kv_heads", "tensor"), ("mlp", "tensor"), ("head_dim", None), ("norm", None),
             ("positions", None), ("length", None), ("layers", None))
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                         axis_types=(getattr(jax.sharding.AxisType, axis_type),) * 3)
    tokens, mask, _ = padded_batch()
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
        sharded = nnx.jit(lambda m, t, k: m(t, k))(model, tokens, mask)
    assert specs["layers"]["attn"]["q_proj"]["kernel"].get_value() == jax.P(
        None, "fsdp", "tensor", None)
    want = jit_forward(jalign_models("llama"), tokens, mask)
    np.testing.assert_allclose(sharded, want, atol=1e-5)


def _nll(model, tokens, mask):
    lp, valid = next_token_logprobs(model(tokens, mask), tokens, mask)
    return -(lp * valid).sum()


def test_remat_gradients_and_bf16(hf_checkpoints):
    """Remat leaves fp32 gradients unchanged; bf16 log-probs track fp32 ones.

    References: the same checkpoint without remat (gradients within 1e-5),
    and in fp32 (bf16 params and compute within 0.15 nats per token). The
    "full" and "dots" policies are checked on a DPO step in
    tests/train/test_remat_step.py.
    """
    directory, _ = hf_checkpoints("gemma2")
    tokens, mask, _ = padded_batch()
    grads = []
    for remat in ("none", "dots_all"):
        model = load_hf(directory, remat=remat)
        grads.append(nnx.jit(nnx.grad(_nll))(model, tokens, mask))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), *grads)
    fp32 = jit_forward(load_hf(directory), tokens, mask)
    bf16_model = load_hf(directory, dtype="bfloat16", param_dtype="bfloat16")
    assert bf16_model.layers.attn.q_proj.kernel[...].dtype == jnp.bfloat16
    bf16 = jit_forward(bf16_model, tokens, mask)
    assert bf16.dtype == jnp.float32
    want, valid = next_token_logprobs(fp32, tokens, mask)
    got, _ = next_token_logprobs(bf16, tokens, mask)
    np.testing.assert_allclose(got[valid], want[valid], atol=0.15)


def test_remat_field_takes_policy_names_and_booleans():
    cfg = PRESETS["llama3_2_1b"]()
    assert cfg.remat == "none"
    assert cfg.replace(remat=True).remat == "full" and cfg.replace(remat=False).remat == "none"
    with pytest.raises(ValueError, match="unknown remat policy 'everything'"):
        cfg.replace(remat="everything")


def _grad_equations(num_layers: int) -> int:
    cfg = PRESETS["gemma2_2b"]().replace(
        num_layers=num_layers, layer_types=("sliding_attention", "full_attention") * (num_layers // 2),
        hidden_size=64, num_heads=2, num_kv_heads=1, head_dim=32, mlp_dim=128, vocab_size=256, remat="full")
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    tokens = jnp.zeros((2, 8), jnp.int32)

    def loss(p):
        return nnx.merge(graphdef, p)(tokens).sum()
    return len(jax.make_jaxpr(jax.grad(loss))(params).eqns)


def test_program_size_does_not_grow_with_depth():
    """The scanned blocks are traced once: 2 and 6 layers give a gradient program of the same size."""
    assert _grad_equations(2) == _grad_equations(6)
