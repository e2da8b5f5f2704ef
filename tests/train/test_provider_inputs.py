"""Inputs the provider computes, each against an independent computation.

- ``log_prob_sq_sum`` (WPO): logsumexp of twice the full log-softmax rows.
- KTO's ``kl_estimate``: NumPy mean of mismatched (x_b, y_{b-1}) log-ratios,
  each from full-sequence forwards, padding rows left out (TRL's rotation).
- TGDPO's ``guide_log_ratio``: full-sequence guide minus reference log-probs.
- SparsePO's masks: the authors' formulas written in NumPy over the
  reference's per-layer states (min-max of the feature mean; LayerNorm,
  per-layer ReLU linear, linear mixer).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import logsumexp

from jalign.models import Decoder
from jalign.models.scoring import encode_responses
from jalign.train.provider import Plan, batch_logprobs
from jalign.train.token_inputs import add_token_mask_head, guide_log_ratio, mismatched_kl_estimate

from decoder_batches import CFG, batch_logprobs_by_hand, full_sequence_logprobs, paired_batch, unpaired_batch


@pytest.fixture(scope="module")
def models():
    return {name: Decoder(CFG, rngs=nnx.Rngs(seed)) for seed, name in enumerate(["policy", "reference", "guide"])}


def test_log_prob_sq_sum_through_the_provider_matches_full_logits(models):
    batch = paired_batch()
    plan = Plan(reference="frozen", kernel_extras=("log_prob_sq_sum",))
    lp = nnx.jit(lambda p, r, b: batch_logprobs(plan, p, r, b, impl="chunked"))(
        models["policy"], models["reference"], batch)
    expected = np.zeros(batch["response_tokens"].shape)
    for b in range(2):
        prompt = batch["prompt_tokens"][b][batch["prompt_mask"][b] > 0]
        for g in range(2):
            response = batch["response_tokens"][b, g][batch["response_mask"][b, g] > 0]
            rows = full_sequence_logprobs(models["policy"], prompt, response)[1]
            expected[b, g, :len(response)] = logsumexp(2 * rows, axis=-1)
    np.testing.assert_allclose(lp.extras["log_prob_sq_sum"], expected, atol=2e-5)


def test_kto_kl_estimate_is_the_mean_mismatched_log_ratio(models):
    batch = unpaired_batch()
    estimate = nnx.jit(lambda p, r, b: mismatched_kl_estimate(p, r, b, impl="chunked"))(
        models["policy"], models["reference"], batch)
    weight = batch["labels"]["example_weight"]
    ratios = []
    for b in range(4):
        if weight[b] == 0 or weight[b - 1] == 0:  # row 0 pairs with row 3, a padding row
            continue
        prompt = batch["prompt_tokens"][b][batch["prompt_mask"][b] > 0]
        response = batch["response_tokens"][b - 1, 0][batch["response_mask"][b - 1, 0] > 0]
        ratios.append(full_sequence_logprobs(models["policy"], prompt, response)[0].sum()
                      - full_sequence_logprobs(models["reference"], prompt, response)[0].sum())
    assert len(ratios) == 2
    np.testing.assert_allclose(estimate, np.mean(ratios), atol=5e-5)


def test_kto_kl_estimate_carries_no_gradient(models):
    batch = unpaired_batch()
    grad = nnx.jit(nnx.grad(lambda p, r: mismatched_kl_estimate(p, r, batch, impl="chunked")))(
        models["policy"], models["reference"])
    assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(nnx.state(grad)))


def test_guide_log_ratio_is_guide_minus_reference_per_token(models):
    batch = paired_batch()
    reference = jnp.asarray(batch_logprobs_by_hand(models["reference"], batch), jnp.float32)
    ratio = guide_log_ratio(models["guide"], batch, reference, impl="chunked")
    expected = batch_logprobs_by_hand(models["guide"], batch) - batch_logprobs_by_hand(models["reference"], batch)
    np.testing.assert_allclose(ratio, expected * batch["response_mask"], atol=5e-5)


def _layer_states(model, batch):
    view = encode_responses(model, batch, layers=True)
    return np.asarray(view.layers, np.float64), np.asarray(view.target_mask), view


def test_layer_states_end_in_the_final_hidden_states(models):
    batch = paired_batch()
    view = encode_responses(models["reference"], batch, layers=True)
    plain = encode_responses(models["reference"], batch)
    assert view.layers.shape[0] == CFG.num_layers
    np.testing.assert_allclose(view.hidden, plain.hidden, atol=1e-6)


def test_reference_token_mask_is_the_authors_min_max_of_feature_means(models):
    batch = paired_batch()
    plan = Plan(reference="frozen", mask_extras=("reference_token_mask",))
    lp = batch_logprobs(plan, models["policy"], models["reference"], batch, impl="chunked")
    states, mask, _ = _layer_states(models["reference"], batch)
    expected = np.zeros(mask.shape)
    for b, g in np.ndindex(*mask.shape[:2]):
        valid = mask[b, g]
        for layer in states:
            mean = layer[b, g].mean(-1)
            z = (mean - mean[valid].mean()) / (mean[valid].std() + 1e-12)  # the authors z-normalise first
            if valid.sum() > 1:
                expected[b, g][valid] += (z[valid] - z[valid].min()) / (z[valid].max() - z[valid].min())
        expected[b, g] /= len(states)
    np.testing.assert_allclose(lp.extras["reference_token_mask"], expected, atol=1e-5)


def test_learned_token_mask_head_matches_numpy_and_trains(models):
    batch = paired_batch()
    policy = Decoder(CFG, rngs=nnx.Rngs(0))
    add_token_mask_head(policy, rngs=nnx.Rngs(3))
    plan = Plan(reference="frozen", mask_extras=("token_mask_logits",))
    lp = nnx.jit(lambda p, r: batch_logprobs(plan, p, r, batch, impl="chunked"))(policy, models["reference"])
    states, mask, _ = _layer_states(models["reference"], batch)
    head = policy.token_mask_head
    x = states - states.mean(-1, keepdims=True)
    x = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * np.asarray(head.norm_scale[...]) \
        + np.asarray(head.norm_bias[...])
    per_layer = np.maximum(np.einsum("lbgre,le->lbgr", x, np.asarray(head.layer_weight[...]))
                           + np.asarray(head.layer_bias[...])[:, None, None, None], 0)
    expected = np.einsum("lbgr,l->bgr", per_layer, np.asarray(head.mixer[...])) * mask
    np.testing.assert_allclose(lp.extras["token_mask_logits"], expected, atol=1e-5)

    from jalign.objectives import sparsepo

    # With two layers, N(0, 0.02) mixer weights can both be negative, and then the
    # ReLU'd mask is 0 everywhere with no gradient; make one positive.
    head.mixer[...] = jnp.abs(head.mixer[...])

    def loss(model, reference):
        out = batch_logprobs(Plan(reference="frozen", kernel_extras=("ref_kl",), mask_extras=("token_mask_logits",)),
                             model, reference, batch, impl="chunked")
        return sparsepo(sparsity=0.01)(out)[0]

    grads = nnx.jit(nnx.grad(loss))(policy, models["reference"])
    head_grad = nnx.state(grads.token_mask_head)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(head_grad))
