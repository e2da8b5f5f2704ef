r"""Objectives that match distributions rather than single margins: EXO, DiscoPOP, AOT.

- ``exo``: EXO for pairwise preferences (Ji et al. 2024): the reverse KL from
  the model's pairwise preference distribution to the (smoothed) data
  distribution; ``exo_reward`` is the same with explicit rewards over lists.
- ``discopop``: DiscoPOP / log-ratio modulated loss (Chen, Lu et al. 2024): a
  blend of the logistic and exponential losses gated by the margin.
- ``aot_paired`` / ``aot_unpaired``: Alignment via Optimal Transport (Melnyk
  et al. 2024): first-order stochastic dominance between two empirical
  distributions over the batch, whose 1-D optimal transport plan is the
  sorted (quantile) matching. These are **batch-level** objectives: the
  ``[B]`` per-example values are the contributions of the ``B`` matched
  quantile pairs, not of the examples in their batch order; their mean is the
  loss. Every row of the batch enters the sort, so padding rows (weight 0 in
  ``labels["example_weight"]``) must not be present. Which quantities are
  sorted in each setting follows the authors' own implementation in TRL
  (``aot`` / ``aot_unpaired``); only the logistic relaxation is implemented,
  with hard sorting (the paper also studies other convex relaxations and soft
  sorting).

All but ``exo_reward`` (lists of ``G >= 2`` with ``labels["score"]``) need pairs
(chosen first); all need reference log-probs. ``average`` length-normalises the
sequence quantities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import LIST, Objective, Requirements, static_field
from jalign.objectives.margin import PAIRED_WITH_REFERENCE, MarginObjective
from jalign.objectives.metrics import reference_pairwise_metrics
from jalign.objectives.pairwise import dpo_loss
from jalign.objectives.registry import objective
from jalign.objectives.sequence import (capped_exp, label, log_ratios, pair_margin, policy_logps,
                                        reference_logps, require_pairs)


def exo_loss(margin: Array, *, beta, label_smoothing=1e-3) -> Array:
    r"""Per-example pairwise EXO loss: :math:`\mathrm{KL}(p_\theta \,\|\, p_{data})` over ``{y_w, y_l}``.

    .. math::
        \ell = \sigma(\beta h)\left[\log\sigma(\beta h) - \log(1 - \epsilon)\right]
             + \sigma(-\beta h)\left[\log\sigma(-\beta h) - \log\epsilon\right]

    The model's distribution over the pair is
    :math:`p_\theta = \mathrm{softmax}(\beta_\pi r_w, \beta_\pi r_l) = (\sigma(\beta h), \sigma(-\beta h))`
    with ``beta`` the paper's :math:`\beta_\pi`; the data distribution is the
    preference label smoothed to :math:`(1 - \epsilon, \epsilon)`. The paper's
    second temperature :math:`\beta_r` scales explicit rewards and has no role
    with binary preferences, where the smoothing takes its place.

    Args:
      margin: ``[B]`` log-ratio margin ``h``.
      beta: the policy temperature :math:`\beta_\pi`.
      label_smoothing: :math:`\epsilon \in (0, 1)`; the KL is infinite at 0.

    Returns:
      ``[B]`` float32 losses (non-negative).

    References:
      Ji et al., *Towards Efficient Exact Optimization of Language Model
      Alignment*, 2024, Eq. 16 (EXO with pairwise preferences, K = 2).
    """
    logits = beta * jnp.asarray(margin, jnp.float32)
    log_p_w, log_p_l = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    # sigmoid via exp(log-sigmoid): 0 * finite where a probability underflows, never 0 * inf.
    return (jnp.exp(log_p_w) * (log_p_w - jnp.log1p(-label_smoothing))
            + jnp.exp(log_p_l) * (log_p_l - jnp.log(label_smoothing)))


@objective(
    "exo",
    strength="beta",
    citation="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment, "
    "Eq. 16 (pairwise EXO, label smoothing epsilon)",
    requires=PAIRED_WITH_REFERENCE,
)
class EXO(MarginObjective):
    r"""EXO for pairs: reverse KL from ``(sigmoid(beta h), sigmoid(-beta h))`` to ``(1 - eps, eps)``.

    Mode-seeking where DPO (the forward KL between the same two
    distributions, up to a constant) is mean-seeking. Defaults
    ``beta = 0.1``, ``label_smoothing = 1e-3``: the value TRL 1.16 cites as
    the paper's recommendation. TRL's own ``label_smoothing`` defaults to 0,
    at which this KL is infinite; its ``DPOTrainer`` therefore raises for
    ``loss_type="exo_pair"`` with ``label_smoothing = 0`` and recommends 1e-3
    (``trl/trainer/dpo_trainer.py``), so any TRL EXO run sets it explicitly.
    The authors' code uses unnormalised log-labels ``(0, -10)``, which is this
    loss at ``label_smoothing = 1 / (1 + e^10) ~ 4.5e-5`` plus a constant.
    Needs pairs (chosen first) and reference log-probs.
    """

    beta: float = 0.1
    label_smoothing: float = 1e-3
    average: bool = static_field(False)

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return exo_loss(margin, beta=self.beta, label_smoothing=self.label_smoothing)


def exo_reward_loss(log_ratios_: Array, scores: Array, valid: Array | None = None, *, beta, beta_r=0.5) -> Array:
    r"""Per-example EXO loss with explicit rewards over ``G`` responses.

    .. math::
        \ell = \sum_i p_\theta(i) \left[\log p_\theta(i) - \log p_r(i)\right], \quad
        p_\theta = \mathrm{softmax}_i(\beta_\pi r_i), \quad p_r = \mathrm{softmax}_i(s_i / \beta_r)

    Args:
      log_ratios_: ``[B, G]`` sequence log-ratios ``r_i``.
      scores: ``[B, G]`` rewards ``s_i`` of the responses (higher is better).
      valid: optional ``[B, G]`` mask of real list entries (padding excluded).
      beta: the policy temperature :math:`\beta_\pi`.
      beta_r: the reward temperature :math:`\beta_r`.

    Returns:
      ``[B]`` float32 losses (non-negative).

    References:
      Ji et al., *Towards Efficient Exact Optimization of Language Model
      Alignment*, 2024, the EXO objective with K sampled responses and
      explicit rewards (EXO-rw); ``exo_loss`` is its preference form.
    """
    scores = jnp.asarray(scores, jnp.float32)
    valid = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid) > 0.5
    # A finite stand-in for -inf keeps padded entries out of both softmaxes without inf - inf.
    log_p = jax.nn.log_softmax(jnp.where(valid, beta * jnp.asarray(log_ratios_, jnp.float32), -1e9), axis=-1)
    log_q = jax.nn.log_softmax(jnp.where(valid, scores / beta_r, -1e9), axis=-1)
    return jnp.sum(jnp.where(valid, jnp.exp(log_p) * (log_p - log_q), 0.0), axis=-1)


@objective(
    "exo_reward",
    strength="beta",
    citation="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment, "
    "EXO with explicit rewards over K responses (EXO-rw)",
    requires=Requirements(responses=LIST, reference=True, labels=("score",)),
)
class EXOReward(Objective):
    r"""EXO with rewards: ``KL(softmax(beta r) || softmax(score / beta_r))`` over each list.

    Needs ``G >= 2`` responses with reference log-probs and
    ``labels["score"]`` ``[B, G]``; honours the optional ``labels["list_mask"]``
    ``[B, G]`` of ragged lists (as in ``listwise.py``). Defaults: ``beta = 0.1``
    as for ``exo``, ``beta_r = 0.5`` from the authors' released scripts (which
    use ``beta_pi = 0.5`` too). Metric ``top1_accuracy``: the policy's most
    likely response is the best-scored one.
    """

    beta: float = 0.1
    beta_r: float = 0.5
    average: bool = static_field(False)

    def compute(self, lp: LogProbs):
        ratios = log_ratios(lp, average=self.average)
        scores = jnp.asarray(label(lp, "score"), jnp.float32)
        valid = lp.labels.get("list_mask")
        losses = exo_reward_loss(ratios, scores, valid, beta=self.beta, beta_r=self.beta_r)
        mask = jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid) > 0.5
        best_model = jnp.argmax(jnp.where(mask, jax.lax.stop_gradient(ratios), -jnp.inf), axis=-1)
        best_data = jnp.argmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
        return losses, {"top1_accuracy": (best_model == best_data).astype(jnp.float32)}


def discopop_loss(margin: Array, *, beta, tau=0.05) -> Array:
    r"""Per-example DiscoPOP (log-ratio modulated) loss.

    .. math::
        \rho = \beta h, \quad
        \ell = \left(1 - \sigma(\rho/\tau)\right)\log(1 + e^{-\rho}) + \sigma(\rho/\tau)\, e^{-\rho}

    Computed as :math:`\sigma(-\rho/\tau)\,\mathrm{softplus}(-\rho) +
    \exp(\log\sigma(\rho/\tau) - \rho)`, so the gate and the exponential never
    meet as ``0 * inf`` (the exponent is capped by
    :func:`~jalign.objectives.sequence.capped_exp`).

    Args:
      margin: ``[B]`` log-ratio margin ``h``.
      beta: margin scale.
      tau: temperature of the sigmoid gate.

    Returns:
      ``[B]`` float32 losses.

    References:
      Chen, Lu et al., *Discovering Preference Optimization Algorithms with
      and for Large Language Models*, 2024, Eq. 5 (LRML).
    """
    rho = beta * jnp.asarray(margin, jnp.float32)
    logistic = jax.nn.sigmoid(-rho / tau) * jax.nn.softplus(-rho)
    exponential = capped_exp(jax.nn.log_sigmoid(rho / tau) - rho)
    return logistic + exponential


@objective(
    "discopop",
    strength="beta",
    citation="Chen, Lu et al. 2024, Discovering Preference Optimization Algorithms with and for "
    "Large Language Models, Eq. 5 (log-ratio modulated loss, LRML)",
    requires=PAIRED_WITH_REFERENCE,
)
class DiscoPOP(MarginObjective):
    r"""DiscoPOP: the logistic loss for negative margins, the exponential for positive ones.

    The gate ``sigmoid(beta h / tau)`` mixes ``-log sigmoid(beta h)`` and
    ``exp(-beta h)``; the loss is non-convex near ``h = 0``. Defaults
    ``beta = 0.05``, ``tau = 0.05`` (the paper's setting; TRL's default beta is
    0.1). At ``beta = tau`` the gate is ``sigmoid(h)``, the discovered code's
    unscaled gate.
    """

    beta: float = 0.05
    tau: float = 0.05
    average: bool = static_field(False)

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return discopop_loss(margin, beta=self.beta, tau=self.tau)


def aot_loss(dominant: Array, dominated: Array, *, beta, label_smoothing=0.0) -> Array:
    r"""Per-quantile AOT loss: logistic penalty on the sorted differences.

    .. math::
        \ell_i = -(1 - \epsilon)\log\sigma\left(\beta \delta_i\right) - \epsilon \log\sigma\left(-\beta \delta_i\right),
        \qquad \delta_i = u_{(i)} - v_{(i)}

    where :math:`u_{(i)}` and :math:`v_{(i)}` are the ``i``-th smallest of
    ``dominant`` and ``dominated``: the closed-form optimal transport of the
    convex relaxation of "``u`` first-order stochastically dominates ``v``".

    Args:
      dominant: ``[B]`` samples that should dominate.
      dominated: ``[B]`` samples that should be dominated.
      beta: scale of the quantile differences.
      label_smoothing: :math:`\epsilon`, as in cDPO.

    Returns:
      ``[B]`` float32 losses, one per matched quantile pair (sorted order).

    References:
      Melnyk et al., *Distributional Preference Alignment of LLMs via Optimal
      Transport*, 2024, the AOT objective with the logistic relaxation,
      solved by sorting.
    """
    delta = jnp.sort(jnp.asarray(dominant, jnp.float32)) - jnp.sort(jnp.asarray(dominated, jnp.float32))
    return dpo_loss(delta, beta=beta, label_smoothing=label_smoothing)


class _AOT(Objective):
    """Metrics shared by the AOT objectives: per-example rewards and the quantile gaps."""

    def _finish(self, lp: LogProbs, dominant: Array, dominated: Array):
        losses = aot_loss(dominant, dominated, beta=self.beta, label_smoothing=self.label_smoothing)
        metrics = reference_pairwise_metrics(lp, self.beta, average=self.average)
        gaps = jnp.sort(dominant) - jnp.sort(dominated)
        metrics["aot/quantile_gap"] = jax.lax.stop_gradient(gaps)
        metrics["aot/dominance_violation"] = jax.lax.stop_gradient((gaps < 0).astype(jnp.float32))
        return losses, metrics


_AOT_CITATION = ("Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal "
                 "Transport, AOT with the logistic relaxation, ")


@objective("aot_paired", strength="beta", citation=_AOT_CITATION + "paired setting", requires=PAIRED_WITH_REFERENCE)
class AOTPaired(_AOT):
    r"""AOT, paired: the policy's chosen-vs-rejected log-likelihood ratio dominates the reference's.

    .. math::
        u_b = \log\pi_\theta(y_w^b|x^b) - \log\pi_\theta(y_l^b|x^b), \quad
        v_b = \log\pi_{ref}(y_w^b|x^b) - \log\pi_{ref}(y_l^b|x^b)

    sorted separately over the batch (TRL's ``loss_type="aot"``). Batch-level:
    see the module docstring. Metrics add ``aot/quantile_gap`` (sorted
    ``u - v``) and ``aot/dominance_violation`` (where it is negative).
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    average: bool = static_field(False)

    def compute(self, lp: LogProbs):
        policy_margin = pair_margin(policy_logps(lp, average=self.average))
        reference_margin = pair_margin(reference_logps(lp, average=self.average))
        return self._finish(lp, policy_margin, reference_margin)


@objective("aot_unpaired", strength="beta", citation=_AOT_CITATION + "unpaired setting", requires=PAIRED_WITH_REFERENCE)
class AOTUnpaired(_AOT):
    r"""AOT, unpaired: chosen log-ratios dominate rejected log-ratios as distributions.

    .. math::
        u_b = \log\frac{\pi_\theta(y_w^b)}{\pi_{ref}(y_w^b)}, \quad
        v_b = \log\frac{\pi_\theta(y_l^b)}{\pi_{ref}(y_l^b)}

    sorted separately over the batch, so column 0 and column 1 of a row need
    not share a prompt (TRL's ``loss_type="aot_unpaired"``). Batch-level: see
    the module docstring.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    average: bool = static_field(False)

    def compute(self, lp: LogProbs):
        chosen, rejected = require_pairs(log_ratios(lp, average=self.average))
        return self._finish(lp, chosen, rejected)
