"""Multi-objective reward models: one regression output per attribute (helpfulness, verbosity, ...).

The reward model of Directional Preference Alignment (Wang et al. 2024): a
linear head with ``K`` outputs on the decoder's last hidden state, regressed
onto per-response attribute ratings (HelpSteer's five, UltraFeedback's four).
A user's scalar reward is then ``v . r(x, y)`` for a unit direction ``v``
(:func:`jalign.objectives.reward_transforms.directional_reward`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import LogProbs
from jalign.objectives.core import ANY, Objective, Requirements
from jalign.objectives.declaration import MULTI_REWARD
from jalign.objectives.registry import objective


@objective(
    "multi_reward",
    strength=None,
    citation="Wang et al. 2024, Arithmetic Control of LLMs for Diverse User Preferences: Directional Preference "
    "Alignment with Multi-Objective Rewards (ACL 2024), the multi-objective reward model's regression loss "
    "min E ||r~(x, y) - r(x, y)||_2^2",
    requires=Requirements(responses=ANY, reference=False, labels=("attributes",), logprobs=False,
                          scores=MULTI_REWARD),
)
class MultiReward(Objective):
    """Squared error of a ``K``-output reward head against attribute ratings.

    .. math::
        \\ell(x) = \\frac{1}{G} \\sum_{g=1}^{G} \\lVert \\tilde r(x, y_g) - r(x, y_g) \\rVert_2^2

    ``scores`` ``[B, G, K]`` are the head's outputs, ``labels["attributes"]``
    ``[B, G, K]`` the ratings (paired records' ``attributes_chosen`` /
    ``attributes_rejected``: both responses of a pair are rated examples).
    The paper trains with plain mean squared error on the ratings as given
    (its released model outputs them on a 0-100 scale); rescaling is the
    data's business. Metrics: ``mse`` (mean over attributes) and ``sq_error/{k}``
    for each attribute ``k``.
    """

    def compute(self, lp: LogProbs):
        predicted = jnp.asarray(lp.scores, jnp.float32)                     # [B, G, K]
        target = jnp.asarray(lp.labels["attributes"], jnp.float32)          # [B, G, K]
        if predicted.shape != target.shape:
            raise ValueError(f"multi_reward: head outputs {predicted.shape} and labels['attributes'] "
                             f"{target.shape} differ; set model.score_dim to the number of attributes")
        squared = jnp.square(predicted - target)
        losses = jnp.mean(jnp.sum(squared, axis=-1), axis=-1)              # [B]
        per_attribute = jnp.mean(squared, axis=1)                           # [B, K]
        metrics = {"mse": jax.lax.stop_gradient(jnp.mean(per_attribute, axis=-1))}
        metrics.update({f"sq_error/{k}": jax.lax.stop_gradient(per_attribute[:, k])
                        for k in range(per_attribute.shape[-1])})
        return losses, metrics
