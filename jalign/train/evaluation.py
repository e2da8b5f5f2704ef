"""Held-out evaluation: the objective's metrics over a whole eval set, and preference-model calibration.

Every per-example metric the objective reports (and its loss) is averaged
over all eval examples, weighted by ``labels["example_weight"]`` so padding
rows of the last batch count for nothing. Objectives that score pairs
(``bt_reward``, ``pairwise_preference``, ``gpm``) add, over every labelled
pair of the eval set:

- ``pair_accuracy``: the share of decided pairs (label != 1/2) whose
  predicted ``P > 1/2`` agrees with the label;
- ``logloss``: the mean cross-entropy of the predicted ``P`` against the label;
- ``calibration_error``: the expected calibration error over 10 equal-width
  bins of predicted ``P`` (Naeini et al. 2015; Guo et al. 2017, Eq. 3);
- ``cyclic_triples`` (lists of three or more responses): the share of
  triples whose predicted preferences form a cycle (``a > b > c > a``), which
  a Bradley-Terry reward never predicts and a GPM can.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jalign.objectives import Objective
from jalign.objectives.preference_models import PairScoreObjective, pair_targets


def expected_calibration_error(probability: np.ndarray, target: np.ndarray, weight: np.ndarray,
                               bins: int = 10) -> float:
    """ECE: ``sum_b (n_b / n) |mean(P in b) - mean(target in b)|`` over equal-width bins of ``P``."""
    probability, target, weight = (np.asarray(x, np.float64).ravel() for x in (probability, target, weight))
    index = np.minimum((probability * bins).astype(int), bins - 1)
    total, error = weight.sum(), 0.0
    for b in range(bins):
        w = weight * (index == b)
        if w.sum() > 0:
            error += abs(np.sum(w * probability) - np.sum(w * target)) / total
    return float(error)


def cyclic_triple_fraction(preference: np.ndarray) -> float:
    """The share of triples ``(i, j, k)`` of a ``[..., G, G]`` matrix ``P(i > j)`` that form a cycle."""
    preference = np.asarray(preference)
    g = preference.shape[-1]
    beats = preference > 0.5
    triples = list(itertools.combinations(range(g), 3))
    if not triples:
        return 0.0
    cyclic = [(beats[..., i, j] & beats[..., j, k] & beats[..., k, i])
              | (beats[..., j, i] & beats[..., k, j] & beats[..., i, k]) for i, j, k in triples]
    return float(np.mean(np.stack(cyclic)))


def pair_predictions(objective: Objective, lp) -> dict[str, jax.Array] | None:
    """Per-pair predicted ``P``, label and weight ``[B, P]`` of a pair-scoring objective; else None."""
    if not isinstance(objective, PairScoreObjective):
        return None
    first, second, target, weight = pair_targets(lp)
    example = jnp.asarray(lp.labels.get("example_weight", jnp.ones(target.shape[:1])), jnp.float32)
    probability = jax.nn.sigmoid(objective.pair_logits(lp, first, second))
    return {"probability": probability, "target": target, "weight": weight * example[:, None],
            "first": jnp.broadcast_to(first, target.shape), "second": jnp.broadcast_to(second, target.shape)}


def make_eval_step(batch_logprobs: Callable) -> Callable:
    """``eval_step(params, frozen, batch, objective) -> per-example outputs``, unjitted.

    ``batch_logprobs(params, frozen, batch)`` builds the objective's input the
    way the train step does.
    """
    def eval_step(params, frozen, batch, objective: Objective):
        lp = batch_logprobs(params, frozen, batch)
        losses, metrics = objective.per_example(lp)
        weight = jnp.asarray(lp.labels.get("example_weight", jnp.ones_like(losses)), jnp.float32)
        per_example = {"loss": losses, **{k: v for k, v in metrics.items() if jnp.ndim(v) == 1}}
        return per_example, weight, pair_predictions(objective, lp)

    return eval_step


def aggregate(outputs: Iterable[tuple[dict, Any, dict | None]], num_responses: int) -> dict[str, float]:
    """Weighted means of per-example metrics over all batches, plus the pair metrics when present."""
    sums: dict[str, float] = {}
    total = 0.0
    pairs: dict[str, list] = {}
    for per_example, weight, predictions in outputs:
        weight = np.asarray(weight, np.float64)
        total += weight.sum()
        for key, value in per_example.items():
            sums[key] = sums.get(key, 0.0) + float(np.sum(weight * np.asarray(value, np.float64)))
        if predictions is not None:
            for key, value in predictions.items():
                pairs.setdefault(key, []).append(np.asarray(value))
    result = {key: value / max(total, 1e-12) for key, value in sums.items()}
    if pairs:
        result.update(_pair_metrics({k: np.concatenate(v) for k, v in pairs.items()}, num_responses))
    return result


def _pair_metrics(pairs: dict[str, np.ndarray], num_responses: int) -> dict[str, float]:
    p, t, w = pairs["probability"].astype(np.float64), pairs["target"], pairs["weight"]
    decided = w * (t != 0.5)
    eps = 1e-12
    out = {
        "pair_accuracy": float(np.sum(decided * ((p > 0.5) == (t > 0.5))) / max(decided.sum(), eps)),
        "logloss": float(-np.sum(w * (t * np.log(p + eps) + (1 - t) * np.log(1 - p + eps))) / max(w.sum(), eps)),
        "calibration_error": expected_calibration_error(p, t, w),
    }
    if num_responses >= 3:
        matrix = np.full((p.shape[0], num_responses, num_responses), 0.5)
        rows = np.arange(p.shape[0])[:, None]
        matrix[rows, pairs["first"], pairs["second"]] = p
        matrix[rows, pairs["second"], pairs["first"]] = 1 - p
        out["cyclic_triples"] = cyclic_triple_fraction(matrix[w.sum(axis=1) > 0])
    return out
