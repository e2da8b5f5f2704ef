"""The malformed-data corpus (malformed.py), written to tmp_path as JSONL,
Parquet and `datasets` directories (`save_to_disk`): every kind ends in a
clear error or a counted skip, never a raw exception from Python, JSON, Arrow
or the tokenizer (each test asserts the exception's exact type).

- JSONL_KINDS and COLUMNAR_KINDS: one bad record (index 2) among good ones. Under "raise" the
  error is exactly a MalformedRecordError naming the file, "record 2" (with
  its line for JSONL, where line 2 is blank), the field and the reason; under
  "skip" records 0, 1 and 3 are kept and one skip is counted for the reason.
- WHOLE_COLUMN_KINDS: Parquet and `datasets` columns are typed, so a wrong
  type is the whole column's: "raise" names record 0; "skip" counts every
  record, then fails with a DataFileError naming the file (nothing is left).
- FILE_KINDS: the file itself is bad; both policies raise a DataFileError
  whose message starts with the file's name.
"""

import re

import pyarrow as pa
import pytest

from jalign.data import DataFileError, MalformedRecordError, read_preferences
from malformed import (COLUMNAR_KINDS, FILE_KINDS, JSONL_KINDS, STRICT_TEMPLATE,
                       WHOLE_COLUMN_KINDS, WRITERS, table, write_jsonl)


def _read(path, tokenizers, on_error, options):
    """read_preferences' result, or the exception it raised (any type)."""
    options = dict(options)
    tokenizer = tokenizers[options.pop("tokenizer", "plain")]
    try:
        return read_preferences(path, tokenizer, on_error=on_error, **options)
    except Exception as e:  # pylint: disable=broad-except  # the type is the test
        return e


@pytest.fixture(scope="module")
def tokenizers(tokenizer):
    strict = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer,
                                 eos_token="<eos>", pad_token="<pad>",
                                 chat_template=STRICT_TEMPLATE)
    return {"plain": tokenizer, "strict": strict}


def _record_cases():
    for name, kind in JSONL_KINDS.items():
        yield pytest.param("jsonl", kind, id=f"jsonl-{name}")
    for storage in WRITERS:
        for name, kind in COLUMNAR_KINDS.items():
            yield pytest.param(storage, kind, id=f"{storage}-{name}")


RECORD_CASES = list(_record_cases())


def _write_record_case(tmp_path, storage, kind):
    if storage == "jsonl":
        return write_jsonl(tmp_path / "prefs.jsonl", kind.good, kind.bad), "record 2 (line 4)"
    suffix = ".parquet" if storage == "parquet" else ""
    path = tmp_path / f"prefs{suffix}"
    return WRITERS[storage](path, table(kind.good, kind.bad)), "record 2"


def _assert_record_error(error, path, where, field, reason):
    assert type(error) is MalformedRecordError, f"{type(error).__name__}: {error}"
    message = str(error)
    assert message.startswith(f"{path}: {where}:"), message
    assert message.endswith(f"[{reason}]"), message
    if field is not None:
        assert f"field {field!r}" in message, message
    assert (error.field, error.reason) == (field, reason)


@pytest.mark.parametrize("storage, kind", RECORD_CASES)
def test_bad_record_raises_naming_file_record_and_field(storage, kind, tmp_path, tokenizers):
    """on_error="raise": exactly a MalformedRecordError at record 2."""
    path, where = _write_record_case(tmp_path, storage, kind)
    error = _read(path, tokenizers, "raise", kind.options)
    _assert_record_error(error, path, where, kind.field, kind.reason)
    assert error.index == 2


@pytest.mark.parametrize("storage, kind", RECORD_CASES)
def test_bad_record_is_a_counted_skip(storage, kind, tmp_path, tokenizers):
    """on_error="skip": records 0, 1, 3 kept, one skip counted for the reason."""
    path, _ = _write_record_case(tmp_path, storage, kind)
    data = _read(path, tokenizers, "skip", kind.options)
    assert not isinstance(data, Exception), f"{type(data).__name__}: {data}"
    report = data.report.as_dict()
    assert (report["total"], report["kept"], report["skipped"]) == (4, 3, {kind.reason: 1})
    assert [e.index for e in data.examples] == [0, 1, 3]


@pytest.mark.parametrize("name", WHOLE_COLUMN_KINDS)
def test_wrong_column_type_raises_then_skips_every_record(name, tmp_path, tokenizers):
    """A typed column of the wrong type: "raise" names record 0 and the field;
    "skip" counts all four records, then a DataFileError names the file."""
    storage, rows, field, reason = WHOLE_COLUMN_KINDS[name]
    path = WRITERS[storage](tmp_path / ("prefs.parquet" if storage == "parquet" else "prefs"),
                            pa.Table.from_pylist(rows))
    _assert_record_error(_read(path, tokenizers, "raise", {}), path, "record 0", field, reason)
    error = _read(path, tokenizers, "skip", {})
    assert type(error) is DataFileError, f"{type(error).__name__}: {error}"
    assert str(error).startswith(f"{path}: no usable records: skipped {{'{reason}': 4}}")


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("name", FILE_KINDS)
def test_bad_file_is_an_error_naming_the_file(name, on_error, tmp_path, tokenizers):
    """Whatever on_error says: exactly a DataFileError starting with the path."""
    make, pattern, options = FILE_KINDS[name]
    path = make(tmp_path)
    error = _read(path, tokenizers, on_error, options)
    assert type(error) is DataFileError, f"{type(error).__name__}: {error}"
    assert str(error).startswith(f"{path}: "), str(error)
    assert error.source == str(path)
    assert re.search(pattern, error.problem), error.problem


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_empty_path_is_a_file_error(on_error, tokenizers):
    """data.train = '' is refused as such, not read as a dataset of no columns."""
    error = _read("", tokenizers, on_error, {})
    assert type(error) is DataFileError and str(error) == "the data path is empty"


ISSUE_KINDS = ("jsonl-lone_surrogate_prompt", "jsonl-nesting_100k_deep",
               "jsonl-score_401_digit_integer", "jsonl-unknown_chat_role",
               "jsonl-user_role_in_response", "jsonl-chat_template_raises",
               "jsonl-chat_template_not_a_prefix")
ISSUE_FILE_KINDS = ("empty_jsonl", "blank_lines_only", "unknown_columns",
                    "prompt_column_misspelt")


def test_the_corpus_covers_the_issue():
    """At least 60 malformed kinds over the three storages, including every
    kind issue 13 names (the empty path has its own test above)."""
    ids = [p.id for p in RECORD_CASES]
    kinds = len(ids) + len(WHOLE_COLUMN_KINDS) + len(FILE_KINDS) + 1
    assert kinds >= 60, kinds
    assert {i.split("-")[0] for i in ids} == {"jsonl", "parquet", "datasets"}
    assert set(ISSUE_KINDS) <= set(ids) and set(ISSUE_FILE_KINDS) <= set(FILE_KINDS)
