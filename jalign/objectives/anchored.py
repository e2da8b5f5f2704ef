r"""Objectives that anchor each response's implicit reward, not only the margin.

DPO-style losses see only :math:`r_w - r_l`, so both log-ratios may drift down
together. The objectives here put a separate term on each response's implicit
reward :math:`\beta r` with :math:`r = \log \pi_\theta(y|x) - \log \pi_{ref}(y|x)`
(sequence log-ratios from the shared helpers):

- ``nca``: NCA, pairwise (Chen et al. 2024).
- ``sppo_hard``: SPPO with hard win probabilities (Wu et al. 2024).
- ``apo_zero`` / ``apo_down``: Anchored Preference Optimization
  (D'Oosterlinck et al. 2024).

All need pairs (chosen first) and reference log-probs; ``average``
length-normalises the log-ratios.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, Objective, Requirements, static_field
from jalign.objectives.metrics import reference_pairwise_metrics
from jalign.objectives.registry import objective
from jalign.objectives.sequence import log_ratios, require_pairs

PAIRED_WITH_REFERENCE = Requirements(responses=PAIR, reference=True)


def _pair(lp: LogProbs, average: bool) -> tuple[Array, Array]:
    """Chosen and rejected sequence log-ratios, ``[B]`` each."""
    return require_pairs(log_ratios(lp, average=average))


def nca_loss(chosen_log_ratio: Array, rejected_log_ratio: Array, *, beta) -> Array:
    r"""Per-example pairwise NCA loss.

    .. math::
        \ell = -\log\sigma(\beta r_w) - \tfrac12 \log\sigma(-\beta r_w) - \tfrac12 \log\sigma(-\beta r_l)

    The first term is the data term of the winner (the target distribution of
    binary preferences puts all its mass on it); the last two contrast both
    responses against noise with weight ``1/K = 1/2``.

    Args:
      chosen_log_ratio: ``[B]`` log-ratio ``r_w``.
      rejected_log_ratio: ``[B]`` log-ratio ``r_l``.
      beta: reward temperature.

    Returns:
      ``[B]`` float32 losses.

    References:
      Chen et al., *Noise Contrastive Alignment of Language Models with
      Explicit Rewards*, 2024, the NCA loss specialised to pairwise
      preferences (``K = 2``, winner target weight 1), as in the authors'
      ``NCATrainer_pairwise``.
    """
    chosen = beta * jnp.asarray(chosen_log_ratio, jnp.float32)
    rejected = beta * jnp.asarray(rejected_log_ratio, jnp.float32)
    # -log sigmoid(x) = softplus(-x), finite for any x.
    return jax.nn.softplus(-chosen) + 0.5 * jax.nn.softplus(chosen) + 0.5 * jax.nn.softplus(rejected)


@objective(
    "nca",
    strength="beta",
    citation="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit "
    "Rewards, pairwise NCA loss (K = 2)",
    requires=PAIRED_WITH_REFERENCE,
)
class NCA(Objective):
    r"""Pairwise NCA: ``-log s(b r_w) - log s(-b r_w)/2 - log s(-b r_l)/2``, ``s`` = sigmoid.

    Unlike DPO (the pairwise InfoNCA), the absolute term on ``r_w`` keeps the
    chosen likelihood from falling. Default ``beta = 0.01`` as in the authors'
    released training commands (TRL's ``nca_pair`` defaults to 0.1).
    """

    beta: float = 0.01
    average: bool = static_field(False)

    def compute(self, lp: LogProbs):
        chosen, rejected = _pair(lp, self.average)
        losses = nca_loss(chosen, rejected, beta=self.beta)
        return losses, reference_pairwise_metrics(lp, self.beta, average=self.average)


def sppo_hard_loss(chosen_log_ratio: Array, rejected_log_ratio: Array, *, beta) -> Array:
    r"""Per-example SPPO loss with hard win probabilities (1 for the winner, 0 for the loser).

    .. math::
        \ell = \tfrac12\left[\left(r_w - \tfrac{1}{2\beta}\right)^2 + \left(r_l + \tfrac{1}{2\beta}\right)^2\right]

    This is SPPO's square loss :math:`(r - \eta(\hat P(y \succ \pi_t) - \tfrac12))^2`
    with :math:`\eta = 1/\beta`, averaged over the two responses of a pair.

    Args:
      chosen_log_ratio: ``[B]`` log-ratio ``r_w`` against the previous iterate.
      rejected_log_ratio: ``[B]`` log-ratio ``r_l``.
      beta: inverse step size ``1 / eta``.

    Returns:
      ``[B]`` float32 losses.

    References:
      Wu et al., *Self-Play Preference Optimization for Language Model
      Alignment*, 2024, the policy update of Algorithm 1 (Eq. 4.7 in TRL's
      citation), with the win probabilities set to 1 and 0.
    """
    half_eta = 0.5 / beta
    chosen = jnp.asarray(chosen_log_ratio, jnp.float32)
    rejected = jnp.asarray(rejected_log_ratio, jnp.float32)
    return 0.5 * (jnp.square(chosen - half_eta) + jnp.square(rejected + half_eta))


@objective(
    "sppo_hard",
    strength="beta",
    citation="Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment, "
    "Algorithm 1 square-loss update (Eq. 4.7) with hard win probabilities P(y_w) = 1, P(y_l) = 0",
    requires=PAIRED_WITH_REFERENCE,
)
class SPPOHard(Objective):
    r"""SPPO, hard-label pairwise form: ``((r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2) / 2``.

    The reference log-probs are those of the previous iterate :math:`\pi_t`.
    Scalings, all with the same minimiser ``r_w = -r_l = 1/(2 beta)``:

    - the authors' code (``loss_type="sppo"`` with win probabilities 1 / 0)
      is exactly this, including the ``1/2`` mean over the two responses;
    - TRL's ``sppo_hard`` omits the ``1/2`` (twice this loss);
    - :math:`(\beta r_w - \tfrac12)^2 + (\beta r_l + \tfrac12)^2` is
      ``2 beta^2`` times this loss.

    ``beta`` is the authors' hyperparameter (their ``--beta``), the inverse of
    SPPO's step size: ``eta = 1 / beta``, the ``eta`` of
    :class:`~jalign.objectives.online.SPPO`, of which this is the special case
    ``P(y_w ≻ pi_t) = 1``, ``P(y_l ≻ pi_t) = 0`` averaged over the pair. Default
    ``beta = 0.001`` (``eta = 1000``): ``BETA="0.001"`` in uclaml/SPPO
    ``scripts/pipeline.sh``, which every ``run_sppo_*.sh`` script uses.
    """

    beta: float = 0.001
    average: bool = static_field(False)

    def compute(self, lp: LogProbs):
        chosen, rejected = _pair(lp, self.average)
        losses = sppo_hard_loss(chosen, rejected, beta=self.beta)
        return losses, reference_pairwise_metrics(lp, self.beta, average=self.average)


def apo_zero_loss(chosen_log_ratio: Array, rejected_log_ratio: Array, *, beta) -> Array:
    r"""Per-example APO-zero loss: raise the chosen reward, lower the rejected one.

    .. math::
        \ell = \left(1 - \sigma(\beta r_w)\right) + \sigma(\beta r_l)

    Args:
      chosen_log_ratio: ``[B]`` log-ratio ``r_w``.
      rejected_log_ratio: ``[B]`` log-ratio ``r_l``.
      beta: reward scale.

    Returns:
      ``[B]`` float32 losses in ``[0, 2]``.

    References:
      D'Oosterlinck et al., *Anchored Preference Optimization and Contrastive
      Revisions: Addressing Underspecification in Alignment*, 2024, Eq. 7.
    """
    chosen = beta * jnp.asarray(chosen_log_ratio, jnp.float32)
    rejected = beta * jnp.asarray(rejected_log_ratio, jnp.float32)
    # 1 - sigmoid(x) = sigmoid(-x) without cancellation for large x.
    return jax.nn.sigmoid(-chosen) + jax.nn.sigmoid(rejected)


def apo_down_loss(chosen_log_ratio: Array, rejected_log_ratio: Array, *, beta) -> Array:
    r"""Per-example APO-down loss: lower the chosen reward, the rejected one more.

    .. math::
        \ell = \sigma(\beta r_w) + \left(1 - \sigma(\beta (r_w - r_l))\right)

    Args:
      chosen_log_ratio: ``[B]`` log-ratio ``r_w``.
      rejected_log_ratio: ``[B]`` log-ratio ``r_l``.
      beta: reward scale.

    Returns:
      ``[B]`` float32 losses in ``[0, 2]``.

    References:
      D'Oosterlinck et al., *Anchored Preference Optimization and Contrastive
      Revisions: Addressing Underspecification in Alignment*, 2024, Eq. 8.
    """
    chosen = beta * jnp.asarray(chosen_log_ratio, jnp.float32)
    rejected = beta * jnp.asarray(rejected_log_ratio, jnp.float32)
    return jax.nn.sigmoid(chosen) + jax.nn.sigmoid(rejected - chosen)


_APO = ("D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions: "
        "Addressing Underspecification in Alignment, ")


@objective("apo_zero", strength="beta", citation=_APO + "Eq. 7 (APO-zero)", requires=PAIRED_WITH_REFERENCE)
class APOZero(Objective):
    r"""APO-zero: ``(1 - sigmoid(beta r_w)) + sigmoid(beta r_l)``.

    For data whose chosen answers are better than the model's own outputs:
    the chosen likelihood goes up and the rejected one down, each anchored at
    the reference (``r = 0``). Args: ``r`` are ``[B]`` log-ratios; returns
    ``[B]`` losses (see :func:`apo_zero_loss`).
    """

    beta: float = 0.1
    average: bool = static_field(False)

    def compute(self, lp: LogProbs):
        chosen, rejected = _pair(lp, self.average)
        losses = apo_zero_loss(chosen, rejected, beta=self.beta)
        return losses, reference_pairwise_metrics(lp, self.beta, average=self.average)


@objective("apo_down", strength="beta", citation=_APO + "Eq. 8 (APO-down)", requires=PAIRED_WITH_REFERENCE)
class APODown(Objective):
    r"""APO-down: ``sigmoid(beta r_w) + (1 - sigmoid(beta (r_w - r_l)))``.

    For data whose chosen answers are worse than the model's own outputs:
    both likelihoods go down, the rejected one further (see
    :func:`apo_down_loss`).
    """

    beta: float = 0.1
    average: bool = static_field(False)

    def compute(self, lp: LogProbs):
        chosen, rejected = _pair(lp, self.average)
        losses = apo_down_loss(chosen, rejected, beta=self.beta)
        return losses, reference_pairwise_metrics(lp, self.beta, average=self.average)
