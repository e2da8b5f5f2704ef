"""Batch -> LogProbs through the provider: shared-prompt forward and the fused kernel.

Independent reference: the decoder run on each full ``prompt + response``
sequence, ``jax.nn.log_softmax`` over full logits, and the response tokens'
entries picked out by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.models import Decoder
from jalign.objectives import dpo
from jalign.train.provider import Plan, batch_logprobs

from decoder_batches import CFG, batch_logprobs_by_hand, paired_batch


def test_policy_and_reference_logprobs_match_full_sequence_forward():
    policy = Decoder(CFG, rngs=nnx.Rngs(0))
    reference = Decoder(CFG, rngs=nnx.Rngs(1))
    batch = paired_batch()
    plan = Plan(reference="frozen", kernel_extras=("entropy", "ref_kl", "policy_kl"))
    lp = nnx.jit(lambda p, r, b: batch_logprobs(plan, p, r, b, impl="chunked"))(policy, reference, batch)
    mask = batch["response_mask"]
    np.testing.assert_array_equal(lp.mask, mask)
    np.testing.assert_allclose(lp.policy * mask, batch_logprobs_by_hand(policy, batch), atol=2e-5)
    np.testing.assert_allclose(lp.reference * mask, batch_logprobs_by_hand(reference, batch), atol=2e-5)
    assert lp.extras["entropy"].shape == mask.shape
    assert np.all(np.asarray(lp.extras["ref_kl"]) >= -1e-6)
    # Both directions reach the batch (tests/kernels/test_policy_kl.py checks their values), and differ.
    assert np.all(np.asarray(lp.extras["policy_kl"]) >= -1e-6)
    assert np.max(np.abs(np.asarray(lp.extras["policy_kl"] - lp.extras["ref_kl"]))) > 1e-4


def test_gradient_flows_to_policy_only():
    """The loss gradient reaches policy parameters; the reference model gets none."""
    policy = Decoder(CFG, rngs=nnx.Rngs(0))
    reference = Decoder(CFG, rngs=nnx.Rngs(1))
    batch = paired_batch()

    def loss(p, r):
        return dpo(beta=0.5)(batch_logprobs(Plan(reference="frozen"), p, r, batch, impl="chunked"))[0]

    g_policy, g_reference = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(policy, reference)
    policy_norm = sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(nnx.state(g_policy)))
    reference_norm = sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(nnx.state(g_reference)))
    assert policy_norm > 0 and reference_norm == 0

