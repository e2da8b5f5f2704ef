"""Batch -> LogProbs through the provider: shared-prompt forward and the fused kernel.

Independent reference: the decoder run on each full ``prompt + response``
sequence, ``jax.nn.log_softmax`` over full logits, and the response tokens'
entries picked out by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.models import Decoder, ModelConfig
from jalign.objectives import dpo
from jalign.train.provider import Plan, batch_logprobs

CFG = ModelConfig("llama", vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64)


def _batch():
    """Two prompts (left-padded, one of length 1) with two ragged responses each."""
    prompt = np.array([[0, 5, 6, 7], [0, 0, 0, 9]], np.int32)
    prompt_mask = (np.arange(4)[None] >= np.array([[1], [3]])).astype(np.int32)
    responses = np.array([[[11, 12, 13], [14, 15, 0]], [[16, 0, 0], [17, 18, 19]]], np.int32)
    response_mask = np.array([[[1, 1, 1], [1, 1, 0]], [[1, 0, 0], [1, 1, 1]]], np.int32)
    labels = {"example_weight": np.ones(2, np.float32)}
    return dict(prompt_tokens=prompt, prompt_mask=prompt_mask, response_tokens=responses,
                response_mask=response_mask, labels=labels)


def _full_sequence_logprobs(model, batch):
    """Every prompt+response concatenated, right-padded, in one masked forward."""
    rows, spans = [], []
    for b in range(2):
        prompt = batch["prompt_tokens"][b][batch["prompt_mask"][b] > 0]
        for g in range(2):
            response = batch["response_tokens"][b, g][batch["response_mask"][b, g] > 0]
            rows.append(np.concatenate([prompt, response]))
            spans.append((b, g, len(prompt), response))
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        tokens[i, :len(row)], mask[i, :len(row)] = row, True
    logits = nnx.jit(lambda m, t, k: m(t, k))(model, jnp.asarray(tokens), jnp.asarray(mask))
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
    out = np.zeros(batch["response_tokens"].shape, np.float32)
    for i, (b, g, start, response) in enumerate(spans):
        for t, token in enumerate(response):
            out[b, g, t] = logp[i, start + t - 1, token]
    return out


def test_policy_and_reference_logprobs_match_full_sequence_forward():
    policy = Decoder(CFG, rngs=nnx.Rngs(0))
    reference = Decoder(CFG, rngs=nnx.Rngs(1))
    batch = _batch()
    plan = Plan(reference="frozen", kernel_extras=("entropy", "ref_kl"))
    lp = nnx.jit(lambda p, r, b: batch_logprobs(plan, p, r, b, impl="chunked"))(policy, reference, batch)
    mask = batch["response_mask"]
    np.testing.assert_array_equal(lp.mask, mask)
    np.testing.assert_allclose(lp.policy * mask, _full_sequence_logprobs(policy, batch), atol=2e-5)
    np.testing.assert_allclose(lp.reference * mask, _full_sequence_logprobs(reference, batch), atol=2e-5)
    assert lp.extras["entropy"].shape == mask.shape
    assert np.all(np.asarray(lp.extras["ref_kl"]) >= -1e-6)


def test_gradient_flows_to_policy_only():
    """The loss gradient reaches policy parameters; the reference model gets none."""
    policy = Decoder(CFG, rngs=nnx.Rngs(0))
    reference = Decoder(CFG, rngs=nnx.Rngs(1))
    batch = _batch()

    def loss(p, r):
        return dpo(beta=0.5)(batch_logprobs(Plan(reference="frozen"), p, r, batch, impl="chunked"))[0]

    g_policy, g_reference = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(policy, reference)
    policy_norm = sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(nnx.state(g_policy)))
    reference_norm = sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(nnx.state(g_reference)))
    assert policy_norm > 0 and reference_norm == 0

