"""DPO variants that reweight each pair or shift its margin.

All are pairwise objectives with a reference (``G = 2``, chosen first) built on
the log-ratio margin

.. math::
    h = \\log \\frac{\\pi_\\theta(y_w|x)}{\\pi_{ref}(y_w|x)} - \\log \\frac{\\pi_\\theta(y_l|x)}{\\pi_{ref}(y_l|x)},

and each reduces to DPO (``jalign.objectives.pairwise.dpo_loss``) at a neutral
setting of its extra hyperparameter or label.

New per-token extra introduced here (used by WPO):

- ``"log_prob_sq_sum"`` ``[B, G, T]``: ``log sum_v pi_theta(v | x, y_<t)^2``, the
  log collision probability of the policy's next-token distribution (minus
  its Renyi-2 entropy); ``logsumexp(2 * log_softmax(logits))`` over the
  vocabulary. Always <= 0. Treated as a constant.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, Objective, Requirements
from jalign.objectives.margin import MarginObjective
from jalign.objectives.metrics import reference_pairwise_metrics
from jalign.objectives.pairwise import dpo_loss
from jalign.objectives.registry import objective
from jalign.objectives.sequence import (
    extra, label, lengths, log_ratios, masked_mean, masked_sum, pair_margin, require_pairs,
    token_log_ratios,
)

LOG_PROB_SQ_SUM = "log_prob_sq_sum"


def _f32(x) -> Array:
    return jnp.asarray(x, jnp.float32)


def dpop_loss(chosen_ratio: Array, rejected_ratio: Array, *, beta, lam) -> Array:
    """Per-example DPO-Positive loss: DPO with a penalty for lowering the chosen likelihood.

    .. math::
        \\ell = -\\log\\sigma\\Big(\\beta\\big(r_w - r_l - \\lambda \\max(0, -r_w)\\big)\\Big),
        \\quad r = \\log\\frac{\\pi_\\theta(y|x)}{\\pi_{ref}(y|x)}

    ``max(0, -r_w) = max(0, log pi_ref(y_w|x) / pi_theta(y_w|x))`` is non-zero
    only once the policy puts less mass on the chosen response than the reference.

    Args:
      chosen_ratio: ``[B]`` log-ratio ``r_w`` of the chosen response.
      rejected_ratio: ``[B]`` log-ratio ``r_l`` of the rejected response.
      beta: KL-regularisation strength.
      lam: penalty weight ``lambda``; 0 gives DPO.

    Returns:
      ``[B]`` float32 losses.

    References:
      Pal et al., *Smaug: Fixing Failure Modes of Preference Optimisation with
      DPO-Positive*, 2024, Eq. 3.
    """
    chosen_ratio, rejected_ratio = _f32(chosen_ratio), _f32(rejected_ratio)
    penalty = jnp.maximum(0.0, -chosen_ratio)
    return -jax.nn.log_sigmoid(beta * (chosen_ratio - rejected_ratio - lam * penalty))


@objective(
    "dpop",
    strength="beta",
    citation="Pal et al. 2024, Smaug: Fixing Failure Modes of Preference Optimisation "
    "with DPO-Positive, Eq. 3",
    requires=Requirements(responses=PAIR, reference=True),
)
class DPOP(Objective):
    """DPO-Positive: DPO minus ``lam * max(0, log pi_ref(y_w)/pi_theta(y_w))`` inside the sigmoid.

    ``lam = 50`` is the value the paper uses for its MetaMath/ARC/HellaSwag runs.
    """

    beta: float = 0.1
    lam: float = 50.0

    def compute(self, lp: LogProbs):
        chosen, rejected = require_pairs(log_ratios(lp))
        losses = dpop_loss(chosen, rejected, beta=self.beta, lam=self.lam)
        metrics = reference_pairwise_metrics(lp, self.beta)
        metrics["dpop/penalty"] = jax.lax.stop_gradient(jnp.maximum(0.0, -chosen))
        return losses, metrics


def wpo_loss(margin: Array, log_weights: Array, *, beta, max_weight=float("inf")) -> Array:
    """Per-example WPO loss: DPO weighted by the policy's calibrated likelihood of the pair.

    .. math::
        \\ell = -\\min\\big(w(y_w) w(y_l), w_{max}\\big) \\log\\sigma(\\beta h),\\qquad
        \\log w(y) = \\frac{1}{|y|} \\sum_t \\log \\frac{\\pi_\\theta(y_t|x, y_{<t})}
        {\\sum_{v} \\pi_\\theta(v|x, y_{<t})^2}

    The weight is a constant (stop-gradient).

    Args:
      margin: ``[B]`` log-ratio margin ``h``.
      log_weights: ``[B, 2]`` ``log w(y)`` of chosen and rejected.
      beta: KL-regularisation strength.
      max_weight: cap on the pair weight; ``inf`` (default) is the paper's
        uncapped weight, which TRL 1.16's ``use_weighting`` also uses; 1
        reproduces TRL before its DPO refactor (PR #3906, 2026), which clipped
        the pair weight at 1.

    Returns:
      ``[B]`` float32 losses.

    References:
      Zhou et al., *WPO: Enhancing RLHF with Weighted Preference Optimization*,
      2024, Eq. 2 (the "sampled alignment" calibrated weight) and the weighted DPO loss.
    """
    log_pair = jnp.sum(jax.lax.stop_gradient(_f32(log_weights)), axis=-1)
    # Capping in log space: exp() of a capped log-weight cannot overflow.
    weight = jnp.exp(jnp.minimum(log_pair, jnp.log(_f32(max_weight))))
    return weight * dpo_loss(margin, beta=beta)


@objective(
    "wpo",
    strength="beta",
    citation="Zhou et al. 2024, WPO: Enhancing RLHF with Weighted Preference Optimization, "
    "Eq. 2 (sampled-alignment weight), uncapped as in TRL 1.16's use_weighting",
    requires=Requirements(responses=PAIR, reference=True, extras=(LOG_PROB_SQ_SUM,)),
)
class WPO(Objective):
    """Weighted Preference Optimization: DPO reweighted by ``w(y_w) w(y_l)``.

    ``w`` is the policy's length-normalised, per-token calibrated likelihood
    (see :func:`wpo_loss`); it needs ``extras["log_prob_sq_sum"]``. The paper
    writes the weight uncapped (the default), and so does TRL 1.16's
    ``use_weighting`` (``trl/trainer/dpo_trainer.py``: ``weights =
    exp(mean_logps)``, the loss multiplied by the chosen and rejected weights,
    no clamp); TRL before its DPO refactor (PR #3906, 2026) clipped the pair
    weight at 1, which ``max_weight = 1`` reproduces. For a valid calibration
    the per-token ratio is at most the vocabulary size, so the weight stays
    finite.
    """

    beta: float = 0.1
    max_weight: float = float("inf")

    def compute(self, lp: LogProbs):
        calibrated = jax.lax.stop_gradient(_f32(lp.policy) - _f32(extra(lp, LOG_PROB_SQ_SUM)))
        log_weights = masked_mean(calibrated, lp)
        margin = pair_margin(log_ratios(lp))
        losses = wpo_loss(margin, log_weights, beta=self.beta, max_weight=self.max_weight)
        metrics = reference_pairwise_metrics(lp, self.beta)
        metrics["wpo/log_weight"] = jnp.sum(log_weights, axis=-1)
        return losses, metrics


def ld_token_weights(lp: LogProbs, alpha) -> Array:
    """``[B, G, T]`` LD-DPO token weights: 1 on the first ``l_p`` response tokens, ``alpha`` after.

    ``l_p = min(|y_w|, |y_l|)`` is the pair's public length. Positions are
    counted over response tokens only, so left or ragged padding is harmless.
    """
    position = jnp.cumsum(lp.mask > 0, axis=-1)  # 1-based index among response tokens
    public = jnp.min(lengths(lp), axis=1)[:, None, None]
    return jnp.where(position <= public, 1.0, _f32(alpha))


@objective(
    "ld_dpo",
    strength="beta",
    citation="Liu et al. 2024, Length Desensitization in Direct Preference Optimization, "
    "Sec. 4 (likelihood decomposed at the public length, weight alpha on the excess)",
    requires=Requirements(responses=PAIR, reference=True),
)
class LDDPO(Objective):
    """LD-DPO: DPO on likelihoods whose tokens beyond the public length are down-weighted.

    .. math::
        \\log \\hat\\pi(y|x) = \\sum_{t \\le l_p} \\log \\pi(y_t|\\cdot)
        + \\alpha \\sum_{t > l_p} \\log \\pi(y_t|\\cdot),
        \\qquad l_p = \\min(|y_w|, |y_l|)

    for both the policy and the reference, then the DPO loss on
    ``h = log pi_hat_theta/pi_hat_ref (y_w) - (same for y_l)``. ``alpha = 1`` is
    DPO; the paper tunes ``alpha`` per model in ``[0, 1]``.

    The reference's tail is down-weighted too: the margin is DPO's on
    token-weighted log-ratios, so it is 0 at ``pi_theta = pi_ref`` (loss
    ``log 2``) for every ``alpha``, as in DPO. This is TRL 1.16's ``ld_alpha``
    (``trl/trainer/dpo_trainer.py``: the same shared/tail masks give
    ``ref_logps = ref_shared_logps + ld_alpha * ref_tail_logps``). TRL's first
    LD-DPO implementation (PR #3458) and LLaMA-Factory weight the policy only;
    their margin is this one minus ``(1 - alpha)(T_w - T_l)``, with ``T`` the
    reference's tail log-prob sum (0 for the shorter response): a fixed
    per-pair offset that raises the longer response's implicit reward.
    """

    beta: float = 0.1
    alpha: float = 0.5

    def compute(self, lp: LogProbs):
        weighted = masked_sum(ld_token_weights(lp, self.alpha) * token_log_ratios(lp), lp)
        losses = dpo_loss(pair_margin(weighted), beta=self.beta)
        metrics = reference_pairwise_metrics(lp, self.beta)
        metrics["ld_dpo/public_length"] = jnp.min(lengths(lp), axis=1)
        return losses, metrics


def madpo_weight(rm_margin: Array, *, c_max, c_min, lam, tau) -> Array:
    """MADPO's per-example weight ``w(h_phi)`` of a reward-model margin (a constant).

    .. math::
        c(h) = c_{min} + \\frac{c_{max} - c_{min}}
        {1 + \\frac{c_{max} - 1}{1 - c_{min}} e^{\\lambda(|h| - \\tau)}},\\qquad
        w(h) = \\begin{cases} \\sigma(c(h)\\, h) / \\sigma(h) & h > -\\tau \\\\ 1 & h \\le -\\tau \\end{cases}

    ``c`` is about ``c_max`` for small margins (hard pairs: the effective
    margin ``c h`` is amplified), 1 at ``|h| = tau`` and ``c_min`` for large
    ones (easy pairs: dampened); the weight is capped at 1 for margins below
    ``-tau``. Needs ``c_min < 1 <= c_max``; ``c_max = 1`` gives ``w = 1``.
    """
    h = jax.lax.stop_gradient(_f32(rm_margin))
    ramp = (c_max - 1.0) / (1.0 - c_min)
    # exp is clipped so a huge margin gives c = c_min instead of inf/inf.
    c = c_min + (c_max - c_min) / (1.0 + ramp * jnp.exp(jnp.minimum(lam * (jnp.abs(h) - tau), 80.0)))
    ratio = jnp.exp(jax.nn.log_sigmoid(c * h) - jax.nn.log_sigmoid(h))
    return jnp.where(h > -tau, ratio, 1.0)


def madpo_loss(margin: Array, rm_margin: Array, *, beta, c_max=2.0, c_min=0.5, lam=1.0, tau=2.0) -> Array:
    """Per-example MADPO loss: DPO weighted by a function of the reward-model margin.

    .. math::
        \\ell = -w(h_\\phi) \\log\\sigma(\\beta h)

    with ``w`` from :func:`madpo_weight` and ``h_phi = r_phi(x, y_w) - r_phi(x, y_l)``.

    Args:
      margin: ``[B]`` log-ratio margin ``h``.
      rm_margin: ``[B]`` reward-model margin ``h_phi``.
      beta: KL-regularisation strength.
      c_max: largest margin scale (hard pairs).
      c_min: smallest margin scale (easy pairs).
      lam: steepness of the scale in ``|h_phi|``.
      tau: margin at which the scale is 1, and below ``-tau`` the weight is 1.

    Returns:
      ``[B]`` float32 losses.

    References:
      Rho, *Margin Adaptive DPO: Leveraging Reward Model for Granular Control in
      Preference Optimization*, 2025, Sec. 3; weight as in the authors'
      ``MADPOLoss`` (defaults ``c_max=2, c_min=0.5, lam=1, tau=2``).
    """
    weight = madpo_weight(rm_margin, c_max=c_max, c_min=c_min, lam=lam, tau=tau)
    return weight * dpo_loss(margin, beta=beta)


@objective(
    "madpo",
    strength="beta",
    citation="Rho 2025, Margin Adaptive DPO: Leveraging Reward Model for Granular Control "
    "in Preference Optimization, Sec. 3 (weight as in the authors' MADPOLoss); margins from labels['score']",
    requires=Requirements(responses=PAIR, reference=True, labels=("score",)),
)
class MADPO(Objective):
    """Margin-adaptive DPO: per-example weights from reward-model margins.

    The reward-model margin is ``labels["score"][:, 0] - labels["score"][:, 1]``
    (``score`` ``[B, 2]``: reward-model scores of chosen and rejected).
    ``c_max = 1`` is DPO.
    """

    beta: float = 0.1
    c_max: float = 2.0
    c_min: float = 0.5
    lam: float = 1.0
    tau: float = 2.0

    def compute(self, lp: LogProbs):
        rm_margin = pair_margin(_f32(label(lp, "score")))
        kwargs = dict(c_max=self.c_max, c_min=self.c_min, lam=self.lam, tau=self.tau)
        losses = madpo_loss(pair_margin(log_ratios(lp)), rm_margin, beta=self.beta, **kwargs)
        metrics = reference_pairwise_metrics(lp, self.beta)
        metrics["madpo/weight"] = madpo_weight(rm_margin, **kwargs)
        return losses, metrics


def soft_dpo_loss(margin: Array, preference: Array, *, beta) -> Array:
    """Per-example DPO loss against a soft preference label.

    .. math::
        \\ell = -p \\log\\sigma(\\beta h) - (1 - p) \\log\\sigma(-\\beta h)

    Args:
      margin: ``[B]`` log-ratio margin ``h``.
      preference: ``[B]`` probability ``p`` that the first response is preferred.
      beta: KL-regularisation strength.

    Returns:
      ``[B]`` float32 losses.

    References:
      Zhai et al., *Online Self-Preferring Language Models*, 2024 (soft-preference
      cross-entropy loss).
    """
    logits = beta * _f32(margin)
    p = jax.lax.stop_gradient(_f32(preference))
    return -p * jax.nn.log_sigmoid(logits) - (1.0 - p) * jax.nn.log_sigmoid(-logits)


@objective(
    "soft_dpo",
    strength="beta",
    citation="Zhai et al. 2024, Online Self-Preferring Language Models (soft-preference "
    "cross-entropy on the DPO implicit reward)",
    requires=Requirements(responses=PAIR, reference=True, labels=("preference",)),
)
class SoftDPO(MarginObjective):
    """DPO with a soft label ``p = labels["preference"]``: ``p = 1`` is DPO, ``p = 1/2`` is symmetric."""

    beta: float = 0.1

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return soft_dpo_loss(margin, label(lp, "preference"), beta=self.beta)


def irepo_loss(margin: Array, preference: Array, *, beta, eps=1e-3) -> Array:
    """Per-example iREPO loss: regress ``beta h`` onto the empirical preference logit.

    .. math::
        \\ell = \\Big(\\beta h - \\log\\frac{\\hat p}{1 - \\hat p}\\Big)^2,
        \\qquad \\hat p = \\mathrm{clip}(p, \\epsilon, 1 - \\epsilon)

    Clipping keeps the target finite (``|logit| <= log((1 - eps)/eps)``, 6.9
    for the default) when the empirical preference is unanimous.

    Args:
      margin: ``[B]`` log-ratio margin ``h``.
      preference: ``[B]`` empirical probability that the first response is preferred.
      beta: KL-regularisation strength.
      eps: clipping of ``p`` away from 0 and 1.

    Returns:
      ``[B]`` float32 losses.

    References:
      Le et al., *iREPO: implicit Reward Pairwise Difference based Empirical
      Preference Optimization*, 2024 (squared loss on the implicit-reward difference).
    """
    p = jnp.clip(jax.lax.stop_gradient(_f32(preference)), eps, 1.0 - eps)
    target = jnp.log(p) - jnp.log1p(-p)
    return jnp.square(beta * _f32(margin) - target)


@objective(
    "irepo",
    strength="beta",
    citation="Le et al. 2024, iREPO: implicit Reward Pairwise Difference based Empirical "
    "Preference Optimization (squared regression of beta*h on the empirical preference logit)",
    requires=Requirements(responses=PAIR, reference=True, labels=("preference",)),
)
class IREPO(MarginObjective):
    """iREPO: ``(beta h - logit(p))^2`` with ``p = labels["preference"]`` clipped to ``[eps, 1-eps]``."""

    beta: float = 0.1
    eps: float = 1e-3

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return irepo_loss(margin, label(lp, "preference"), beta=self.beta, eps=self.eps)


def modpo_loss(margin: Array, other_margins: Array, *, beta, weights) -> Array:
    """Per-example MODPO loss for the objective with weight ``w_0``.

    .. math::
        \\ell = -\\log\\sigma\\Big(\\frac{\\beta}{w_0} h
        - \\frac{1}{w_0} \\sum_{k=1}^{K} w_k \\big(r_k(x, y_w) - r_k(x, y_l)\\big)\\Big)

    Args:
      margin: ``[B]`` log-ratio margin ``h``.
      other_margins: ``[B, K]`` margins ``r_k(y_w) - r_k(y_l)`` of the other reward models.
      beta: KL-regularisation strength.
      weights: ``[K + 1]`` objective weights ``(w_0, w_1, ..., w_K)``; ``w_0 > 0``
        weighs the preference being trained.

    Returns:
      ``[B]`` float32 losses.

    References:
      Zhou et al., *Beyond One-Preference-Fits-All Alignment: Multi-Objective
      Direct Preference Optimization*, 2024, Sec. 3 (the MODPO loss).
    """
    weights = _f32(weights)
    other_margins = jax.lax.stop_gradient(_f32(other_margins))
    if weights.shape != (other_margins.shape[-1] + 1,):
        raise ValueError(f"MODPO needs K + 1 weights for K other rewards; got {weights.shape=} "
                         f"{other_margins.shape=}")
    shift = other_margins @ weights[1:]
    return -jax.nn.log_sigmoid((beta * _f32(margin) - shift) / weights[0])


@objective(
    "modpo",
    strength="beta",
    citation="Zhou et al. 2024, Beyond One-Preference-Fits-All Alignment: Multi-Objective "
    "Direct Preference Optimization, Sec. 3 (MODPO loss)",
    requires=Requirements(responses=PAIR, reference=True, labels=("other_rewards",)),
)
class MODPO(Objective):
    """Multi-objective DPO: the margin is shifted by the other reward models' weighted margins.

    ``labels["other_rewards"]`` ``[B, 2, K]`` holds the K other rewards of chosen
    and rejected. ``weights`` has ``K + 1`` entries, ``w_0`` first; ``None`` (the
    default) means uniform ``1 / (K + 1)``. ``weights = (1, 0, ..., 0)`` is DPO.
    """

    beta: float = 0.1
    weights: Any = None

    def compute(self, lp: LogProbs):
        other = _f32(label(lp, "other_rewards"))
        other_margins = pair_margin(other)  # [B, K]
        k = other_margins.shape[-1]
        weights = jnp.full((k + 1,), 1.0 / (k + 1)) if self.weights is None else self.weights
        losses = modpo_loss(pair_margin(log_ratios(lp)), other_margins, beta=self.beta, weights=weights)
        metrics = reference_pairwise_metrics(lp, self.beta)
        metrics["modpo/other_margin"] = other_margins @ _f32(weights)[1:]
        return losses, metrics
