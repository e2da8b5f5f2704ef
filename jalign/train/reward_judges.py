"""Reward judges: rewards of texts from reward models, transformed and combined, for the online loop.

A reward judge has ``reward(prompts, responses)`` (float64 ``[N]``) and,
like every :class:`~jalign.train.judges.Judge`, ``preference(prompts, a, b)
= sigma((u_a - u_b) / temperature)`` of its rewards ``u``, so any online
objective trains on it today, and a reward-consuming one reads ``reward``.

- :class:`HeadRewards`: the raw outputs of a decoder's ``reward`` or
  ``multi_reward`` head (``[N]`` or ``[N, K]``).
- :class:`ShapedRewardJudge`: one or more reward sources (each ``[N]`` or
  ``[N, K]``, concatenated to ``[N, K]``) turned into one reward by a
  transform of :mod:`jalign.objectives.reward_transforms`:

  ``"lsc"``: ``sum_k log sigma(r_k - r_ref_k(x))`` (Wang et al. 2024; one
  model is the plain LSC transformation, several their logical-AND
  combination), ``r_ref`` the 0.85 quantile of the prompt's reference
  rewards; ``"par"``: ``mean_m sigma(r - r_ref_m(x))`` (Fu et al. 2025, one
  model); ``"maxmin"``: ``min_k r_k``, the worst group's reward
  (MaxMin-RLHF, one model per group); ``"directional"``: ``v . r`` for a
  unit ``direction`` (DPA), or, without one, the direction each prompt's
  DPA system prompt states (:mod:`jalign.data.directions`); ``"none"``: the
  single reward as is.

Reference rewards are the rewards of responses sampled from the reference
(SFT) policy, per prompt, computed before training as in the PAR authors'
data (``sample_rewards``): a mapping from the prompt (its text, or
``json.dumps`` of its messages) to ``[M]`` (one model) or ``[M, K]`` rewards.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.data.collate import Collator, bucket_lengths
from jalign.data.directions import ATTRIBUTES, direction_of
from jalign.data.formats import Example
from jalign.data.tokenization import Tokenization, tokenize
from jalign.models.preference_heads import preference_scores
from jalign.objectives.declaration import MULTI_REWARD, REWARD
from jalign.objectives.reward_transforms import (
    LSC_QUANTILE, PAR_SLOPE, directional_reward, lsc_combined, lsc_reference, maxmin_reward, par,
)

TRANSFORMS = ("none", "lsc", "par", "maxmin", "directional")
RewardSource = Callable[[Sequence[Any], Sequence[Any]], np.ndarray]  # (prompts, responses) -> [N] or [N, K]


@dataclasses.dataclass
class HeadRewards:
    """A decoder's ``reward`` (``[N]``) or ``multi_reward`` (``[N, K]``) head as a reward source.

    Attributes:
      model: the reward model (``model.score_head.kind`` is ``"reward"`` or ``"multi_reward"``).
      tokenizer: its tokenizer.
      batch_size: responses per compiled batch.
      max_length: most tokens of prompt plus response; longer ones keep their end.
    """

    model: nnx.Module
    tokenizer: Any
    batch_size: int = 16
    max_length: int = 512

    def __post_init__(self):
        kind = self.model.score_head.kind
        if kind not in (REWARD, MULTI_REWARD):
            raise ValueError(f"HeadRewards reads a reward or multi_reward head; the model has a {kind} head")
        pad = next((i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if i is not None), 0)
        buckets = bucket_lengths(self.max_length)
        self._collate = Collator(self.batch_size, buckets, buckets, pad)
        self._tokenization = Tokenization(max_length=self.max_length, truncation="keep_end")
        self._scores = nnx.jit(lambda model, batch: preference_scores(model, batch)[:, 0])  # [B] or [B, K]

    def __call__(self, prompts, responses) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"prompts and responses differ in length: {len(prompts)}, {len(responses)}")
        out = []
        for start in range(0, len(prompts), self.batch_size):
            rows = [tokenize(Example("ranked", p, (y,), ("response",), {}), i, self.tokenizer, self._tokenization)
                    for i, (p, y) in enumerate(zip(prompts[start:start + self.batch_size],
                                                   responses[start:start + self.batch_size]))]
            batch = {k: v for k, v in self._collate(rows).items() if k not in ("record_index", "labels")}
            out.append(np.asarray(self._scores(self.model, batch), np.float64)[:len(rows)])
        return np.concatenate(out) if out else np.zeros((0,))


def prompt_key(prompt: Any) -> str:
    """The key of a prompt in a reference-reward table: its text, or ``json.dumps`` of its messages."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


@dataclasses.dataclass
class ShapedRewardJudge:
    """Reward sources combined and transformed into one reward per response; a judge of pairs by it.

    Attributes:
      sources: reward sources, each ``(prompts, responses) -> [N]`` or ``[N, K]``
        (a :class:`HeadRewards`, or any function of texts).
      transform: one of :data:`TRANSFORMS`.
      reference_rewards: prompt key (:func:`prompt_key`) -> ``[M]`` or ``[M, K]``
        rewards of reference-policy responses (``"lsc"``, ``"par"``).
      direction: ``[K]`` unit vector (``"directional"``); ``None`` reads each
        prompt's own from its DPA system prompt over ``attributes``.
      attributes: the attribute names a DPA system prompt weights, in the
        order of the reward columns.
      quantile: the LSC reference point's quantile (0.85, see ``lsc_reference``).
      slope: PAR's ``k`` (1).
      temperature: the scale of ``preference = sigma((u_a - u_b) / temperature)``.
    """

    sources: Sequence[RewardSource]
    transform: str = "none"
    reference_rewards: Mapping[str, Any] | None = None
    direction: Sequence[float] | None = None
    attributes: Sequence[str] = ATTRIBUTES
    quantile: float = LSC_QUANTILE
    slope: float = PAR_SLOPE
    temperature: float = 1.0

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}; got {self.transform!r}")
        if not self.sources:
            raise ValueError("ShapedRewardJudge needs at least one reward source")
        if self.transform in ("lsc", "par") and self.reference_rewards is None:
            raise ValueError(f"transform={self.transform!r} needs reference_rewards: prompt -> rewards of "
                             "reference-policy responses")
        if self.transform == "directional" and self.direction is not None:
            if abs(float(np.linalg.norm(self.direction)) - 1.0) > 1e-3:
                raise ValueError(f"direction must be a unit vector; |v| = {np.linalg.norm(self.direction):.4f}")

    def describe(self) -> str:
        """What judges (for the saved run config)."""
        return (f"ShapedRewardJudge({len(self.sources)} sources, transform={self.transform}, "
                f"direction={None if self.direction is None else list(self.direction)}, quantile={self.quantile}, "
                f"slope={self.slope}, temperature={self.temperature})")

    def raw_rewards(self, prompts, responses) -> np.ndarray:
        """``[N, K]``: every source's rewards side by side."""
        columns = []
        for source in self.sources:
            values = np.asarray(source(prompts, responses), np.float64)
            columns.append(values.reshape(len(responses), -1))
        return np.concatenate(columns, axis=1)

    def _references(self, prompts, num_rewards: int) -> np.ndarray:
        """``[N, M, K]`` reference rewards of each prompt."""
        rows = []
        for prompt in prompts:
            key = prompt_key(prompt)
            if key not in self.reference_rewards:
                raise ValueError(f"reference_rewards has no entry for the prompt {key[:80]!r}")
            rows.append(np.asarray(self.reference_rewards[key], np.float64).reshape(-1, num_rewards))
        return np.stack(rows)

    def reward(self, prompts, responses) -> np.ndarray:
        """float64 ``[N]``: the transformed reward of each response."""
        rewards = self.raw_rewards(prompts, responses)                        # [N, K]
        k = rewards.shape[1]
        if self.transform in ("none", "par") and k != 1:
            raise ValueError(f"transform={self.transform!r} reads one reward per response; the sources give {k}")
        if self.transform == "none":
            shaped = rewards[:, 0]
        elif self.transform == "lsc":
            shaped = lsc_combined(rewards, lsc_reference(jnp.swapaxes(self._references(prompts, k), 1, 2),
                                                          quantile=self.quantile))
        elif self.transform == "par":
            shaped = par(rewards[:, 0], self._references(prompts, 1)[..., 0], slope=self.slope)
        elif self.transform == "maxmin":
            shaped = maxmin_reward(rewards)
        else:
            direction = (np.asarray(self.direction) if self.direction is not None
                         else np.stack([direction_of(p, self.attributes) for p in prompts]))
            shaped = directional_reward(rewards, direction)
        return np.asarray(shaped, np.float64)

    def preference(self, prompts, a, b) -> np.ndarray:
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"prompts, a and b differ in length: {len(prompts)}, {len(a)}, {len(b)}")
        both = self.reward(list(prompts) + list(prompts), list(a) + list(b))
        diff = (both[:len(a)] - both[len(a):]) / self.temperature
        return 0.5 * (1.0 + np.tanh(0.5 * diff))  # sigma(diff) without overflow
