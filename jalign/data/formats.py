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
- ``"joint"``: ``{"prompt_chosen", "chosen", "prompt_rejected", "rejected"}``
  (strings), a preference between two instruction-response pairs with
  different instructions (JPO's joint rankings; the authors' data names the
  responses ``response_chosen`` / ``response_rejected``). ``G = 2``; labels
  ``"preference"`` and, once tokenised, ``"instruction_length"`` ``[2]``
  (see :func:`jalign.data.tokenization.tokenize`).

Further labels are read from record fields when an objective declares them
(:data:`LABEL_FIELDS`): paired records' ``score_chosen`` / ``score_rejected``
(UltraFeedback's columns) give ``"score"`` ``[2]`` (MADPO's reward-model
margin, listwise objectives on pairs), and ``other_rewards_chosen`` /
``other_rewards_rejected``, lists of ``K`` numbers, give ``"other_rewards"``
``[2, K]`` (MODPO's other reward models). A paired record's ``semantic_weight`` gives
``"semantic_weight"`` ``[1]`` (Sem-DPO's per-pair weight). ``aligned_logps_chosen`` /
``aligned_logps_rejected`` (paired) or ``aligned_logps`` (unpaired), a number
or a list of ``M``, give ``"aligned_logps"``: aligned models' per-token mean
log-likelihood of each response (PoFT).

The prompt is implicit only when the data has no ``prompt`` column at all
(TRL's ``maybe_extract_prompt`` extracts it when ``"prompt" not in example``;
a ``datasets`` row carries every column, so that is a column test). Two
departures from TRL, both stricter: a string prompt with message-list
responses is a ``wrong_type`` (TRL would silently re-extract the prompt from
the responses and drop the given one), and an implicit-prompt pair whose
responses share no prefix is a ``missing_field`` for ``prompt`` instead of an
example with an empty prompt. A file with no ``prompt`` column but a column
whose name is close to it (``promt``) is refused, and columns the format does
not read are reported (:meth:`RecordFormat.check_columns`).

Field values are checked by :mod:`jalign.data.fields`: message roles, valid
Unicode, finite numbers within float32's range.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, Sequence

import numpy as np

from jalign.data.fields import (Text, check_response, check_text, finite, get,
                                 probability)
from jalign.data.validation import DataFileError, Malformed

KINDS = ("paired", "ranked", "unpaired", "joint")

# The fields each kind reads (the prompt of a paired file may be implicit).
KIND_FIELDS = {"paired": ("prompt", "chosen", "rejected"),
               "ranked": ("prompt", "responses", "scores"),
               "unpaired": ("prompt", "completion", "label"),
               "joint": ("prompt_chosen", "chosen", "prompt_rejected", "rejected")}
# (kind, label) -> the record fields it is read from, one per response.
LABEL_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("paired", "score"): ("score_chosen", "score_rejected"),
    ("paired", "other_rewards"): ("other_rewards_chosen", "other_rewards_rejected"),
    ("paired", "semantic_weight"): ("semantic_weight",),
    ("paired", "aligned_logps"): ("aligned_logps_chosen", "aligned_logps_rejected"),
    ("unpaired", "aligned_logps"): ("aligned_logps",),
}
_INTRINSIC_LABELS = {"paired": ("preference",), "ranked": ("score",), "unpaired": ("desirable",),
                     "joint": ("preference", "instruction_length")}


def intrinsic_labels(kind: str) -> tuple[str, ...]:
    """The labels every record of ``kind`` carries."""
    return _INTRINSIC_LABELS[kind]


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
      prompts: a joint record's own instruction per response (``prompt`` is
        then empty); ``None`` for the other kinds, whose responses share ``prompt``.
    """

    kind: str
    prompt: Text
    responses: tuple[Text, ...]
    response_fields: tuple[str, ...]
    labels: dict[str, Any]
    prompts: tuple[Text, ...] | None = None

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)


def detect_kind(columns: Sequence[str], *, source: str = "") -> str:
    """The record kind implied by a dataset's column names.

    Raises:
      DataFileError: no kind's columns are present; names ``source`` and
        suggests a field for a misspelt column (``rejcted``).
    """
    cols = set(columns)
    if set(KIND_FIELDS["joint"]) <= cols:
        return "joint"
    if {"responses", "scores"} <= cols:
        return "ranked"
    if {"completion", "label"} <= cols:
        return "unpaired"
    if {"chosen", "rejected"} <= cols:
        return "paired"
    known = sorted({f for fields in KIND_FIELDS.values() for f in fields})
    raise DataFileError(source, (
        f"cannot tell the preference format from columns {sorted(cols)}: "
        "expected chosen/rejected, prompt/responses/scores or "
        "prompt/completion/label") + _did_you_mean(cols, known))


def _did_you_mean(columns: Sequence[str], fields: Sequence[str]) -> str:
    """``"; did you mean 'prompt' for 'promt'?"`` for near-miss column names."""
    pairs = [(match[0], col) for col in sorted(columns) if col not in fields
             for match in [difflib.get_close_matches(col, fields, n=1, cutoff=0.8)]
             if match]
    return "".join(f"; did you mean {f!r} for {c!r}?" for f, c in pairs)


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
                    labels: Sequence[str] = (),
                    source: str = "") -> "RecordFormat":
        """The format for a dataset with these columns (``kind`` detected).

        The prompt is implicit when there is no ``prompt`` column (TRL's
        rule); ``source`` names the data in a detection error.
        """
        kind = kind or detect_kind(columns, source=source)
        return cls(kind=kind,
                   implicit_prompt=kind == "paired" and "prompt" not in columns,
                   preference_field=preference_field,
                   num_responses=num_responses, labels=tuple(labels))

    @property
    def fields(self) -> tuple[str, ...]:
        """The record fields this format reads."""
        fields = [f for f in KIND_FIELDS[self.kind]
                  if not (f == "prompt" and self.implicit_prompt)]
        if self.preference_field is not None:
            fields.append(self.preference_field)
        for key in self.labels:
            fields.extend(LABEL_FIELDS[(self.kind, key)])
        return tuple(fields)

    def check_columns(self, columns: Sequence[str], source: str) -> tuple[str, ...]:
        """Checks a source's columns against the format; returns those it ignores.

        Raises:
          DataFileError: a field the format reads is no column of the source,
            or the prompt is implicit while a column is named like ``prompt``
            (a misspelt prompt column would otherwise be dropped silently).
        """
        missing = [f for f in self.fields if f not in columns]
        ignored = tuple(c for c in columns if c not in self.fields)
        if missing:
            raise DataFileError(source, f"{self.kind} records need columns "
                                f"{missing}, which it lacks; it has {list(columns)}"
                                + _did_you_mean(ignored, missing))
        near = [c for c in ignored if _did_you_mean([c], ["prompt"])]
        if self.implicit_prompt and near:
            raise DataFileError(source, f"has no 'prompt' column but has "
                                f"{near[0]!r}: did you mean 'prompt'? Without a "
                                "prompt column the prompt is implicit (the shared "
                                f"start of chosen and rejected) and {near[0]!r} "
                                "would be ignored; rename or drop it")
        return ignored

    def read(self, record: Any) -> Example:
        """Normalises one record; raises :class:`Malformed` if it is bad."""
        if not isinstance(record, Mapping):
            raise Malformed("unparseable", None,
                            f"expected a mapping; got {type(record).__name__}")
        read = {"paired": self._read_paired, "ranked": self._read_ranked,
                "unpaired": self._read_unpaired, "joint": self._read_joint}[self.kind]
        example = read(record)
        for key in self.labels:
            example.labels[key] = _field_label(record, LABEL_FIELDS[(self.kind, key)])
        return example

    def _read_paired(self, record: Mapping) -> Example:
        chosen, rejected = get(record, "chosen"), get(record, "rejected")
        chat = check_text(chosen, "chosen", None)
        check_text(rejected, "rejected", chat)
        if chosen == rejected:
            raise Malformed("identical_responses", "rejected",
                            "chosen and rejected are identical")
        if self.implicit_prompt:
            prompt, chosen, rejected = _split_shared_prefix(chosen, rejected)
            if not (prompt if chat else prompt.strip()):
                raise Malformed("missing_field", "prompt", "no prompt column, "
                                "and chosen and rejected share no prefix to "
                                "use as the implicit prompt")
        else:
            prompt = get(record, "prompt")
            check_text(prompt, "prompt", chat)
        check_response(chosen, "chosen")
        check_response(rejected, "rejected")
        preference = 1.0
        if self.preference_field is not None:
            preference = probability(get(record, self.preference_field),
                                      self.preference_field)
        return Example("paired", prompt, (chosen, rejected),
                       ("chosen", "rejected"),
                       {"preference": np.float32(preference)})

    def _read_joint(self, record: Mapping) -> Example:
        fields = KIND_FIELDS["joint"]
        values = [get(record, field) for field in fields]
        for field, value in zip(fields, values):
            check_text(value, field, False)  # joint records are strings
        prompt_chosen, chosen, prompt_rejected, rejected = values
        if (prompt_chosen, chosen) == (prompt_rejected, rejected):
            raise Malformed("identical_responses", "rejected",
                            "the chosen and rejected instruction-response pairs are identical")
        check_response(chosen, "chosen")
        check_response(rejected, "rejected")
        preference = 1.0
        if self.preference_field is not None:
            preference = probability(get(record, self.preference_field),
                                      self.preference_field)
        return Example("joint", "", (chosen, rejected), ("chosen", "rejected"),
                       {"preference": np.float32(preference)},
                       prompts=(prompt_chosen, prompt_rejected))

    def _read_ranked(self, record: Mapping) -> Example:
        responses = get(record, "responses")
        scores = get(record, "scores")
        for field, value in (("responses", responses), ("scores", scores)):
            if not isinstance(value, (list, tuple)):
                raise Malformed("wrong_type", field, "expected a list; got "
                                f"{type(value).__name__}")
        self._check_count(len(responses), len(scores))
        chat = check_text(responses[0], "responses[0]", None)
        for g, response in enumerate(responses):
            check_text(response, f"responses[{g}]", chat)
            check_response(response, f"responses[{g}]")
        prompt = get(record, "prompt")
        check_text(prompt, "prompt", chat)
        values = [finite(s, f"scores[{g}]") for g, s in enumerate(scores)]
        _check_duplicates(responses, values)
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
        completion = get(record, "completion")
        chat = check_text(completion, "completion", None)
        check_response(completion, "completion")
        prompt = get(record, "prompt")
        check_text(prompt, "prompt", chat)
        label = get(record, "label")
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
        value = get(record, field)
        if isinstance(value, (list, tuple, np.ndarray)):
            if len(value) == 0:
                raise Malformed("wrong_type", field, "expected a non-empty list of numbers")
            values.append([finite(v, f"{field}[{k}]") for k, v in enumerate(value)])
        else:
            values.append(finite(value, field))
    shapes = {np.shape(v) for v in values}
    if len(shapes) > 1:
        raise Malformed("wrong_type", fields[-1], f"fields {list(fields)} have different lengths "
                        f"{[len(v) if isinstance(v, list) else 'scalar' for v in values]}")
    return np.asarray(values, np.float32)


def _check_duplicates(responses: Sequence[Text], scores: list[float]) -> None:
    """A ranked list must not be one response repeated, nor score one response twice."""
    if all(r == responses[0] for r in responses[1:]):
        raise Malformed("identical_responses", "responses",
                        f"all {len(responses)} responses are identical")
    for h in range(1, len(responses)):
        for g in range(h):
            if responses[g] == responses[h] and scores[g] != scores[h]:
                raise Malformed("identical_responses", f"responses[{h}]",
                                f"same as responses[{g}] but scored "
                                f"{scores[h]} instead of {scores[g]}")


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


