"""Random-access record sources: JSONL, Parquet, Hugging Face datasets, TFDS.

Each source has ``len(source)``, ``source[i]`` (a dict record), a ``name`` for
error messages (the file), ``columns`` (field names, used to detect the
format) and ``locate(i)`` (the record's position, e.g. with its line number).
They satisfy grain's ``RandomAccessDataSource`` protocol.

``pyarrow``, ``datasets`` and ``tensorflow_datasets`` are imported lazily, only
by the source that needs them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from jalign.data.validation import Malformed


class _Source:
    name: str
    columns: tuple[str, ...]

    def locate(self, index: int) -> str:
        return f"record {index}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} records)"


class JsonlSource(_Source):
    """One JSON object per line; blank lines are not records.

    ``source[i]`` raises ``Malformed("unparseable")`` for a line that is not a
    UTF-8 JSON object; ``locate(i)`` names the line.
    """

    def __init__(self, path: str | os.PathLike):
        self.name = os.fspath(path)
        with open(path, "rb") as f:
            lines = [(n + 1, line) for n, line in enumerate(f) if line.strip()]
        self._line_numbers = [n for n, _ in lines]
        self._lines = [line for _, line in lines]
        self.columns = self._first_keys()

    def _first_keys(self) -> tuple[str, ...]:
        for i in range(len(self)):
            try:
                return tuple(self[i])
            except Malformed:
                continue
        return ()

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> dict:
        try:
            record = json.loads(self._lines[index].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise Malformed("unparseable", None, f"not valid JSON: {e}") from None
        if not isinstance(record, dict):
            raise Malformed("unparseable", None, "expected a JSON object; got "
                            f"{type(record).__name__}")
        return record

    def locate(self, index: int) -> str:
        return f"record {index} (line {self._line_numbers[index]})"


class ParquetSource(_Source):
    """A Parquet file read with ``pyarrow``; nulls read as missing fields."""

    def __init__(self, path: str | os.PathLike):
        import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
        self.name = os.fspath(path)
        self._table = pq.read_table(path)
        self.columns = tuple(self._table.column_names)

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, index: int) -> dict:
        return self._table.slice(index, 1).to_pylist()[0]


class HFSource(_Source):
    """A Hugging Face ``datasets.Dataset`` (one split).

    ``datasets`` gives a JSON column with values of mixed types its ``Json``
    feature, which decodes every string that is itself valid JSON (``" 5."``
    reads as ``5.0``); read raw JSONL that may be malformed with
    :class:`JsonlSource` to get errors for the records that are really bad.
    """

    def __init__(self, dataset: Any, name: str):
        self.name = name
        self._dataset = dataset
        self.columns = tuple(dataset.column_names)

    @classmethod
    def from_files(cls, data_files: str | Sequence[str], *,
                   builder: str | None = None, split: str = "train",
                   cache_dir: str | None = None) -> "HFSource":
        """``datasets.load_dataset`` on local files (no hub download).

        ``builder`` (``"json"``, ``"parquet"``, ``"csv"``) defaults from the
        first file's extension; ``cache_dir`` is the Arrow cache.
        """
        import datasets  # pylint: disable=import-outside-toplevel
        files = [data_files] if isinstance(data_files, str) else list(data_files)
        if builder is None:
            ext = os.path.splitext(files[0])[1].lstrip(".")
            builder = {"jsonl": "json", "json": "json"}.get(ext, ext)
        dataset = datasets.load_dataset(builder, data_files=files, split=split,
                                        cache_dir=cache_dir)
        return cls(dataset, name=",".join(files))

    @classmethod
    def from_disk(cls, path: str | os.PathLike,
                  split: str | None = None) -> "HFSource":
        """``datasets.load_from_disk`` of a saved ``Dataset`` or ``DatasetDict``."""
        import datasets  # pylint: disable=import-outside-toplevel
        dataset = datasets.load_from_disk(os.fspath(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split is None:
                raise ValueError(f"{os.fspath(path)} holds splits "
                                 f"{sorted(dataset)}; pass split=")
            dataset = dataset[split]
        name = os.fspath(path) + (f"[{split}]" if split else "")
        return cls(dataset, name=name)

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> dict:
        return self._dataset[index]


class TfdsSource(_Source):
    """A TFDS random-access data source, decoded to Python values.

    Wraps any object with ``len`` and ``__getitem__`` returning feature dicts of
    NumPy values, as ``tfds.data_source`` does: ``bytes`` become ``str``,
    arrays become lists, and a ``Sequence`` of dict features (stored by TFDS
    as a dict of equal-length arrays) becomes a list of dicts, so
    conversational messages read as ``[{"role", "content"}, ...]``.
    """

    def __init__(self, data_source: Any, name: str):
        self.name = name
        self._data_source = data_source
        self.columns = tuple(self[0]) if len(data_source) else ()

    @classmethod
    def load(cls, dataset: str, *, split: str,
             data_dir: str | None = None) -> "TfdsSource":
        """``tfds.data_source(dataset, split=split)``; needs the ``tfds`` extra.

        The dataset must be prepared in a random-access file format
        (``array_record``).
        """
        try:
            import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        except ImportError as e:
            raise ImportError("TFDS sources need tensorflow-datasets: "
                              "pip install 'jalign[tfds]'") from e
        source = tfds.data_source(dataset, split=split, data_dir=data_dir)
        return cls(source, name=f"tfds:{dataset}[{split}]")

    def __len__(self) -> int:
        return len(self._data_source)

    def __getitem__(self, index: int) -> dict:
        record = self._data_source[index]
        return {key: _decode(value) for key, value in record.items()}


def _decode(value: Any) -> Any:
    """NumPy/bytes feature values -> Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return _decode(value.item()) if value.ndim == 0 else [
            _decode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return _unstack({k: _decode(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return [_decode(v) for v in value]
    return value


def _unstack(fields: dict) -> dict | list:
    """A dict of equal-length lists -> a list of dicts (TFDS ``Sequence``)."""
    columns = list(fields.values())
    if not columns or not all(isinstance(c, list) for c in columns):
        return fields
    if len({len(c) for c in columns}) != 1:
        return fields
    return [_unstack(dict(zip(fields, row))) for row in zip(*columns)]


def open_source(source: Any) -> _Source:
    """A record source from a path or an in-memory dataset.

    Accepts a ``.jsonl`` or ``.parquet`` path, a directory written by
    ``datasets.Dataset.save_to_disk``, a ``datasets.Dataset``, or an existing
    source (returned unchanged).
    """
    if isinstance(source, _Source):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            return HFSource.from_disk(path)
        ext = os.path.splitext(path)[1]
        if ext == ".jsonl":
            return JsonlSource(path)
        if ext == ".parquet":
            return ParquetSource(path)
        raise ValueError(f"{path}: unknown data file type {ext!r}; expected "
                         ".jsonl, .parquet or a saved datasets directory")
    hf_datasets = sys.modules.get("datasets")
    if hf_datasets is not None and isinstance(source, hf_datasets.Dataset):
        return HFSource(source, name=source.info.dataset_name
                        or "datasets.Dataset")
    raise TypeError(f"cannot read preference records from {type(source)}")
