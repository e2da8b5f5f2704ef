"""AlignDistil on tabular policies: the extrapolated teacher over ``K`` actions, exactly.

With one "token" per response, the next-token distribution is the policy
over the ``K`` actions of a context, and AlignDistil's per-token quantities
are per-context ones (``jalign.objectives.distillation``):

.. math::

    w_c = s \\, \\lVert \\pi_{dpo}(\\cdot|c) - \\pi_{rev}(\\cdot|c) \\rVert_1 + 10^{-3}, \\quad
    \\pi^*(\\cdot|c) = \\mathrm{softmax}\\big(((1 + w_c) \\log\\pi_{dpo} - w_c \\log\\pi_{rev}) / T\\big),

and ``teacher_kl`` is ``KL(pi(.|c) || pi^*(.|c))``. The loss is minimised
exactly at ``pi = pi^*`` (:func:`teacher_policy`), the closed form the tests
train to. Log-probabilities stand in for logits (a per-context constant does
not change a softmax).

References:
  Zhang et al., *AlignDistil*, ACL 2025; authors' code ``songmzhang/AlignDistil``
  (``aligndistil_offpolicy_trainer.py``, ``reward_boost_type="aligndistil"``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives import LogProbs
from jalign.tabular import feeding
from jalign.tabular.policies import Array

WEIGHT_FLOOR = 1e-3


def teacher_weight(log_dpo: Array, log_contrast: Array, *, scale: float = 10.0) -> Array:
    """``[C]`` token-adaptive weights ``w_c`` of ``[C, K]`` DPO and reverse-DPO log-policies."""
    return scale * jnp.sum(jnp.abs(jnp.exp(log_dpo) - jnp.exp(log_contrast)), axis=-1) + WEIGHT_FLOOR


def teacher_policy(log_dpo: Array, log_contrast: Array, *, scale: float = 10.0, temperature: float = 1.0) -> Array:
    """``[C, K]`` log pi^*: the extrapolated teacher, AlignDistil's optimum."""
    w = teacher_weight(log_dpo, log_contrast, scale=scale)[:, None]
    return jax.nn.log_softmax(((1.0 + w) * log_dpo - w * log_contrast) / temperature, axis=-1)


def teacher_batch(log_pi: Array, log_dpo: Array, log_contrast: Array, data: Array, *, scale: float = 10.0,
                  temperature: float = 1.0) -> LogProbs:
    """The exact population batch of chosen-first pairs ``data`` ``[C, K, K]`` with AlignDistil's extras.

    Args:
      log_pi: ``[C, K]`` the policy (carries the gradient).
      log_dpo, log_contrast: ``[C, K]`` the DPO and reverse-DPO log-policies (constants).
      data: ``[C, K, K]`` pair distribution.
      scale, temperature: the teacher's extrapolation scale and temperature.
    """
    log_dpo, log_contrast = jax.lax.stop_gradient(log_dpo), jax.lax.stop_gradient(log_contrast)
    log_teacher = teacher_policy(log_dpo, log_contrast, scale=scale, temperature=temperature)
    kl = jnp.sum(jnp.exp(log_pi) * (log_pi - log_teacher), axis=-1)                     # [C]
    weight = teacher_weight(log_dpo, log_contrast, scale=scale)                          # [C]
    lp = feeding.exact_batch(log_pi, None, data)
    context = feeding.all_tuples(data.shape[0], data.shape[1], 2)[0]                     # [B]
    per_token = lambda v: jnp.broadcast_to(v[context][:, None, None], lp.policy.shape)  # [B, 2, 1]
    return lp.replace(extras={"teacher_kl": per_token(kl), "teacher_weight": per_token(weight)})
