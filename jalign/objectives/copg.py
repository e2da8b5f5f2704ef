"""Contrastive Policy Gradient (CoPG): sequence-level rewards, off-policy, without importance sampling.

Source of the formula. The CoPG paper itself (Flet-Berliac et al., 2024,
arXiv:2406.19185) could not be read here beyond its abstract; the loss is
the one Cohere's *Command A* technical report (2025, p. 7; Cohere is the
CoPG authors' lab) gives for ``k`` responses per prompt, read from a
digest of that report that quotes its equation:

.. math::
    \\ell = \\frac{1}{k-1}\\sum_{i > j}\\left(R^\\pi_\\beta(x, y_i) - R^\\pi_\\beta(x, y_j)\\right)^2,
    \\qquad R^\\pi_\\beta(x, y) = R(x, y) - \\beta\\log\\frac{\\pi(y|x)}{\\pi_{ref}(y|x)},

usable offline and online (on-policy it is equivalent to RLOO). For ``k = 2``
this is ``(R(y) - R(y') - beta h)^2`` with ``h`` the pair's log-ratio margin:
IPO's regression (Azar et al. 2023, Eq. 17) with the reward difference as its
target, which is the abstract's "generalizes IPO". Its minimiser for any
full-support pair distribution is ``pi ∝ pi_ref exp(R / beta)`` (the loss is
0 there), the KL-regularised optimum; the tabular test checks that.

Defaults. No published ``beta`` could be read; ``beta = 0.1`` is jalign's
DPO default, not the authors'.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import LIST, PAIR, Objective, Requirements, static_field
from jalign.objectives.declaration import POLICY, Sampling
from jalign.objectives.registry import objective
from jalign.objectives.sequence import label, log_ratios

_CITATION = ("Flet-Berliac et al. 2024, Contrastive Policy Gradient: Aligning LLMs on Sequence-Level Scores in a "
             "Supervised-Friendly Fashion; the loss as Cohere's Command A report 2025 (p. 7) states it, read from a "
             "digest quoting that equation (the CoPG paper's own equation was not read here)")


def copg_loss(rewards: Array, log_ratio: Array, *, beta) -> Array:
    """CoPG's contrastive squared loss over a group of ``k`` responses per prompt.

    .. math::
        \\ell = \\frac{1}{k-1}\\sum_{i > j}\\left(R^\\pi_\\beta(y_i) - R^\\pi_\\beta(y_j)\\right)^2,
        \\quad R^\\pi_\\beta(y) = R(y) - \\beta \\log\\frac{\\pi(y)}{\\pi_{ref}(y)}

    Args:
      rewards: ``[B, k]`` sequence rewards (constants).
      log_ratio: ``[B, k]`` sequence log-ratios ``log pi/pi_ref`` (with gradient).
      beta: KL-regularisation strength.

    Returns:
      ``[B]`` float32 losses.

    References:
      Flet-Berliac et al., *Contrastive Policy Gradient*, 2024; the loss as in
      Cohere, *Command A*, 2025, p. 7.
    """
    regularised = jax.lax.stop_gradient(jnp.asarray(rewards, jnp.float32)) - beta * jnp.asarray(log_ratio, jnp.float32)
    k = regularised.shape[1]
    if k < 2:
        raise ValueError(f"CoPG contrasts k >= 2 responses per prompt; got {regularised.shape=}")
    diff = regularised[:, :, None] - regularised[:, None, :]  # [B, k, k]: R_i - R_j
    below = jnp.tril(jnp.ones((k, k), jnp.float32), -1)  # i > j
    return jnp.sum(below * jnp.square(diff), axis=(1, 2)) / (k - 1)


def _compute(obj, lp: LogProbs, key: str):
    ratio = log_ratios(lp)
    rewards = label(lp, key)
    losses = copg_loss(rewards, ratio, beta=obj.beta)
    return losses, {"reward": jnp.mean(jnp.asarray(rewards, jnp.float32), axis=1),
                    "logratio": jax.lax.stop_gradient(jnp.mean(ratio, axis=1))}


@objective(
    "copg",
    strength="beta",
    citation=_CITATION + "; offline, on paired data with scores",
    requires=Requirements(responses=PAIR, reference=True, labels=("score",)),
)
class CoPG(Objective):
    """CoPG offline: pairs from any behaviour policy with their scores ``labels["score"]`` ``[B, 2]``.

    .. math::
        \\ell = \\left(R(y) - R(y') - \\beta \\log\\frac{\\pi(y)\\pi_{ref}(y')}{\\pi_{ref}(y)\\pi(y')}\\right)^2

    (see the module docstring for the source). Paired records carry the
    scores as ``score_chosen`` / ``score_rejected``; the order of the pair does
    not matter. Needs pairs, reference log-probs and ``labels["score"]``.
    """

    beta: float = 0.1

    def compute(self, lp: LogProbs):
        return _compute(self, lp, "score")


@objective(
    "online_copg",
    strength="beta",
    citation=_CITATION + "; online, k policy samples per prompt with a judge's rewards",
    requires=Requirements(responses=LIST, reference=True, labels=("reward",)),
    sampling=Sampling(responses=(POLICY,), labels=("reward",), group="k"),
)
class OnlineCoPG(Objective):
    """CoPG online: ``k`` policy samples per prompt, each with the judge's reward ``labels["reward"]`` ``[B, k]``.

    The loss of :func:`copg_loss` over the group (see the module docstring).
    ``k`` is static. Needs reference log-probs.
    """

    beta: float = 0.1
    k: int = static_field(2)

    def compute(self, lp: LogProbs):
        return _compute(self, lp, "reward")
