"""Malformed-record errors, file errors and the counted-skip policy.

Every record that cannot become a training example is either an error that
names the file, the record and the field, or a skip counted under one of the
reasons below. Nothing is dropped silently. A problem with a whole file (it is
missing, empty, not Parquet, lacks a column the format needs) is a
:class:`DataFileError` naming the file, whatever ``on_error`` says. Both are
:class:`DataError`, a ``ValueError``.

Reasons:

- ``"unparseable"``: a record the source cannot decode: a JSONL line that is
  not a UTF-8 JSON object (invalid bytes, a torn line, nesting too deep, an
  integer too long to parse, a key given twice), or a Parquet / Arrow value
  that is not valid UTF-8.
- ``"missing_field"``: a required field is absent or null; in a paired file
  without a ``prompt`` column, chosen and rejected share no prefix to use as
  the implicit prompt.
- ``"empty_response"``: a response that is empty or only whitespace, or that
  tokenises to no tokens.
- ``"wrong_type"``: a field has the wrong type: a non-string text, a message
  list without ``role``/``content`` strings, a non-boolean label, a
  non-finite score or one beyond float32's range, a preference probability
  outside ``[0, 1]``, a message role that is not one of
  ``jalign.data.fields.ROLES``, or a response message whose role is not an
  assistant's.
- ``"invalid_text"``: a string that is not valid Unicode (a lone surrogate
  such as ``"\\ud800"``), or text the tokenizer rejects.
- ``"chat_template"``: the tokenizer's chat template fails on the messages,
  or does not render the prompt as a prefix of prompt + response.
- ``"identical_responses"``: a pair whose chosen and rejected responses are the
  same (as text, or as tokens after truncation); a ranked list whose responses
  are all the same, or that gives one response two different scores.
- ``"response_count"``: a ranked list whose number of responses or scores
  differs from the dataset's ``G``, or has fewer than two.
- ``"too_long"``: longer than the length budget after tokenisation, under the
  chosen truncation policy.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable, Literal, TypeVar

REASONS = (
    "unparseable",
    "missing_field",
    "wrong_type",
    "invalid_text",
    "chat_template",
    "empty_response",
    "identical_responses",
    "response_count",
    "too_long",
)

OnError = Literal["raise", "skip"]

_LOG = logging.getLogger("jalign.data")
T = TypeVar("T")


class Malformed(Exception):
    """A record-level problem, raised before the record's location is known.

    Record readers raise this; :func:`RecordPolicy.apply` attaches the source
    and record index and either raises :class:`MalformedRecordError` or counts
    a skip.
    """

    def __init__(self, reason: str, field: str | None, problem: str):
        if reason not in REASONS:
            raise ValueError(f"unknown malformed-record reason {reason!r}")
        super().__init__(problem)
        self.reason = reason
        self.field = field
        self.problem = problem


class DataError(ValueError):
    """A data problem the user must fix: a malformed record or a bad file."""


class DataFileError(DataError):
    """A problem with a whole source: the message starts with its name.

    Attributes:
      source: the file, directory or dataset name (``""`` if none was given).
      problem: what is wrong, without the name.
    """

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}" if source else problem)
        self.source = source
        self.problem = problem


class MalformedRecordError(DataError):
    """A malformed record under ``on_error="raise"``.

    The message reads ``"<source>: record <i>[ (line <n>)]: field '<f>':
    <problem> [<reason>]"``; the parts are also attributes.
    """

    def __init__(self, source: str, location: str, index: int,
                 malformed: Malformed):
        field = "" if malformed.field is None else f" field {malformed.field!r}:"
        super().__init__(f"{source}: {location}:{field} {malformed.problem} "
                         f"[{malformed.reason}]")
        self.source = source
        self.index = index
        self.field = malformed.field
        self.reason = malformed.reason


@dataclasses.dataclass
class SkipReport:
    """What reading one source did: records kept, skipped, truncated.

    Attributes:
      source: the file or dataset name.
      total: records read.
      kept: records that became examples.
      skipped: reason -> number of records skipped for it.
      first: reason -> the message of the first record skipped for it.
      truncated: part (``"prompt"``, ``"response"``) -> number of kept
        records whose part was cut to fit the length budget.
      ignored_columns: columns of the source that the format does not read.
    """

    source: str
    total: int = 0
    kept: int = 0
    skipped: dict[str, int] = dataclasses.field(
        default_factory=collections.Counter)
    first: dict[str, str] = dataclasses.field(default_factory=dict)
    truncated: dict[str, int] = dataclasses.field(
        default_factory=collections.Counter)
    ignored_columns: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """A JSON-ready summary: ``{"source", "total", "kept", "skipped",
        "truncated", "ignored_columns"}``."""
        return {"source": self.source, "total": self.total, "kept": self.kept,
                "skipped": dict(sorted(self.skipped.items())),
                "truncated": dict(sorted(self.truncated.items())),
                "ignored_columns": list(self.ignored_columns)}

    def log(self, logger: logging.Logger = _LOG) -> None:
        """Logs the counts once (a warning if anything was skipped or cut)."""
        if self.ignored_columns:
            logger.warning("%s: ignoring columns %s (not read by this format)",
                           self.source, list(self.ignored_columns))
        cut = ", ".join(f"{k}={v}" for k, v in sorted(self.truncated.items()))
        if cut:
            logger.warning("%s: truncated to the length budget: %s records",
                           self.source, cut)
        if not self.skipped:
            logger.info("%s: kept all %d records", self.source, self.total)
            return
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        logger.warning("%s: kept %d of %d records; skipped %s", self.source,
                       self.kept, self.total, counts)
        for reason, message in sorted(self.first.items()):
            logger.warning("  first %s: %s", reason, message)


@dataclasses.dataclass
class RecordPolicy:
    """Applies ``on_error`` to one record-processing function, counting skips.

    Attributes:
      on_error: ``"raise"`` turns a :class:`Malformed` into a
        :class:`MalformedRecordError`; ``"skip"`` counts it in ``report``.
      report: the running counts.
      locate: record index -> human-readable location (e.g. with a line).
    """

    on_error: OnError
    report: SkipReport
    locate: Callable[[int], str]

    def __post_init__(self):
        if self.on_error not in ("raise", "skip"):
            raise ValueError(
                f"on_error must be 'raise' or 'skip'; got {self.on_error!r}")

    def apply(self, index: int, fn: Callable[[], T]) -> T | None:
        """Returns ``fn()``, or ``None`` for a counted skip."""
        self.report.total += 1
        try:
            value = fn()
        except Malformed as malformed:
            error = MalformedRecordError(self.report.source, self.locate(index),
                                         index, malformed)
            if self.on_error == "raise":
                raise error from None
            self.report.skipped[malformed.reason] += 1
            self.report.first.setdefault(malformed.reason, str(error))
            return None
        self.report.kept += 1
        return value
