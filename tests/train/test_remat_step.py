"""Remat policies change what the backward pass stores, not what it computes.

The independent reference is the same DPO step without remat. Both
references that run on device are covered: a frozen copy (a second set of
parameters, an argument of the step) and the LoRA base (the policy with its
adapters disabled). Before the layers were scanned with ``jax.checkpoint``,
``nnx.remat`` raised TraceContextError for both.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from jalign.models import Decoder, lora
from jalign.objectives import dpo
from jalign.train.provider import FROZEN, LORA_BASE, Plan
from jalign.train.step import FrozenModels, make_logprobs

from decoder_batches import CFG, paired_batch

# Alternating sliding windows as in Gemma 2 (2 tokens on even layers): per-layer differences inside the scan.
WINDOWED = CFG.replace(num_layers=3, sliding_window=2,
                       layer_types=("sliding_attention", "full_attention", "sliding_attention"))


def _loss_and_grads(reference: str, remat: str) -> tuple[float, dict]:
    """DPO loss and gradients as the train step differentiates them (`make_step` over `make_logprobs`)."""
    model = Decoder(WINDOWED.replace(remat=remat), rngs=nnx.Rngs(0))
    if reference == LORA_BASE:
        lora.add_lora(model, rank=2, alpha=4.0, targets=("q_proj", "v_proj", "down_proj"), rngs=nnx.Rngs(1))
        # Non-zero B, so the adapted policy differs from its base and A gets gradients too.
        for proj in (model.layers.attn.q_proj, model.layers.attn.v_proj, model.layers.mlp.down_proj):
            proj.lora_b.set_value(0.1 * jax.random.normal(jax.random.key(2), proj.lora_b.shape))
    graphdef, params, rest = nnx.split(model, nnx.LoRAParam if reference == LORA_BASE else nnx.Param, ...)
    frozen = FrozenModels(rest)
    if reference == FROZEN:    # a reference with other weights than the policy
        frozen = FrozenModels(rest, reference=nnx.state(Decoder(WINDOWED, rngs=nnx.Rngs(3)), nnx.Param))
    plan, objective, batch = Plan(reference=reference), dpo(beta=0.5), paired_batch()
    logprobs = make_logprobs(graphdef, plan, impl="chunked")
    loss, grads = jax.jit(jax.value_and_grad(lambda p: objective(logprobs(p, frozen, batch))[0]))(params)
    return float(loss), jax.tree.map(np.asarray, grads)


@pytest.mark.parametrize("reference", [FROZEN, LORA_BASE])
def test_remat_policies_give_the_step_without_remat(reference):
    want_loss, want_grads = _loss_and_grads(reference, "none")
    assert max(np.abs(g).max() for g in jax.tree.leaves(want_grads)) > 1e-4
    for remat in ("full", "dots"):
        loss, grads = _loss_and_grads(reference, remat)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        # Recomputing the forward reorders float32 sums: each leaf agrees to 1e-4 of its largest entry.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max()),
                     grads, want_grads)
