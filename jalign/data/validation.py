"""Malformed-record errors and the counted-skip policy.

Every record that cannot become a training example is either an error that
names the file, the record and the field, or a skip counted under one of the
reasons below. Nothing is dropped silently.

Reasons:

- ``"unparseable"``: a JSONL line that is not a JSON object.
- ``"missing_field"``: a required field is absent or null.
- ``"wrong_type"``: a field has the wrong type: a non-string text, a message
  list without ``role``/``content`` strings, a non-boolean label, a
  non-finite score, a preference probability outside ``[0, 1]``.
- ``"empty_response"``: a response that is empty or only whitespace.
- ``"identical_responses"``: a pair whose chosen and rejected responses are the
  same (as text, or as tokens after truncation).
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


class MalformedRecordError(ValueError):
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
    """Counts of records read, kept and skipped per reason, for one source.

    Attributes:
      source: the file or dataset name.
      total: records read.
      kept: records that became examples.
      skipped: reason -> number of records skipped for it.
      first: reason -> the message of the first record skipped for it.
    """

    source: str
    total: int = 0
    kept: int = 0
    skipped: dict[str, int] = dataclasses.field(
        default_factory=collections.Counter)
    first: dict[str, str] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        """A JSON-ready summary: ``{"source", "total", "kept", "skipped"}``."""
        return {"source": self.source, "total": self.total, "kept": self.kept,
                "skipped": dict(sorted(self.skipped.items()))}

    def log(self, logger: logging.Logger = _LOG) -> None:
        """Logs the counts (a warning if anything was skipped)."""
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
