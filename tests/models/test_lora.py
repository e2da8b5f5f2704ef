"""LoRA adapters: identity at init, frozen base under training, reference view, merge."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hf_tiny import jit_forward, next_token_logprobs, padded_batch
from jalign.models import load_hf, save_hf
from jalign.models.lora import add_lora, merge, reference_view
from jalign.models.sampling import SamplingConfig, generate


def _nll(model, tokens, mask):
    logp = jax.nn.log_softmax(model(tokens, mask)[:, :-1], -1)
    target = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    valid = mask[:, 1:] & mask[:, :-1]
    return -(target * valid).sum() / valid.sum()


@nnx.jit
def _train_step(model, optimizer, tokens, mask):
    loss, grads = nnx.value_and_grad(_nll, argnums=nnx.DiffState(0, nnx.LoRAParam))(
        model, tokens, mask)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _policy_and_reference(model, tokens, mask):
    return model(tokens, mask), reference_view(model)(tokens, mask)


@pytest.fixture(scope="module")
def lora_setup(hf_checkpoints):
    """A fresh qwen2 model (adapters mutate it) plus its untouched twin."""
    directory, _ = hf_checkpoints("qwen2")
    model, base = load_hf(directory), load_hf(directory)
    paths = add_lora(model, rank=4, alpha=8.0, targets=("q_proj", "v_proj", "layers.1.mlp.*"),
                     rngs=nnx.Rngs(0))
    return model, base, paths


def test_zero_initialised_adapters_are_identity(lora_setup):
    """Log-probs with fresh adapters equal those of the same checkpoint without them.

    B = 0 adds exact zeros; the two programs compile differently, so equality
    is up to float32 rounding (1e-6).
    """
    model, base, paths = lora_setup
    assert sorted(paths) == ["layers.0.attn.q_proj", "layers.0.attn.v_proj",
                             "layers.1.attn.q_proj", "layers.1.attn.v_proj",
                             "layers.1.mlp.down_proj", "layers.1.mlp.gate_proj",
                             "layers.1.mlp.up_proj"]
    tokens, mask, _ = padded_batch()
    want, valid = next_token_logprobs(jit_forward(base, tokens, mask), tokens, mask)
    got, _ = next_token_logprobs(jit_forward(model, tokens, mask), tokens, mask)
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-6, rtol=0)
    down = model.layers.mlp.down_proj
    assert down.lora_a.get_metadata()["out_sharding"] == ("layers", "mlp", "lora")
    # Stacked layers: layer 0's MLP has an adapter too, inert (scale 0) since no pattern names it.
    np.testing.assert_array_equal(down.lora_scale[...], [0.0, 8.0 / 4])


def test_training_updates_adapters_only(lora_setup, tmp_path):
    """Adam on LoRAParam lowers the loss; base weights stay bit-identical.

    The reference view (adapters disabled, same arrays) still reproduces the
    untouched twin's logits, and mixture sampling with beta=1 against it
    samples exactly what the twin samples alone; merging folds the adapters into the kernels
    without changing the adapted model's logits, and the result exports.
    """
    model, base, _ = lora_setup
    tokens, mask, _ = padded_batch(seed=5)
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.LoRAParam)
    losses = [float(_train_step(model, optimizer, tokens, mask)) for _ in range(4)]
    assert losses[-1] < losses[0]
    after = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, after))
    assert np.abs(model.layers.attn.q_proj.lora_b[...][0]).max() > 0

    policy, reference = _policy_and_reference(model, tokens, mask)
    np.testing.assert_allclose(reference, jit_forward(base, tokens, mask), atol=1e-5)
    assert np.abs(np.asarray(policy - reference)[np.asarray(mask)]).max() > 1e-3

    no_stop = jnp.full((3, 1), -1, jnp.int32)
    key, run = jax.random.key(0), SamplingConfig(5)
    mixed = generate(model, tokens, mask, key, run, no_stop, ref_model=reference_view(model),
                     beta=1.0)
    plain = generate(base, tokens, mask, key, run, no_stop)
    np.testing.assert_array_equal(mixed.tokens, plain.tokens)
    np.testing.assert_allclose(mixed.logprobs, plain.logprobs, atol=1e-5)

    with pytest.raises(ValueError, match="merge"):
        save_hf(model, str(tmp_path))
    merge(model)
    assert model.layers.attn.q_proj.lora_a is None
    np.testing.assert_allclose(model(tokens, mask), policy, atol=1e-4)
    save_hf(model, str(tmp_path))
