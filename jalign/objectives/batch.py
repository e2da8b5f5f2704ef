"""The log-prob pytree that every objective consumes.

A batch holds ``B`` prompts with ``G`` responses each, ``T`` token positions per
response. Preference-model objectives read ``scores`` instead of log-probs:
a reward model's ``[B, G]`` rewards, a pairwise model's ``[B, 2]`` logits of
both orders, or a general preference model's ``[B, G, K]`` embeddings; their
batches may carry no log-probs at all (``policy`` and ``mask`` ``None``). Pairs put the chosen response first (``G = 2``); ranked lists carry
``G > 2`` responses and scores; unpaired feedback has ``G = 1``. The tabular
engine fills the same structure with one "token" per response (``T = 1``).

Known label keys (objectives declare which they need):

- ``"preference"`` ``[B]``: probability that response 0 is preferred to 1.
- ``"score"`` ``[B, G]``: scalar quality of each response (listwise, reward).
- ``"desirable"`` ``[B, G]``: 1 for a thumbs-up response, 0 for thumbs-down.
- ``"other_rewards"`` ``[B, G, K]``: rewards from K other reward models (MODPO).
- ``"aligned_logps"`` ``[B, G, M]`` (or ``[B, G]``): each of M aligned models'
  length-normalised log-likelihood of each response (PoFT's baselines).
- ``"attributes"`` ``[B, G, K]``: K attribute ratings of each response (a
  multi-objective reward model's regression targets, DPA).
- ``"guide_log_ratio"`` ``[B, G, T]``: a guide policy's per-token log-ratio against
  the reference (TGDPO's token rewards are beta times it).
- ``"kl_estimate"`` ``[B]`` or scalar: log-ratio of a completion from another
  example, the KL reference point of KTO.
- ``"list_mask"`` ``[B, G]``: 1 for real entries of a ragged ranked list.
- ``"win_prob"`` ``[B, G]``: P(y_g beats a response of the opponent policy)
  (Nash-MD, SPPO, EGPO).
- ``"reward"`` ``[B, G]``: a judge's scalar reward of each sampled response
  (a reward model or a reward function; RLOO, GRPO, PPO-clip, online CoPG, RSO).
- ``"previous_logps"`` ``[B, G]``: sequence log-prob under the previous iterate
  (INPO, SPPO).
- ``"example_weight"`` ``[B]``: weight of each example in the batch mean; 0 for
  padding rows of a fixed-size batch.

Known per-token extras, as computed by ``jalign.kernels``:

- ``"entropy"`` ``[B, G, T]``: entropy of the policy's next-token distribution.
- ``"ref_kl"`` ``[B, G, T]``: KL(pi_ref || pi_theta) of the next-token
  distributions (the summand of TDPO's sequential KL).
- ``"policy_kl"`` ``[B, G, T]``: KL(pi_theta || pi_ref) of the next-token
  distributions, the usual direction (RLHF's KL penalty).
- ``"token_mask_logits"`` ``[B, G, T]``: a learned token-weighting head
  (SparsePO's learned masks), with gradient.
- ``"log_prob_sq_sum"`` ``[B, G, T]``: log sum_v pi_theta(v | x, y_<t)^2 (WPO's
  per-token calibration), a constant.
- ``"reference_token_mask"`` ``[B, G, T]``: token weights in [0, 1] derived from
  the reference model (SparsePO), a constant.
- ``"values"`` ``[B, G, T]``: a learned critic's value of the state before each
  token, ``V(x, y_<t)`` (PPO), with gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LogProbs:
    """Per-token log-probabilities of ``G`` responses to each of ``B`` prompts.

    Attributes:
      policy: ``[B, G, T]`` log pi_theta(y_t | x, y_<t). Any float dtype; the
        shared helpers accumulate in float32.
      mask: ``[B, G, T]`` 1 on response tokens, 0 on padding.
      reference: ``[B, G, T]`` log pi_ref(y_t | x, y_<t), or ``None`` for
        reference-free objectives. Always treated as a constant.
      extras: per-token quantities from the kernels, each ``[B, G, T]``.
      labels: per-example or per-response labels (see the module docstring).
      scores: a preference model's outputs (see the module docstring), or ``None``.
    """

    policy: Array | None
    mask: Array | None
    reference: Array | None = None
    extras: Mapping[str, Array] = dataclasses.field(default_factory=dict)
    labels: Mapping[str, Array] = dataclasses.field(default_factory=dict)
    scores: Array | None = None

    @property
    def num_responses(self) -> int:
        """``G``, the number of responses per prompt."""
        return (self.policy if self.policy is not None else self.scores).shape[1]

    def replace(self, **changes) -> "LogProbs":
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    LogProbs,
    data_fields=["policy", "mask", "reference", "extras", "labels", "scores"],
    meta_fields=[],
)


def from_sequences(policy, reference=None, *, labels=None) -> LogProbs:
    """Builds a batch from per-sequence log-probs, one "token" per response.

    This is how tabular policies and hand-written examples enter: ``policy``
    and ``reference`` are ``[B, G]`` sequence log-probs.

    Args:
      policy: ``[B, G]`` log pi_theta(y | x).
      reference: ``[B, G]`` log pi_ref(y | x) or ``None``.
      labels: optional label mapping.

    Returns:
      A ``LogProbs`` with ``T = 1``.
    """
    policy = jnp.asarray(policy)
    if policy.ndim != 2:
        raise ValueError(f"policy must be [B, G]; got {policy.shape=}")
    return LogProbs(
        policy=policy[..., None],
        mask=jnp.ones(policy.shape + (1,), policy.dtype),
        reference=None if reference is None else jnp.asarray(reference)[..., None],
        labels=dict(labels or {}),
    )
