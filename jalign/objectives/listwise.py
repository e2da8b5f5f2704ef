"""Listwise objectives over ranked lists of ``G >= 2`` responses per prompt.

Every objective scores response ``i`` by its implicit reward
``s_i = beta * log(pi_theta(y_i|x) / pi_ref(y_i|x))`` and compares the scores
with the labels ``labels["score"]`` ``[B, G]`` (higher is better).

Ragged lists use an optional label (new key):

- ``"list_mask"`` ``[B, G]``: 1 for a real list entry, 0 for padding. Padded
  entries take part in no pair, no softmax and no Plackett-Luce stage. When
  absent every entry is valid. Random tests can draw it as Bernoulli(0.7) with
  at least two ones per row.

With ``G = 2`` and ``score_0 > score_1`` every objective here reduces to DPO on
the pair (see each docstring for the exact factor).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import LIST, Objective, Requirements, static_field
from jalign.objectives.pairwise import dpo_loss
from jalign.objectives.registry import objective
from jalign.objectives.sequence import label, log_ratios

SCORED_LISTS = Requirements(responses=LIST, reference=True, labels=("score",))

# A finite stand-in for -inf logits of padded entries: exp() of it is 0 in fp32
# and, unlike -inf, it never produces inf - inf in masked-out branches.
_PADDED_LOGIT = -1e9


def _valid_mask(scores: Array, valid: Array | None) -> Array:
    return jnp.ones(scores.shape, bool) if valid is None else jnp.asarray(valid) > 0.5


def _better_pairs(scores: Array, valid: Array) -> Array:
    """``[B, G, G]`` True where entry i is strictly better than entry j, both valid."""
    both = valid[:, :, None] & valid[:, None, :]
    return (scores[:, :, None] > scores[:, None, :]) & both


def _ranks(rewards: Array, valid: Array) -> Array:
    """1-based rank of each valid entry in the order induced by ``rewards`` (descending).

    Ties go to the lower index. ``[B, G]`` float32, constant for the gradient.
    """
    rewards = jax.lax.stop_gradient(rewards)
    g = rewards.shape[-1]
    index = jnp.arange(g)
    ahead = (rewards[:, None, :] > rewards[:, :, None]) | (
        (rewards[:, None, :] == rewards[:, :, None]) & (index[None, :] < index[:, None]))
    return 1.0 + jnp.sum(ahead & valid[:, None, :], axis=-1).astype(jnp.float32)


def lipo_lambda_loss(rewards: Array, scores: Array, valid: Array | None = None) -> Array:
    """Per-list LiPO-lambda loss: lambda-weighted pairwise logistic losses.

    .. math::
        \\ell = \\sum_{\\psi_i > \\psi_j} \\Delta_{ij} \\log(1 + e^{-(s_i - s_j)}),\\quad
        \\Delta_{ij} = |G_i - G_j| \\left|\\frac{1}{D(\\tau_i)} - \\frac{1}{D(\\tau_j)}\\right|

    with gains ``G_i = 2^{psi_i} - 1``, discounts ``D(tau) = log2(1 + tau)`` and
    ``tau_i`` the rank of entry i in the permutation induced by the scores
    ``s`` (the policy's own ranking, as in LambdaLoss). The weights are
    constants for the gradient.

    Normalisation, as in the paper's LiPO-lambda loss: the per-list loss is a
    sum over the ordered pairs (the objective then averages over lists), and
    the gains are not divided by the list's ideal DCG. That ``1 / maxDCG``
    belongs to LambdaLoss's NDCG form (Wang et al. 2018) and to TF-Ranking's
    and Rax's ``normalize=True``; Rax's default pairwise reduction is a mean
    over pairs. Either would rescale each list by a list-dependent constant.
    The paper writes ``D(tau) = log(1 + tau)``; base 2 is the DCG convention
    (and Rax's default discount), and another base scales every loss by the
    same constant.

    Args:
      rewards: ``[B, G]`` implicit rewards ``s``.
      scores: ``[B, G]`` labels ``psi``.
      valid: optional ``[B, G]`` list mask.

    Returns:
      ``[B]`` float32 losses (a sum over pairs, as in the paper).

    References:
      Liu et al., *LiPO: Listwise Preference Optimization through
      Learning-to-Rank*, 2024, Sec. 4 (the LiPO-lambda loss and its Lambda
      weight).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    valid = _valid_mask(scores, valid)
    gains = jnp.exp2(scores) - 1.0
    inv_discount = 1.0 / jnp.log2(1.0 + _ranks(rewards, valid))
    delta = jnp.abs(gains[:, :, None] - gains[:, None, :]) * jnp.abs(
        inv_discount[:, :, None] - inv_discount[:, None, :])
    pair_losses = -jax.nn.log_sigmoid(rewards[:, :, None] - rewards[:, None, :])
    weights = jnp.where(_better_pairs(scores, valid), jax.lax.stop_gradient(delta), 0.0)
    return jnp.sum(weights * pair_losses, axis=(1, 2))


def _masked_log_softmax(rewards: Array, valid: Array) -> Array:
    return jax.nn.log_softmax(jnp.where(valid, rewards, _PADDED_LOGIT), axis=-1)


def softmax_list_loss(rewards: Array, scores: Array, valid: Array | None = None, *, target="linear") -> Array:
    """Per-list softmax cross-entropy of the rewards against normalised scores.

    .. math::
        \\ell = -\\sum_i \\frac{\\psi_i}{\\sum_j \\psi_j} \\log \\frac{e^{s_i}}{\\sum_j e^{s_j}}

    ``target="linear"`` is the paper's normalisation, meant for non-negative
    scores (LiPO's scores are reward-model probabilities); negative scores are
    clipped to 0 and an all-zero list gives loss 0. ``target="softmax"`` uses
    ``softmax(psi)`` instead, valid for scores of any sign.

    Args:
      rewards: ``[B, G]`` implicit rewards ``s``.
      scores: ``[B, G]`` labels ``psi``.
      valid: optional ``[B, G]`` list mask.
      target: ``"linear"`` or ``"softmax"`` (static).

    Returns:
      ``[B]`` float32 losses.

    References:
      Liu et al., *LiPO*, 2024, Sec. 4 (the softmax cross-entropy baseline).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    valid = _valid_mask(scores, valid)
    if target == "linear":
        mass = jnp.where(valid, jnp.maximum(scores, 0.0), 0.0)
        targets = mass / jnp.maximum(jnp.sum(mass, axis=-1, keepdims=True), 1e-12)
    elif target == "softmax":
        targets = jnp.exp(_masked_log_softmax(scores, valid))
    else:
        raise ValueError(f"target must be 'linear' or 'softmax'; got {target!r}")
    log_probs = _masked_log_softmax(rewards, valid)
    return -jnp.sum(jnp.where(valid, targets * log_probs, 0.0), axis=-1)


def list_mle_loss(rewards: Array, scores: Array, valid: Array | None = None) -> Array:
    """Per-list ListMLE: negative Plackett-Luce log-likelihood of the score order.

    .. math::
        \\ell = -\\sum_{k=1}^{G} \\Big(s_{\\pi(k)} - \\log \\sum_{m \\ge k} e^{s_{\\pi(m)}}\\Big)

    where ``pi`` sorts the valid entries by decreasing score (ties keep index
    order; padded entries are placed last and skipped).

    Args:
      rewards: ``[B, G]`` implicit rewards ``s``.
      scores: ``[B, G]`` labels ``psi``.
      valid: optional ``[B, G]`` list mask.

    Returns:
      ``[B]`` float32 losses.

    References:
      Xia et al., *Listwise Approach to Learning to Rank*, 2008 (ListMLE), as
      the list MLE baseline of Liu et al., *LiPO*, 2024, Sec. 4.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    valid = _valid_mask(scores, valid)
    # Sorting key: valid entries by decreasing score, padding last.
    order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), axis=-1, stable=True)
    sorted_rewards = jnp.take_along_axis(jnp.where(valid, rewards, _PADDED_LOGIT), order, axis=-1)
    sorted_valid = jnp.take_along_axis(valid, order, axis=-1)
    tail_lse = jax.lax.cumlogsumexp(sorted_rewards, axis=1, reverse=True)
    return -jnp.sum(jnp.where(sorted_valid, sorted_rewards - tail_lse, 0.0), axis=-1)


def _pair_accuracy(rewards: Array, pairs: Array) -> Array:
    correct = pairs & (rewards[:, :, None] > rewards[:, None, :])
    count = jnp.sum(pairs, axis=(1, 2))
    return jnp.sum(correct, axis=(1, 2)) / jnp.maximum(count, 1)


def _rewards_scores_valid(lp: LogProbs, beta) -> tuple[Array, Array, Array]:
    scores = jnp.asarray(label(lp, "score"), jnp.float32)
    return beta * log_ratios(lp), scores, _valid_mask(scores, lp.labels.get("list_mask"))


def _list_metrics(rewards: Array, scores: Array, valid: Array) -> dict:
    rewards = jax.lax.stop_gradient(rewards)
    pairs = _better_pairs(scores, valid)
    return {"pair_accuracy": _pair_accuracy(rewards, pairs),
            "num_pairs": jnp.sum(pairs, axis=(1, 2)).astype(jnp.float32)}


@objective(
    "lipo_lambda",
    strength="beta",
    citation="Liu et al. 2024, LiPO: Listwise Preference Optimization through Learning-to-Rank, "
    "Sec. 4 (LiPO-lambda)",
    requires=SCORED_LISTS,
)
class LiPOLambda(Objective):
    """LiPO-lambda: DPO's logistic loss on every ordered pair, weighted by lambda (NDCG) weights.

    With ``G = 2`` and ``psi_0 > psi_1`` it equals
    ``(2^psi_0 - 2^psi_1) * (1 - 1/log2(3)) * dpo(beta)``: the two ranks are 1
    and 2 whichever way the policy orders them.
    Inputs: lists, reference, ``labels["score"]``, optional ``labels["list_mask"]``.
    """

    beta: float = 0.1

    def compute(self, lp: LogProbs):
        rewards, scores, valid = _rewards_scores_valid(lp, self.beta)
        return lipo_lambda_loss(rewards, scores, valid), _list_metrics(rewards, scores, valid)


@objective(
    "lipo_softmax",
    strength="beta",
    citation="Liu et al. 2024, LiPO: Listwise Preference Optimization through Learning-to-Rank, "
    "Sec. 4 (softmax cross-entropy listwise loss)",
    requires=SCORED_LISTS,
)
class LiPOSoftmax(Objective):
    """Softmax cross-entropy of ``beta * log-ratio`` against normalised scores.

    With ``G = 2`` and scores ``(1, 0)`` (``target="linear"``) it equals DPO.
    """

    beta: float = 0.1
    target: str = static_field("linear")

    def compute(self, lp: LogProbs):
        rewards, scores, valid = _rewards_scores_valid(lp, self.beta)
        losses = softmax_list_loss(rewards, scores, valid, target=self.target)
        return losses, _list_metrics(rewards, scores, valid)


@objective(
    "list_mle",
    strength="beta",
    citation="Xia et al. 2008, Listwise Approach to Learning to Rank (ListMLE), the list MLE "
    "baseline of Liu et al. 2024, LiPO, Sec. 4",
    requires=SCORED_LISTS,
)
class ListMLE(Objective):
    """Plackett-Luce likelihood of the score-sorted order under ``beta * log-ratio``.

    With ``G = 2`` and ``psi_0 > psi_1`` it equals DPO.
    """

    beta: float = 0.1

    def compute(self, lp: LogProbs):
        rewards, scores, valid = _rewards_scores_valid(lp, self.beta)
        return list_mle_loss(rewards, scores, valid), _list_metrics(rewards, scores, valid)


def ranked_pair_mask(scores: Array, valid: Array | None = None, *, pairs="best") -> Array:
    """``[B, G, G]`` (better i, worse j) pairs drawn from a ranked list.

    ``pairs="all"``: every pair with ``psi_i > psi_j``. ``pairs="best"``: the
    top-scored entry (first on ties) against every strictly worse entry, the
    construction Curry-DPO trains on.
    """
    scores = jnp.asarray(scores, jnp.float32)
    valid = _valid_mask(scores, valid)
    better = _better_pairs(scores, valid)
    if pairs == "all":
        return better
    if pairs != "best":
        raise ValueError(f"pairs must be 'best' or 'all'; got {pairs!r}")
    best = jnp.argmax(jnp.where(valid, scores, -jnp.inf), axis=-1)
    is_best = jax.nn.one_hot(best, scores.shape[-1], dtype=bool)
    return better & is_best[:, :, None]


def ranked_dpo_loss(log_ratios_: Array, scores: Array, valid: Array | None = None, *, beta, pairs="best") -> Array:
    """Per-list mean DPO loss over the (better, worse) pairs of a ranked list.

    .. math::
        \\ell = \\frac{1}{|P|} \\sum_{(i, j) \\in P} -\\log\\sigma\\big(\\beta (r_i - r_j)\\big)

    Args:
      log_ratios_: ``[B, G]`` sequence log-ratios ``r``.
      scores: ``[B, G]`` labels.
      valid: optional ``[B, G]`` list mask.
      beta: DPO's beta.
      pairs: ``"best"`` or ``"all"`` (static), see :func:`ranked_pair_mask`.

    Returns:
      ``[B]`` float32 losses; 0 for a list without a strictly better pair.

    References:
      Pattnaik et al., *Curry-DPO: Enhancing Alignment using Curriculum
      Learning & Ranked Preferences*, 2024, Sec. 3 (pairs from ranked lists).
    """
    log_ratios_ = jnp.asarray(log_ratios_, jnp.float32)
    mask = ranked_pair_mask(scores, valid, pairs=pairs)
    margins = log_ratios_[:, :, None] - log_ratios_[:, None, :]
    losses = jnp.where(mask, dpo_loss(margins, beta=beta), 0.0)
    return jnp.sum(losses, axis=(1, 2)) / jnp.maximum(jnp.sum(mask, axis=(1, 2)), 1)


@objective(
    "curry_dpo",
    strength="beta",
    citation="Pattnaik et al. 2024, Curry-DPO: Enhancing Alignment using Curriculum Learning & "
    "Ranked Preferences, Sec. 3 (DPO on pairs from ranked lists)",
    requires=SCORED_LISTS,
)
class CurryDPO(Objective):
    """DPO averaged over the preference pairs that a ranked list yields.

    ``pairs="best"`` (default, Curry-DPO's construction) pairs the top-rated
    response with each lower-rated one; ``pairs="all"`` uses every ordered pair.
    The curriculum itself, training on large score-gap ("easy") pairs before
    small-gap ones and refreshing the reference between stages, is an ordering
    of the data, not of the loss: a trainer realises it by scheduling batches
    (e.g. by ``metrics["min_gap"]``) or by ``labels["example_weight"]``.
    With ``G = 2`` and ``psi_0 > psi_1`` it equals DPO exactly.
    """

    beta: float = 0.1
    pairs: str = static_field("best")

    def compute(self, lp: LogProbs):
        ratios = log_ratios(lp)
        scores = jnp.asarray(label(lp, "score"), jnp.float32)
        valid = _valid_mask(scores, lp.labels.get("list_mask"))
        losses = ranked_dpo_loss(ratios, scores, valid, beta=self.beta, pairs=self.pairs)
        mask = ranked_pair_mask(scores, valid, pairs=self.pairs)
        gaps = jnp.where(mask, scores[:, :, None] - scores[:, None, :], jnp.inf)
        metrics = _list_metrics(self.beta * ratios, scores, valid)
        metrics["min_gap"] = jnp.where(jnp.any(mask, axis=(1, 2)), jnp.min(gaps, axis=(1, 2)), 0.0)
        return losses, metrics

