"""AlignDistil's teacher extras through the provider, against NumPy float64 full-sequence forwards.

Independent reference: each decoder's full log-softmax rows from a plain
full-sequence forward (``decoder_batches.full_sequence_logprobs``), then in
float64 the authors' construction (``aligndistil_offpolicy_trainer.py``):
``w = scale * sum_v |p_dpo - p_c| + 1e-3``, teacher
``log_softmax(((1 + w) z_dpo - w z_c) / T)`` (log-softmax rows stand in for
logits: a per-row constant does not change a softmax) and ``KL(pi || teacher)``.
"""

import numpy as np
import pytest
from flax import nnx

from jalign.models import Decoder
from jalign.objectives import aligndistil
from jalign.train.provider import Plan, RefusedObjective, batch_logprobs, plan_inputs
from jalign.train.teacher_inputs import Teacher

from decoder_batches import CFG, full_sequence_logprobs, paired_batch

PAIRED = ("prompt", "chosen", "rejected")


def _log_softmax(z):
    top = z.max(-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(-1, keepdims=True))


@pytest.mark.slow
def test_teacher_extras_match_full_logits():
    policy, dpo, contrast = (Decoder(CFG, rngs=nnx.Rngs(seed)) for seed in (0, 1, 2))
    teacher = Teacher(scale=10.0, temperature=0.8)
    plan = Plan(teacher=teacher)
    batch = paired_batch()
    lp = nnx.jit(lambda p, d, c, b: batch_logprobs(plan, p, None, b, impl="chunked", teacher=(d, c)))(
        policy, dpo, contrast, batch)
    kl_want = np.zeros(batch["response_tokens"].shape)
    weight_want = np.ones(batch["response_tokens"].shape)
    for b in range(batch["response_tokens"].shape[0]):
        prompt = batch["prompt_tokens"][b][batch["prompt_mask"][b] > 0]
        for g in range(2):
            response = batch["response_tokens"][b, g][batch["response_mask"][b, g] > 0]
            rows = [full_sequence_logprobs(m, prompt, response)[1] for m in (policy, dpo, contrast)]
            logp, logd, logc = rows
            w = teacher.scale * np.abs(np.exp(logd) - np.exp(logc)).sum(-1) + 1e-3
            logq = _log_softmax(((1 + w[:, None]) * logd - w[:, None] * logc) / teacher.temperature)
            kl_want[b, g, :len(response)] = (np.exp(logp) * (logp - logq)).sum(-1)
            weight_want[b, g, :len(response)] = w
    np.testing.assert_allclose(lp.extras["teacher_weight"], weight_want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lp.extras["teacher_kl"], kl_want, rtol=1e-4, atol=1e-4)
    assert lp.reference is None and np.max(kl_want) > 0.01


def test_aligndistil_is_refused_without_both_teachers():
    with pytest.raises(RefusedObjective, match=r"(?s)aligndistil.*model.teacher \(the DPO model\) and "
                                               r"model.teacher_contrast"):
        plan_inputs(aligndistil(), data_kind="paired", columns=PAIRED)
    plan = plan_inputs(aligndistil(), data_kind="paired", columns=PAIRED, teacher=Teacher())
    assert plan.needs_teacher and plan.reference == "none"
