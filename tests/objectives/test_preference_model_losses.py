"""Preference-model losses against NumPy written from their definitions.

- Bradley-Terry: ``-[p log s(r_c - r_r - m) + (1-p) log s(r_r - r_c + m)] + c (r_c + r_r)^2``
  (TRL RewardTrainer's margin and centring).
- Pairwise: ``P(A > B) = s(s_AB - s_BA)``, antisymmetric by construction.
- GPM: ``P(i > j) = s(<R v_i, v_j> / tau)`` with ``R`` the explicit block-diagonal
  matrix of ``[[0, -1], [1, 0]]`` blocks (Zhang et al. 2024; authors' loss.py).
- Ranked lists: every pair of different score, ties and padded entries left out.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jalign.objectives import LogProbs, bt_reward, gpm, pairwise_preference
from jalign.objectives.preference_models import skew_product

from numpy_reference import log_sigmoid

RNG = np.random.default_rng(0)


def _pairs(scores, preference, **labels):
    return LogProbs(policy=None, mask=None, scores=jnp.asarray(scores, jnp.float32),
                    labels={"preference": jnp.asarray(preference, jnp.float32), **labels})


def _cross_entropy(logit, p):
    return -(p * log_sigmoid(logit) + (1 - p) * log_sigmoid(-logit))


def test_bradley_terry_with_soft_labels_margin_and_centring():
    rewards = RNG.normal(size=(5, 2))
    p = RNG.uniform(size=5)
    margin = RNG.uniform(0, 1, size=5)
    expected = _cross_entropy(rewards[:, 0] - rewards[:, 1] - margin, p) + 0.01 * (rewards.sum(1)) ** 2
    losses, metrics = bt_reward(center=0.01).per_example(_pairs(rewards, p, margin=jnp.asarray(margin)))
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    decided = p != 0.5
    np.testing.assert_allclose(metrics["accuracy"], ((rewards[:, 0] - rewards[:, 1] - margin > 0) == (p > 0.5))
                               * decided, rtol=0)


def test_bradley_terry_on_ranked_lists_uses_every_decided_pair():
    rewards = RNG.normal(size=(3, 4))
    scores = np.array([[3.0, 1.0, 2.0, 0.0], [1.0, 1.0, 0.0, 2.0], [5.0, 4.0, 3.0, 9.0]])
    list_mask = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
    lp = LogProbs(policy=None, mask=None, scores=jnp.asarray(rewards),
                  labels={"score": jnp.asarray(scores), "list_mask": jnp.asarray(list_mask)})
    expected = []
    for b in range(3):
        terms = []
        for i, j in itertools.combinations(range(4), 2):
            if scores[b, i] == scores[b, j] or not (list_mask[b, i] and list_mask[b, j]):
                continue
            terms.append(_cross_entropy(rewards[b, i] - rewards[b, j], float(scores[b, i] > scores[b, j])))
        expected.append(np.mean(terms))
    np.testing.assert_allclose(bt_reward().per_example(lp)[0], expected, rtol=1e-5)


def test_pairwise_preference_is_antisymmetric_and_matches_numpy():
    scores = RNG.normal(size=(6, 2))
    p = RNG.uniform(size=6)
    losses, metrics = pairwise_preference().per_example(_pairs(scores, p))
    np.testing.assert_allclose(losses, _cross_entropy(scores[:, 0] - scores[:, 1], p), rtol=1e-5)
    swapped = pairwise_preference().per_example(_pairs(scores[:, ::-1], 1 - p))[0]
    np.testing.assert_allclose(swapped, losses, rtol=1e-5)  # P(B > A) = 1 - P(A > B)


def _rotation(k):
    r = np.zeros((k, k))
    for i in range(0, k, 2):
        r[i, i + 1], r[i + 1, i] = -1.0, 1.0
    return r


def test_gpm_matches_the_explicit_skew_symmetric_operator():
    v = RNG.normal(size=(4, 2, 6))
    p = RNG.uniform(size=4)
    r = _rotation(6)
    logits = np.einsum("bk,bk->b", v[:, 0] @ r.T, v[:, 1]) / 0.1  # <R v_0, v_1> / tau
    losses, _ = gpm(tau=0.1).per_example(_pairs(v, p))
    np.testing.assert_allclose(losses, _cross_entropy(logits, p), rtol=1e-5)
    np.testing.assert_allclose(skew_product(v[:, 0], v[:, 1]), -skew_product(v[:, 1], v[:, 0]), rtol=1e-6)
    np.testing.assert_allclose(skew_product(v[:, 0], v[:, 0]), 0.0, atol=1e-6)


def test_rank_two_gpm_fits_a_three_cycle_that_bradley_terry_cannot():
    """Embeddings at 0, 120 and 240 degrees: each beats the next with probability s(sin(120 deg)/tau)."""
    angles = np.deg2rad([0.0, 120.0, 240.0])
    v = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # [3, 2]
    pairs = [(0, 1), (1, 2), (2, 0)]
    embeddings = np.stack([np.stack([v[i], v[j]]) for i, j in pairs])
    probability = jax.nn.sigmoid(skew_product(embeddings[:, 0], embeddings[:, 1]) / 0.1)
    assert np.all(np.asarray(probability) > 0.99)
    # Any rewards order the three items, so at most two of the three cyclic pairs agree.
    for rewards in RNG.normal(size=(200, 3)):
        assert sum(rewards[i] > rewards[j] for i, j in pairs) <= 2


def test_a_batch_without_preference_labels_is_an_error_naming_both_options():
    lp = LogProbs(policy=None, mask=None, scores=jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"labels\['preference'\].*labels\['score'\]"):
        bt_reward()(lp)
