r"""PoFT: supervised fine-tuning that prefers the target model to aligned models on the same data.

Fan et al., *Preference-Oriented Supervised Fine-Tuning: Favoring Target Model
Over Aligned Large Language Models*, AAAI 2025 (arXiv 2412.12865), Sec. 3.2,
Eqs. 5-6: a Bradley-Terry preference of the target model over ``M`` aligned
LLMs on an SFT example ``(x, y)``, each scored by its length-normalised
log-likelihood,

.. math::
    \mathcal{L}_{PoFT} = -\mathbb{E}_{(x, y)} \log\sigma\Big(\frac{1}{M}\sum_{j=1}^{M}
        \big(r_\theta(x, y) - r_j(x, y)\big)\Big),\qquad
    r(x, y) = \frac{1}{T(y)} \log p(y|x),

with each model's own token count ``T``. The authors' trainer
(``Savannah120/alignment-handbook-PoFT``, ``scripts/run_poft.py``) writes it
``-log sigmoid(beta * r_theta - beta * mean_j r_j + gamma)`` with ``beta = 1``
and ``gamma = 0``, the defaults here (Eq. 5 exactly). Its gradient is the
SFT gradient scaled by ``tau = sigmoid(mean_j r_j - r_theta)`` (Eq. 8).

The aligned models' ``r_j`` are precomputed, as the authors do
(``generate_preference_scores.py``, one pass per aligned model over the SFT
data), and arrive as ``labels["aligned_logps"]``: ``[B, G, M]`` (or ``[B, G]``
for one model), read from the records' ``aligned_logps`` field (unpaired) or
``aligned_logps_chosen`` / ``aligned_logps_rejected`` (paired). The SFT
response is response 0 (a pair's chosen one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import ANY, Metrics, Objective, Requirements
from jalign.objectives.registry import objective
from jalign.objectives.sequence import label, policy_logps

ALIGNED_LABEL = "aligned_logps"


def poft_loss(policy_logp: Array, aligned_logps: Array, *, beta=1.0, gamma=0.0) -> Array:
    """Per-example PoFT loss.

    .. math::
        \\ell = -\\log\\sigma\\big(\\beta\\, r_\\theta - \\beta\\, \\bar r_{aligned} + \\gamma\\big)

    Args:
      policy_logp: ``[B]`` the target model's length-normalised log-likelihood ``r_theta``.
      aligned_logps: ``[B, M]`` each aligned model's length-normalised log-likelihood ``r_j``.
      beta: scale of the reward difference (1 in the paper).
      gamma: margin (0 in the paper).

    Returns:
      ``[B]`` float32 losses.

    References:
      Fan et al., *Preference-Oriented Supervised Fine-Tuning*, 2024, Eq. 5.
    """
    aligned = jnp.mean(jnp.asarray(aligned_logps, jnp.float32), axis=-1)
    return -jax.nn.log_sigmoid(beta * (jnp.asarray(policy_logp, jnp.float32) - aligned) + gamma)


@objective(
    "poft",
    strength="beta",
    citation="Fan et al. 2024, Preference-Oriented Supervised Fine-Tuning: Favoring Target Model Over Aligned "
    "Large Language Models (arXiv 2412.12865), Eq. 5; beta and gamma as in the authors' run_poft.py",
    requires=Requirements(responses=ANY, reference=False, labels=(ALIGNED_LABEL,)),
)
class PoFT(Objective):
    """``-log sigmoid(beta (r_theta - mean_j r_j) + gamma)`` on response 0, ``r`` length-normalised.

    Needs ``labels["aligned_logps"]``: the aligned models' per-token mean
    log-likelihood of each response. ``weight`` reports Eq. 8's coefficient
    ``tau``, the factor on the SFT gradient.
    """

    beta: float = 1.0
    gamma: float = 0.0

    def compute(self, lp: LogProbs) -> tuple[Array, Metrics]:
        own = policy_logps(lp, average=True)[:, 0]                                    # [B]
        aligned = jnp.asarray(label(lp, ALIGNED_LABEL), jnp.float32)
        aligned = aligned[:, 0] if aligned.ndim == 3 else aligned[:, :1]             # [B, M]
        losses = poft_loss(own, aligned, beta=self.beta, gamma=self.gamma)
        margin = own - jnp.mean(aligned, axis=-1)
        return losses, {"policy_logp": own, "aligned_logp": jnp.mean(aligned, axis=-1),
                        "weight": jax.nn.sigmoid(-(self.beta * margin + self.gamma)), "nll": -own}
