"""Feeding tabular policies to objectives: exact populations and sampled mini-batches.

Both paths produce the objective contract's :class:`~jalign.objectives.LogProbs`
with one "token" per response (``T = 1``), so every objective in
:mod:`jalign.objectives` runs unchanged.

A *pair distribution* is a ``[C, K, K]`` array ``W[c, y, y']`` of probabilities
of the ordered response pair ``(y, y')`` in context ``c`` (chosen first for
offline data). A *response distribution* is ``[C, K]`` (``G = 1``); listwise
batches use ``[C, K, ..., K]`` with ``G`` action axes.

- Exact population batches hold every pair (every response) once, with
  ``labels["example_weight"]`` = its probability; the objective's weighted mean
  is then the exact expected loss.
- Sampled batches draw ``batch_size`` pairs (responses) i.i.d. from the same
  distribution with unit weights: an unbiased mini-batch estimate of it.

Labels are arrays indexed like the distribution (``[C, K, K]`` for a per-pair
label, ``[C, K, K, G]`` for a per-response one, see :func:`per_response`);
they are gathered at the batch's indices.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from jalign.objectives import LogProbs, from_sequences
from jalign.tabular.policies import Array


def all_tuples(num_contexts: int, num_actions: int, num_responses: int) -> tuple[Array, ...]:
    """Indices ``(context, y_0, ..., y_{G-1})`` of every response tuple, each ``[C * K^G]``."""
    axes = [jnp.arange(num_contexts)] + [jnp.arange(num_actions)] * num_responses
    return tuple(grid.ravel() for grid in jnp.meshgrid(*axes, indexing="ij"))


def all_pairs(num_contexts: int, num_actions: int) -> tuple[Array, ...]:
    """Indices ``(context, first, second)`` of every ordered pair, each ``[C * K * K]``."""
    return all_tuples(num_contexts, num_actions, 2)


def per_response(values: Array, num_responses: int) -> Array:
    """Per-action values ``[C, K]`` as a per-response label of every tuple: ``[C, K, ..., K, G]``.

    E.g. rewards as ``labels["score"]`` for listwise objectives, or
    ``desirable`` flags for unpaired ones.
    """
    shape = values.shape[:1] + (values.shape[1],) * num_responses
    slots = []
    for g in range(num_responses):
        index = [slice(None)] + [None] * num_responses
        index[1 + g] = slice(None)
        slots.append(jnp.broadcast_to(values[tuple(index)], shape))
    return jnp.stack(slots, axis=-1)


def sample_indices(key: Array, weights: Array, batch_size: int) -> tuple[Array, ...]:
    """Draws ``batch_size`` i.i.d. index tuples from a ``[C, K(, K)]`` distribution.

    Returns:
      One ``[batch_size]`` index array per axis of ``weights``.
    """
    logits = jnp.log(jnp.maximum(weights.ravel(), 0.0))
    flat = jax.random.categorical(key, logits, shape=(batch_size,))
    return jnp.unravel_index(flat, weights.shape)


def _gather_labels(labels: Mapping[str, Array], index: tuple[Array, ...]) -> dict[str, Array]:
    return {name: value[index] for name, value in labels.items()}


def batch_at(log_pi: Array, log_ref: Array | None, index: tuple[Array, ...], *,
             labels: Mapping[str, Array] | None = None, weights: Array | None = None) -> LogProbs:
    """The LogProbs batch of the responses at ``index``.

    Args:
      log_pi: ``[C, K]`` policy log-probs (carrying the gradient).
      log_ref: ``[C, K]`` log-probs that fill ``reference`` (or ``None``).
      index: ``(context, y_0, ..., y_{G-1})`` index arrays, each ``[B]``.
      labels: arrays indexed like ``index`` (e.g. ``[C, K, K]`` for pairs), gathered.
      weights: ``[B]`` example weights, stored as ``labels["example_weight"]``.

    Returns:
      ``LogProbs`` with ``policy``/``reference`` ``[B, G, 1]``.
    """
    context, responses = index[0], index[1:]
    policy = jnp.stack([log_pi[context, y] for y in responses], axis=1)
    reference = None if log_ref is None else jnp.stack([log_ref[context, y] for y in responses], axis=1)
    gathered = _gather_labels(labels or {}, index)
    if weights is not None:
        gathered["example_weight"] = weights
    return from_sequences(policy, reference, labels=gathered)


def exact_batch(log_pi: Array, log_ref: Array | None, distribution: Array, *,
                labels: Mapping[str, Array] | None = None) -> LogProbs:
    """Every response tuple of a ``[C, K, ..., K]`` distribution (``G`` action axes), weighted by its probability."""
    index = all_tuples(distribution.shape[0], distribution.shape[1], distribution.ndim - 1)
    return batch_at(log_pi, log_ref, index, labels=labels, weights=distribution[index])


def sampled_batch(key: Array, log_pi: Array, log_ref: Array | None, distribution: Array, batch_size: int, *,
                  labels: Mapping[str, Array] | None = None) -> LogProbs:
    """A mini-batch of ``batch_size`` pairs or responses drawn from ``distribution``."""
    index = sample_indices(key, distribution, batch_size)
    return batch_at(log_pi, log_ref, index, labels=labels, weights=jnp.ones((batch_size,), jnp.float32))


def dataset_pairs(num_contexts: int, num_actions: int, pairs, probs=None) -> Array:
    """The pair distribution of an offline dataset of ``(context, chosen, rejected)`` triples.

    Args:
      pairs: sequence of ``(c, chosen, rejected)``; repeats add weight.
      probs: optional per-triple weights (uniform if ``None``).

    Returns:
      ``[C, K, K]`` distribution over ordered (chosen, rejected) pairs.
    """
    pairs = jnp.asarray(pairs, jnp.int32)
    probs = jnp.ones((pairs.shape[0],), jnp.float32) if probs is None else jnp.asarray(probs, jnp.float32)
    weights = jnp.zeros((num_contexts, num_actions, num_actions), jnp.float32)
    weights = weights.at[pairs[:, 0], pairs[:, 1], pairs[:, 2]].add(probs)
    return weights / jnp.sum(weights)


def labelled_pairs(preference: Array, log_first: Array, log_second: Array, context_probs: Array) -> Array:
    """Pair distribution of ``y ~ first, y' ~ second`` ordered winner-first by the oracle ``P``.

    .. math::
        W[c, a, b] = \\rho(c)\\, P(a \\succ b \\mid c)\\, \\big(q_1(a) q_2(b) + q_2(a) q_1(b)\\big)

    This turns a policy (or the reference) plus a preference oracle into the
    chosen-first pairs an offline objective (DPO, IPO, SFT on the winner) expects.

    Args:
      preference: ``[C, K, K]``; log_first, log_second: ``[C, K]``; context_probs: ``[C]``.

    Returns:
      ``[C, K, K]`` distribution (sums to 1).
    """
    q1, q2 = jnp.exp(log_first), jnp.exp(log_second)
    both_orders = q1[:, :, None] * q2[:, None, :] + q2[:, :, None] * q1[:, None, :]
    return context_probs[:, None, None] * preference * both_orders
