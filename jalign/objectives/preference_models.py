"""Preference-model losses: Bradley-Terry rewards, pairwise preference models, GPM embeddings.

These objectives train the judge rather than the policy: they read
``LogProbs.scores`` (see ``batch.py``), the outputs of a preference-model head
on the decoder, and need no log-probs or reference. The same functions fit
tabular preference models in ``jalign.tabular`` (scores are then parameters
per action).

Every loss is a cross-entropy of a preference probability ``P(i ≻ j)``
against a label, over the pairs of a batch: for ``G = 2`` the one pair
``(0, 1)`` with the soft label ``labels["preference"]``; for ranked lists
(``G >= 2`` with ``labels["score"]``) every pair ``i < j`` of different score,
labelled by which scored higher (ties and ``labels["list_mask"]`` padding are
left out), as in reward-model training on ranked data (Ouyang et al. 2022,
Sec. 3.5: all ``K choose 2`` comparisons of a prompt in one batch element).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import LIST, PAIR, Objective, Requirements
from jalign.objectives.declaration import EMBEDDING, PAIRWISE, REWARD
from jalign.objectives.registry import objective


def pair_targets(lp: LogProbs) -> tuple[Array, Array, Array, Array]:
    """The compared pairs of a batch and their labels.

    Returns:
      ``first`` and ``second`` ``[P]`` int response indices, ``target``
      ``[B, P]`` P(first ≻ second) in [0, 1], and ``weight`` ``[B, P]`` (0 for
      ties and padded list entries).
    """
    g = lp.num_responses
    if "score" in lp.labels:
        scores = jnp.asarray(lp.labels["score"], jnp.float32)
        pairs = list(itertools.combinations(range(g), 2))
        first, second = (jnp.array(side, jnp.int32) for side in zip(*pairs))
        diff = scores[:, first] - scores[:, second]
        valid = jnp.asarray(lp.labels.get("list_mask", jnp.ones_like(scores)), jnp.float32)
        weight = (diff != 0) * valid[:, first] * valid[:, second]
        return first, second, (diff > 0).astype(jnp.float32), weight.astype(jnp.float32)
    if g != 2 or "preference" not in lp.labels:
        raise ValueError(f"a preference-model loss needs pairs with labels['preference'] or lists with "
                         f"labels['score']; batch has G={g}, labels {sorted(lp.labels)}")
    target = jnp.asarray(lp.labels["preference"], jnp.float32)[:, None]
    return jnp.array([0]), jnp.array([1]), target, jnp.ones_like(target)


def preference_cross_entropy(logits: Array, target: Array) -> Array:
    """``-[t log sigma(z) + (1 - t) log sigma(-z)]`` elementwise, in float32."""
    logits = jnp.asarray(logits, jnp.float32)
    return -(target * jax.nn.log_sigmoid(logits) + (1.0 - target) * jax.nn.log_sigmoid(-logits))


def _pairwise_loss_and_metrics(logits: Array, target: Array, weight: Array, extra_loss: Array = 0.0):
    """Per-example mean over its pairs, plus accuracy and log-loss metrics."""
    count = jnp.maximum(jnp.sum(weight, axis=1), 1.0)
    per_pair = preference_cross_entropy(logits, target)
    losses = jnp.sum(weight * per_pair, axis=1) / count + extra_loss
    decided = weight * (target != 0.5)
    correct = (logits > 0) == (target > 0.5)
    accuracy = jnp.sum(decided * correct, axis=1) / jnp.maximum(jnp.sum(decided, axis=1), 1.0)
    probability = jax.nn.sigmoid(jnp.asarray(logits, jnp.float32))
    metrics = {
        "accuracy": jax.lax.stop_gradient(accuracy),
        "logloss": jax.lax.stop_gradient(jnp.sum(weight * per_pair, axis=1) / count),
        "prob/mean": jax.lax.stop_gradient(jnp.sum(weight * probability, axis=1) / count),
    }
    return losses, metrics


class PairScoreObjective(Objective):
    """Shared body: enumerate the batch's pairs, score them, cross-entropy against their labels.

    Subclasses define :meth:`pair_logits`, the logit of ``P(first ≻ second)``
    per pair from ``lp.scores``; evaluation reads it too (calibration).
    """

    def pair_logits(self, lp: LogProbs, first: Array, second: Array) -> Array:
        """``[B, P]`` logits of ``P(first_p ≻ second_p)``."""
        raise NotImplementedError

    def extra_loss(self, lp: LogProbs, first: Array, second: Array, weight: Array) -> Array:
        """A per-example term added to the cross-entropy (0 unless a subclass regularises)."""
        return 0.0

    def compute(self, lp: LogProbs):
        first, second, target, weight = pair_targets(lp)
        logits = self.pair_logits(lp, first, second)
        return _pairwise_loss_and_metrics(logits, target, weight, self.extra_loss(lp, first, second, weight))


def bradley_terry_loss(chosen: Array, rejected: Array, *, target=1.0, margin=0.0, center=0.0) -> Array:
    """Bradley-Terry negative log-likelihood of ``P(chosen ≻ rejected) = sigma(r_c - r_r - m)``.

    .. math::
        \\ell = -t \\log\\sigma(r_c - r_r - m) - (1 - t) \\log\\sigma(r_r - r_c + m)
          + c\\,(r_c + r_r)^2

    Args:
      chosen, rejected: rewards, any matching shapes.
      target: the label ``t`` (1 for a hard preference).
      margin: TRL's optional per-pair margin ``m`` (a ``margin`` column).
      center: TRL's ``center_rewards_coefficient`` ``c`` (Eisenstein et al.
        2023), which pins the rewards' mean near 0.

    References:
      Bradley & Terry 1952; Ouyang et al., *Training language models to follow
      instructions with human feedback*, 2022, Eq. 1; TRL ``RewardTrainer``
      (``margin``, ``center_rewards_coefficient``).
    """
    chosen, rejected = jnp.asarray(chosen, jnp.float32), jnp.asarray(rejected, jnp.float32)
    return preference_cross_entropy(chosen - rejected - margin, target) + center * jnp.square(chosen + rejected)


@objective(
    "bt_reward",
    strength=None,
    citation="Bradley-Terry reward-model likelihood: Ouyang et al. 2022, Training language models to follow "
    "instructions with human feedback, Eq. 1; TRL RewardTrainer's margin and center_rewards_coefficient",
    requires=Requirements(responses=LIST, reference=False, logprobs=False, scores=REWARD),
)
class BTReward(PairScoreObjective):
    """Bradley-Terry reward model: ``P(i ≻ j) = sigma(r_i - r_j)`` over a batch's pairs.

    ``scores`` ``[B, G]`` are rewards. An optional ``labels["margin"]`` ``[B]``
    (TRL's ``margin`` column) shifts a pair's logit; ``center`` is TRL's
    ``center_rewards_coefficient`` (default off, as in TRL). Metrics:
    ``accuracy`` (of the pairs with a decided label), ``logloss`` and
    ``prob/mean``.
    """

    center: float = 0.0

    def pair_logits(self, lp, first, second):
        rewards = jnp.asarray(lp.scores, jnp.float32)
        margin = jnp.asarray(lp.labels.get("margin", 0.0), jnp.float32)
        margin = jnp.reshape(margin, (-1, 1)) if margin.ndim else margin
        return rewards[:, first] - rewards[:, second] - margin

    def extra_loss(self, lp, first, second, weight):
        rewards = jnp.asarray(lp.scores, jnp.float32)
        centring = jnp.sum(weight * jnp.square(rewards[:, first] + rewards[:, second]), axis=1)
        return self.center * centring / jnp.maximum(jnp.sum(weight, axis=1), 1.0)


@objective(
    "pairwise_preference",
    strength=None,
    citation="Pairwise preference model P(A ≻ B | x) read from x + A + B, trained on both orders: Jiang et al. "
    "2023, LLM-Blender (PairRanker), Sec. 3; the preference model of Munos et al. 2023, Nash Learning from "
    "Human Feedback, Sec. 7",
    requires=Requirements(responses=PAIR, reference=False, logprobs=False, scores=PAIRWISE),
)
class PairwisePreference(PairScoreObjective):
    """Cross-entropy of ``P(A ≻ B) = sigma(s(x, A, B) - s(x, B, A))`` against ``labels["preference"]``.

    ``scores`` ``[B, 2]`` hold the model's logit for the order (A, B) and for
    (B, A). Their difference is antisymmetric, so ``P(A ≻ B) + P(B ≻ A) = 1``
    holds by construction and both orders are trained in every step.
    """

    def pair_logits(self, lp, first, second):
        scores = jnp.asarray(lp.scores, jnp.float32)
        return (scores[:, 0] - scores[:, 1])[:, None]


def skew_product(a: Array, b: Array) -> Array:
    """``<R a, b>`` for the block-diagonal skew-symmetric ``R`` with blocks ``[[0, -1], [1, 0]]``.

    .. math::
        \\langle R a, b \\rangle = \\sum_l a_{2l} b_{2l+1} - a_{2l+1} b_{2l}

    Args:
      a, b: ``[..., K]`` embeddings, ``K`` even.

    Returns:
      ``[...]`` float32; antisymmetric: ``skew_product(a, b) = -skew_product(b, a)``.
    """
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape[-1] % 2:
        raise ValueError(f"preference embeddings need an even dimension; got {a.shape=}")
    return jnp.sum(a[..., 0::2] * b[..., 1::2] - a[..., 1::2] * b[..., 0::2], axis=-1)


@objective(
    "gpm",
    strength=None,
    citation="Zhang et al. 2024, General Preference Modeling with Preference Representations for Aligning "
    "Language Models: P(y_i ≻ y_j) = sigma(<R v_i, v_j> / tau); loss and defaults of the authors' code "
    "(general-preference-model, loss.py GeneralPreferenceLoss / HighDimGeneralPreferenceLoss)",
    requires=Requirements(responses=LIST, reference=False, logprobs=False, scores=EMBEDDING),
)
class GPM(PairScoreObjective):
    """General preference model: skew-symmetric pairing of per-response preference embeddings.

    .. math::
        P(y_i \\succ y_j \\mid x) = \\sigma\\big(\\langle R\\, v(x, y_i), v(x, y_j) \\rangle / \\tau\\big)

    ``scores`` ``[B, G, K]`` are the embeddings ``v`` (``K`` even; one
    forward per response, like a reward model). ``R`` is block-diagonal with
    ``[[0, -1], [1, 0]]`` blocks, so ``P(i ≻ j) + P(j ≻ i) = 1`` and cyclic
    preferences are representable (a rank-2 ``R`` fits a 3-cycle exactly,
    which no Bradley-Terry reward can). ``tau = 0.1`` is the authors'
    training-script default. Like their training code, embeddings are not
    normalised (their inference example normalises them); their optional
    prompt-dependent eigenvalue gate is not implemented.
    """

    tau: float = 0.1

    def pair_logits(self, lp, first, second):
        embeddings = jnp.asarray(lp.scores, jnp.float32)
        return skew_product(embeddings[:, first], embeddings[:, second]) / self.tau
