"""The base of every record source: ``source[i]`` turns any decoding failure into ``Malformed``."""

from __future__ import annotations

from jalign.data.validation import Malformed

# What decoding one record can raise besides Malformed: pyarrow's errors are
# ValueError / TypeError / NotImplementedError subclasses, a bad string is a
# UnicodeDecodeError. OSError and MemoryError are faults, not data, and pass.
DECODE_ERRORS = (ValueError, TypeError, ArithmeticError, RecursionError, NotImplementedError)


class Source:
    """Base: ``source[i]`` turns any decoding failure into ``Malformed``; subclasses define ``_read``."""

    name: str
    columns: tuple[str, ...]

    def locate(self, index: int) -> str:
        return f"record {index}"

    def __getitem__(self, index: int) -> dict:
        try:
            return self._read(index)
        except Malformed:
            raise
        except DECODE_ERRORS as e:
            raise Malformed("unparseable", None, "cannot decode the record: "
                            f"{type(e).__name__}: {e}") from None

    def _read(self, index: int) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} records)"
