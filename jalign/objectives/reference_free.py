"""Reference-free preference objectives: SimPO, CPO, ORPO, ASFT and TPO.

None of them reads reference log-probs (``Requirements(reference=False)``);
the implicit reward is a function of the policy's own (possibly
length-averaged) sequence log-probability. SimPO, CPO, ORPO and ASFT take
pairs (``G = 2``, chosen first); TPO takes triples ``(gold, chosen, rejected)``.

ORPO and ASFT use the odds ``P / (1 - P)`` of the length-averaged likelihood
``P = exp(mean_t log pi_theta(y_t|x, y_<t))``; :func:`log1mexp` computes
``log(1 - P)`` stably (it belongs in ``sequence.py`` once other modules need it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, TRIPLE, Objective, Requirements, static_field
from jalign.objectives.metrics import pairwise_metrics
from jalign.objectives.registry import objective
from jalign.objectives.sequence import LOG_PROB_CEILING, log1mexp, policy_logps, require_pairs

PAIRED_REFERENCE_FREE = Requirements(responses=PAIR, reference=False)



def _f32(x) -> Array:
    return jnp.asarray(x, jnp.float32)


def log_odds(mean_logp: Array) -> Array:
    """``log(P / (1 - P))`` for ``P = exp(mean_logp)``, via :func:`log1mexp`."""
    mean_logp = jnp.minimum(_f32(mean_logp), -LOG_PROB_CEILING)
    return mean_logp - log1mexp(mean_logp)


def simpo_loss(chosen_logp: Array, rejected_logp: Array, *, beta, gamma) -> Array:
    """Per-example SimPO loss on (length-averaged) policy log-probs.

    .. math::
        \\ell = -\\log\\sigma\\Big(\\frac{\\beta}{|y_w|}\\log\\pi_\\theta(y_w|x)
        - \\frac{\\beta}{|y_l|}\\log\\pi_\\theta(y_l|x) - \\gamma\\Big)

    Args:
      chosen_logp: ``[B]`` ``log pi(y_w|x) / |y_w|`` (or the unnormalised sum).
      rejected_logp: ``[B]`` same for ``y_l``.
      beta: reward scale.
      gamma: target reward margin.

    Returns:
      ``[B]`` float32 losses.

    References:
      Meng et al., *SimPO: Simple Preference Optimization with a Reference-Free
      Reward*, 2024, Eq. 6.
    """
    return -jax.nn.log_sigmoid(beta * (_f32(chosen_logp) - _f32(rejected_logp)) - gamma)


@objective(
    "simpo",
    strength="beta",
    citation="Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward, Eq. 6",
    requires=PAIRED_REFERENCE_FREE,
)
class SimPO(Objective):
    """SimPO: reference-free Bradley-Terry on ``beta * mean log pi`` with margin ``gamma``.

    Defaults ``beta = 2, gamma = 1`` (``gamma / beta = 0.5``) are within the
    paper's recommended ranges. ``average=False, gamma=0`` is DPO with a zero reference.
    """

    beta: float = 2.0
    gamma: float = 1.0
    average: bool = static_field(True)

    def compute(self, lp: LogProbs):
        logps = policy_logps(lp, average=self.average)
        chosen, rejected = require_pairs(logps)
        losses = simpo_loss(chosen, rejected, beta=self.beta, gamma=self.gamma)
        return losses, pairwise_metrics(lp, self.beta * logps)


def cpo_loss(chosen_logp: Array, rejected_logp: Array, *, beta, alpha=1.0) -> Array:
    """Per-example CPO loss: reference-free preference term plus NLL on the chosen.

    .. math::
        \\ell = -\\log\\sigma\\big(\\beta\\log\\pi_\\theta(y_w|x) - \\beta\\log\\pi_\\theta(y_l|x)\\big)
        - \\alpha \\log\\pi_\\theta(y_w|x)

    Args:
      chosen_logp: ``[B]`` sequence log-prob ``log pi(y_w|x)``.
      rejected_logp: ``[B]`` sequence log-prob ``log pi(y_l|x)``.
      beta: reward scale.
      alpha: weight of the NLL regulariser (1 in the paper).

    Returns:
      ``[B]`` float32 losses.

    References:
      Xu et al., *Contrastive Preference Optimization: Pushing the Boundaries of
      LLM Performance in Machine Translation*, 2024, Sec. 3 (L_CPO = L_prefer + L_NLL).
    """
    chosen_logp, rejected_logp = _f32(chosen_logp), _f32(rejected_logp)
    return -jax.nn.log_sigmoid(beta * (chosen_logp - rejected_logp)) - alpha * chosen_logp


@objective(
    "cpo",
    strength="beta",
    citation="Xu et al. 2024, Contrastive Preference Optimization, Sec. 3 (L_prefer + L_NLL)",
    requires=PAIRED_REFERENCE_FREE,
)
class CPO(Objective):
    """CPO: ``-log sigmoid(beta (log pi(y_w) - log pi(y_l))) - alpha log pi(y_w)``.

    The paper's NLL is the sequence log-likelihood; TRL's ``CPOTrainer`` uses a
    token-averaged cross-entropy instead. ``alpha = 0`` is reference-free DPO.
    """

    beta: float = 0.1
    alpha: float = 1.0

    def compute(self, lp: LogProbs):
        logps = policy_logps(lp)
        chosen, rejected = require_pairs(logps)
        losses = cpo_loss(chosen, rejected, beta=self.beta, alpha=self.alpha)
        metrics = pairwise_metrics(lp, self.beta * logps)
        metrics["nll"] = -jax.lax.stop_gradient(chosen)
        return losses, metrics


def orpo_loss(chosen_mean_logp: Array, rejected_mean_logp: Array, *, lam) -> Array:
    """Per-example ORPO loss: token-mean NLL plus ``lam`` times the odds-ratio loss.

    .. math::
        \\ell = -\\frac{1}{|y_w|}\\log\\pi_\\theta(y_w|x)
        - \\lambda \\log\\sigma\\Big(\\log\\frac{\\mathrm{odds}_\\theta(y_w|x)}{\\mathrm{odds}_\\theta(y_l|x)}\\Big),
        \\quad \\mathrm{odds}(y) = \\frac{P(y)}{1 - P(y)},\\ P(y) = e^{\\frac{1}{|y|}\\log\\pi_\\theta(y|x)}

    Args:
      chosen_mean_logp: ``[B]`` length-averaged log-prob of ``y_w``.
      rejected_mean_logp: ``[B]`` length-averaged log-prob of ``y_l``.
      lam: weight of the odds-ratio term.

    Returns:
      ``[B]`` float32 losses.

    References:
      Hong et al., *ORPO: Monolithic Preference Optimization without Reference
      Model*, 2024, Eqs. 4 (odds), 6-7 (loss).
    """
    ratio = log_odds(chosen_mean_logp) - log_odds(rejected_mean_logp)
    return -_f32(chosen_mean_logp) - lam * jax.nn.log_sigmoid(ratio)


@objective(
    "orpo",
    strength="lam",
    citation="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model, Eqs. 4, 6-7",
    requires=PAIRED_REFERENCE_FREE,
)
class ORPO(Objective):
    """ORPO: SFT NLL on the chosen plus ``lam`` times the log-odds-ratio loss (``lam = 0.1``)."""

    lam: float = 0.1

    def compute(self, lp: LogProbs):
        means = policy_logps(lp, average=True)
        chosen, rejected = require_pairs(means)
        losses = orpo_loss(chosen, rejected, lam=self.lam)
        odds = jax.lax.stop_gradient(log_odds(means))
        metrics = pairwise_metrics(lp, odds)
        metrics["nll"] = -jax.lax.stop_gradient(chosen)
        return losses, metrics


def asft_loss(chosen_mean_logp: Array, rejected_mean_logp: Array, *, lam) -> Array:
    """Per-example ASFT loss: NLL plus absolute-likelihood terms on each response.

    .. math::
        \\ell = -\\frac{1}{|y_w|}\\log\\pi_\\theta(y_w|x)
        - \\lambda\\big[\\log\\sigma(\\log\\mathrm{odds}_\\theta(y_w|x))
        + \\log\\sigma(-\\log\\mathrm{odds}_\\theta(y_l|x))\\big]

    with the odds of the length-averaged likelihood as in ORPO. Unlike ORPO the
    chosen and rejected terms are separate (no Bradley-Terry difference): since
    ``sigma(log odds) = P``, the bracket is ``log P(y_w) + log(1 - P(y_l))``.

    Args:
      chosen_mean_logp: ``[B]`` length-averaged log-prob of ``y_w``.
      rejected_mean_logp: ``[B]`` length-averaged log-prob of ``y_l``.
      lam: weight of the alignment term.

    Returns:
      ``[B]`` float32 losses.

    References:
      Wang et al., *ASFT: Aligned Supervised Fine-Tuning through Absolute
      Likelihood*, 2024, Sec. 3 (L_ASFT = L_NLL + lambda L_Align).
    """
    align = jax.nn.log_sigmoid(log_odds(chosen_mean_logp)) + jax.nn.log_sigmoid(-log_odds(rejected_mean_logp))
    return -_f32(chosen_mean_logp) - lam * align


@objective(
    "asft",
    strength="lam",
    citation="Wang et al. 2024, ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood, Sec. 3",
    requires=PAIRED_REFERENCE_FREE,
)
class ASFT(Objective):
    """ASFT: NLL on the chosen plus ``lam`` times per-response absolute-likelihood log-sigmoids."""

    lam: float = 0.1

    def compute(self, lp: LogProbs):
        means = policy_logps(lp, average=True)
        chosen, rejected = require_pairs(means)
        losses = asft_loss(chosen, rejected, lam=self.lam)
        metrics = pairwise_metrics(lp, jax.lax.stop_gradient(log_odds(means)))
        metrics["nll"] = -jax.lax.stop_gradient(chosen)
        return losses, metrics


def tpo_loss(gold_mean_logp: Array, chosen_logp: Array, rejected_logp: Array, *,
             beta, alpha, gamma=0.0) -> Array:
    """Per-example TPO loss: behaviour cloning on the gold plus a reference-free preference term.

    .. math::
        \\ell = -\\log\\sigma\\big(\\beta\\log\\pi_\\theta(y_w|x) - \\beta\\log\\pi_\\theta(y_l|x) - \\gamma\\big)
        - \\alpha \\frac{1}{|y_{gold}|}\\log\\pi_\\theta(y_{gold}|x)

    TPO-L uses length-averaged ``log pi(y_w), log pi(y_l)`` and a margin ``gamma > 0``.

    Args:
      gold_mean_logp: ``[B]`` length-averaged log-prob of the gold response.
      chosen_logp: ``[B]`` log-prob of ``y_w`` (sum for TPO, mean for TPO-L).
      rejected_logp: ``[B]`` log-prob of ``y_l``.
      beta: reward scale.
      alpha: weight of the gold NLL (behaviour-cloning) term.
      gamma: target reward margin (0 for TPO).

    Returns:
      ``[B]`` float32 losses.

    References:
      Saeidi et al., *Triple Preference Optimization: Achieving Better Alignment
      using a Single Step Optimization*, 2024, Eq. 3 (TPO) and the TPO-L variant.
    """
    preference = simpo_loss(chosen_logp, rejected_logp, beta=beta, gamma=gamma)
    return preference - alpha * _f32(gold_mean_logp)


@objective(
    "tpo",
    strength="beta",
    citation="Saeidi et al. 2024, Triple Preference Optimization: Achieving Better Alignment "
    "using a Single Step Optimization, Eq. 3; responses ordered (gold, chosen, rejected)",
    requires=Requirements(responses=TRIPLE, reference=False),
)
class TPO(Objective):
    """Triple Preference Optimization on ``G = 3`` responses ordered ``(gold, chosen, rejected)``.

    Defaults ``beta = 0.01, alpha = 1``: what the authors run, in their
    training script (sahsaeedi/TPO ``run_tpo.sh``: ``--beta 0.01 --tpo_alpha 1``)
    and in their README's table of released models (``alpha = 1, beta = 0.01``
    for TPO on every base-model setting); TRL 1.16's ``TPOConfig`` has the
    same defaults. The dataclass defaults of the authors' ``TPOConfig``
    (``beta = 0.1, tpo_alpha = 0.05``) are not what they train with;
    ``alpha = 0.05`` appears only in their 60K Instruct and some TPO-L rows. Their
    trainer averages the gold NLL over all gold tokens of the batch
    (``nn.CrossEntropyLoss`` on the flattened batch), here over each gold
    response: the batch losses agree when the gold responses have equal
    lengths. TPO-L is ``tpo(average=True, gamma=...)``, tuned per setting in
    the README (``gamma`` from 0.3 to 10, ``beta`` from 0.01 to 10).
    """

    beta: float = 0.01
    alpha: float = 1.0
    gamma: float = 0.0
    average: bool = static_field(False)

    def compute(self, lp: LogProbs):
        gold_mean = policy_logps(lp, average=True)[:, 0]
        pair = lp.replace(policy=lp.policy[:, 1:], mask=lp.mask[:, 1:])
        logps = policy_logps(pair, average=self.average)
        chosen, rejected = require_pairs(logps)
        losses = tpo_loss(gold_mean, chosen, rejected, beta=self.beta, alpha=self.alpha, gamma=self.gamma)
        metrics = pairwise_metrics(pair, self.beta * logps)
        metrics["nll"] = -jax.lax.stop_gradient(gold_mean)
        return losses, metrics
