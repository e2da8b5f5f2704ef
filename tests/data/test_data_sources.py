"""Every source yields the hand-written records it was written from.

The same RECORDS (standard strings) and CHAT_RECORDS (nested message lists)
are written as JSONL, JSON (an array, or JSON lines in a .json file),
Parquet, a Hugging Face dataset (from files and from disk) and a fake TFDS
data source, and read back. `datasets` only reads
local files here (its packaged json/parquet builders); nothing is
downloaded. tensorflow-datasets is not installed: TfdsSource is tested with
a fake object that has the interface of `tfds.data_source(...)`'s result.
"""

import json
import sys
import types

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jalign.data import (DataFileError, HFSource, JsonArraySource, JsonlSource,
                         MalformedRecordError,
                         ParquetSource, TfdsSource, open_source,
                         read_preferences)

RECORDS = [
    {"prompt": "What is 2 + 3?", "chosen": " 5.", "rejected": " 6."},
    {"prompt": "Capital of Peru?", "chosen": " Lima.", "rejected": " Cusco."},
    {"prompt": "Opposite of hot?", "chosen": " Cold.", "rejected": " Warm."},
]
CHAT_RECORDS = [
    {"prompt": [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Sky colour?"}],
     "chosen": [{"role": "assistant", "content": "Blue."}],
     "rejected": [{"role": "assistant", "content": "Green."}]},
    {"prompt": [{"role": "user", "content": "2 times 3?"}],
     "chosen": [{"role": "assistant", "content": "6."}],
     "rejected": [{"role": "assistant", "content": "5."}]},
]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _all(source):
    return [source[i] for i in range(len(source))]


@pytest.mark.parametrize("records", [RECORDS, CHAT_RECORDS])
def test_jsonl(tmp_path, records):
    """JSONL lines read back as the dicts that were dumped."""
    source = JsonlSource(_jsonl(tmp_path / "d.jsonl", records))
    assert _all(source) == records
    assert source.columns == ("prompt", "chosen", "rejected")
    assert source.locate(1) == "record 1 (line 2)"


@pytest.mark.parametrize("records", [RECORDS, CHAT_RECORDS])
def test_json_array_and_json_lines(tmp_path, records):
    """A .json file holding a (pretty-printed) array, or JSON lines, reads back as the records."""
    array = tmp_path / "array.json"
    array.write_text(json.dumps(records, indent=2))
    lines = _jsonl(tmp_path / "lines.json", records)
    source = open_source(array)
    assert isinstance(source, JsonArraySource) and _all(source) == records
    assert source.columns == ("prompt", "chosen", "rejected")
    assert source.locate(1) == "record 1 (element 1 of the array)"
    assert isinstance(open_source(lines), JsonlSource) and _all(open_source(lines)) == records


def test_json_array_bad_records_follow_the_error_policy(tmp_path, tokenizer):
    """A non-object element or a repeated key fails its record only: raised with file and record, or skipped."""
    path = tmp_path / "bad.json"
    path.write_text("[" + ", ".join([json.dumps(RECORDS[0]), "7", json.dumps(RECORDS[1]),
                                     '{"prompt": "a", "prompt": "b", "chosen": " c", "rejected": " d"}']) + "]")
    with pytest.raises(MalformedRecordError, match=r"bad\.json: record 1 \(element 1 of the array\): "
                       r".*expected a JSON object; got int"):
        read_preferences(path, tokenizer)
    data = read_preferences(path, tokenizer, on_error="skip")
    assert [e.index for e in data.examples] == [0, 2]
    assert data.report.as_dict()["skipped"] == {"unparseable": 2}


def test_json_missing_field_names_the_field(tmp_path, tokenizer):
    """A record of a JSON array without ``rejected`` is reported with file, record and field."""
    path = tmp_path / "missing.json"
    path.write_text(json.dumps([RECORDS[0], {"prompt": "Hi", "chosen": " Hello."}]))
    with pytest.raises(MalformedRecordError, match=r"missing\.json: record 1 .*field 'rejected'"):
        read_preferences(path, tokenizer)


@pytest.mark.parametrize("text, message", [
    ('[{"prompt": "a"},\n {"prompt": ]', r"bad\.json: is not a valid JSON array: .*line 2 column"),
    (json.dumps(RECORDS[0], indent=2), r"bad\.json: is one JSON object; expected a JSON array of records"),
    ("[]", r"bad\.json: has no records"),
    ("[1, 2]", r"bad\.json: no element is a JSON object record; first: record 0"),
])
def test_bad_json_files_give_one_line(tmp_path, text, message):
    """Whole-file problems of a .json file: one message starting with the file."""
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(DataFileError, match=message) as error:
        open_source(tmp_path / "bad.json")
    assert "\n" not in str(error.value)


def test_a_split_of_a_saved_dataset_dict(tmp_path):
    """``split`` picks a DatasetDict's split; without one the error lists the splits; a file takes none."""
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS),
                          "test": datasets.Dataset.from_list(RECORDS[:1])}).save_to_disk(tmp_path / "dict")
    assert _all(open_source(tmp_path / "dict", split="test")) == RECORDS[:1]
    assert _all(open_source(tmp_path / "dict", split="train")) == RECORDS
    with pytest.raises(DataFileError, match=r"holds splits \['test', 'train'\]; pass split="):
        open_source(tmp_path / "dict")
    with pytest.raises(DataFileError, match=r"holds splits .* \(got 'dev'\)"):
        open_source(tmp_path / "dict", split="dev")
    with pytest.raises(DataFileError, match=r"d\.jsonl: split='test' selects a split of a saved datasets"):
        open_source(_jsonl(tmp_path / "d.jsonl", RECORDS), split="test")


@pytest.mark.parametrize("records", [RECORDS, CHAT_RECORDS])
def test_parquet(tmp_path, records):
    """Parquet rows (messages as list<struct>) read back as the records."""
    source = ParquetSource(_parquet(tmp_path / "d.parquet", records))
    assert _all(source) == records
    assert source.columns == ("prompt", "chosen", "rejected")


def test_parquet_null_is_a_missing_field(tmp_path, tokenizer):
    """A null cell is a missing field, reported with the Parquet file."""
    path = _parquet(tmp_path / "nulls.parquet",
                    RECORDS[:1] + [{**RECORDS[1], "rejected": None}])
    with pytest.raises(MalformedRecordError,
                       match=r"nulls\.parquet: record 1: field 'rejected'"):
        read_preferences(path, tokenizer)


@pytest.mark.parametrize("records", [RECORDS, CHAT_RECORDS])
@pytest.mark.parametrize("write", [_jsonl, _parquet])
def test_hf_load_dataset_local_files(tmp_path, records, write):
    """`datasets.load_dataset` on local JSONL / Parquet files, cached under
    tmp_path, yields the records."""
    path = write(tmp_path / ("d.jsonl" if write is _jsonl else "d.parquet"),
                 records)
    source = HFSource.from_files(str(path), cache_dir=str(tmp_path / "cache"))
    assert _all(source) == records
    assert source.name == str(path)


def test_hf_load_from_disk(tmp_path):
    """`save_to_disk` then `load_from_disk` (a DatasetDict needs a split)."""
    datasets.Dataset.from_list(RECORDS).save_to_disk(tmp_path / "single")
    assert _all(open_source(tmp_path / "single")) == RECORDS
    datasets.DatasetDict({"train": datasets.Dataset.from_list(CHAT_RECORDS)}
                         ).save_to_disk(tmp_path / "dict")
    with pytest.raises(DataFileError, match=r"splits \['train'\]; pass split="):
        HFSource.from_disk(tmp_path / "dict")
    assert _all(HFSource.from_disk(tmp_path / "dict", "train")) == CHAT_RECORDS


def test_hf_dataset_object():
    """An in-memory `datasets.Dataset` is accepted directly."""
    assert _all(open_source(datasets.Dataset.from_list(RECORDS))) == RECORDS


class FakeTfdsDataSource:
    """Stands in for `tfds.data_source(...)`: len and getitem return NumPy
    feature dicts, Text as bytes, a Sequence of dicts as a dict of arrays."""

    def __init__(self, records):
        self._records = records

    def __len__(self):
        return len(self._records)

    def __getitem__(self, index):
        return {k: _as_tfds(v) for k, v in self._records[index].items()}


def _as_tfds(value):
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, float):
        return np.float32(value)
    if value and isinstance(value[0], dict):
        return {k: np.array([m[k].encode() for m in value], dtype=object)
                for k in value[0]}
    return np.array([_as_tfds(v) for v in value])


@pytest.mark.parametrize("records", [
    RECORDS, CHAT_RECORDS,
    [{"prompt": "Pick.", "responses": ["A.", "B.", "C."],
      "scores": [0.5, 2.0, 1.0]}],
    [{"prompt": "Hi", "completion": "Hello.", "label": True}],
])
def test_tfds_decoding(records):
    """TFDS bytes, arrays and sequence-of-dict features decode back to the
    records."""
    source = TfdsSource(FakeTfdsDataSource(records), name="tfds:fake[train]")
    assert _all(source) == records
    assert source.columns == tuple(records[0])


def test_tfds_load_calls_data_source(monkeypatch):
    """`TfdsSource.load` calls `tfds.data_source(name, split=, data_dir=)`
    (a fake module stands in for tensorflow_datasets)."""
    calls = []

    def data_source(name, *, split, data_dir):
        calls.append((name, split, data_dir))
        return FakeTfdsDataSource(RECORDS)

    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        types.SimpleNamespace(data_source=data_source))
    source = TfdsSource.load("my_prefs", split="train[:3]", data_dir="/d")
    assert calls == [("my_prefs", "train[:3]", "/d")]
    assert source.name == "tfds:my_prefs[train[:3]]"
    assert _all(source) == RECORDS


def _fake_tfds(monkeypatch, calls):
    def data_source(name, *, split, data_dir):
        calls.append((name, split, data_dir))
        if name == "missing":
            raise FileNotFoundError(f"no prepared dataset {name}")
        return FakeTfdsDataSource(RECORDS)

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(data_source=data_source))


def test_tfds_name_and_split_from_a_path(monkeypatch):
    """``tfds:NAME/SPLIT`` opens `tfds.data_source(NAME, split=SPLIT)`; NAME may hold a config and version."""
    calls = []
    _fake_tfds(monkeypatch, calls)
    assert _all(open_source("tfds:my_prefs/train")) == RECORDS
    source = open_source("tfds:my_prefs/small:1.0.0/train[:2]")
    assert calls == [("my_prefs", "train", None), ("my_prefs/small:1.0.0", "train[:2]", None)]
    assert source.name == "tfds:my_prefs/small:1.0.0[train[:2]]"


@pytest.mark.parametrize("spec, message", [
    ("tfds:my_prefs", r"tfds:my_prefs: expected tfds:NAME/SPLIT"),
    ("tfds:my_prefs/", r"tfds:my_prefs/: expected tfds:NAME/SPLIT"),
    ("tfds:missing/train", r"tfds:missing\[train\]: tfds cannot load it: FileNotFoundError: no prepared"),
])
def test_bad_tfds_names_give_one_line(monkeypatch, spec, message):
    """A ``tfds:`` value without a split, or one TFDS cannot load, is one message naming it."""
    _fake_tfds(monkeypatch, [])
    with pytest.raises(DataFileError, match=message):
        open_source(spec)


def test_tfds_missing_package_says_how_to_install(monkeypatch):
    """Without tensorflow-datasets the error names the extra to install."""
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"jalign\[tfds\]"):
        TfdsSource.load("my_prefs", split="train")


def test_every_source_gives_the_same_examples(tmp_path, tokenizer):
    """Tokenised examples do not depend on the storage format."""
    sources = [
        _jsonl(tmp_path / "d.jsonl", CHAT_RECORDS),
        _parquet(tmp_path / "d.parquet", CHAT_RECORDS),
        datasets.Dataset.from_list(CHAT_RECORDS),
        TfdsSource(FakeTfdsDataSource(CHAT_RECORDS), name="tfds:fake"),
    ]
    tokenized = [read_preferences(s, tokenizer).examples for s in sources]
    for examples in tokenized[1:]:
        for a, b in zip(tokenized[0], examples, strict=True):
            np.testing.assert_array_equal(a.prompt, b.prompt)
            for ra, rb in zip(a.responses, b.responses, strict=True):
                np.testing.assert_array_equal(ra, rb)


def test_open_source_rejects_unknown_files(tmp_path):
    """Unknown file types are named in the error."""
    (tmp_path / "d.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataFileError, match=r"d\.csv: unknown data file type"):
        open_source(tmp_path / "d.csv")


def test_open_source_rejects_other_objects():
    """An object that is not a known dataset type is a TypeError, even if it
    has column names (a pyarrow Table)."""
    with pytest.raises(TypeError, match="cannot read preference records"):
        open_source(pa.Table.from_pylist(RECORDS))


def test_hf_files_are_validated_like_jsonl(tmp_path, tokenizer):
    """A non-string response read through `datasets` is still reported with
    the file, record and field. (The good record's strings must not parse
    as JSON: `datasets` gives a mixed-type column its `Json` feature, which
    decodes a string such as " 5." into 5.0.)"""
    path = _jsonl(tmp_path / "mixed.jsonl", RECORDS[1:2] + [
        {**RECORDS[2], "chosen": 5}])
    source = HFSource.from_files(str(path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(MalformedRecordError,
                       match=r"mixed\.jsonl: record 1: field 'chosen'"):
        read_preferences(source, tokenizer)


def test_jsonl_byte_order_mark_is_accepted(tmp_path):
    """A UTF-8 BOM (as some editors write) does not make record 0 bad."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _jsonl(tmp_path / "plain.jsonl", RECORDS).read_bytes())
    source = JsonlSource(path)
    assert _all(source) == RECORDS
    assert source.columns == ("prompt", "chosen", "rejected")


def test_jsonl_columns_are_the_union_of_keys(tmp_path):
    """Columns come from every record, not the first one alone."""
    path = _jsonl(tmp_path / "d.jsonl", [{"chosen": "a", "rejected": "b"},
                                         {**RECORDS[0], "id": 3}])
    assert JsonlSource(path).columns == ("chosen", "rejected", "prompt", "id")
