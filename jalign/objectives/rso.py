"""RSO: preference pairs rejection-sampled from the estimated optimal policy, then a normalised loss.

Liu et al., *Statistical Rejection Sampling Improves Preference Optimization*
(ICLR 2024). Candidates are drawn from the SFT policy (jalign's reference),
scored by a reward model, and Algorithm 1 (Appendix A.1) keeps responses
distributed as ``pi_r ∝ pi_sft exp(r / beta)`` (Eq. 4): each candidate is
accepted with probability ``exp((r - r_max) / beta)``, ``r_max`` the largest
reward among candidates not yet accepted, until ``num_samples`` are kept. The
kept pair is ordered by the reward model (the winner first) and fitted with
the sigmoid-norm loss (Eq. 8, DPO's with ``gamma`` for ``beta``) or the
hinge-norm loss (Eq. 10).

The online loop runs Algorithm 1 on the host
(``jalign.train.rejection_sampling``); the declaration names the candidate
count and the sampling ``beta`` (``rejection_beta``).

Defaults from Sec. 5: ``beta = 0.5`` and ``gamma = 0.05``, 64 candidates
(sampled there with temperature 0.7 and top-k 40: set ``online.temperature``
and ``online.top_k`` for that). The paper keeps 8 and pairs them
("first-round-rank"); one pair per prompt here keeps 2, so a batch row is one
pair.
"""

from __future__ import annotations

import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.declaration import PAIR, REFERENCE, Requirements, Sampling
from jalign.objectives.margin import MarginObjective
from jalign.objectives.core import static_field
from jalign.objectives.pairwise import dpo_loss
from jalign.objectives.registry import objective

LOSSES = ("sigmoid_norm", "hinge_norm")


def hinge_norm_loss(margin: Array, *, gamma) -> Array:
    """RSO's hinge loss on the normalised likelihood: ``max(0, 1 - gamma h)``, ``[B]``.

    Liu et al. 2023, Eq. 10 (``h`` the pair's log-ratio margin against ``pi_sft``).
    """
    return jnp.maximum(0.0, 1.0 - gamma * jnp.asarray(margin, jnp.float32))


@objective(
    "rso",
    strength="gamma",
    citation="Liu et al. 2023, Statistical Rejection Sampling Improves Preference Optimization, Algorithm 1 "
    "(rejection sampling from pi_sft exp(r/beta)) and Eq. 8 / Eq. 10 (sigmoid-norm / hinge-norm); beta = 0.5, "
    "gamma = 0.05 and 64 candidates from Sec. 5",
    requires=Requirements(responses=PAIR, reference=True, labels=("reward",)),
    sampling=Sampling(responses=(REFERENCE, REFERENCE), labels=("reward",), candidates="candidates",
                      rejection="rejection_beta"),
)
class RSO(MarginObjective):
    """RSO's loss on a rejection-sampled pair, chosen (higher reward) first.

    .. math::
        \\ell_{\\text{sigmoid-norm}} = -\\log\\sigma(\\gamma h), \\qquad
        \\ell_{\\text{hinge-norm}} = \\max(0, 1 - \\gamma h), \\qquad
        h = \\log\\frac{\\pi(y_w)}{\\pi_{sft}(y_w)} - \\log\\frac{\\pi(y_l)}{\\pi_{sft}(y_l)}

    ``loss`` (static) picks the form; ``rejection_beta`` is Algorithm 1's
    ``beta``, ``candidates`` (static) the number drawn from the reference per
    prompt. ``labels["reward"]`` ``[B, 2]`` holds the pair's rewards (metrics
    and the order). Needs pairs and reference log-probs.
    """

    gamma: float = 0.05
    rejection_beta: float = 0.5
    candidates: int = static_field(64)
    loss: str = static_field("sigmoid_norm")

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}; got {self.loss!r}")

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        if self.loss == "hinge_norm":
            return hinge_norm_loss(margin, gamma=self.gamma)
        return dpo_loss(margin, beta=self.gamma)
