"""Alignment as token-level policy distillation: AlignDistil.

Per-token inputs (each ``[B, G, T]``), computed by the trainer's kernels
(``jalign.kernels.teacher``) from two more models, a DPO model and a
contrast (reverse-DPO) model:

- ``extras["teacher_weight"]``: AlignDistil's token-adaptive extrapolation
  weight ``w_t = s * ||pi_dpo(.|x, y_<t) - pi_c(.|x, y_<t)||_1 + 1e-3`` (its
  scale ``s`` is ``model.teacher_scale``), a constant. Random tests can draw
  ``U(1e-3, 20)``.
- ``extras["teacher_kl"]``: ``KL(pi_theta || pi^*_t)`` of the next-token
  distributions, where ``pi^*_t = softmax(z_dpo + w_t (z_dpo - z_c))``: the
  extrapolated teacher. It carries the policy's gradient. Random tests can
  draw ``U(0, 2)``.
"""

from __future__ import annotations

import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, Objective, Requirements
from jalign.objectives.registry import objective
from jalign.objectives.sequence import extra, masked_mean

TEACHER_EXTRAS = ("teacher_kl", "teacher_weight")


def aligndistil_loss(teacher_kl: Array, teacher_weight: Array, lp: LogProbs, *, beta) -> Array:
    """Per-response AlignDistil loss ``[B, G]``: the length-normalised, token-weighted reverse KL.

    .. math::
        \\ell(x, y) = \\frac{1}{|y|} \\sum_t \\frac{\\beta}{w_t}
            \\mathrm{KL}\\big(\\pi_\\theta(\\cdot | x, y_{<t}) \\,\\|\\, \\pi^*_t\\big)

    Args:
      teacher_kl: ``[B, G, T]`` ``KL(pi_theta || pi^*_t)`` per token.
      teacher_weight: ``[B, G, T]`` the extrapolation weights ``w_t > 0`` (constants).
      lp: the batch (its mask).
      beta: the RLHF KL strength of the DPO reward (``beta / w_t`` scales each token).

    Returns:
      ``[B, G]`` float32 losses.
    """
    scale = beta / jnp.maximum(jnp.asarray(teacher_weight, jnp.float32), 1e-3)
    return masked_mean(scale * jnp.asarray(teacher_kl, jnp.float32), lp)


@objective(
    "aligndistil",
    strength="beta",
    citation="Zhang et al. 2025, AlignDistil: Token-Level Language Model Alignment as Adaptive Policy "
    "Distillation (ACL 2025): contrastive DPO reward with token-adaptive logit extrapolation, the teacher and "
    "loss as the authors' code computes them (songmzhang/AlignDistil, aligndistil_offpolicy_trainer.py, "
    "reward_boost_type='aligndistil'); the paper's equation numbers were not available to check",
    requires=Requirements(responses=PAIR, reference=False, extras=TEACHER_EXTRAS),
)
class AlignDistil(Objective):
    """AlignDistil (off-policy): distil the chosen response's tokens into an extrapolated DPO teacher.

    The teacher ``pi^*_t = softmax(z_dpo + w_t (z_dpo - z_c))`` combines a
    DPO model's and a reverse-DPO model's logits, with the token-adaptive
    weight ``w_t`` (module docstring); the loss is
    :func:`aligndistil_loss` on the chosen response (the authors' off-policy
    trainer distils the ``chosen`` sequences only, ``reward_len_norm`` on).
    Defaults: ``beta = 0.1`` from the authors' UltraFeedback script
    (``train_scripts/ultrafeedback/qwen2.5-1.5b/aligndistil_off_policy.sh``),
    whose ``beta2 = 10`` is the teacher's scale ``model.teacher_scale`` and
    whose temperature (``kd_temperature``, default 1) is
    ``model.teacher_temperature``. The trainer serves both extras from
    ``model.teacher`` (the DPO model) and ``model.teacher_contrast`` (the
    reverse-DPO model); neither the run's reference nor the rejected response
    enters the loss.
    """

    beta: float = 0.1

    def compute(self, lp: LogProbs):
        kl, weight = extra(lp, "teacher_kl"), extra(lp, "teacher_weight")
        losses = aligndistil_loss(kl, weight, lp, beta=self.beta)[:, 0]
        return losses, {"teacher_kl": masked_mean(kl, lp)[:, 0], "teacher_weight": masked_mean(weight, lp)[:, 0]}
