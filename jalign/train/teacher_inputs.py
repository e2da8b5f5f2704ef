"""AlignDistil's per-token extras, computed in the step from two teacher models.

``model.teacher`` is the DPO model and ``model.teacher_contrast`` the
reverse-DPO model (trained on the same pairs with chosen and rejected
swapped); both are frozen. Per response token the step computes, with the
fused kernels and no ``[tokens, vocab]`` buffer (``jalign.kernels.teacher``):

- ``extras["teacher_weight"]``: ``w_t = scale * ||pi_dpo - pi_c||_1 + 1e-3``;
- ``extras["teacher_kl"]``: ``KL(pi_theta || softmax((z_dpo + w_t (z_dpo - z_c)) / T))``,
  with the policy's gradient.

``scale`` (the authors' ``beta2``, 10 in their UltraFeedback script) and
``T`` (``kd_temperature``, default 1) are ``model.teacher_scale`` and
``model.teacher_temperature``: they shape the teacher, which the provider
builds, not the loss. The policy's head is read a second time for the KL
(its log-probs and other extras come from the main kernel call, whose other
head is the reference).

References:
  Zhang et al., *AlignDistil*, ACL 2025; authors' code
  ``songmzhang/AlignDistil``, ``aligndistil_offpolicy_trainer.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jalign.kernels import Head
from jalign.kernels.teacher import extrapolated_teacher, total_variation
from jalign.models.decoder import OutputProjection
from jalign.models.scoring import Responses, encode_responses, frozen, token_logprobs
from jalign.objectives.distillation import TEACHER_EXTRAS

WEIGHT_FLOOR = 1e-3  # the authors' "+ 1e-3": w_t > 0 where the two teachers agree


@dataclasses.dataclass(frozen=True)
class Teacher:
    """How the provider builds AlignDistil's teacher (static for the compiled step)."""

    scale: float = 10.0
    temperature: float = 1.0


def _flat(view: Responses) -> Head:
    return Head(view.hidden.reshape(-1, view.hidden.shape[-1]), view.head.kernel, view.head.bias)


def distillation_extras(policy: Responses, dpo: Any, contrast: Any, batch: dict, teacher: Teacher, *,
                        impl: str = "auto") -> dict[str, jax.Array]:
    """``{"teacher_kl", "teacher_weight"}``, each ``[B, G, R]`` (0 and 1 off the target mask).

    Args:
      policy: the policy's view of the batch (with gradient).
      dpo, contrast: the two frozen teacher decoders.
      batch: the collated batch.
      teacher: the teacher's scale and temperature.
      impl: the kernel implementation.

    Raises:
      ValueError: a teacher's vocabulary differs from the policy's, or a model soft-caps its logits.
    """
    views = {"model.teacher": frozen(encode_responses(dpo, batch)),
             "model.teacher_contrast": frozen(encode_responses(contrast, batch))}
    vocab = policy.head.kernel.shape[1]
    for field, view in views.items():
        if view.head.kernel.shape[1] != vocab:
            raise ValueError(f"{field}: vocabulary of {view.head.kernel.shape[1]} tokens; the policy has {vocab}")
    d, c = views.values()
    caps = [v.head.softcap for v in (policy, d, c) if v.head.softcap is not None]
    shape = policy.target_mask.shape                                            # [B, G, R]
    weight = teacher.scale * total_variation(_flat(d), _flat(c)) + WEIGHT_FLOOR  # [B * G * R]
    head = extrapolated_teacher(_flat(d), _flat(c), weight, temperature=teacher.temperature,
                                softcap=caps[0] if caps else None)
    view = Responses(head.hidden.reshape(*shape, -1), OutputProjection(head.weight, None, None), policy.target_mask)
    kl = token_logprobs(policy, batch["response_tokens"], extras=("policy_kl",), kl_to=view, impl=impl).policy_kl
    mask = policy.target_mask
    return dict(zip(TEACHER_EXTRAS, (jnp.where(mask, kl, 0.0), jnp.where(mask, weight.reshape(shape), 1.0))))
