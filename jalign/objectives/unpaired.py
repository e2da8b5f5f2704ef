"""Objectives for unpaired feedback (``G = 1``): KTO, BCO and NPO, plus paired BCO.

Each response stands alone with a thumbs-up / thumbs-down label
``labels["desirable"]`` ``[B, 1]`` (NPO needs none: every sample is a forget
sample). All use the sequence log-ratio
``r = log pi_theta(y|x) - log pi_ref(y|x)`` from the shared helpers.

New label key (KTO):

- ``"kl_estimate"`` ``[B]`` or scalar: Monte-Carlo samples of KTO's reference
  point. Entry ``b`` is the sequence log-ratio
  ``log pi_theta(y'|x_b) - log pi_ref(y'|x_b)`` of a *mismatched* completion
  ``y'`` (another example's response, e.g. ``y_{b+1}``) to prompt ``x_b``; the
  trainer computes it with the same log-prob kernels on the shifted batch. A
  scalar is taken as an already-averaged estimate (e.g. averaged over devices).
  Any real values are valid; random tests can draw ``N(0, 1)`` ``[B]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, SINGLE, Objective, Requirements, batch_mean
from jalign.objectives.metrics import reference_pairwise_metrics
from jalign.objectives.registry import objective
from jalign.objectives.sequence import label, log_ratios, require_pairs

UNPAIRED_WITH_REFERENCE = Requirements(responses=SINGLE, reference=True, labels=("desirable",))


def _desirable(lp: LogProbs) -> Array:
    """``labels["desirable"]`` ``[B, 1]`` (or ``[B]``) as a ``[B]`` boolean."""
    desirable = jnp.asarray(label(lp, "desirable"))
    return jnp.reshape(desirable, (desirable.shape[0],)) > 0.5


def kto_reference_point(kl_estimate: Array, weights: Array | None = None) -> Array:
    """KTO's reference point ``z0 = max(0, mean(kl_estimate))`` as a constant scalar.

    Args:
      kl_estimate: ``[B]`` mismatched-pair log-ratios, or a scalar estimate.
      weights: optional ``[B]`` example weights (0 for padding rows).

    Returns:
      Scalar float32 ``z0``; no gradient flows through it (the paper does not
      back-propagate through the KL term).
    """
    return jax.lax.stop_gradient(jnp.maximum(batch_mean(kl_estimate, weights), 0.0))


def kto_loss(log_ratio: Array, desirable: Array, reference_point: Array, *,
             beta, lambda_d=1.0, lambda_u=1.0) -> Array:
    """Per-example KTO loss ``lambda_y - v(x, y)``.

    .. math::
        v(x, y) = \\begin{cases}
          \\lambda_D \\sigma(\\beta (r - z_0)) & y \\text{ desirable} \\\\
          \\lambda_U \\sigma(\\beta (z_0 - r)) & y \\text{ undesirable}
        \\end{cases},
        \\qquad \\ell = \\lambda_y - v(x, y)

    computed as ``lambda_y * sigmoid(-.)``, which is exact and keeps the value
    in ``[0, lambda_y]``.

    Args:
      log_ratio: ``[B]`` sequence log-ratio ``r``.
      desirable: ``[B]`` boolean labels.
      reference_point: scalar (or ``[B]``) ``z0``, treated as a constant.
      beta: risk-aversion / KL strength.
      lambda_d: weight of desirable examples.
      lambda_u: weight of undesirable examples.

    Returns:
      ``[B]`` float32 losses.

    References:
      Ethayarajh et al., *KTO: Model Alignment as Prospect Theoretic
      Optimization*, 2024, Eq. 8 (the KTO loss) and Sec. 4.1 (estimating z0).
    """
    centred = beta * (jnp.asarray(log_ratio, jnp.float32) - reference_point)
    return jnp.where(desirable, lambda_d * jax.nn.sigmoid(-centred), lambda_u * jax.nn.sigmoid(centred))


@objective(
    "kto",
    strength="beta",
    citation="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, "
    "Eq. 8; z0 from mismatched pairs as in Sec. 4.1",
    requires=Requirements(responses=SINGLE, reference=True, labels=("desirable", "kl_estimate")),
)
class KTO(Objective):
    """Kahneman-Tversky Optimization on thumbs-up / thumbs-down responses.

    .. math::
        \\ell = \\lambda_y - v(x, y), \\quad
        z_0 = \\max\\Big(0, \\tfrac{1}{m} \\sum_{b} \\log
            \\frac{\\pi_\\theta(y'_b|x_b)}{\\pi_{ref}(y'_b|x_b)}\\Big)

    Inputs: ``G = 1``, reference, ``labels["desirable"]`` ``[B, 1]`` and
    ``labels["kl_estimate"]`` (see the module docstring). The KL estimate is
    required rather than defaulted to zero: a batch of matched (x, y) cannot
    supply it, and silently using ``z0 = 0`` would be a different objective.
    ``z0`` is a batch-level quantity (weighted by ``labels["example_weight"]``
    when present) and is a constant for the gradient, as in the paper; the
    per-example losses share it, so their mean is the batch loss.

    Metrics: ``kl`` (the reference point z0), ``reward`` (``beta * r``) and
    ``desirable``.
    """

    beta: float = 0.1
    lambda_d: float = 1.0
    lambda_u: float = 1.0

    def compute(self, lp: LogProbs):
        ratio = log_ratios(lp)[:, 0]
        desirable = _desirable(lp)
        z0 = kto_reference_point(label(lp, "kl_estimate"), lp.labels.get("example_weight"))
        losses = kto_loss(ratio, desirable, z0, beta=self.beta, lambda_d=self.lambda_d, lambda_u=self.lambda_u)
        metrics = {
            "kl": z0,
            "reward": jax.lax.stop_gradient(self.beta * ratio),
            "desirable": desirable.astype(jnp.float32),
        }
        return losses, metrics


def bco_loss(log_ratio: Array, desirable: Array, *, beta, delta=0.0) -> Array:
    """Per-example BCO loss: binary cross-entropy of the shifted implicit reward.

    .. math::
        \\ell = -\\log\\sigma(r_\\theta - \\delta) \\text{ (desirable)}, \\qquad
        \\ell = -\\log\\sigma(-(r_\\theta - \\delta)) \\text{ (undesirable)},
        \\qquad r_\\theta = \\beta \\log \\frac{\\pi_\\theta(y|x)}{\\pi_{ref}(y|x)}

    Args:
      log_ratio: ``[B]`` sequence log-ratio.
      desirable: ``[B]`` boolean labels.
      beta: KL strength.
      delta: the reward shift, a constant (scalar or ``[B]``); see
        :func:`bco_reward_shift`.

    Returns:
      ``[B]`` float32 losses.

    References:
      Jung et al., *Binary Classifier Optimization for Large Language Model
      Alignment*, 2024, Sec. 3 (the BCO loss with reward shift delta).
    """
    logits = beta * jnp.asarray(log_ratio, jnp.float32) - delta
    return jnp.where(desirable, jax.nn.softplus(-logits), jax.nn.softplus(logits))


def bco_reward_shift(rewards: Array, weights: Array | None = None) -> Array:
    """BCO's reward shift estimated on the batch: the mean implicit reward, a constant.

    .. math::
        \\delta = \\mathrm{sg}\\Big(\\tfrac{1}{N} \\textstyle\\sum_i \\beta r_i\\Big)

    over every response of the batch, desirable and undesirable pooled, as the
    trainer the BCO first author contributed to TRL does (``BCOTrainer.bco_loss``
    in ``trl/experimental/bco``, no longer shipped in TRL 1.16:
    ``self.running.update(torch.cat((chosen_rewards, rejected_rewards)))``,
    then ``delta = self.running.mean``, no gradient). That running mean
    continues over training steps: it equals this batch mean at the first step
    and is the mean of every reward seen so far after it. A trainer that wants
    it keeps it as state and passes it as a fixed ``delta``.

    Args:
      rewards: ``[B]`` or ``[B, G]`` implicit rewards ``beta * r``.
      weights: optional ``[B]`` example weights (0 for padding rows).

    Returns:
      Scalar float32 ``delta`` (no gradient).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    per_row = rewards if rewards.ndim == 1 else jnp.mean(rewards, axis=-1)
    return jax.lax.stop_gradient(batch_mean(per_row, weights))


def _shift(objective, rewards: Array, lp: LogProbs) -> Array:
    """``objective.delta`` when given, else the batch estimate of :func:`bco_reward_shift`."""
    if objective.delta is None:  # structure, not a traced value: None has no leaves
        return bco_reward_shift(rewards, lp.labels.get("example_weight"))
    return jnp.asarray(objective.delta, jnp.float32)


@objective(
    "bco",
    strength="beta",
    citation="Jung et al. 2024, Binary Classifier Optimization for Large Language Model "
    "Alignment, Sec. 3 (BCO loss with reward shift)",
    requires=UNPAIRED_WITH_REFERENCE,
)
class BCO(Objective):
    """Binary Classifier Optimization on unpaired thumbs-up / thumbs-down feedback.

    The implicit reward ``beta * r`` is the logit of a binary classifier
    (desirable vs undesirable), shifted by the paper's reward shift ``delta``,
    the mean implicit reward. ``delta = None`` (default) estimates it on the
    batch, desirable and undesirable responses pooled, without gradient
    (:func:`bco_reward_shift`): the authors' estimator at a single step, which
    keeps the objective a pure function of its batch. Their trainer averages
    it over all steps so far; to reproduce that, or
    for a fixed shift, pass a number (a traced hyperparameter, so a trainer
    can update it each step without recompiling); ``delta = 0`` is no shift.
    Like KTO's ``z0``, the estimate is a batch-level quantity weighted by
    ``labels["example_weight"]``; on a one-response batch it equals that
    response's reward, so the loss is ``log 2`` there (its gradient is not 0).

    Not implemented: the paper's underlying-distribution-matching density-ratio
    reweighting, which needs a separate prompt classifier; it can be applied
    through ``labels["example_weight"]``.

    Inputs: ``G = 1``, reference, ``labels["desirable"]`` ``[B, 1]``.
    Metrics: ``reward`` (``beta * r``), ``delta`` (the shift used), ``desirable``.
    """

    beta: float = 0.1
    delta: Any = None

    def compute(self, lp: LogProbs):
        ratio = log_ratios(lp)[:, 0]
        desirable = _desirable(lp)
        reward = self.beta * ratio
        delta = _shift(self, reward, lp)
        losses = bco_loss(ratio, desirable, beta=self.beta, delta=delta)
        return losses, {
            "reward": jax.lax.stop_gradient(reward),
            "delta": delta,
            "desirable": desirable.astype(jnp.float32),
        }


def bco_pair_loss(chosen_log_ratio: Array, rejected_log_ratio: Array, *, beta, delta=0.0) -> Array:
    """Per-example paired BCO loss: chosen as positive, rejected as negative.

    .. math::
        \\ell = -\\log\\sigma(\\beta r_w - \\delta) - \\log\\sigma(-(\\beta r_l - \\delta))

    Args:
      chosen_log_ratio: ``[B]`` log-ratio of the chosen response.
      rejected_log_ratio: ``[B]`` log-ratio of the rejected response.
      beta: KL strength.
      delta: the shared reward shift.

    Returns:
      ``[B]`` float32 losses.

    References:
      Jung et al., *Binary Classifier Optimization for Large Language Model
      Alignment*, 2024, Sec. 3, applied to both responses of a pair.
    """
    positive = bco_loss(chosen_log_ratio, jnp.ones_like(chosen_log_ratio, bool), beta=beta, delta=delta)
    negative = bco_loss(rejected_log_ratio, jnp.zeros_like(rejected_log_ratio, bool), beta=beta, delta=delta)
    return positive + negative


@objective(
    "bco_pair",
    strength="beta",
    citation="Jung et al. 2024, Binary Classifier Optimization for Large Language Model "
    "Alignment, Sec. 3, on paired data (chosen positive, rejected negative)",
    requires=Requirements(responses=PAIR, reference=True),
)
class BCOPair(Objective):
    """Paired BCO: the BCO loss of the chosen as desirable plus the rejected as undesirable.

    ``delta = None`` (default) is the batch mean of the chosen and rejected
    implicit rewards, without gradient, as for :class:`BCO`; the BCO author's
    original ``bco_pair`` in TRL's ``DPOTrainer`` (PR #1524) kept a running
    mean of the same quantity. TRL 1.16's ``bco_pair`` has no shift at all
    (``-logsigmoid(chosen_rewards) - logsigmoid(-rejected_rewards)``), which is
    ``delta = 0``. ``metrics["reward_mean"]`` is the per-pair mean reward.
    """

    beta: float = 0.1
    delta: Any = None

    def compute(self, lp: LogProbs):
        ratios = log_ratios(lp)
        chosen, rejected = require_pairs(ratios)
        delta = _shift(self, self.beta * ratios, lp)
        losses = bco_pair_loss(chosen, rejected, beta=self.beta, delta=delta)
        metrics = reference_pairwise_metrics(lp, self.beta)
        metrics["reward_mean"] = 0.5 * (metrics["rewards/chosen"] + metrics["rewards/rejected"])
        metrics["delta"] = delta
        return losses, metrics


def npo_loss(log_ratio: Array, *, beta) -> Array:
    """Per-example NPO loss on forget samples, via softplus.

    .. math::
        \\ell = \\frac{2}{\\beta} \\log\\Big(1 + \\Big(\\frac{\\pi_\\theta(y|x)}{\\pi_{ref}(y|x)}\\Big)^{\\beta}\\Big)
              = \\frac{2}{\\beta} \\operatorname{softplus}(\\beta r)

    Args:
      log_ratio: ``[B]`` sequence log-ratio ``r`` of the forget response.
      beta: inverse temperature; as beta -> 0 the loss tends to ``2 r``
        (gradient ascent on the forget likelihood, up to a constant).

    Returns:
      ``[B]`` float32 losses.

    References:
      Zhang et al., *Negative Preference Optimization: Towards Catastrophic
      Collapse to Effective Unlearning*, 2024, Sec. 3 (the NPO loss).
    """
    return 2.0 / beta * jax.nn.softplus(beta * jnp.asarray(log_ratio, jnp.float32))


@objective(
    "npo",
    strength="beta",
    citation="Zhang et al. 2024, Negative Preference Optimization: Towards Catastrophic "
    "Collapse to Effective Unlearning, Sec. 3 (NPO loss)",
    requires=Requirements(responses=SINGLE, reference=True),
)
class NPO(Objective):
    """Negative Preference Optimization: push forget samples below the reference.

    Inputs: ``G = 1`` forget responses and their reference log-probs. To keep
    utility, add a retain term, e.g. ``npo() + sft()`` on retain data.
    Metrics: ``logratio`` (how far the forget response moved).
    """

    beta: float = 0.1

    def compute(self, lp: LogProbs):
        ratio = log_ratios(lp)[:, 0]
        return npo_loss(ratio, beta=self.beta), {"logratio": jax.lax.stop_gradient(ratio)}
