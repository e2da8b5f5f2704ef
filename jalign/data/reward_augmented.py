"""Reward-augmented preference data: every pair twice, each time conditioned on a target score.

Zhang et al., *Reward-Augmented Data Enhances Direct Preference Alignment of
LLMs*, 2024 (arXiv 2410.08067), Sec. 4: a pair ``(x, y_w, y_l)`` with judge
scores ``r_w`` and ``r_l`` becomes two goal-conditioned pairs,

- ``(x | r_w, y_w, y_l)``: conditioned on the chosen response's score, the
  chosen response stays preferred;
- ``(x | r_l, y_l, y_w)``: conditioned on the rejected response's score, the
  rejected response is the better match, so the pair is reversed.

Any direct alignment objective (DPO in the paper) then trains on the doubled
data unchanged. The conditioning text and the construction are the authors'
(``shenao-zhang/reward-augmented-preference``, ``scripts/reward_augmentation.py``):
their ``system_prompt`` sentence, inserted as a system message (``"system"``,
their ``ultrafeedback_reward_augmented`` data) or prepended with a blank line
to the first prompt message (``"prompt"``, their ``_nosys`` variant); the
doubled dataset is all positive-goal records followed by all negative-goal
ones (``concatenate_datasets([pos_gc_ds, neg_gc_ds])``). An integral score is
written without a decimal point (``9``, not ``9.0``), as theirs is. At
inference the paper conditions on the highest score (10).

Scores come from a paired record's ``score_chosen`` / ``score_rejected``
(UltraFeedback's columns); in a reversed record they swap with the responses,
so an objective that also reads ``labels["score"]`` sees them consistently.
"""

from __future__ import annotations

from typing import Any, Literal

from jalign.data.fields import get
from jalign.data.source_base import Source
from jalign.data.validation import DataFileError, Malformed

Style = Literal["system", "prompt"]
STYLES = ("system", "prompt")
SCORE_FIELDS = ("score_chosen", "score_rejected")


def goal_text(score: float) -> str:
    """The authors' conditioning sentence for a target ``score`` on their 1-10 scale."""
    shown = int(score) if int(score) == score else score
    return ("You are an assistant that generates responses for the instruction while implicitly achieving the "
            "following target scores (on a scale of 1-10, where 1 is lowest and 10 is highest):\n"
            f"Overall score: {shown}.")


def _conditioned(text: Any, goal: str, style: Style, field: str) -> Any:
    """``text`` (a string prompt or a message list) conditioned on ``goal``."""
    if isinstance(text, str):
        if style == "system":
            raise Malformed("wrong_type", field, "data.reward_augmented='system' needs conversational records "
                            "(message lists); use 'prompt' for string prompts")
        return f"{goal}\n\n{text}"
    if not isinstance(text, list) or not text or not isinstance(text[0], dict):
        raise Malformed("wrong_type", field, "expected a string or a non-empty list of messages")
    if style == "system":
        return [{"role": "system", "content": goal}] + list(text)
    first = dict(text[0])
    first["content"] = f"{goal}\n\n{first.get('content', '')}"
    return [first] + list(text[1:])


def augment(record: dict, *, negative: bool, style: Style, explicit_prompt: bool = True) -> dict:
    """One goal-conditioned copy of a paired ``record`` (see the module docstring).

    With an explicit ``prompt`` field the prompt is conditioned; without one
    (the prompt is the responses' shared start, ``explicit_prompt=False``)
    both responses are, as the authors' script does with its full
    conversations.
    """
    chosen_score = get(record, "score_chosen")
    rejected_score = get(record, "score_rejected")
    for field, value in zip(SCORE_FIELDS, (chosen_score, rejected_score)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Malformed("wrong_type", field, f"expected a number; got {value!r}")
    out = dict(record)
    if negative:
        out["chosen"], out["rejected"] = record["rejected"], record["chosen"]
        out["score_chosen"], out["score_rejected"] = rejected_score, chosen_score
    goal = goal_text(out["score_chosen"])
    if explicit_prompt:
        out["prompt"] = _conditioned(record["prompt"], goal, style, "prompt")
    else:
        out["chosen"] = _conditioned(out["chosen"], goal, style, "chosen")
        out["rejected"] = _conditioned(out["rejected"], goal, style, "rejected")
    return out


class RewardAugmented(Source):
    """A paired source doubled: record ``i < N`` is record ``i`` conditioned on its chosen score,
    record ``N + i`` the same pair reversed and conditioned on its rejected score.

    Raises:
      DataFileError: ``style`` is not one of :data:`STYLES`, or the source
        lacks a chosen/rejected or score column.
    """

    def __init__(self, source: Source, style: Style):
        if style not in STYLES:
            raise DataFileError(source.name, f"data.reward_augmented must be one of {STYLES}; got {style!r}")
        missing = [c for c in ("chosen", "rejected", *SCORE_FIELDS) if c not in source.columns]
        if missing:
            raise DataFileError(source.name, f"data.reward_augmented needs paired records with columns {missing}, "
                                f"which it lacks; it has {list(source.columns)}")
        self.source, self.style = source, style
        self.name, self.columns = source.name, source.columns

    def __len__(self) -> int:
        return 2 * len(self.source)

    def locate(self, index: int) -> str:
        half = len(self.source)
        goal = "rejected" if index >= half else "chosen"
        return f"{self.source.locate(index % half)} (conditioned on its {goal} score)"

    def _read(self, index: int) -> dict:
        half = len(self.source)
        return augment(self.source[index % half], negative=index >= half, style=self.style,
                       explicit_prompt="prompt" in self.columns)
