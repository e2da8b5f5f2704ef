"""Every malformed-record kind: the error names file, record and field; the
skip policy counts it and keeps the other records.

Each case writes a JSONL file whose record 2 (line 4, after a blank line) is
bad and whose records 0, 1 and 3 are good. The expected field and reason are
written by hand from the record's defect.
"""

import json
import logging
import pathlib

import pytest

from jalign.data import MalformedRecordError, Tokenization, read_preferences

PAIR = {"prompt": "What is 2 + 3?", "chosen": " 5.", "rejected": " 6."}
PAIR_CHAT = {"prompt": [{"role": "user", "content": "Hi"}],
             "chosen": [{"role": "assistant", "content": "Hello."}],
             "rejected": [{"role": "assistant", "content": "Go away."}]}
RANKED = {"prompt": "Pick one.", "responses": ["A.", "B."], "scores": [1, 0]}
UNPAIRED = {"prompt": "Hi", "completion": "Hello.", "label": True}
LONG = "word " * 40

# id: (good record, bad record or raw line, field, reason, read options)
CASES = {
    "missing_field": (PAIR, {"prompt": "Hi", "chosen": " Hello."},
                      "rejected", "missing_field", {}),
    "missing_prompt": (PAIR, {"chosen": " Hi.", "rejected": " Bye."},
                       "prompt", "missing_field", {}),
    "null_field": (PAIR, {**PAIR, "chosen": None}, "chosen", "missing_field",
                   {}),
    "empty_response": (PAIR, {**PAIR, "chosen": "   "}, "chosen",
                       "empty_response", {}),
    "empty_messages": (PAIR_CHAT, {**PAIR_CHAT, "rejected": []}, "rejected",
                       "empty_response", {}),
    "empty_message_content": (
        PAIR_CHAT, {**PAIR_CHAT, "chosen": [{"role": "assistant",
                                             "content": ""}]},
        "chosen", "empty_response", {}),
    "identical": (PAIR, {**PAIR, "rejected": " 5."}, "rejected",
                  "identical_responses", {}),
    "identical_after_truncation": (
        {"prompt": "Q", "chosen": "Yes.", "rejected": "No."},
        {"prompt": "Q", "chosen": " The capital of France is Paris.",
         "rejected": " The capital of France is Lyon."},
        "rejected", "identical_responses",
        {"tokenization": Tokenization(max_length=4, truncation="keep_start")}),
    "non_string": (PAIR, {**PAIR, "chosen": 5}, "chosen", "wrong_type", {}),
    "message_without_content": (
        PAIR_CHAT, {**PAIR_CHAT, "chosen": [{"role": "assistant"}]},
        "chosen[0].content", "wrong_type", {}),
    "message_not_a_dict": (PAIR_CHAT, {**PAIR_CHAT, "prompt": ["Hi"]},
                           "prompt[0]", "wrong_type", {}),
    "mixed_styles": (PAIR_CHAT, {**PAIR_CHAT, "prompt": "Hi"}, "prompt",
                     "wrong_type", {}),
    "label_not_bool": (UNPAIRED, {**UNPAIRED, "label": "yes"}, "label",
                       "wrong_type", {}),
    "preference_out_of_range": (
        {**PAIR, "p": 0.8}, {**PAIR, "p": 1.5}, "p", "wrong_type",
        {"preference_field": "p"}),
    "score_not_number": (RANKED, {**RANKED, "scores": [1, "high"]},
                         "scores[1]", "wrong_type", {}),
    "ranked_count": (RANKED, {**RANKED, "responses": ["A.", "B.", "C."],
                              "scores": [3, 2, 1]},
                     "responses", "response_count", {}),
    "ranked_scores_mismatch": (RANKED, {**RANKED, "scores": [1]}, "scores",
                               "response_count", {}),
    "too_long_drop": (PAIR, {**PAIR, "chosen": LONG}, "chosen", "too_long",
                      {"tokenization": Tokenization(max_length=32, truncation="drop")}),
    "too_long_prompt_drop": (
        PAIR, {**PAIR, "prompt": LONG}, "prompt", "too_long",
        {"tokenization": Tokenization(max_length=64, max_prompt_length=16,
                                   truncation="drop")}),
    "too_long_keep_end": (
        PAIR, {**PAIR, "rejected": LONG}, "rejected", "too_long",
        {"tokenization": Tokenization(max_length=32, truncation="keep_end")}),
    "too_long_keep_start": (
        PAIR, {**PAIR, "prompt": LONG}, "prompt", "too_long",
        {"tokenization": Tokenization(max_length=32, truncation="keep_start")}),
    "unparseable": (PAIR, '{"prompt": "Hi", "chosen": ', None, "unparseable",
                    {}),
    "not_an_object": (PAIR, '["Hi", "Hello"]', None, "unparseable", {}),
}


def _write(tmp_path, good, bad):
    """Records 0, 1, 3 good; record 2 bad on line 4 (line 2 is blank)."""
    bad_line = bad if isinstance(bad, str) else json.dumps(bad)
    lines = [json.dumps(good), "", json.dumps(good), bad_line, json.dumps(good)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("case", CASES)
def test_raise_names_file_record_and_field(case, tmp_path, tokenizer):
    """The default policy raises at record 2, naming its file, index, line,
    field and reason (the expectations are the hand-written CASES entries)."""
    good, bad, field, reason, options = CASES[case]
    path = _write(tmp_path, good, bad)
    with pytest.raises(MalformedRecordError) as error:
        read_preferences(path, tokenizer, **options)
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert str(path) in message
    assert "record 2 (line 4)" in message
    assert f"[{reason}]" in message
    if field is not None:
        assert f"field {field!r}" in message
    assert (error.value.index, error.value.field, error.value.reason) == (
        2, field, reason)


@pytest.mark.parametrize("case", CASES)
def test_skip_counts_the_record(case, tmp_path, tokenizer, caplog):
    """`on_error="skip"` keeps records 0, 1, 3, counts one skip for the
    case's reason, and logs the count."""
    good, bad, _, reason, options = CASES[case]
    path = _write(tmp_path, good, bad)
    with caplog.at_level(logging.WARNING, logger="jalign.data"):
        data = read_preferences(path, tokenizer, on_error="skip", **options)
    report = data.report.as_dict()
    assert {k: report[k] for k in ("source", "total", "kept", "skipped")} == {
        "source": str(path), "total": 4, "kept": 3, "skipped": {reason: 1}}
    assert [e.index for e in data.examples] == [0, 1, 3]
    assert f"{reason}=1" in caplog.text


def test_all_records_bad_is_an_error(tmp_path, tokenizer):
    """Skipping every record leaves nothing to train on: a ValueError that
    carries the counts."""
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**PAIR, "chosen": ""}) + "\n")
    with pytest.raises(ValueError, match="no usable records.*empty_response"):
        read_preferences(path, tokenizer, on_error="skip")


def test_unknown_policy_is_rejected(tokenizer):
    """A typo in on_error fails loudly instead of acting as a default."""
    path = pathlib.Path(__file__).parents[2] / "experiments/data/tiny_pref.jsonl"
    with pytest.raises(ValueError, match="on_error"):
        read_preferences(path, tokenizer, on_error="ignore")
