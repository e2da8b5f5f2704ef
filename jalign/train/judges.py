"""Judges: ``P(A ≻ B | x)`` for batches of texts, from a preference model or a Python function.

One interface, :class:`Judge`: ``judge.preference(prompts, a, b)`` returns
``P(a_n ≻ b_n | prompt_n)`` as a float64 ``[N]`` array; judges with a scalar
reward (a reward function, a reward head) also have
``judge.reward(prompts, responses)``, float64 ``[N]`` (:func:`gives_rewards`). Implementations:

- :class:`ModelJudge` over a decoder with a preference head
  (``jalign.models.preference_heads``): a Bradley-Terry reward model
  (``sigma(r_a - r_b)``), a pairwise model (``sigma(s_ab - s_ba)``) or a
  general preference model (``sigma(<R v_a, v_b> / tau)``), through the same
  pair logits the training losses use; batched, padded to bucket lengths and
  jitted, so it compiles once per bucket shape.
- :class:`FunctionJudge` over a plain Python function of texts, returning a
  reward (turned into ``sigma((r_a - r_b) / temperature)``) or a preference.

The online loop (generation, judging, update) uses it; so does evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.data.collate import Collator, bucket_lengths
from jalign.data.formats import Example
from jalign.data.tokenization import Tokenization, tokenize
from jalign.models.preference_heads import preference_scores
from jalign.objectives import LogProbs, bt_reward, gpm, pairwise_preference
from jalign.objectives.declaration import EMBEDDING, PAIRWISE, REWARD


class Judge(Protocol):
    def preference(self, prompts: Sequence[Any], a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
        """``P(a_n ≻ b_n | prompts_n)``, float64 ``[N]``."""


def gives_rewards(judge: Any) -> bool:
    """Whether ``judge.reward(prompts, responses)`` returns scalar rewards (a reward function or reward head).

    Preference-only judges (a pairwise or general preference model, a
    preference function) have no scalar reward per response.
    """
    if isinstance(judge, FunctionJudge):
        return judge.kind == "reward"
    if isinstance(judge, ModelJudge):
        return judge.model.score_head.kind == REWARD
    return callable(getattr(judge, "reward", None))


def _pair_logit(kind: str, tau: float):
    """The training loss's pair logit for a head kind (one pair per row: (0, 1))."""
    if kind not in (REWARD, PAIRWISE, EMBEDDING):
        raise ValueError(f"a {kind} head has no preference of its own; judge it through "
                         "jalign.train.reward_judges.ShapedRewardJudge([HeadRewards(model, tokenizer)], ...)")
    objective = {REWARD: bt_reward(), PAIRWISE: pairwise_preference(), EMBEDDING: gpm(tau=tau)}[kind]
    first, second = jnp.array([0]), jnp.array([1])
    return lambda scores: objective.pair_logits(LogProbs(None, None, scores=scores), first, second)[:, 0]


@dataclasses.dataclass
class ModelJudge:
    """A decoder with a ``score_head`` as a judge.

    Attributes:
      model: the preference model (``model.score_head.kind`` says which).
      tokenizer: its tokenizer (chat template for message lists).
      batch_size: pairs per compiled batch.
      max_length: most tokens of prompt plus response; longer ones keep their end.
      tau: a general preference model's temperature (``gpm``'s ``tau``).
    """

    model: nnx.Module
    tokenizer: Any
    batch_size: int = 16
    max_length: int = 512
    tau: float = 0.1

    def __post_init__(self):
        pad = next((i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if i is not None), 0)
        buckets = bucket_lengths(self.max_length)
        self._collate = Collator(self.batch_size, buckets, buckets, pad)
        self._tokenization = Tokenization(max_length=self.max_length, truncation="keep_end")
        logit = _pair_logit(self.model.score_head.kind, self.tau)
        self._probability = nnx.jit(lambda model, batch: jax.nn.sigmoid(logit(preference_scores(model, batch))))
        self._rewards = nnx.jit(preference_scores)

    def describe(self) -> str:
        """What judges (for the saved run config): the head kind and the model's shape, not its weights."""
        cfg = self.model.cfg
        return (f"ModelJudge({self.model.score_head.kind} head on {cfg.model_type}, {cfg.num_layers} layers, "
                f"hidden {cfg.hidden_size}, tau={self.tau})")

    def reward(self, prompts, responses) -> np.ndarray:
        """The reward head's score of each ``(prompt, response)``, float64 ``[N]`` (reward heads only)."""
        if self.model.score_head.kind != REWARD:
            raise ValueError(f"a {self.model.score_head.kind} head gives no scalar reward per response")
        if len(prompts) != len(responses):
            raise ValueError(f"prompts and responses differ in length: {len(prompts)}, {len(responses)}")
        out = []
        for start in range(0, len(prompts), self.batch_size):
            # Each response is scored in a pair with itself: the collated layout the head reads.
            rows = [tokenize(Example("ranked", p, (y, y), ("a", "b"), {}), i, self.tokenizer, self._tokenization)
                    for i, (p, y) in enumerate(zip(prompts[start:start + self.batch_size],
                                                   responses[start:start + self.batch_size]))]
            batch = {k: v for k, v in self._collate(rows).items() if k not in ("record_index", "labels")}
            out.append(np.asarray(self._rewards(self.model, batch), np.float64)[:len(rows), 0])
        return np.concatenate(out) if out else np.zeros((0,))

    def preference(self, prompts, a, b) -> np.ndarray:
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"prompts, a and b differ in length: {len(prompts)}, {len(a)}, {len(b)}")
        out = []
        for start in range(0, len(prompts), self.batch_size):
            rows = [tokenize(Example("ranked", p, (x, y), ("a", "b"), {}), i, self.tokenizer, self._tokenization)
                    for i, (p, x, y) in enumerate(zip(prompts[start:start + self.batch_size],
                                                      a[start:start + self.batch_size],
                                                      b[start:start + self.batch_size]))]
            batch = {k: v for k, v in self._collate(rows).items() if k not in ("record_index", "labels")}
            out.append(np.asarray(self._probability(self.model, batch), np.float64)[:len(rows)])
        return np.concatenate(out) if out else np.zeros((0,))


@dataclasses.dataclass
class FunctionJudge:
    """A Python function of texts as a judge.

    Attributes:
      fn: ``fn(prompt, response) -> reward`` (``kind="reward"``) or
        ``fn(prompt, a, b) -> P(a ≻ b)`` (``kind="preference"``).
      kind: ``"reward"`` or ``"preference"``.
      temperature: a reward difference's scale: ``P = sigma((r_a - r_b) / temperature)``.
    """

    fn: Callable[..., float]
    kind: str = "reward"
    temperature: float = 1.0

    def __post_init__(self):
        if self.kind not in ("reward", "preference"):
            raise ValueError(f"kind must be 'reward' or 'preference'; got {self.kind!r}")

    def describe(self) -> str:
        """What judges (for the saved run config): the function's name (not its module, which is ``__main__``
        when the experiment runs as a script) and the settings."""
        fn = getattr(self.fn, "__qualname__", type(self.fn).__qualname__)
        return f"FunctionJudge({fn}, kind={self.kind}, temperature={self.temperature})"

    def reward(self, prompts, responses) -> np.ndarray:
        """``fn(prompt, response)`` for each pair, float64 ``[N]`` (``kind="reward"`` only)."""
        if self.kind != "reward":
            raise ValueError("a preference function gives no scalar reward per response")
        return np.asarray([self.fn(p, y) for p, y in zip(prompts, responses)], np.float64)

    def preference(self, prompts, a, b) -> np.ndarray:
        if self.kind == "preference":
            values = np.asarray([self.fn(p, x, y) for p, x, y in zip(prompts, a, b)], np.float64)
            if np.any((values < 0) | (values > 1)) or not np.all(np.isfinite(values)):
                raise ValueError("a preference function must return probabilities in [0, 1]")
            return values
        diff = np.asarray([self.fn(p, x) - self.fn(p, y) for p, x, y in zip(prompts, a, b)], np.float64)
        return 1.0 / (1.0 + np.exp(-diff / self.temperature))
