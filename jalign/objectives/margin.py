r"""Margin objectives: per-example losses of the pair's log-ratio margin

.. math::
    h = \log \frac{\pi_\theta(y_w|x)}{\pi_{ref}(y_w|x)} - \log \frac{\pi_\theta(y_l|x)}{\pi_{ref}(y_l|x)}.

Most pairwise objectives with a reference are one function of ``h`` (GPO
writes the offline ones as :math:`f(\beta h)`). A registered subclass of
:class:`MarginObjective` declares its hyperparameters and ``margin_loss``,
which calls its pure loss function; the paper is cited by that function and
by ``@objective``.
"""

from __future__ import annotations

from typing import ClassVar

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, Metrics, Objective, Requirements
from jalign.objectives.metrics import reference_pairwise_metrics
from jalign.objectives.sequence import log_ratios, pair_margin

# What a margin objective needs unless it also reads labels.
PAIRED_WITH_REFERENCE = Requirements(responses=PAIR, reference=True)


class MarginObjective(Objective):
    """``margin_loss(h, lp)`` with the metrics of :func:`reference_pairwise_metrics`.

    The metrics' implicit reward is ``strength * log_ratio`` at the declared
    strength (DPO's ``beta``, IPO's ``tau``), or the log-ratio itself for an
    objective without one (SLiC). Needs pairs, chosen first, and reference log-probs.
    """

    # Sequence log-ratios. A subclass that offers the length-normalised variant
    # declares the static field ``average: bool = static_field(False)`` instead.
    average: ClassVar[bool] = False

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        """``[B]`` float32 losses of the ``[B]`` margin; ``lp`` for objectives that also read labels."""
        raise NotImplementedError(f"{type(self).__name__} must implement margin_loss()")

    def compute(self, lp: LogProbs) -> tuple[Array, Metrics]:
        margin = pair_margin(log_ratios(lp, average=self.average))
        reward_scale = 1.0 if self.strength is None else self.strength
        return self.margin_loss(margin, lp), reference_pairwise_metrics(lp, reward_scale, average=self.average)
