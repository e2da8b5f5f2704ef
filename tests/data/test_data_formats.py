"""Record formats normalise to hand-written Examples.

Expected prompts, responses and labels are written out by hand from the TRL
dataset-format documentation (standard, implicit prompt, conversational,
unpaired) and this package's ranked-list convention (best first).
"""

import numpy as np
import pytest

from jalign.data import DataFileError, Example, RecordFormat, detect_kind


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


def _read(record, **options):
    return RecordFormat.for_columns(tuple(record), **options).read(record)


def _assert_example(actual, expected):
    assert (actual.kind, actual.prompt, actual.responses,
            actual.response_fields) == (expected.kind, expected.prompt,
                                        expected.responses,
                                        expected.response_fields)
    assert actual.labels.keys() == expected.labels.keys()
    for key, value in expected.labels.items():
        np.testing.assert_array_equal(actual.labels[key], value)


def test_standard_pair():
    """TRL standard preference: strings pass through, hard preference 1."""
    example = _read({"prompt": "The sky is", "chosen": " blue.",
                     "rejected": " green."})
    _assert_example(example, Example(
        "paired", "The sky is", (" blue.", " green."), ("chosen", "rejected"),
        {"preference": 1.0}))
    assert not example.conversational


def test_standard_implicit_prompt():
    """TRL's implicit-prompt example: the shared prefix is the prompt and the
    space before the first difference stays with the responses."""
    example = _read({"chosen": "The sky is blue.",
                     "rejected": "The sky is green."})
    _assert_example(example, Example(
        "paired", "The sky is", (" blue.", " green."), ("chosen", "rejected"),
        {"preference": 1.0}))


def test_conversational_pair():
    """TRL conversational preference: message lists pass through."""
    record = {"prompt": [_user("What color is the sky?")],
              "chosen": [_assistant("It is blue.")],
              "rejected": [_assistant("It is green.")]}
    example = _read(record)
    _assert_example(example, Example(
        "paired", [_user("What color is the sky?")],
        ([_assistant("It is blue.")], [_assistant("It is green.")]),
        ("chosen", "rejected"), {"preference": 1.0}))
    assert example.conversational


def test_conversational_implicit_prompt():
    """Whole conversations: the shared leading messages are the prompt."""
    shared = [_user("Hi"), _assistant("Hello."), _user("Sky colour?")]
    example = _read({"chosen": shared + [_assistant("Blue.")],
                     "rejected": shared + [_assistant("Green.")]})
    _assert_example(example, Example(
        "paired", shared, ([_assistant("Blue.")], [_assistant("Green.")]),
        ("chosen", "rejected"), {"preference": 1.0}))


def test_soft_preference():
    """A named probability field becomes the 'preference' label."""
    example = _read({"prompt": "p", "chosen": "a", "rejected": "b",
                     "p_chosen": 0.75}, preference_field="p_chosen")
    _assert_example(example, Example("paired", "p", ("a", "b"),
                                      ("chosen", "rejected"),
                                      {"preference": 0.75}))


def test_ranked_sorted_best_first():
    """Ranked list [B:1, C:3, A:2] -> [C, A, B] with scores [3, 2, 1]; the
    fields name each response's original position."""
    example = _read({"prompt": "Rank", "responses": ["B", "C", "A"],
                     "scores": [1, 3, 2.0]})
    _assert_example(example, Example(
        "ranked", "Rank", ("C", "A", "B"),
        ("responses[1]", "responses[2]", "responses[0]"),
        {"score": np.array([3.0, 2.0, 1.0], np.float32)}))


def test_ranked_ties_keep_order_and_duplicates_allowed():
    """Equal scores keep the source order; identical samples are kept."""
    example = _read({"prompt": "Rank", "responses": ["x", "x", "y"],
                     "scores": [0, 0, 1]})
    assert example.responses == ("y", "x", "x")
    assert example.response_fields == ("responses[2]", "responses[0]",
                                       "responses[1]")


@pytest.mark.parametrize("label, desirable", [(True, 1.0), (False, 0.0)])
def test_unpaired(label, desirable):
    """TRL unpaired preference: thumbs up/down -> 'desirable' [1]."""
    example = _read({"prompt": "The sky is", "completion": " blue.",
                     "label": label})
    _assert_example(example, Example(
        "unpaired", "The sky is", (" blue.",), ("completion",),
        {"desirable": np.array([desirable], np.float32)}))


def test_unpaired_conversational():
    """Unpaired records may be conversational too."""
    example = _read({"prompt": [_user("Hi")], "completion": [_assistant("Yo")],
                     "label": False})
    assert example.conversational
    assert example.responses == ([_assistant("Yo")],)


@pytest.mark.parametrize("columns, kind", [
    (("prompt", "chosen", "rejected"), "paired"),
    (("chosen", "rejected"), "paired"),
    (("prompt", "responses", "scores"), "ranked"),
    (("prompt", "completion", "label"), "unpaired"),
])
def test_detect_kind(columns, kind):
    """Column names decide the kind, as in TRL's dataset-type table."""
    assert detect_kind(columns) == kind


def test_detect_kind_unknown_columns():
    """Unrecognised columns are an error that lists them."""
    with pytest.raises(ValueError, match=r"\['answer', 'question'\]"):
        detect_kind(("question", "answer"))


def test_detect_kind_names_the_source_and_a_near_miss():
    """The error starts with the source and suggests the misspelt field."""
    with pytest.raises(DataFileError, match=r"^d\.jsonl: cannot tell.*did you mean "
                                            r"'rejected' for 'rejectd'\?"):
        detect_kind(("prompt", "chosen", "rejectd"), source="d.jsonl")


@pytest.mark.parametrize("columns, ignored", [
    (("prompt", "chosen", "rejected"), ()),
    (("id", "prompt", "chosen", "rejected", "score_chosen"), ("id", "score_chosen")),
    (("chosen", "rejected", "source"), ("source",)),
])
def test_check_columns_returns_the_ignored_ones(columns, ignored):
    """Columns the format does not read are returned, in source order."""
    fmt = RecordFormat.for_columns(columns)
    assert fmt.check_columns(columns, "d.jsonl") == ignored


@pytest.mark.parametrize("column", ["promt", "Prompt", "prompts"])
def test_a_misspelt_prompt_column_is_refused(column):
    """Without a prompt column the prompt would be implicit and the misspelt
    column dropped with the question in it; the file is refused instead."""
    columns = (column, "chosen", "rejected")
    fmt = RecordFormat.for_columns(columns)
    assert fmt.implicit_prompt
    with pytest.raises(DataFileError, match=rf"^d\.jsonl: has no 'prompt' column but "
                                            rf"has '{column}'"):
        fmt.check_columns(columns, "d.jsonl")
