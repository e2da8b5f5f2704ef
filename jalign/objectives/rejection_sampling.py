"""Rejection-sampling fine-tuning: supervised learning on the judge's best of the policy's own samples.

The policy-update step of Directional Preference Alignment (Wang et al.
2024): for each prompt (conditioned on a user direction ``v`` in its system
prompt), responses are sampled from the current policy, the one with the
highest directional reward ``v . r(x, y)`` is kept, and the policy is
fine-tuned on it. It is the Rejection Sampling Fine-tuning of Llama 2
(Touvron et al. 2023) and RAFT (Dong et al. 2023), with the direction as
part of the prompt; the judge that scores ``v . r`` is
:class:`jalign.train.reward_judges.ShapedRewardJudge` with
``transform="directional"``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import LogProbs
from jalign.objectives.core import PAIR, Objective, Requirements, static_field
from jalign.objectives.declaration import POLICY, Sampling
from jalign.objectives.registry import objective
from jalign.objectives.sequence import label, policy_logps


@objective(
    "rsf",
    strength=None,
    citation="Rejection-sampling fine-tuning, the policy step of Wang et al. 2024, Arithmetic Control of LLMs "
    "for Diverse User Preferences: Directional Preference Alignment with Multi-Objective Rewards (ACL 2024): "
    "SFT on argmax_y v^T r(x, y) of the policy's own samples for the direction v in the prompt",
    requires=Requirements(responses=PAIR, reference=False, labels=("preference",)),
    sampling=Sampling(responses=(POLICY, POLICY), labels=("preference",)),
)
class RSF(Objective):
    """Negative log-likelihood of the judge's preferred response of two policy samples.

    .. math::
        \\ell = -\\log \\pi_\\theta(y^\\star \\mid x), \\qquad
        y^\\star = y_0 \\text{ if } P(y_0 \\succ y_1) \\ge 1/2 \\text{ else } y_1

    ``labels["preference"]`` ``[B]`` is the judge's ``P(y_0 ≻ y_1)``, e.g.
    ``sigma(v . r(y_0) - v . r(y_1))``, so ``y*`` is the best of the ``N = 2``
    samples under the directional reward (ties keep the first, as ``argmax``
    does). The online loop's judge compares pairs, hence ``N = 2``.
    ``average`` (default) divides by the response length, like ``sft``.
    Metrics: ``nll`` and ``first_kept`` (the share of rows keeping ``y_0``).
    """

    average: bool = static_field(True)

    def compute(self, lp: LogProbs):
        logps = policy_logps(lp, average=self.average)                      # [B, 2]
        first = jnp.asarray(label(lp, "preference"), jnp.float32) >= 0.5   # [B]
        nll = -jnp.where(first, logps[:, 0], logps[:, 1])
        return nll, {"nll": jax.lax.stop_gradient(nll), "first_kept": first.astype(jnp.float32)}
