"""Diagnostics shared by objectives: implicit rewards, margins, accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import Metrics
from jalign.objectives.sequence import log_ratios, policy_logps, require_pairs


def pairwise_metrics(lp: LogProbs, rewards: Array) -> Metrics:
    """Per-example metrics of a pairwise objective from its implicit rewards.

    Args:
      lp: the batch (``G = 2``, chosen first).
      rewards: ``[B, 2]`` implicit rewards, e.g. ``beta * log_ratios(lp)``.

    Returns:
      ``rewards/chosen``, ``rewards/rejected``, ``rewards/margin``,
      ``rewards/accuracy`` (1 where the chosen reward is higher),
      ``logps/chosen`` and ``logps/rejected`` (policy sequence log-probs), all ``[B]``.
    """
    rewards = jax.lax.stop_gradient(jnp.asarray(rewards, jnp.float32))
    chosen, rejected = require_pairs(rewards)
    logp_chosen, logp_rejected = require_pairs(jax.lax.stop_gradient(policy_logps(lp)))
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margin": chosen - rejected,
        "rewards/accuracy": (chosen > rejected).astype(jnp.float32),
        "logps/chosen": logp_chosen,
        "logps/rejected": logp_rejected,
    }


def reference_pairwise_metrics(lp: LogProbs, beta, *, average: bool = False) -> Metrics:
    """:func:`pairwise_metrics` with DPO's implicit reward ``beta * log_ratio``.

    Adds ``logratio/chosen`` and ``logratio/rejected``: how far each response's
    log-prob moved from the reference (the "chosen/rejected drift").
    """
    ratios = jax.lax.stop_gradient(log_ratios(lp, average=average))
    chosen, rejected = require_pairs(ratios)
    metrics = pairwise_metrics(lp, beta * ratios)
    metrics["logratio/chosen"] = chosen
    metrics["logratio/rejected"] = rejected
    return metrics
