"""Objectives from issue 15's reading list: MaPO, Sem-DPO, JPO and IFT.

- MaPO: the reference-free margin loss of the authors' diffusion code, with
  the per-sample denoising loss replaced by the response's length-averaged NLL.
- Sem-DPO: DPO with a per-pair semantic weight read from the data.
- JPO: DPO over pairs whose two responses answer *different* instructions.
- IFT: SFT with the authors' relation-propagation token weights, through their temporal residual connection.

New labels introduced here:

- ``"semantic_weight"`` ``[B]`` (or ``[B, 1]`` as read from a record's
  ``semantic_weight`` field): Sem-DPO's weight of each pair, a constant.
- ``"instruction_length"`` ``[B, G]``: how many leading tokens of each
  response slot are that response's own instruction (JPO); they are
  conditioned on but not scored. 0 everywhere is an ordinary shared-prompt pair.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import ANY, PAIR, Objective, Requirements, static_field
from jalign.objectives.margin import MarginObjective
from jalign.objectives.metrics import pairwise_metrics, reference_pairwise_metrics
from jalign.objectives.pairwise import dpo_loss
from jalign.objectives.registry import objective
from jalign.objectives.sequence import label, lengths, log_ratios, pair_margin, policy_logps, require_pairs

SEMANTIC_WEIGHT = "semantic_weight"
INSTRUCTION_LENGTH = "instruction_length"


def _f32(x) -> Array:
    return jnp.asarray(x, jnp.float32)


def _x_over_expm1(x: Array) -> Array:
    """``x / (e^x - 1)`` (1 at ``x = 0``), finite with finite gradients for every float32 ``x``."""
    x = _f32(x)
    small = jnp.abs(x) < 1e-3
    safe = jnp.where(small, 1.0, x)
    # exp(-x) form for x > 0 (no overflow); x / expm1(x) for x < 0 (expm1 -> -1).
    positive = safe * jnp.exp(-jnp.maximum(safe, 0.0)) / -jnp.expm1(-jnp.maximum(safe, 1e-3))
    negative = safe / jnp.expm1(jnp.minimum(safe, -1e-3))
    series = 1.0 - x / 2.0 + x * x / 12.0
    return jnp.where(small, series, jnp.where(x > 0, positive, negative))


def mapo_loss(chosen_nll: Array, rejected_nll: Array, *, beta, snr=0.5, scale=1.0) -> Array:
    """Per-example MaPO loss: NLL of the chosen plus ``beta`` times the margin term.

    .. math::
        \\ell = m_w - \\beta \\log\\sigma\\big(T\\,(g(m_w) - g(m_l))\\big),\\qquad
        g(m) = \\frac{s\\,m}{e^{s m} - 1},\\quad m = -\\frac{1}{|y|}\\log\\pi_\\theta(y|x)

    In the authors' diffusion code ``m`` is each image's denoising MSE, ``s``
    is ``snr_value`` and ``T`` the scheduler's number of training timesteps
    (1000 for SDXL). Here ``m`` is the response's length-averaged negative
    log-likelihood, the language-model counterpart of that per-sample loss.
    ``g`` is decreasing in ``m``, so the term widens the likelihood margin.

    Args:
      chosen_nll: ``[B]`` length-averaged NLL ``m_w`` of ``y_w``.
      rejected_nll: ``[B]`` same for ``y_l``.
      beta: weight of the margin term (``--beta_mapo``).
      snr: ``s`` (``--snr_value``).
      scale: ``T``, the multiplier of the margin inside the sigmoid.

    Returns:
      ``[B]`` float32 losses.

    References:
      Hong et al., *Margin-aware Preference Optimization for Aligning Diffusion
      Models without Reference*, 2024; authors' code mapo-t2i/mapo,
      ``utils.py:compute_loss`` (the formula above, transcribed).
    """
    chosen_nll, rejected_nll = _f32(chosen_nll), _f32(rejected_nll)
    log_odds = _x_over_expm1(snr * chosen_nll) - _x_over_expm1(snr * rejected_nll)
    return chosen_nll - beta * jax.nn.log_sigmoid(scale * log_odds)


@objective(
    "mapo",
    strength="beta",
    citation="Hong et al. 2024, Margin-aware Preference Optimization for Aligning Diffusion Models "
    "without Reference; loss of the authors' code (mapo-t2i/mapo utils.py compute_loss) with the "
    "length-averaged NLL as the per-sample loss",
    requires=Requirements(responses=PAIR, reference=False),
)
class MaPO(Objective):
    """MaPO, reference-free: ``m_w - beta log sigmoid(T (g(m_w) - g(m_l)))``, ``g(m) = s m / (e^{s m} - 1)``.

    ``beta = 0.1`` and ``snr = 0.5`` are the defaults of the authors'
    ``args.py`` (``--beta_mapo``, ``--snr_value``). Their ``T`` is the
    diffusion scheduler's 1000 timesteps ("maximize the margin throughout the
    overall denoising process"), which has no language-model counterpart;
    ``scale = 1`` here, and no language-model value has been published.
    """

    beta: float = 0.1
    snr: float = 0.5
    scale: float = 1.0

    def compute(self, lp: LogProbs):
        means = policy_logps(lp, average=True)
        chosen, rejected = require_pairs(-means)
        losses = mapo_loss(chosen, rejected, beta=self.beta, snr=self.snr, scale=self.scale)
        margins = jax.lax.stop_gradient(_x_over_expm1(-self.snr * means))
        metrics = pairwise_metrics(lp, margins)
        metrics["nll"] = jax.lax.stop_gradient(chosen)
        return losses, metrics


@objective(
    "sem_dpo",
    strength="beta",
    citation="Mohamed et al. 2025, Sem-DPO: Mitigating Semantic Inconsistency in Preference "
    "Optimization for Prompt Engineering (arXiv 2507.20133): the DPO loss scaled per pair by a "
    "semantic weight, here read from labels['semantic_weight']",
    requires=Requirements(responses=PAIR, reference=True, labels=(SEMANTIC_WEIGHT,)),
)
class SemDPO(MarginObjective):
    """Sem-DPO: ``w * dpo_loss(h)`` with a constant per-pair weight ``w = labels['semantic_weight']``.

    The paper down-weights pairs whose winning prompt drifts semantically
    from the original (its abstract: an exponential weight of the cosine
    distance between their embeddings). The weight's exact formula, its
    hyperparameter and the embedding model were not available to us, so the
    weight is an input: a ``semantic_weight`` field of each paired record,
    or the experiment's function of (prompt, chosen) set as
    ``data.semantic_weight`` (``jalign.data.semantic_weights``), with whatever
    similarity it chooses. ``w = 1`` is DPO.
    """

    beta: float = 0.1

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        weight = jax.lax.stop_gradient(_f32(label(lp, SEMANTIC_WEIGHT)).reshape(margin.shape))
        return weight * dpo_loss(margin, beta=self.beta)


def response_only(lp: LogProbs) -> LogProbs:
    """The batch with each slot's leading ``labels['instruction_length']`` tokens masked out."""
    start = _f32(label(lp, INSTRUCTION_LENGTH))[..., None]                        # [B, G, 1]
    positions = jnp.arange(lp.mask.shape[-1], dtype=jnp.float32)                  # [T]
    return lp.replace(mask=jnp.where(positions >= start, lp.mask, 0))


@objective(
    "jpo",
    strength="beta",
    citation="Bansal et al. 2024, Comparing Bad Apples to Good Oranges: Aligning Large Language "
    "Models via Joint Preference Optimization, JPO objective (authors' code Hritikbansal/dove, "
    "CustomDoveTrainer: the DPO sigmoid loss on (prompt_chosen, response_chosen) vs "
    "(prompt_rejected, response_rejected))",
    requires=Requirements(responses=PAIR, reference=True, labels=(INSTRUCTION_LENGTH,)),
)
class JPO(Objective):
    """Joint Preference Optimization: DPO between two instruction-response pairs with different instructions.

    .. math::
        \\ell = -\\log\\sigma\\Big(\\beta\\log\\frac{\\pi_\\theta(y_w|x_w)}{\\pi_{ref}(y_w|x_w)}
        - \\beta\\log\\frac{\\pi_\\theta(y_l|x_l)}{\\pi_{ref}(y_l|x_l)}\\Big)

    A batch carries both instructions: each response slot holds its
    instruction's tokens (after whatever prefix the two share, the batch's
    prompt) followed by its response, and ``labels['instruction_length']``
    ``[B, G]`` says how many leading tokens are instruction. Those are
    conditioned on, not scored, as in the authors' trainer (their labels mask
    every prompt token). ``beta = 0.1``: ``dove/train.py``'s default. With
    ``instruction_length = 0`` (a shared instruction) it is DPO, the
    conditional special case the paper mixes in.
    """

    beta: float = 0.1

    def compute(self, lp: LogProbs):
        scored = response_only(lp)
        losses = dpo_loss(pair_margin(log_ratios(scored)), beta=self.beta)
        return losses, reference_pairwise_metrics(scored, self.beta)


def _reverse_discounted_cumsum(values: Array, gamma) -> Array:
    """``out_t = sum_{j >= t} gamma^(j - t) values_j`` along the last axis ``[..., T]``."""

    def step(carry, x):
        carry = x + gamma * carry
        return carry, carry

    moved = jnp.moveaxis(values, -1, 0)
    _, out = jax.lax.scan(step, jnp.zeros_like(moved[0]), moved, reverse=True)
    return jnp.moveaxis(out, 0, -1)


def ift_loss(token_logps: Array, mask: Array, *, gamma) -> Array:
    """Per-example IFT loss: token NLL weighted by the discounted loss still to come.

    .. math::
        \\ell = \\frac{1}{L}\\sum_t w_t\\,(-\\log\\pi_\\theta(y_t)),\\quad
        w_t \\propto \\sum_{j \\ge t} \\gamma^{j-t}\\,\\frac{-\\log\\pi_\\theta(y_j)}{L},\\quad
        \\sum_t w_t = L

    (``L`` the response length). Every token's weight includes the loss of
    the tokens after it, so early tokens, on which the rest depends, weigh
    more. ``gamma = 0`` gives plain SFT (unit weights, as the authors' code
    returns for it). The weights are not detached, as in the authors' code.

    Args:
      token_logps: ``[B, T]`` per-token log-probs of the target response.
      mask: ``[B, T]`` 1 on response tokens.
      gamma: discount of the relation propagation.

    Returns:
      ``[B]`` float32 losses.

    References:
      Hua et al., *Intuitive Fine-Tuning: Towards Simplifying Alignment into
      a Single Process*, 2024; authors' code TsinghuaC3I/Intuitive-Fine-Tuning,
      ``src/trainers.py`` ``get_cumsum_weight`` (``propagation_type='loss'``,
      ``propagation_side='left'``, ``propagation_norm='L1'``) and the
      ``'ift'`` branch of ``get_batch_metrics``.
    """
    mask = _f32(mask) > 0
    nll = jnp.where(mask, -_f32(token_logps), 0.0)                               # [B, T]
    length = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)             # [B, 1]
    weights = jnp.where(mask, _reverse_discounted_cumsum(nll / length, gamma), 0.0)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    # A zero total means every token already has log-prob 0 (a zero loss); keep the weights finite there.
    weights = weights * length / jnp.where(total == 0, 1.0, total)
    weights = jnp.where(gamma == 0, jnp.where(mask, 1.0, 0.0), weights)
    return jnp.sum(weights * nll, axis=-1) / length[:, 0]


@objective(
    "ift",
    strength=None,
    citation="Hua et al. 2024, Intuitive Fine-Tuning: Towards Simplifying Alignment into a Single "
    "Process; relation-propagation loss and temporal residual connection of the authors' code "
    "(TsinghuaC3I/Intuitive-Fine-Tuning src/trainers.py get_cumsum_weight and the loss=ift branch)",
    requires=Requirements(responses=ANY, reference=False, residual=0.2),
)
class IFT(Objective):
    """Intuitive Fine-Tuning on the first (target) response, through its temporal residual connection.

    The loss is the relation propagation of :func:`ift_loss`. The temporal
    residual connection (TRC) feeds the model, at each target position,
    ``(1 - lam) e(y_t) + lam e(yhat_t)``: the target token's input embedding
    mixed with that of the model's own greedy prediction of it, from a
    first, teacher-forced pass without gradient; the loss reads the second
    pass (``jalign.models.scoring.residual_responses``; the input table is a
    constant there, as the authors' frozen ``embed_tokens`` copy). ``lam`` is
    static (the provider builds the second pass for it); ``lam = 0`` keeps
    the plain teacher-forced pass. The declaration carries it
    (``requires.residual``), so a sum with ``ift`` gives every term the TRC's
    log-probs. Defaults: ``gamma = 0.95`` and ``lam = 0.2``
    (``config/loss/ift.yaml``'s ``gamma`` and ``min_lambda = max_lambda``;
    its lambda schedule and disturbance are off there and not built here).
    On tabular one-token responses the TRC has nothing to mix.
    """

    gamma: float = 0.95
    lam: float = static_field(0.2)

    @property
    def requires(self) -> Requirements:
        return dataclasses.replace(self.declared_requires, residual=float(self.lam))

    def compute(self, lp: LogProbs):
        losses = ift_loss(lp.policy[:, 0], lp.mask[:, 0], gamma=self.gamma)
        nll = -jax.lax.stop_gradient(policy_logps(lp, average=True)[:, 0])
        return losses, {"nll": nll, "length": lengths(lp)[:, 0]}
