"""Random-access record sources: JSONL, JSON, Parquet, Hugging Face datasets, TFDS.

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

from jalign.data.json_sources import JsonlSource, json_file
from jalign.data.source_base import DECODE_ERRORS, Source
from jalign.data.validation import DataFileError, Malformed


class ParquetSource(Source):
    """A Parquet file read with ``pyarrow``; nulls read as missing fields.

    Raises:
      DataFileError: the file is missing or not a readable Parquet file.
    """

    def __init__(self, path: str | os.PathLike):
        import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
        self.name = os.fspath(path)
        try:
            self._table = pq.read_table(path)
        except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
            raise DataFileError(self.name, f"not a readable Parquet file: {e}") from None
        self.columns = tuple(self._table.column_names)
        if len(set(self.columns)) < len(self.columns):
            raise DataFileError(self.name, f"repeats a column name: {list(self.columns)}")

    def __len__(self) -> int:
        return self._table.num_rows

    def _read(self, index: int) -> dict:
        row = self._table.slice(index, 1)
        try:
            return row.to_pylist()[0]
        except DECODE_ERRORS:
            return _columnwise(row)


def _columnwise(row: Any) -> dict:
    """One Arrow row, column by column, so a value that fails names its field."""
    record = {}
    for name, column in zip(row.column_names, row.columns):
        try:
            record[name] = column.to_pylist()[0]
        except DECODE_ERRORS as e:
            raise Malformed("unparseable", name, "cannot decode the value: "
                            f"{type(e).__name__}: {e}") from None
    return record


class HFSource(Source):
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
        name = ",".join(files)
        try:
            dataset = datasets.load_dataset(builder, data_files=files, split=split,
                                            cache_dir=cache_dir)
        except Exception as e:  # pylint: disable=broad-except
            raise DataFileError(name, f"datasets cannot load it: "
                                f"{type(e).__name__}: {e}") from None
        return cls(dataset, name=name)

    @classmethod
    def from_disk(cls, path: str | os.PathLike,
                  split: str | None = None) -> "HFSource":
        """``datasets.load_from_disk`` of a saved ``Dataset`` or ``DatasetDict``."""
        import datasets  # pylint: disable=import-outside-toplevel
        if _saved_without_data(path):  # datasets itself fails with an IndexError
            raise DataFileError(os.fspath(path), "has no records (a saved "
                                "dataset with no data files)")
        try:
            dataset = datasets.load_from_disk(os.fspath(path))
        except (OSError, ValueError, LookupError) as e:
            raise DataFileError(os.fspath(path), "cannot load it as a saved "
                                f"datasets directory (save_to_disk): "
                                f"{type(e).__name__}: {e}") from None
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise DataFileError(os.fspath(path), f"holds splits {sorted(dataset)}; pass split= "
                                    "(an experiment's data.split or data.eval_split) one of them "
                                    f"(got {split!r})")
            dataset = dataset[split]
        name = os.fspath(path) + (f"[{split}]" if split else "")
        return cls(dataset, name=name)

    def __len__(self) -> int:
        return len(self._dataset)

    def _read(self, index: int) -> dict:
        try:
            return self._dataset[index]
        except DECODE_ERRORS:
            return _columnwise(self._dataset.with_format("arrow")[index])


def _saved_without_data(path: str | os.PathLike) -> bool:
    """Whether ``save_to_disk`` wrote an empty ``Dataset`` here (no data files)."""
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            return json.load(f).get("_data_files") == []
    except (OSError, ValueError, AttributeError):
        return False


class TfdsSource(Source):
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
        self.columns = ()
        for i in range(len(data_source)):
            try:
                self.columns = tuple(self[i])
                break
            except Malformed:
                continue

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
        name = f"tfds:{dataset}[{split}]"
        try:
            source = tfds.data_source(dataset, split=split, data_dir=data_dir)
        except Exception as e:  # pylint: disable=broad-except
            raise DataFileError(name, f"tfds cannot load it: {type(e).__name__}: {e}") from None
        return cls(source, name=name)

    def __len__(self) -> int:
        return len(self._data_source)

    def _read(self, index: int) -> dict:
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


def open_source(source: Any, *, split: str | None = None) -> Source:
    """A record source from a path, a ``tfds:`` name or an in-memory dataset.

    Accepts a ``.jsonl``, ``.json`` (an array of records, or JSON lines) or
    ``.parquet`` path, a directory written by ``save_to_disk`` (``split``
    picks a ``DatasetDict``'s split), ``tfds:NAME/SPLIT`` (a prepared TFDS
    dataset, ``NAME`` possibly ``name/config:version``, read from
    ``TFDS_DATA_DIR``), a ``datasets.Dataset``, or an existing source
    (returned unchanged).

    Raises:
      DataFileError: an empty path, a missing file, an unknown file type, a
        file that cannot be read, a ``tfds:`` name without a split, a
        ``split`` for something that is not a saved datasets directory, or a
        source with no records.
      TypeError: an object that is not a known kind of dataset.
    """
    opened = _open(source, split)
    if len(opened) == 0:
        raise DataFileError(opened.name, "has no records")
    return opened


_FILE_TYPES = {".jsonl": JsonlSource, ".json": json_file, ".parquet": ParquetSource}
TFDS_PREFIX = "tfds:"


def _open(source: Any, split: str | None) -> Source:
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        return HFSource.from_disk(source, split)
    if split is not None:
        where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "")
        raise DataFileError(where, f"split={split!r} selects a split of a saved "
                            "datasets directory; this is not one (a tfds: name carries its split: tfds:NAME/SPLIT)")
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not path:
            raise DataFileError("", "the data path is empty")
        if path.startswith(TFDS_PREFIX):
            return _tfds(path)
        if not os.path.exists(path):
            raise DataFileError(path, "no such file or directory")
        ext = os.path.splitext(path)[1]
        if ext not in _FILE_TYPES:
            raise DataFileError(path, f"unknown data file type {ext!r}; expected .jsonl, .json, .parquet, "
                                "a saved datasets directory or tfds:NAME/SPLIT")
        return _FILE_TYPES[ext](path)
    hf_datasets = sys.modules.get("datasets")
    if hf_datasets is not None and isinstance(source, hf_datasets.Dataset):
        return HFSource(source, name=source.info.dataset_name
                        or "datasets.Dataset")
    raise TypeError(f"cannot read preference records from {type(source)}")


def _tfds(spec: str) -> TfdsSource:
    """``tfds:NAME/SPLIT``: the split is after the last slash (a name may hold ``/config``)."""
    name, _, split = spec.removeprefix(TFDS_PREFIX).rpartition("/")
    if not name or not split:
        raise DataFileError(spec, "expected tfds:NAME/SPLIT, e.g. tfds:my_prefs/train")
    return TfdsSource.load(name, split=split)
