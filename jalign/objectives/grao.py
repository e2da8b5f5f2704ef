"""GRAO: Group Relative Alignment Optimization (imitate, explore, transcend).

Wang et al., *Learning to Align, Aligning to Learn: A Unified Approach for
Self-Optimized Alignment*, 2025 (arXiv:2508.07750), Eq. 3-4, read from the
paper's text. For a query ``q`` with a reference answer ``y`` (the dataset's
response) and ``G`` trajectories ``o_i`` sampled from the policy, with
``J(o) = 1/|o| sum_t log pi(o_t | q, o_<t)``:

.. math::
    J_{GRAO} = \\frac{1}{G}\\sum_{i=1}^{G}\\Big[\\hat A_{o_i} J(o_i) + \\beta \\hat A_y J(y)
    + \\lambda \\hat A_{o_i}\\big(J(o_i) - J(y)\\big)\\Big],
    \\qquad \\hat A = \\frac{R - \\mu_r}{\\sigma_r}

(exploration, imitation and the alignment regulariser). The paper defines
``A_{o_i}`` as the advantage "relative to reference y and other output
trajectories" and ``A_y`` as "computed in one group (o_i, y)"; jalign
normalises the ``G + 1`` rewards of the samples and the reference answer
together, with the population standard deviation of Eq. 4, plus ``1e-4`` so
that a group of equal rewards has advantage 0 (as TRL's GRPO does). There is
no reference *model*: "reference" in the paper is the reference answer.

Defaults from the paper's training details: ``G = 8`` (sampled at
temperature 0.7: set ``online.temperature``), ``beta = 0.5``, ``lambda = 0.6``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import LIST, Objective, Requirements, static_field
from jalign.objectives.declaration import DATA, POLICY, Sampling
from jalign.objectives.registry import objective
from jalign.objectives.sequence import label, policy_logps


def grao_loss(mean_logps: Array, rewards: Array, *, beta, lam, eps: float = 1e-4) -> Array:
    """GRAO's loss ``-J_GRAO`` per prompt (Wang et al. 2025, Eq. 3).

    Args:
      mean_logps: ``[B, G + 1]`` length-normalised log-probs ``J``: the ``G``
        samples, then the reference answer (with gradient).
      rewards: ``[B, G + 1]`` rewards in the same order (constants).
      beta: weight of the imitation term.
      lam: weight of the alignment regulariser (the paper's ``lambda``).
      eps: added to the standard deviation.

    Returns:
      ``[B]`` float32 losses.
    """
    rewards = jax.lax.stop_gradient(jnp.asarray(rewards, jnp.float32))
    centred = rewards - jnp.mean(rewards, axis=1, keepdims=True)
    advantage = centred / (jnp.sqrt(jnp.mean(jnp.square(centred), axis=1, keepdims=True)) + eps)
    samples, answer = jnp.asarray(mean_logps[:, :-1], jnp.float32), jnp.asarray(mean_logps[:, -1:], jnp.float32)
    a_samples, a_answer = advantage[:, :-1], advantage[:, -1:]
    terms = a_samples * samples + beta * a_answer * answer + lam * a_samples * (samples - answer)
    return -jnp.mean(terms, axis=1)


@objective(
    "grao",
    strength=None,
    citation="Wang et al. 2025, Learning to Align, Aligning to Learn: A Unified Approach for Self-Optimized "
    "Alignment (GRAO), Eq. 3-4; G = 8, beta = 0.5, lambda = 0.6 from its training details",
    requires=Requirements(responses=LIST, reference=False, labels=("reward",)),
    sampling=Sampling(responses=(POLICY, DATA), labels=("reward",), group="group_size"),
)
class GRAO(Objective):
    """GRAO: ``G`` policy samples and the dataset's reference answer, weighted by their group advantages.

    The batch holds ``G + 1`` responses per prompt: the samples, then the
    reference answer (a ``"data"`` slot), each with the judge's reward
    ``labels["reward"]``. See the module docstring for the formula and its
    reading. ``group_size`` (``G``) is static. Reference-free.
    """

    beta: float = 0.5
    lam: float = 0.6
    group_size: int = static_field(8)

    def compute(self, lp: LogProbs):
        reward = label(lp, "reward")
        losses = grao_loss(policy_logps(lp, average=True), reward, beta=self.beta, lam=self.lam)
        reward = jnp.asarray(reward, jnp.float32)
        return losses, {"reward": jnp.mean(reward[:, :-1], axis=1), "reward/reference_answer": reward[:, -1]}
