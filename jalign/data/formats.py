"""Preference record formats, normalised into one :class:`Example` type.

Three kinds of record, each in TRL's *standard* (strings) or *conversational*
(lists of ``{"role", "content"}`` messages) style, decided per record by the
type of its responses:

- ``"paired"``: ``{"prompt", "chosen", "rejected"}``, or with an implicit
  prompt ``{"chosen", "rejected"}`` (the shared prefix becomes the prompt, as
  in TRL's ``extract_prompt``). An optional soft-preference field holds
  P(chosen preferred to rejected). ``G = 2``, chosen first; label
  ``"preference"`` (1.0 without the field).
- ``"ranked"``: ``{"prompt", "responses": [G], "scores": [G]}``. Responses are
  sorted by descending score (stable), so response 0 is the best; label
  ``"score"`` ``[G]``. Duplicate responses are allowed (best-of-N samples).
- ``"unpaired"``: ``{"prompt", "completion", "label": bool}`` (TRL's unpaired
  preference format, thumbs up/down). ``G = 1``; label ``"desirable"`` ``[1]``.

Further labels are read from record fields when an objective declares them
(:data:`LABEL_FIELDS`): paired records' ``score_chosen`` / ``score_rejected``
(UltraFeedback's columns) give ``"score"`` ``[2]`` (MADPO's reward-model
margin, listwise objectives on pairs), and ``other_rewards_chosen`` /
``other_rewards_rejected``, lists of ``K`` numbers, give ``"other_rewards"``
``[2, K]`` (MODPO's other reward models).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from jalign.data.validation import Malformed

KINDS = ("paired", "ranked", "unpaired")

# (kind, label) -> the record fields it is read from, one per response.
LABEL_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("paired", "score"): ("score_chosen", "score_rejected"),
    ("paired", "other_rewards"): ("other_rewards_chosen", "other_rewards_rejected"),
}
_INTRINSIC_LABELS = {"paired": ("preference",), "ranked": ("score",), "unpaired": ("desirable",)}


def intrinsic_labels(kind: str) -> tuple[str, ...]:
    """The labels every record of ``kind`` carries."""
    return _INTRINSIC_LABELS[kind]

Messages = list[dict[str, str]]
Text = str | Messages


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt with ``G`` responses, before tokenisation.

    Attributes:
      kind: one of ``KINDS``.
      prompt: a string, or a list of messages for a conversational record.
      responses: ``G`` responses of the same style as ``prompt``; for pairs the
        chosen one first, for ranked lists the best first.
      response_fields: the record field each response came from, for errors.
      labels: per-example labels: ``"preference"`` a float scalar,
        ``"score"`` and ``"desirable"`` float32 ``[G]``.
    """

    kind: str
    prompt: Text
    responses: tuple[Text, ...]
    response_fields: tuple[str, ...]
    labels: dict[str, Any]

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)


def detect_kind(columns: Sequence[str]) -> str:
    """The record kind implied by a dataset's column names."""
    cols = set(columns)
    if {"responses", "scores"} <= cols:
        return "ranked"
    if {"completion", "label"} <= cols:
        return "unpaired"
    if {"chosen", "rejected"} <= cols:
        return "paired"
    raise ValueError(
        f"cannot tell the preference format from columns {sorted(cols)}: "
        "expected chosen/rejected, prompt/responses/scores or "
        "prompt/completion/label")


@dataclasses.dataclass(frozen=True)
class RecordFormat:
    """Reads raw records of one kind into :class:`Example` values.

    Attributes:
      kind: one of ``KINDS``.
      implicit_prompt: paired records without a ``prompt`` field.
      preference_field: paired records' soft-preference field, or ``None``.
      num_responses: ``G`` for ranked lists; ``None`` accepts any ``G >= 2``.
      labels: further labels to read from the fields :data:`LABEL_FIELDS` names.
    """

    kind: str
    implicit_prompt: bool = False
    preference_field: str | None = None
    num_responses: int | None = None
    labels: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {self.kind!r}")
        unknown = [key for key in self.labels if (self.kind, key) not in LABEL_FIELDS]
        if unknown:
            readable = sorted(key for kind, key in LABEL_FIELDS if kind == self.kind)
            raise ValueError(f"{self.kind} records have no fields for labels {unknown}; readable: {readable}")

    @classmethod
    def for_columns(cls, columns: Sequence[str], *, kind: str | None = None,
                    preference_field: str | None = None,
                    num_responses: int | None = None,
                    labels: Sequence[str] = ()) -> "RecordFormat":
        """The format for a dataset with these columns (``kind`` detected)."""
        kind = kind or detect_kind(columns)
        return cls(kind=kind,
                   implicit_prompt=kind == "paired" and "prompt" not in columns,
                   preference_field=preference_field,
                   num_responses=num_responses, labels=tuple(labels))

    def read(self, record: Any) -> Example:
        """Normalises one record; raises :class:`Malformed` if it is bad."""
        if not isinstance(record, Mapping):
            raise Malformed("unparseable", None,
                            f"expected a mapping; got {type(record).__name__}")
        read = {"paired": self._read_paired, "ranked": self._read_ranked,
                "unpaired": self._read_unpaired}[self.kind]
        example = read(record)
        for key in self.labels:
            example.labels[key] = _field_label(record, LABEL_FIELDS[(self.kind, key)])
        return example

    def _read_paired(self, record: Mapping) -> Example:
        chosen, rejected = _get(record, "chosen"), _get(record, "rejected")
        chat = _check_text(chosen, "chosen", None)
        _check_text(rejected, "rejected", chat)
        _check_nonempty(chosen, "chosen")
        _check_nonempty(rejected, "rejected")
        if chosen == rejected:
            raise Malformed("identical_responses", "rejected",
                            "chosen and rejected are identical")
        if self.implicit_prompt and record.get("prompt") is None:
            prompt, chosen, rejected = _split_shared_prefix(chosen, rejected)
            _check_nonempty(chosen, "chosen")
            _check_nonempty(rejected, "rejected")
        else:
            prompt = _get(record, "prompt")
            _check_text(prompt, "prompt", chat, response=False)
        preference = 1.0
        if self.preference_field is not None:
            preference = _probability(_get(record, self.preference_field),
                                      self.preference_field)
        return Example("paired", prompt, (chosen, rejected),
                       ("chosen", "rejected"),
                       {"preference": np.float32(preference)})

    def _read_ranked(self, record: Mapping) -> Example:
        responses = _get(record, "responses")
        scores = _get(record, "scores")
        for field, value in (("responses", responses), ("scores", scores)):
            if not isinstance(value, (list, tuple)):
                raise Malformed("wrong_type", field, "expected a list; got "
                                f"{type(value).__name__}")
        self._check_count(len(responses), len(scores))
        chat = _check_text(responses[0], "responses[0]", None)
        for g, response in enumerate(responses):
            _check_text(response, f"responses[{g}]", chat)
            _check_nonempty(response, f"responses[{g}]")
        prompt = _get(record, "prompt")
        _check_text(prompt, "prompt", chat, response=False)
        values = [_finite(s, f"scores[{g}]") for g, s in enumerate(scores)]
        order = sorted(range(len(values)), key=lambda g: -values[g])
        return Example("ranked", prompt, tuple(responses[g] for g in order),
                       tuple(f"responses[{g}]" for g in order),
                       {"score": np.asarray([values[g] for g in order],
                                            np.float32)})

    def _check_count(self, num_responses: int, num_scores: int) -> None:
        if num_responses != num_scores:
            raise Malformed("response_count", "scores",
                            f"{num_scores} scores for {num_responses} responses")
        expected = self.num_responses
        if num_responses < 2 or (expected and num_responses != expected):
            want = f"{expected}" if expected else "at least 2"
            raise Malformed("response_count", "responses",
                            f"expected {want} responses; got {num_responses}")

    def _read_unpaired(self, record: Mapping) -> Example:
        completion = _get(record, "completion")
        chat = _check_text(completion, "completion", None)
        _check_nonempty(completion, "completion")
        prompt = _get(record, "prompt")
        _check_text(prompt, "prompt", chat, response=False)
        label = _get(record, "label")
        if not isinstance(label, (bool, np.bool_)):
            raise Malformed("wrong_type", "label",
                            f"expected a bool; got {type(label).__name__} "
                            f"{label!r}")
        return Example("unpaired", prompt, (completion,), ("completion",),
                       {"desirable": np.asarray([float(label)], np.float32)})


def _field_label(record: Mapping, fields: tuple[str, ...]) -> np.ndarray:
    """One label per response from its field: numbers ``[G]`` or equal-length lists ``[G, K]``."""
    values = []
    for field in fields:
        value = _get(record, field)
        if isinstance(value, (list, tuple, np.ndarray)):
            if len(value) == 0:
                raise Malformed("wrong_type", field, "expected a non-empty list of numbers")
            values.append([_finite(v, f"{field}[{k}]") for k, v in enumerate(value)])
        else:
            values.append(_finite(value, field))
    shapes = {np.shape(v) for v in values}
    if len(shapes) > 1:
        raise Malformed("wrong_type", fields[-1], f"fields {list(fields)} have different lengths "
                        f"{[len(v) if isinstance(v, list) else 'scalar' for v in values]}")
    return np.asarray(values, np.float32)


def _get(record: Mapping, field: str) -> Any:
    value = record.get(field)
    if value is None:
        raise Malformed("missing_field", field, "required field is missing or null")
    return value


def _check_text(value: Any, field: str, chat: bool | None, *,
                response: bool = True) -> bool:
    """Checks a string or message list; returns whether it is conversational.

    ``chat`` is the record's style (``None`` while unknown); a value of the
    other style is a ``wrong_type``.
    """
    kind = "string" if chat is False else "list of messages" if chat else (
        "string or a list of {role, content} messages")
    if isinstance(value, str) and chat is not True:
        return False
    if isinstance(value, list) and chat is not False:
        for m, message in enumerate(value):
            _check_message(message, f"{field}[{m}]")
        if response and not value:
            raise Malformed("empty_response", field, "no messages")
        return True
    raise Malformed("wrong_type", field,
                    f"expected a {kind}; got {type(value).__name__}")


def _check_message(message: Any, field: str) -> None:
    if not isinstance(message, Mapping):
        raise Malformed("wrong_type", field, "expected a {role, content} "
                        f"message; got {type(message).__name__}")
    for key in ("role", "content"):
        if not isinstance(message.get(key), str):
            raise Malformed("wrong_type", f"{field}.{key}", "expected a "
                            f"string; got {type(message.get(key)).__name__}")


def _check_nonempty(value: Text, field: str) -> None:
    texts = [value] if isinstance(value, str) else [m["content"] for m in value]
    if not any(t.strip() for t in texts):
        raise Malformed("empty_response", field, "response is empty")


def _split_shared_prefix(chosen: Text, rejected: Text) -> tuple[Text, ...]:
    """Implicit prompt: the longest shared prefix (characters or messages).

    For strings, a space just before the first difference stays with the
    responses, as in TRL's ``extract_prompt``.
    """
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if isinstance(chosen, str) and n > 0 and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _finite(value: Any, field: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        raise Malformed("wrong_type", field,
                        f"expected a number; got {type(value).__name__}")
    if not math.isfinite(value):
        raise Malformed("wrong_type", field, f"expected a finite number; "
                        f"got {value}")
    return float(value)


def _probability(value: Any, field: str) -> float:
    p = _finite(value, field)
    if not 0.0 <= p <= 1.0:
        raise Malformed("wrong_type", field,
                        f"expected a probability in [0, 1]; got {p}")
    return p
