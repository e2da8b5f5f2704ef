"""IFT's temporal residual connection (``jalign.models.scoring.residual_responses``) against PyTorch.

The reference is the authors' procedure transcribed onto the `transformers`
model (TsinghuaC3I/Intuitive-Fine-Tuning, ``src/trainers.py``, the ``'ift'``
branch of ``get_batch_metrics``): a frozen copy of the input embedding table;
a first forward on ``inputs_embeds`` under ``torch.no_grad``; ``argmax`` of
its logits shifted by one (``tokens_further``), used only where ``labels !=
-100``; the second forward, with gradient, on ``(1 - lambda) e(y) + lambda
e(yhat)``. Its per-token log-probs of the response and the gradient of their
sum with respect to every weight (read back through ``save_hf``'s
Hugging Face names) must equal jalign's.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

from hf_tiny import reward_batch
from jalign.models import save_hf
from jalign.models.scoring import encode_responses, token_logprobs

LAMBDA = 0.2  # the authors' config/loss/ift.yaml
pytestmark = pytest.mark.slow  # builds Hugging Face and jalign models


def _authors_trc(model, tokens, mask, response, lam):
    """Per-token log-probs ``[B, T-1]`` of the second pass and the loss ``-sum`` over response tokens."""
    input_ids, attention = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    labels = torch.where(torch.tensor(response), input_ids, -100)
    embed_tokens = copy.deepcopy(model.get_input_embeddings()).requires_grad_(False)
    inputs_embeds = embed_tokens(input_ids)
    with torch.no_grad():
        logits = model(inputs_embeds=inputs_embeds, attention_mask=attention).logits
    tokens_further = torch.cat((input_ids[:, 0].unsqueeze(-1), torch.argmax(logits, dim=-1)[:, :-1]), dim=-1)
    input_ids_further = torch.where(labels == -100, input_ids, tokens_further)
    mixed = (1 - lam) * inputs_embeds + lam * embed_tokens(input_ids_further)
    logits_further = model(inputs_embeds=mixed, attention_mask=attention).logits
    logp = torch.log_softmax(logits_further[:, :-1].float(), -1)
    target = labels[:, 1:]
    per_token = torch.gather(logp, 2, target.clamp(min=0).unsqueeze(-1))[..., 0] * (target != -100)
    return per_token, -per_token.sum()


def _jalign(model, batch, lam):
    def loss(model):
        view = encode_responses(model, batch, residual=lam)
        out = token_logprobs(view, jnp.asarray(batch["response_tokens"]), impl="chunked")
        masked = jnp.where(view.target_mask, out.logprobs, 0.0)
        return -masked.sum(), masked
    return nnx.grad(loss, has_aux=True)(model)


def _hf_named(model, grads, directory):
    """``{hf name: gradient}``: the gradient state written through the checkpoint table."""
    holder = nnx.clone(model)
    nnx.update(holder, grads)
    save_hf(holder, str(directory))
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("family", ["mistral", "llama", "gemma", "gpt2"])
def test_residual_forward_and_gradient_equal_the_authors_procedure(family, hf_checkpoints, jalign_models, tmp_path):
    _, torch_model = hf_checkpoints(family)
    model = jalign_models(family)
    batch, tokens, mask = reward_batch(seed=3)
    prompt_len, response_len = batch["prompt_mask"].sum(1), batch["response_mask"][:, 0].sum(1)
    response = np.zeros_like(mask)
    for i, (n, m) in enumerate(zip(prompt_len, response_len)):
        response[i, n:n + m] = True

    torch_model.zero_grad()
    per_token, loss = _authors_trc(torch_model, tokens, mask, response, LAMBDA)
    loss.backward()
    grads, masked = _jalign(model, {k: jnp.asarray(v) for k, v in batch.items()}, LAMBDA)

    expected = per_token.detach().numpy()
    for i, (n, m) in enumerate(zip(prompt_len, response_len)):
        np.testing.assert_allclose(np.asarray(masked)[i, 0, :m], expected[i, n - 1:n + m - 1], atol=2e-4, rtol=0)
    teacher_forced = token_logprobs(encode_responses(model, batch), jnp.asarray(batch["response_tokens"]),
                                    impl="chunked").logprobs
    assert np.abs(np.asarray(teacher_forced) - np.asarray(masked)).max() > 1e-2  # the mix changed the inputs

    ours = _hf_named(model, grads, tmp_path)
    names = dict(torch_model.named_parameters())
    assert set(ours) <= set(names)
    for name, value in ours.items():
        theirs = names[name].grad
        theirs = np.zeros_like(value) if theirs is None else theirs.numpy()   # the frozen input table (untied)
        scale = max(np.abs(theirs).max(), 1e-3)
        np.testing.assert_allclose(value, theirs, atol=2e-4 * scale, rtol=0, err_msg=name)
    if not torch_model.config.tie_word_embeddings:
        embed = next(n for n in ours if "embed_tokens" in n or "wte" in n)
        np.testing.assert_array_equal(ours[embed], 0.0)   # the input table is a constant in both


def test_lambda_zero_is_the_teacher_forced_forward(jalign_models):
    model = jalign_models("mistral")
    batch = {k: jnp.asarray(v) for k, v in reward_batch(seed=3)[0].items()}
    plain = encode_responses(model, batch)
    mixed = encode_responses(model, batch, residual=1e-30)   # the second pass on e(y): equal hidden states
    np.testing.assert_allclose(mixed.hidden, plain.hidden, atol=1e-5)
    np.testing.assert_array_equal(encode_responses(model, batch, residual=0.0).hidden, plain.hidden)


def test_bf16_compute_stays_close_to_fp32_with_finite_gradients():
    """bf16 activations over fp32 weights: finite gradients, log-probs within bf16 error of fp32's."""
    from jalign.models import Decoder, ModelConfig

    cfg = ModelConfig("llama", vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=64)
    batch = {k: jnp.asarray(v) for k, v in reward_batch(seed=4)[0].items()}
    out = {}
    for dtype in ("float32", "bfloat16"):
        model = Decoder(cfg.replace(dtype=dtype), rngs=nnx.Rngs(0))
        grads, masked = _jalign(model, batch, LAMBDA)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)), dtype
        out[dtype] = np.asarray(masked)
    np.testing.assert_allclose(out["bfloat16"], out["float32"], atol=0.1)
