"""Supervised fine-tuning on the preferred response, the term that makes RPO."""

from __future__ import annotations

from jalign.objectives.batch import LogProbs
from jalign.objectives.core import ANY, Objective, Requirements, static_field
from jalign.objectives.registry import objective
from jalign.objectives.sequence import policy_logps


@objective(
    "sft",
    strength=None,
    citation="Negative log-likelihood of the chosen response; as the alpha-weighted NLL "
    "term of RPO (Pang et al. 2024, Iterative Reasoning Preference Optimization, Sec. 2): "
    "rpo = dpo(...) + alpha * sft()",
    requires=Requirements(responses=ANY, reference=False),
)
class SFT(Objective):
    """``-log pi_theta(y_0 | x)`` of the first (chosen) response.

    ``average`` (default, as in RPO) divides by the response length.
    """

    average: bool = static_field(True)

    def compute(self, lp: LogProbs):
        nll = -policy_logps(lp, average=self.average)[:, 0]
        return nll, {"nll": nll}
