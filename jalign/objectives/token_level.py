"""Token-level pairwise objectives: TDPO1/TDPO2, SparsePO and TGDPO.

All three refine DPO's margin of sequence log-ratios with per-token
information. Per-token inputs (each ``[B, 2, T]``, chosen first):

- ``extras["ref_kl"]``: KL(pi_ref || pi_theta) of the next-token distributions;
  its masked sum is TDPO's sequential KL ``D_SeqKL``. It carries gradient.
- ``extras["token_mask_logits"]``: SparsePO's learned mask head, with gradient.
- ``labels["guide_log_ratio"]``: a guide policy's per-token log-ratio
  ``log pi_guide(y_t) - log pi_ref(y_t)`` (TGDPO's token-reward guidance is
  ``beta`` times it), a constant. Random tests can draw ``N(0, 1)``.

New extra key (SparsePO with ``mask="reference"``):

- ``"reference_token_mask"`` ``[B, 2, T]``: per-token weights in ``[0, 1]``
  derived from the reference model (SparsePO's activation-based masks: the
  reference model's per-token activations, normalised). They are not a
  function of log-probs, so the trainer computes them alongside the reference
  log-probs. Treated as a constant. Random tests can draw ``U(0, 1)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, Objective, Requirements, static_field
from jalign.objectives.metrics import reference_pairwise_metrics
from jalign.objectives.registry import objective
from jalign.objectives.sequence import (
    extra, label, log_ratios, masked_mean, masked_sum, pair_margin, require_pairs, token_log_ratios)

_PAIRED = dict(responses=PAIR, reference=True)


def tdpo_loss(margin: Array, seq_kl_chosen: Array, seq_kl_rejected: Array, *, beta, alpha=1.0) -> Array:
    """Per-example TDPO loss of a log-ratio margin and the two sequential KLs.

    .. math::
        \\ell = -\\log\\sigma\\big(\\beta h - \\alpha \\beta
            (D_{SeqKL}(x, y_l) - D_{SeqKL}(x, y_w))\\big)

    TDPO1 is ``alpha = 1``; TDPO2 passes ``seq_kl_chosen`` under a
    stop-gradient (see :class:`TDPO2`).

    Args:
      margin: ``[B]`` log-ratio margin ``h`` (chosen minus rejected).
      seq_kl_chosen: ``[B]`` sequential KL of the chosen response.
      seq_kl_rejected: ``[B]`` sequential KL of the rejected response.
      beta: KL strength.
      alpha: weight of the sequential-KL term.

    Returns:
      ``[B]`` float32 losses.

    References:
      Zeng et al., *Token-level Direct Preference Optimization*, 2024, Sec. 4
      (the TDPO1 and TDPO2 objectives).
    """
    delta = beta * (jnp.asarray(seq_kl_rejected, jnp.float32) - jnp.asarray(seq_kl_chosen, jnp.float32))
    return -jax.nn.log_sigmoid(beta * jnp.asarray(margin, jnp.float32) - alpha * delta)


def _seq_kls(lp: LogProbs) -> tuple[Array, Array]:
    return require_pairs(masked_sum(extra(lp, "ref_kl"), lp))


def _tdpo_metrics(lp: LogProbs, beta, kl_chosen: Array, kl_rejected: Array) -> dict:
    metrics = reference_pairwise_metrics(lp, beta)
    metrics["seq_kl/chosen"] = jax.lax.stop_gradient(kl_chosen)
    metrics["seq_kl/rejected"] = jax.lax.stop_gradient(kl_rejected)
    return metrics


@objective(
    "tdpo1",
    strength="beta",
    citation="Zeng et al. 2024, Token-level Direct Preference Optimization, Sec. 4 (TDPO1 loss)",
    requires=Requirements(**_PAIRED, extras=("ref_kl",)),
)
class TDPO1(Objective):
    """TDPO1: DPO's margin minus the difference of sequential KL divergences.

    .. math::
        \\ell = -\\log\\sigma\\big(u - \\delta\\big),\\;
        u = \\beta h,\\;
        \\delta = \\beta D_{SeqKL}(x, y_l; \\pi_{ref} \\| \\pi_\\theta)
                - \\beta D_{SeqKL}(x, y_w; \\pi_{ref} \\| \\pi_\\theta)

    ``D_SeqKL`` is the masked token sum of ``extras["ref_kl"]``. With zero
    sequential KL it is DPO.
    """

    beta: float = 0.1

    def compute(self, lp: LogProbs):
        kl_chosen, kl_rejected = _seq_kls(lp)
        margin = pair_margin(log_ratios(lp))
        losses = tdpo_loss(margin, kl_chosen, kl_rejected, beta=self.beta)
        return losses, _tdpo_metrics(lp, self.beta, kl_chosen, kl_rejected)


@objective(
    "tdpo2",
    strength="beta",
    citation="Zeng et al. 2024, Token-level Direct Preference Optimization, Sec. 4 (TDPO2 loss)",
    requires=Requirements(**_PAIRED, extras=("ref_kl",)),
)
class TDPO2(Objective):
    """TDPO2: TDPO with weight ``alpha`` and a stop-gradient on the chosen's sequential KL.

    .. math::
        \\ell = -\\log\\sigma\\big(u - \\alpha \\delta_2\\big),\\;
        \\delta_2 = \\beta D_{SeqKL}(x, y_l) - \\mathrm{sg}\\big(\\beta D_{SeqKL}(x, y_w)\\big)

    Default ``alpha = 0.5`` as in the paper's experiments.
    """

    beta: float = 0.1
    alpha: float = 0.5

    def compute(self, lp: LogProbs):
        kl_chosen, kl_rejected = _seq_kls(lp)
        margin = pair_margin(log_ratios(lp))
        losses = tdpo_loss(margin, jax.lax.stop_gradient(kl_chosen), kl_rejected, beta=self.beta, alpha=self.alpha)
        return losses, _tdpo_metrics(lp, self.beta, kl_chosen, kl_rejected)


def sparsepo_loss(token_ratios: Array, token_kl: Array, token_mask: Array, lp: LogProbs, *, beta) -> Array:
    """Per-example SparsePO loss with one (common) mask on rewards and KL.

    .. math::
        \\ell = -\\log\\sigma\\Big(\\beta \\sum_t m_t^w \\log\\frac{\\pi_\\theta}{\\pi_{ref}}(y_w^t)
          - \\beta \\sum_t m_t^l \\log\\frac{\\pi_\\theta}{\\pi_{ref}}(y_l^t)
          - \\beta \\big(\\sum_t m_t^l\\, KL_t(y_l) - \\sum_t m_t^w\\, KL_t(y_w)\\big)\\Big)

    Args:
      token_ratios: ``[B, 2, T]`` per-token log-ratios.
      token_kl: ``[B, 2, T]`` per-token KL(pi_ref || pi_theta).
      token_mask: ``[B, 2, T]`` non-negative token weights ``m``.
      lp: the batch (for the padding mask of the token sums).
      beta: KL strength.

    Returns:
      ``[B]`` float32 losses.

    References:
      Christopoulou et al., *SparsePO: Controlling Preference Alignment of
      LLMs via Sparse Token Masks*, 2024, Sec. 2 (the SparsePO objective).
    """
    token_mask = jnp.asarray(token_mask, jnp.float32)
    margin = pair_margin(masked_sum(token_mask * token_ratios, lp))
    kl_chosen, kl_rejected = require_pairs(masked_sum(token_mask * jnp.asarray(token_kl, jnp.float32), lp))
    return tdpo_loss(margin, kl_chosen, kl_rejected, beta=beta)


_SPARSEPO_MASK_EXTRA = {"learned": "token_mask_logits", "reference": "reference_token_mask"}


@objective(
    "sparsepo",
    strength="beta",
    citation="Christopoulou et al. 2024, SparsePO: Controlling Preference Alignment of LLMs via "
    "Sparse Token Masks, Sec. 2 (common mask on reward and KL)",
    requires=Requirements(**_PAIRED, extras=("ref_kl", "token_mask_logits")),
)
class SparsePO(Objective):
    """SparsePO: TDPO-style objective whose token rewards and KLs are weighted by a sparse mask.

    ``mask`` (static) picks the mask:

    - ``"learned"`` (default): ``m = relu(extras["token_mask_logits"])``, the
      paper's learned sparse mask (a linear head with ReLU on the policy's
      hidden states), trained through this loss.
    - ``"reference"``: ``m = extras["reference_token_mask"]``, the paper's
      reference-model activation-based mask, a constant (see module docstring).

    ``sparsity`` is the L1 penalty ``lambda (||m^w||_1 + ||m^l||_1)`` on the
    mask over response tokens, added to each example's loss (the authors'
    ``l1_norm_param_u = l1_norm_param_d = lambda``, halved for a common mask as
    their trainer does, so the total is ``lambda`` times the two norms). The
    authors' default is 0 (off); their HH recipe uses 0.001.

    ``requires`` names exactly the extra the chosen ``mask`` needs. The same mask weights rewards and
    KL ("common" masks); the paper's independent masks would need a second
    mask head and are not implemented. With a mask of ones it is TDPO1.
    Metrics add ``mask/density``: the mean mask value over response tokens.
    """

    beta: float = 0.1
    sparsity: float = 0.0
    mask: str = static_field("learned")

    def __post_init__(self):
        if self.mask not in _SPARSEPO_MASK_EXTRA:
            raise ValueError(f"sparsepo: mask must be one of {sorted(_SPARSEPO_MASK_EXTRA)}; got {self.mask!r}")

    @property
    def requires(self) -> Requirements:
        return Requirements(**_PAIRED, extras=("ref_kl", _SPARSEPO_MASK_EXTRA[self.mask]))

    def compute(self, lp: LogProbs):
        raw = extra(lp, _SPARSEPO_MASK_EXTRA[self.mask])
        if self.mask == "learned":
            token_mask = jax.nn.relu(jnp.asarray(raw, jnp.float32))
        else:
            token_mask = jax.lax.stop_gradient(jnp.asarray(raw, jnp.float32))
        losses = sparsepo_loss(token_log_ratios(lp), extra(lp, "ref_kl"), token_mask, lp, beta=self.beta)
        l1 = jnp.sum(masked_sum(token_mask, lp), axis=1)                      # ||m^w||_1 + ||m^l||_1
        metrics = reference_pairwise_metrics(lp, self.beta)
        metrics["mask/density"] = jnp.mean(masked_mean(jax.lax.stop_gradient(token_mask), lp), axis=1)
        metrics["mask/l1"] = jax.lax.stop_gradient(l1)
        return losses + self.sparsity * l1, metrics


def tgdpo_loss(token_ratios: Array, guide_ratios: Array, lp: LogProbs, *, beta, alpha=0.5) -> Array:
    """Per-example TGDPO loss: DPO with per-token beta set by token-level reward guidance.

    .. math::
        \\hat r_t = \\beta \\log\\frac{\\pi_{guide}}{\\pi_{ref}}(y^t), \\quad
        \\ell = -\\log\\sigma\\Big(\\sum_t \\beta (1 + \\alpha \\hat r^w_t)
            \\log\\frac{\\pi_\\theta}{\\pi_{ref}}(y_w^t)
          - \\sum_t \\beta (1 - \\alpha \\hat r^l_t) \\log\\frac{\\pi_\\theta}{\\pi_{ref}}(y_l^t)\\Big)

    Args:
      token_ratios: ``[B, 2, T]`` per-token log-ratios of the policy.
      guide_ratios: ``[B, 2, T]`` per-token log-ratios of the guide policy (a constant).
      lp: the batch (for the padding mask of the token sums).
      beta: KL strength; it also scales the guide's log-ratio into a reward,
        as the authors' trainer does with one ``pref_beta``.
      alpha: strength of the guidance; ``alpha = 0`` is DPO.

    Returns:
      ``[B]`` float32 losses.

    References:
      Zhu et al., *TGDPO: Harnessing Token-Level Reward Guidance for Enhancing
      Direct Preference Optimization*, 2025, Sec. 4 (the practical loss with
      reward guidance f(r_hat) = 1 +/- alpha r_hat); authors' code
      ``dvlab-research/TGDPO``, ``src/llamafactory/train/tgdpo/trainer.py``.
    """
    reward = beta * jax.lax.stop_gradient(jnp.asarray(guide_ratios, jnp.float32))
    sign = jnp.array([1.0, -1.0], jnp.float32)[None, :, None]  # chosen: 1 + a r, rejected: 1 - a r
    weighted = masked_sum(beta * (1.0 + sign * alpha * reward) * token_ratios, lp)
    return -jax.nn.log_sigmoid(pair_margin(weighted))


@objective(
    "tgdpo",
    strength="beta",
    citation="Zhu et al. 2025, TGDPO: Harnessing Token-Level Reward Guidance for Enhancing Direct "
    "Preference Optimization, Sec. 4 (practical loss)",
    requires=Requirements(**_PAIRED, labels=("guide_log_ratio",)),
)
class TGDPO(Objective):
    """TGDPO: per-token ``beta_t = beta * (1 +/- alpha r_hat_t)`` from a guide policy's token rewards.

    ``labels["guide_log_ratio"]`` ``[B, 2, T]`` is the guide's per-token
    ``log pi_guide - log pi_ref`` (the trainer computes it from ``model.guide``,
    a DPO-trained policy in the paper); ``r_hat = beta * guide_log_ratio``.
    Defaults ``beta = 0.1``, ``alpha = 0.5`` are the authors' (``pref_beta``,
    ``tgdpo_alpha``). Zero guidance (or ``alpha = 0``) is DPO. As in the
    authors' code nothing keeps ``1 - alpha r_hat`` positive.
    """

    beta: float = 0.1
    alpha: float = 0.5

    def compute(self, lp: LogProbs):
        losses = tgdpo_loss(token_log_ratios(lp), label(lp, "guide_log_ratio"), lp, beta=self.beta,
                            alpha=self.alpha)
        return losses, reference_pairwise_metrics(lp, self.beta)
