"""The malformed-data corpus of test_data_corpus.py: good records, and each
malformed kind with the field and reason it must be reported under.

- JSONL_KINDS: one bad record (a dict, or a raw line as str or bytes) to
  write at index 2 of a JSONL file among good ones.
- COLUMNAR_KINDS: the same for Parquet and `datasets` directories, where a
  bad value must fit the column's type (or a callable builds the table).
- WHOLE_COLUMN_KINDS: typed columns whose every value has the wrong type.
- FILE_KINDS: files that are bad as a whole, with the message they must get.

The expected field and reason of each kind are written by hand from its
defect and the reasons in jalign.data.validation. Everything is generated
into tmp_path; no binary file is committed.
"""

import dataclasses
import json
from typing import Any, Callable

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from jalign.data import Tokenization

datasets.disable_progress_bars()

PAIR = {"prompt": "What is 2 + 3?", "chosen": " 5.", "rejected": " 6."}
CHAT = {"prompt": [{"role": "user", "content": "Sky colour?"}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Green."}]}
RANKED = {"prompt": "Pick one.", "responses": ["A.", "B.", "C."],
          "scores": [1.0, 0.0, 2.0]}
UNPAIRED = {"prompt": "Hi", "completion": "Hello.", "label": True}
SCORED = {**PAIR, "p": 0.8, "score_chosen": 8.0, "score_rejected": 2.0,
          "other_rewards_chosen": [1.0, 0.0], "other_rewards_rejected": [0.0, 1.0]}
SCORED_OPTIONS = {"preference_field": "p", "labels": ("score", "other_rewards")}
IMPLICIT = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
IMPLICIT_CHAT = {"chosen": CHAT["prompt"] + CHAT["chosen"],
                 "rejected": CHAT["prompt"] + CHAT["rejected"]}
LONG = "word " * 40


def _user(text):
    return [{"role": "user", "content": text}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


# Chat templates of the fixture's form that fail on some records: a Jinja
# raise_exception for the content "boom", and a prefix that changes when the
# last message says "odd" (so prompt + response does not start with the prompt).
STRICT_TEMPLATE = (
    "{% if messages[-1]['content'] == 'odd' %}ODD{% endif %}"
    "{% for m in messages %}{% if m['content'] == 'boom' %}"
    "{{ raise_exception('no boom here') }}{% endif %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@dataclasses.dataclass(frozen=True)
class Kind:
    """good: the record written at 0, 1, 3; bad: the record at 2 (a dict; for
    JSONL also a raw line, str or bytes; for Parquet / datasets also a
    callable(good) -> pyarrow Table of four rows)."""
    good: Any
    bad: Any
    field: str | None
    reason: str
    options: dict = dataclasses.field(default_factory=dict)


def _deep(n):
    return "[" * n + "]" * n


def _bad_string_table(good, column, raw):
    """Four rows of `good` with `column` of row 2 replaced by raw bytes that
    are not valid UTF-8, in a column typed string (Arrow does not check)."""
    values = [good[column].encode()] * 4
    values[2] = raw
    data = b"".join(values)
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + len(v))
    array = pa.Array.from_buffers(pa.string(), 4, [
        None, pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]),
        pa.py_buffer(data)])
    table = pa.Table.from_pylist([good] * 4)
    return table.set_column(table.column_names.index(column), column, array)


JSONL_KINDS = {
    # The line does not parse.
    "truncated_json_line": Kind(PAIR, '{"prompt": "Hi", "chosen": ', None, "unparseable"),
    "json_array_line": Kind(PAIR, '["Hi", " a", " b"]', None, "unparseable"),
    "json_string_line": Kind(PAIR, '"just a string"', None, "unparseable"),
    "json_number_line": Kind(PAIR, "42", None, "unparseable"),
    "json_null_line": Kind(PAIR, "null", None, "unparseable"),
    "invalid_utf8_bytes": Kind(PAIR, b'{"prompt": "\xff\xfe", "chosen": " a", "rejected": " b"}',
                               None, "unparseable"),
    "nesting_100k_deep": Kind(PAIR, _deep(100_000), None, "unparseable"),
    "nesting_100k_deep_in_field": Kind(
        PAIR, '{"prompt": ' + _deep(100_000) + ', "chosen": " a", "rejected": " b"}',
        None, "unparseable"),
    "integer_of_5000_digits": Kind(
        SCORED, json.dumps(SCORED)[:-1] + ', "x": ' + "7" * 5000 + "}", None, "unparseable",
        SCORED_OPTIONS),
    "duplicate_key": Kind(PAIR, '{"prompt": "Hi", "chosen": " a", "chosen": " b", '
                                '"rejected": " c"}', None, "unparseable"),
    "duplicate_key_in_message": Kind(
        CHAT, json.dumps(CHAT).replace('"role": "user"', '"role": "user", "role": "system"'),
        None, "unparseable"),
    "trailing_garbage": Kind(PAIR, json.dumps(PAIR) + " xyz", None, "unparseable"),
    "two_objects_on_a_line": Kind(PAIR, json.dumps(PAIR) * 2, None, "unparseable"),
    "python_repr_quotes": Kind(PAIR, str(PAIR), None, "unparseable"),
    "raw_control_char_in_string": Kind(
        PAIR, '{"prompt": "a\x01b", "chosen": " a", "rejected": " b"}', None, "unparseable"),
    "bom_after_line_1": Kind(PAIR, "\ufeff" + json.dumps(PAIR), None, "unparseable"),
    # Missing, null and empty fields.
    "missing_rejected": Kind(PAIR, {"prompt": "Hi", "chosen": " a"}, "rejected", "missing_field"),
    "missing_prompt": Kind(PAIR, {"chosen": " a", "rejected": " b"}, "prompt", "missing_field"),
    "null_chosen": Kind(PAIR, {**PAIR, "chosen": None}, "chosen", "missing_field"),
    "null_prompt": Kind(PAIR, {**PAIR, "prompt": None}, "prompt", "missing_field"),
    "empty_string_chosen": Kind(PAIR, {**PAIR, "chosen": ""}, "chosen", "empty_response"),
    "whitespace_rejected": Kind(PAIR, {**PAIR, "rejected": " \n\t "}, "rejected",
                                "empty_response"),
    "empty_messages": Kind(CHAT, {**CHAT, "rejected": []}, "rejected", "empty_response"),
    "empty_message_content": Kind(CHAT, {**CHAT, "chosen": _assistant("  ")}, "chosen",
                                  "empty_response"),
    # Wrong types per field, and nested wrong types.
    "chosen_is_int": Kind(PAIR, {**PAIR, "chosen": 5}, "chosen", "wrong_type"),
    "chosen_is_bool": Kind(PAIR, {**PAIR, "chosen": True}, "chosen", "wrong_type"),
    "chosen_is_object": Kind(PAIR, {**PAIR, "chosen": {"text": " a"}}, "chosen", "wrong_type"),
    "prompt_is_number": Kind(PAIR, {**PAIR, "prompt": 3.5}, "prompt", "wrong_type"),
    "prompt_list_of_strings": Kind(PAIR, {**PAIR, "prompt": ["Hi"]}, "prompt", "wrong_type"),
    "string_prompt_chat_responses": Kind(CHAT, {**CHAT, "prompt": "Sky?"}, "prompt", "wrong_type"),
    "chat_chosen_string_rejected": Kind(CHAT, {**CHAT, "rejected": "Green."}, "rejected",
                                        "wrong_type"),
    "message_not_an_object": Kind(CHAT, {**CHAT, "prompt": ["Hi"]}, "prompt[0]", "wrong_type"),
    "message_nested_list": Kind(CHAT, {**CHAT, "chosen": [_assistant("a")]}, "chosen[0]",
                                "wrong_type"),
    "message_missing_role": Kind(CHAT, {**CHAT, "chosen": [{"content": "a"}]},
                                 "chosen[0].role", "wrong_type"),
    "message_missing_content": Kind(CHAT, {**CHAT, "chosen": [{"role": "assistant"}]},
                                    "chosen[0].content", "wrong_type"),
    "message_null_role": Kind(CHAT, {**CHAT, "prompt": [{"role": None, "content": "Hi"}]},
                              "prompt[0].role", "wrong_type"),
    "message_content_is_list": Kind(
        CHAT, {**CHAT, "chosen": [{"role": "assistant", "content": [{"type": "text"}]}]},
        "chosen[0].content", "wrong_type"),
    "message_content_is_number": Kind(
        CHAT, {**CHAT, "prompt": [{"role": "user", "content": 7}]}, "prompt[0].content",
        "wrong_type"),
    "unknown_chat_role": Kind(CHAT, {**CHAT, "prompt": [{"role": "robot", "content": "Hi"}]},
                              "prompt[0].role", "wrong_type"),
    "user_role_in_response": Kind(CHAT, {**CHAT, "chosen": _user("Blue.")}, "chosen[0].role",
                                  "wrong_type"),
    "system_role_in_response": Kind(
        CHAT, {**CHAT, "rejected": [{"role": "system", "content": "x"}]}, "rejected[0].role",
        "wrong_type"),
    # Text that is not Unicode.
    "lone_surrogate_prompt": Kind(PAIR, '{"prompt": "\\ud800", "chosen": " a", "rejected": " b"}',
                                  "prompt", "invalid_text"),
    "lone_low_surrogate_response": Kind(
        PAIR, '{"prompt": "Hi", "chosen": " a\\udfff", "rejected": " b"}', "chosen",
        "invalid_text"),
    "lone_surrogate_message": Kind(
        CHAT, json.dumps({**CHAT, "prompt": _user("x")}).replace("x", "\\ud800"),
        "prompt[0].content", "invalid_text"),
    "lone_surrogate_role": Kind(
        CHAT, json.dumps({**CHAT, "prompt": [{"role": "x", "content": "Hi"}]}).replace(
            '"x"', '"\\udc00"'), "prompt[0].role", "invalid_text"),
    # Identical and duplicate responses.
    "identical_chosen_rejected": Kind(PAIR, {**PAIR, "rejected": " 5."}, "rejected",
                                      "identical_responses"),
    "identical_chat_responses": Kind(CHAT, {**CHAT, "rejected": CHAT["chosen"]}, "rejected",
                                     "identical_responses"),
    "duplicate_responses_scored_differently": Kind(
        RANKED, {**RANKED, "responses": ["A.", "B.", "A."]}, "responses[2]",
        "identical_responses"),
    "all_ranked_responses_identical": Kind(
        RANKED, {**RANKED, "responses": ["A."] * 3, "scores": [1, 1, 1]}, "responses",
        "identical_responses"),
    # Ranked lists: counts and scores.
    "scores_fewer_than_responses": Kind(RANKED, {**RANKED, "scores": [1, 0]}, "scores",
                                        "response_count"),
    "one_response": Kind(RANKED, {**RANKED, "responses": ["A."], "scores": [1]}, "responses",
                         "response_count"),
    "more_responses_than_dataset_G": Kind(
        RANKED, {**RANKED, "responses": ["A.", "B.", "C.", "D."], "scores": [4, 3, 2, 1]},
        "responses", "response_count"),
    "responses_is_string": Kind(RANKED, {**RANKED, "responses": "A. B. C."}, "responses",
                                "wrong_type"),
    "scores_is_number": Kind(RANKED, {**RANKED, "scores": 3}, "scores", "wrong_type"),
    "score_is_string": Kind(RANKED, {**RANKED, "scores": [1, "high", 0]}, "scores[1]",
                            "wrong_type"),
    "score_is_bool": Kind(RANKED, {**RANKED, "scores": [1, True, 0]}, "scores[1]", "wrong_type"),
    "score_is_null": Kind(RANKED, {**RANKED, "scores": [None, 1, 0]}, "scores[0]", "wrong_type"),
    "score_is_nested_list": Kind(RANKED, {**RANKED, "scores": [[1], 1, 0]}, "scores[0]",
                                 "wrong_type"),
    "score_nan": Kind(RANKED, json.dumps(RANKED).replace("1.0", "NaN"), "scores[0]", "wrong_type"),
    "score_infinity": Kind(RANKED, json.dumps(RANKED).replace("2.0", "Infinity"), "scores[2]",
                           "wrong_type"),
    "score_minus_infinity": Kind(RANKED, json.dumps(RANKED).replace("0.0", "-Infinity"),
                                 "scores[1]", "wrong_type"),
    "score_1e400_overflows_to_inf": Kind(RANKED, json.dumps(RANKED).replace("0.0", "1e400"),
                                         "scores[1]", "wrong_type"),
    "score_401_digit_integer": Kind(RANKED, json.dumps(RANKED).replace("0.0", "9" * 401),
                                    "scores[1]", "wrong_type"),
    "score_beyond_float32": Kind(RANKED, {**RANKED, "scores": [1, 1e39, 0]}, "scores[1]",
                                 "wrong_type"),
    "empty_response_in_list": Kind(RANKED, {**RANKED, "responses": ["A.", "", "C."]},
                                   "responses[1]", "empty_response"),
    # Unpaired labels.
    "label_is_string": Kind(UNPAIRED, {**UNPAIRED, "label": "yes"}, "label", "wrong_type"),
    "label_is_int": Kind(UNPAIRED, {**UNPAIRED, "label": 1}, "label", "wrong_type"),
    "label_is_null": Kind(UNPAIRED, {**UNPAIRED, "label": None}, "label", "missing_field"),
    "empty_completion": Kind(UNPAIRED, {**UNPAIRED, "completion": ""}, "completion",
                             "empty_response"),
    # Label fields read for the objective.
    "preference_above_1": Kind(SCORED, {**SCORED, "p": 1.5}, "p", "wrong_type", SCORED_OPTIONS),
    "preference_negative": Kind(SCORED, {**SCORED, "p": -0.1}, "p", "wrong_type", SCORED_OPTIONS),
    "preference_nan": Kind(SCORED, json.dumps(SCORED).replace("0.8", "NaN"), "p", "wrong_type",
                           SCORED_OPTIONS),
    "preference_is_string": Kind(SCORED, {**SCORED, "p": "0.8"}, "p", "wrong_type",
                                 SCORED_OPTIONS),
    "score_chosen_null": Kind(SCORED, {**SCORED, "score_chosen": None}, "score_chosen",
                              "missing_field", SCORED_OPTIONS),
    "score_rejected_401_digits": Kind(SCORED, {**SCORED, "score_rejected": 10 ** 400},
                                      "score_rejected", "wrong_type", SCORED_OPTIONS),
    "other_rewards_lengths_differ": Kind(SCORED, {**SCORED, "other_rewards_rejected": [0.0]},
                                         "other_rewards_rejected", "wrong_type", SCORED_OPTIONS),
    "other_rewards_empty": Kind(SCORED, {**SCORED, "other_rewards_chosen": []},
                                "other_rewards_chosen", "wrong_type", SCORED_OPTIONS),
    "other_rewards_nested": Kind(SCORED, {**SCORED, "other_rewards_chosen": [[1.0], 0.0]},
                                 "other_rewards_chosen[0]", "wrong_type", SCORED_OPTIONS),
    # Implicit prompts (files without a prompt column).
    "implicit_prompt_no_shared_prefix": Kind(IMPLICIT, {"chosen": " 5.", "rejected": " 6."},
                                             "prompt", "missing_field"),
    "implicit_chat_no_shared_prefix": Kind(
        IMPLICIT_CHAT, {"chosen": _user("a") + _assistant("b"),
                        "rejected": _user("c") + _assistant("d")}, "prompt", "missing_field"),
    "implicit_chat_user_turn_in_response": Kind(
        IMPLICIT_CHAT, {"chosen": _user("Q") + _user("more") + _assistant("b"),
                        "rejected": _user("Q") + _assistant("d")}, "chosen[0].role",
        "wrong_type"),
    # The chat template fails, or the tokenizer cannot split prompt from response.
    "chat_template_raises": Kind(CHAT, {**CHAT, "prompt": _user("boom")}, "prompt",
                                 "chat_template", {"tokenizer": "strict"}),
    "chat_template_raises_on_response": Kind(CHAT, {**CHAT, "rejected": _assistant("boom")},
                                             "rejected", "chat_template", {"tokenizer": "strict"}),
    "chat_template_not_a_prefix": Kind(CHAT, {**CHAT, "chosen": _assistant("odd")}, "chosen",
                                       "chat_template", {"tokenizer": "strict"}),
    # Too long for the budget, under each truncation policy.
    "too_long_drop": Kind(PAIR, {**PAIR, "chosen": LONG}, "chosen", "too_long",
                          {"tokenization": Tokenization(max_length=32, truncation="drop")}),
    "too_long_prompt_drop": Kind(PAIR, {**PAIR, "prompt": LONG}, "prompt", "too_long",
                                 {"tokenization": Tokenization(max_length=64,
                                                               max_prompt_length=16,
                                                               truncation="drop")}),
    "too_long_keep_end": Kind(PAIR, {**PAIR, "rejected": LONG}, "rejected", "too_long",
                              {"tokenization": Tokenization(max_length=32,
                                                            truncation="keep_end")}),
    "too_long_keep_start": Kind(PAIR, {**PAIR, "prompt": LONG}, "prompt", "too_long",
                                {"tokenization": Tokenization(max_length=32,
                                                              truncation="keep_start")}),
    "identical_after_truncation": Kind(
        {"prompt": "Q", "chosen": "Yes.", "rejected": "No."},
        {"prompt": "Q", "chosen": " The capital of France is Paris.",
         "rejected": " The capital of France is Lyon."}, "rejected", "identical_responses",
        {"tokenization": Tokenization(max_length=4, truncation="keep_start")}),
}

COLUMNAR_KINDS = {
    "null_rejected": Kind(PAIR, {**PAIR, "rejected": None}, "rejected", "missing_field"),
    "null_prompt": Kind(PAIR, {**PAIR, "prompt": None}, "prompt", "missing_field"),
    "empty_string_chosen": Kind(PAIR, {**PAIR, "chosen": ""}, "chosen", "empty_response"),
    "identical_chosen_rejected": Kind(PAIR, {**PAIR, "rejected": " 5."}, "rejected",
                                      "identical_responses"),
    "invalid_utf8_in_string_column": Kind(
        PAIR, lambda good: _bad_string_table(good, "prompt", b"\xff\xfe"), "prompt",
        "unparseable"),
    "surrogate_bytes_in_string_column": Kind(
        PAIR, lambda good: _bad_string_table(good, "chosen", b" \xed\xa0\x80"), "chosen",
        "unparseable"),
    "score_nan": Kind(RANKED, {**RANKED, "scores": [1.0, float("nan"), 0.0]}, "scores[1]",
                      "wrong_type"),
    "score_inf": Kind(RANKED, {**RANKED, "scores": [float("inf"), 1.0, 0.0]}, "scores[0]",
                      "wrong_type"),
    "score_beyond_float32": Kind(RANKED, {**RANKED, "scores": [1.0, 0.0, 1e39]}, "scores[2]",
                                 "wrong_type"),
    "score_null_in_list": Kind(RANKED, {**RANKED, "scores": [1.0, None, 0.0]}, "scores[1]",
                               "wrong_type"),
    "scores_fewer_than_responses": Kind(RANKED, {**RANKED, "scores": [1.0, 0.0]}, "scores",
                                        "response_count"),
    "duplicate_responses_scored_differently": Kind(
        RANKED, {**RANKED, "responses": ["A.", "A.", "C."]}, "responses[1]",
        "identical_responses"),
    "label_null": Kind(UNPAIRED, {**UNPAIRED, "label": None}, "label", "missing_field"),
    "preference_above_1": Kind(SCORED, {**SCORED, "p": 2.0}, "p", "wrong_type", SCORED_OPTIONS),
    "message_role_null": Kind(CHAT, {**CHAT, "chosen": [{"role": None, "content": "a"}]},
                              "chosen[0].role", "wrong_type"),
    "unknown_chat_role": Kind(CHAT, {**CHAT, "prompt": [{"role": "robot", "content": "Hi"}]},
                              "prompt[0].role", "wrong_type"),
    "user_role_in_response": Kind(CHAT, {**CHAT, "rejected": _user("Green.")},
                                  "rejected[0].role", "wrong_type"),
    "empty_messages": Kind(CHAT, {**CHAT, "chosen": []}, "chosen", "empty_response"),
    "too_long_drop": Kind(PAIR, {**PAIR, "chosen": LONG}, "chosen", "too_long",
                          {"tokenization": Tokenization(max_length=32, truncation="drop")}),
}

# Typed columns: every record has the wrong type. (storage, rows or table, field, reason)
WHOLE_COLUMN_KINDS = {
    "parquet_chosen_int_column": ("parquet", [{**PAIR, "chosen": i} for i in range(4)],
                                  "chosen", "wrong_type"),
    "parquet_chosen_binary_column": ("parquet", [{**PAIR, "chosen": b" a"}] * 4, "chosen",
                                     "wrong_type"),
    "parquet_label_int_column": ("parquet", [{**UNPAIRED, "label": 1}] * 4, "label",
                                 "wrong_type"),
    "parquet_scores_string_column": ("parquet", [{**RANKED, "scores": "1,0,2"}] * 4, "scores",
                                     "wrong_type"),
    "datasets_label_int_column": ("datasets", [{**UNPAIRED, "label": 0}] * 4, "label",
                                  "wrong_type"),
    "datasets_prompt_struct_column": ("datasets", [{**PAIR, "prompt": {"text": "Hi"}}] * 4,
                                      "prompt", "wrong_type"),
}


def write_jsonl(path, good, bad):
    """Records 0, 1, 3 good; record 2 bad on line 4 (line 2 is blank)."""
    line = (bad if isinstance(bad, bytes) else bad.encode("utf-8", "surrogatepass")
            if isinstance(bad, str) else json.dumps(bad).encode())
    good = json.dumps(good).encode()
    path.write_bytes(b"\n".join([good, b"", good, line, good]) + b"\n")
    return path


def table(good, bad):
    return bad(good) if callable(bad) else pa.Table.from_pylist([good, good, bad, good])


def write_parquet(path, table):
    pq.write_table(table, path)
    return path


def write_datasets(path, table):
    datasets.Dataset(table).save_to_disk(str(path))
    return path


WRITERS = {"parquet": write_parquet, "datasets": write_datasets}


def _saved(tmp_path, rows, split=None):
    path = tmp_path / "saved"
    dataset = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(
        {k: [] for k in PAIR})
    (datasets.DatasetDict({split: dataset}) if split else dataset).save_to_disk(str(path))
    return path


def _file(name, content):
    """A writer of `content` (str or bytes) to tmp_path/name."""
    def write(tmp_path):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path
    return write


def _truncated_parquet(tmp_path):
    whole = write_parquet(tmp_path / "whole.parquet", pa.Table.from_pylist([PAIR] * 50))
    path = tmp_path / "torn.parquet"
    path.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    return path


def _torn_dataset(tmp_path):
    path = _saved(tmp_path, [PAIR] * 4)
    arrow = next(p for p in path.iterdir() if p.suffix == ".arrow")
    arrow.write_bytes(arrow.read_bytes()[:arrow.stat().st_size // 2])
    return path


def _lines(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


# name: (make(tmp_path) -> path, a regex the message must match after the
# path, read options)
FILE_KINDS: dict[str, tuple[Callable, str, dict]] = {
    "empty_jsonl": (_file("e.jsonl", ""), "is empty", {}),
    "blank_lines_only": (_file("b.jsonl", "\n  \n\t\n\n"), "only blank lines", {}),
    "bom_only": (_file("bom.jsonl", "\ufeff"), "is empty", {}),
    "utf16_jsonl": (_file("u16.jsonl", _lines(PAIR).encode("utf-16")), "UTF-16", {}),
    "no_line_is_an_object": (_file("g.jsonl", "garbage\n[1]\n"),
                             r"no line is a JSON object record; first: record 0 \(line 1\)", {}),
    "json_array_file": (_file("arr.jsonl", "[\n" + json.dumps(PAIR) + ",\n" + json.dumps(PAIR)
                              + "\n]\n"), "is a JSON array, not JSON lines", {}),
    "unknown_columns": (_file("q.jsonl", _lines({"question": "Q", "answer": "A"})),
                        r"cannot tell the preference format from columns \['answer', "
                        r"'question'\]", {}),
    "prompt_column_misspelt": (
        _file("t.jsonl", _lines(*[{"promt": "What is 2 + 3?", "chosen": " 5", "rejected": " 6"}]
                                * 3)),
        r"no 'prompt' column but has 'promt': did you mean 'prompt'\?", {}),
    "rejected_column_misspelt": (
        _file("r.jsonl", _lines({"prompt": "Q", "chosen": " a", "rejcted": " b"})),
        r"cannot tell.*did you mean 'rejected' for 'rejcted'\?", {}),
    "chosen_misspelt_no_kind": (
        _file("c.jsonl", _lines({"prompt": "Q", "chossen": " a", "rejected": " b"})),
        r"cannot tell.*did you mean 'chosen' for 'chossen'\?", {}),
    "missing_file": (lambda tmp_path: tmp_path / "absent.jsonl", "no such file", {}),
    "unknown_extension": (_file("d.csv", "prompt,chosen,rejected\n"),
                          "unknown data file type '.csv'", {}),
    "not_a_saved_dataset_dir": (lambda tmp_path: tmp_path, "cannot load it as a saved datasets directory",
                                {}),
    "not_parquet": (_file("x.parquet", b"PAR1 but not really"), "not a readable Parquet file",
                    {}),
    "truncated_parquet": (_truncated_parquet, "not a readable Parquet file", {}),
    "empty_parquet": (lambda tmp_path: write_parquet(
        tmp_path / "empty.parquet", pa.Table.from_pylist([PAIR]).slice(0, 0)), "has no records",
        {}),
    "empty_saved_dataset": (lambda tmp_path: _saved(tmp_path, []), "has no records", {}),
    "torn_saved_dataset": (_torn_dataset, "cannot load it as a saved datasets directory", {}),
    "saved_dict_without_split": (lambda tmp_path: _saved(tmp_path, [PAIR] * 2, split="train"),
                                 r"holds splits \['train'\]", {}),
    "kind_columns_absent": (_file("k.jsonl", _lines(PAIR)),
                            r"ranked records need columns \['responses', 'scores'\]",
                            {"kind": "ranked"}),
    "preference_column_absent": (_file("p.jsonl", _lines(PAIR)),
                                 r"need columns \['p_chosen'\]",
                                 {"preference_field": "p_chosen"}),
    "label_columns_absent": (_file("l.jsonl", _lines(PAIR)),
                             r"need columns \['score_chosen', 'score_rejected'\]",
                             {"labels": ("score",)}),
}
