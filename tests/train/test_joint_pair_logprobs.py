"""JPO's joint representation scores each response exactly as its own instruction would.

A joint pair is encoded as the instructions' shared prefix (the prompt) and,
per response slot, the rest of its instruction followed by its response. The
independent computation runs the decoder on each ``instruction + response``
as an ordinary one-response example; the response tokens' log-probs must
agree, so ``jpo`` on the joint batch equals the DPO sum of the two
conditionally scored responses.
"""

import numpy as np
import pytest
from flax import nnx

from jalign.data.collate import Collator
from jalign.data.tokenization import TokenizedExample
from jalign.models import Decoder
from jalign.models.scoring import score
from jalign.objectives import LogProbs, jpo

from decoder_batches import CFG

INSTRUCTIONS = ([1, 5, 6, 7], [1, 5, 9])
RESPONSES = ([10, 11, 2], [12, 2])
SHARED = 2


def _batch(prompt, responses, labels=None):
    example = TokenizedExample(index=0, prompt=np.asarray(prompt, np.int32),
                               responses=tuple(np.asarray(r, np.int32) for r in responses), labels=labels or {})
    return Collator(batch_size=1, prompt_buckets=(8,), response_buckets=(8,), pad_id=0)([example])


@pytest.mark.slow
def test_joint_slots_score_responses_as_their_own_instructions_do():
    policy, reference = Decoder(CFG, rngs=nnx.Rngs(0)), Decoder(CFG, rngs=nnx.Rngs(1))
    starts = [len(p) - SHARED for p in INSTRUCTIONS]
    joint = _batch(INSTRUCTIONS[0][:SHARED], [p[SHARED:] + r for p, r in zip(INSTRUCTIONS, RESPONSES)],
                   {"instruction_length": np.asarray(starts, np.float32)})
    scored = {name: score(model, joint) for name, model in (("policy", policy), ("reference", reference))}
    alone = {name: [score(model, _batch(p, [r]))[0][0, 0, :len(r)] for p, r in zip(INSTRUCTIONS, RESPONSES)]
             for name, model in (("policy", policy), ("reference", reference))}
    for g, (start, response) in enumerate(zip(starts, RESPONSES)):
        for name in scored:
            np.testing.assert_allclose(scored[name][0][0, g, start:start + len(response)], alone[name][g],
                                       rtol=1e-5, atol=1e-5)

    (policy_lp, mask), (reference_lp, _) = scored["policy"], scored["reference"]
    lp = LogProbs(policy=policy_lp, mask=mask.astype(np.float32), reference=reference_lp,
                  labels={"instruction_length": joint["labels"]["instruction_length"]})
    ratio = [float(np.sum(np.asarray(alone["policy"][g]) - np.asarray(alone["reference"][g]))) for g in range(2)]
    expected = np.logaddexp(0.0, -0.1 * (ratio[0] - ratio[1]))
    np.testing.assert_allclose(jpo(beta=0.1)(lp)[0], expected, rtol=1e-5)
