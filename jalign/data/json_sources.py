"""JSON record sources: JSON lines (``.jsonl``) and ``.json`` files (an array of records, or JSON lines).

Both read the whole file, keep each record's text or value, and decode a
record when it is read, so one bad record fails alone (``unparseable``) and
``locate(i)`` names its line or array element.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jalign.data.source_base import Source
from jalign.data.validation import DataFileError, Malformed

_BOM = b"\xef\xbb\xbf"


class JsonlSource(Source):
    """One JSON object per line; blank lines are not records.

    A UTF-8 byte-order mark at the start of the file is ignored. ``columns``
    are the keys of every record, in order of first appearance.
    ``source[i]`` raises ``Malformed("unparseable")`` for a line that is not a
    UTF-8 JSON object (or names a key twice); ``locate(i)`` names the line.

    Raises:
      DataFileError: the file is missing, UTF-16, empty, only blank lines, or
        has no line that parses.
    """

    def __init__(self, path: str | os.PathLike):
        self.name = os.fspath(path)
        raw = _read_bytes(self.name)
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise DataFileError(self.name, "is UTF-16 encoded; expected UTF-8 "
                                "JSON lines")
        raw = raw[len(_BOM):] if raw.startswith(_BOM) else raw
        lines = [(n + 1, line) for n, line in enumerate(raw.split(b"\n"))
                 if line.strip()]
        if not lines:
            raise DataFileError(self.name, "has only blank lines; no records"
                                if raw else "is empty")
        if lines[0][1].strip() == b"[":
            raise DataFileError(self.name, "is a JSON array, not JSON lines "
                                "(one object per line)")
        self._line_numbers = [n for n, _ in lines]
        self._lines = [line for _, line in lines]
        self.columns = _record_keys(self, "line")

    def __len__(self) -> int:
        return len(self._lines)

    def _read(self, index: int) -> dict:
        try:
            record = json.loads(self._lines[index].decode("utf-8"),
                                object_pairs_hook=_unique_keys)
        except UnicodeDecodeError as e:
            raise Malformed("unparseable", None, f"not UTF-8: {e}") from None
        except RecursionError:
            raise Malformed("unparseable", None, "JSON nested too deeply") from None
        except json.JSONDecodeError as e:
            raise Malformed("unparseable", None, f"not valid JSON: {e}") from None
        except ValueError as e:  # an integer over Python's 4300-digit limit
            raise Malformed("unparseable", None, "not valid JSON: "
                            f"{str(e).split(';')[0]}") from None
        if not isinstance(record, dict):
            raise Malformed("unparseable", None, "expected a JSON object; got "
                            f"{type(record).__name__}")
        return record

    def locate(self, index: int) -> str:
        return f"record {index} (line {self._line_numbers[index]})"


class JsonArraySource(Source):
    """A JSON array of records (a ``.json`` file; :func:`open_source` reads
    one holding JSON lines with :class:`JsonlSource`).

    The array must parse as a whole; an element that is not an object, or an
    object that names a key twice, is a malformed record (``unparseable``)
    like a bad JSONL line. ``columns`` are the keys of every record, in order
    of first appearance; ``locate(i)`` names the element.

    Raises:
      DataFileError: the file is missing, not UTF-8, not a JSON array (the
        message has the parser's line and column), or has no object record.
    """

    def __init__(self, path: str | os.PathLike):
        self.name = os.fspath(path)
        text = _read_bytes(self.name).removeprefix(_BOM)
        try:
            records = json.loads(text.decode("utf-8"), object_pairs_hook=_marking_repeats)
        except UnicodeDecodeError as e:
            raise DataFileError(self.name, f"is not UTF-8 JSON: {e}") from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise DataFileError(self.name, f"is not a valid JSON array: {e}") from None
        if not isinstance(records, list):
            what = "one JSON object" if isinstance(records, dict) else "a single JSON value"
            raise DataFileError(self.name, f"is {what}; expected a JSON array of records or JSON lines "
                                "(one object per line)")
        self._records = records
        self.columns = _record_keys(self, "element") if records else ()

    def __len__(self) -> int:
        return len(self._records)

    def _read(self, index: int) -> dict:
        record = self._records[index]
        if not isinstance(record, dict):
            raise Malformed("unparseable", None, "expected a JSON object; got "
                            f"{type(record).__name__}")
        repeated = _repeated_key(record)
        if repeated is not None:
            raise Malformed("unparseable", None, f"a JSON object names the key {repeated!r} twice")
        return record

    def locate(self, index: int) -> str:
        return f"record {index} (element {index} of the array)"


def json_file(path: str) -> Source:
    """A ``.json`` file: a JSON array (or one pretty-printed object) if it parses as one, else JSON lines."""
    text = _read_bytes(path).removeprefix(_BOM).lstrip()
    if text.startswith(b"[") or (text.startswith(b"{") and b"\n" in text.rstrip() and _one_value(text)):
        return JsonArraySource(path)  # refuses a single object, naming what it expected
    return JsonlSource(path)


def _one_value(text: bytes) -> bool:
    """Whether ``text`` is a single JSON value (a multi-line object is not JSON lines)."""
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataFileError(path, f"cannot read: {e.strerror or e}") from None


class _RepeatedKey(dict):
    """What :func:`_marking_repeats` returns for an object naming ``key`` twice."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str):
        super().__init__(pairs)
        self.key = key


def _marking_repeats(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook`` for a whole array: a repeated key marks its object, failing only its record."""
    record = dict(pairs)
    if len(record) == len(pairs):
        return record
    seen = set()
    return _RepeatedKey(pairs, next(k for k, _ in pairs if k in seen or seen.add(k)))


def _repeated_key(value: Any) -> str | None:
    """The first key some object inside ``value`` names twice, or None."""
    if isinstance(value, _RepeatedKey):
        return value.key
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((key for key in map(_repeated_key, children) if key is not None), None)


def _record_keys(source: Source, unit: str) -> tuple[str, ...]:
    """The keys of every record of a JSON source, in order of first appearance."""
    keys, first_error = {}, None
    for i in range(len(source)):
        try:
            keys.update(dict.fromkeys(source[i]))
        except Malformed as e:
            first_error = first_error or f"{source.locate(i)}: {e.problem}"
    if not keys:
        raise DataFileError(source.name, f"no {unit} is a JSON object record; "
                            f"first: {first_error}")
    return tuple(keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook``: a JSON object that names a key twice is bad."""
    record = dict(pairs)
    if len(record) < len(pairs):
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise Malformed("unparseable", None, f"a JSON object names the key "
                        f"{twice!r} twice")
    return record
