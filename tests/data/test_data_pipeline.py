"""End to end on the shipped tiny data: shapes, epoch coverage, sharding,
and grain iterator state restored mid-epoch."""

import json
import pathlib

import numpy as np
import pytest

from jalign.data import Tokenization, preference_batches, read_preferences

DATA_DIR = pathlib.Path(__file__).parents[2] / "experiments" / "data"
STANDARD = DATA_DIR / "tiny_pref.jsonl"
CHAT = DATA_DIR / "tiny_pref_chat.jsonl"


@pytest.fixture(scope="module")
def standard(tokenizer):
    return read_preferences(STANDARD, tokenizer,
                            tokenization=Tokenization(max_length=64))


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("prompt_tokens", "response_tokens", "response_mask",
                    "record_index"):
            np.testing.assert_array_equal(x[key], y[key])


def test_shipped_files_read_cleanly(tokenizer):
    """The shipped files have 40 and 30 valid records (counted by hand)."""
    assert read_preferences(STANDARD, tokenizer).report.as_dict()[
        "kept"] == 40
    chat = read_preferences(CHAT, tokenizer)
    assert chat.report.as_dict() == {"source": str(CHAT), "total": 30,
                                     "kept": 30, "skipped": {}, "truncated": {},
                                     "ignored_columns": []}


def test_batch_shapes_and_epoch_coverage(standard):
    """40 pairs in batches of 16: shapes [B, P], [B, G, R] with bucketed P
    and R; one epoch visits every record once; the last batch is filled."""
    batches = list(preference_batches(standard, batch_size=16, seed=3))
    assert len(batches) == 3
    for batch in batches:
        B, P = batch["prompt_tokens"].shape
        assert B == 16 and P in (16, 32, 64)
        assert batch["response_tokens"].shape[:2] == (16, 2)
        assert batch["response_tokens"].shape[2] in (16, 32, 64)
        assert batch["response_mask"].shape == batch["response_tokens"].shape
        assert batch["labels"]["preference"].shape == (16,)
    index = np.concatenate([b["record_index"] for b in batches])
    assert sorted(index[index >= 0]) == list(range(40))
    weights = np.concatenate([b["labels"]["example_weight"] for b in batches])
    np.testing.assert_array_equal(weights, (index >= 0).astype(np.float32))


def test_shuffle_depends_on_seed_and_epoch(standard):
    """Same seed, same order; another seed or the next epoch reorders."""
    def order(seed, epochs=1):
        ds = preference_batches(standard, batch_size=40, seed=seed,
                                num_epochs=epochs)
        return [tuple(b["record_index"]) for b in ds]
    assert order(0) == order(0)
    assert order(0) != order(1)
    two_epochs = order(0, epochs=2)
    assert two_epochs[0] == order(0)[0] and two_epochs[1] != two_epochs[0]


def test_drop_remainder(standard):
    """drop_remainder drops the last partial batch instead of filling it."""
    batches = list(preference_batches(standard, batch_size=16,
                                      drop_remainder=True))
    assert len(batches) == 2
    assert all((b["record_index"] >= 0).all() for b in batches)


def test_iterator_state_restores_mid_epoch(standard):
    """Saving the grain iterator state after 3 batches and restoring it in a
    fresh iterator reproduces the next 5 batches (crossing an epoch)."""
    dataset = preference_batches(standard, batch_size=8, seed=7,
                                 num_epochs=None)
    it = iter(dataset)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives a checkpoint
    expected = [next(it) for _ in range(5)]
    restored = iter(dataset)
    restored.set_state(state)
    _assert_batches_equal([next(restored) for _ in range(5)], expected)


def test_ranked_and_unpaired_batches(tmp_path, tokenizer):
    """Ranked lists give [B, G, R] with G from the data and score [B, G];
    unpaired records give G = 1 and desirable [B, 1]."""
    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text("".join(json.dumps(
        {"prompt": f"Q{i}", "responses": ["a", "bb", "ccc"],
         "scores": [i, 0, 1]}) + "\n" for i in range(5)))
    batch = next(iter(preference_batches(
        read_preferences(ranked, tokenizer), batch_size=4, shuffle=False)))
    assert batch["response_tokens"].shape[:2] == (4, 3)
    np.testing.assert_array_equal(batch["labels"]["score"][:2],
                                  [[1, 0, 0], [1, 1, 0]])
    unpaired = tmp_path / "unpaired.jsonl"
    unpaired.write_text("".join(json.dumps(
        {"prompt": "Q", "completion": f"A{i}", "label": i % 2 == 0}) + "\n"
        for i in range(4)))
    batch = next(iter(preference_batches(
        read_preferences(unpaired, tokenizer), batch_size=4, shuffle=False)))
    assert batch["response_tokens"].shape[:2] == (4, 1)
    np.testing.assert_array_equal(batch["labels"]["desirable"],
                                  [[1], [0], [1], [0]])


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_truncations_are_counted_by_part(tmp_path, tokenizer, caplog):
    """The report counts kept records whose prompt or responses were cut:
    under keep_end, the 3 long prompts of 5; under keep_start with a tight
    budget, every prompt and the long responses as well."""
    short = {"prompt": "Q?", "chosen": " Yes.", "rejected": " No."}
    long = {"prompt": "word " * 30 + "Q?", "chosen": " Yes.", "rejected": " No."}
    path = _write(tmp_path / "d.jsonl", [short, long, long, short, long])
    with caplog.at_level("WARNING", logger="jalign.data"):
        data = read_preferences(path, tokenizer, tokenization=Tokenization(
            max_length=16, truncation="keep_end"))
    assert data.report.as_dict()["truncated"] == {"prompt": 3}
    assert data.report.as_dict()["kept"] == 5
    assert "truncated to the length budget: prompt=3 records" in caplog.text
    cut = read_preferences(path, tokenizer, tokenization=Tokenization(
        max_length=3, max_prompt_length=1, truncation="keep_start"))
    assert cut.report.as_dict()["truncated"] == {"prompt": 5, "response": 5}


def test_ignored_columns_are_reported_once(tmp_path, tokenizer, caplog):
    """Columns the format does not read are listed in the report and in one
    warning, not per record."""
    rows = [{"id": i, "prompt": "Q?", "chosen": " Yes.", "rejected": " No.",
             "source": "hand"} for i in range(4)]
    path = _write(tmp_path / "d.jsonl", rows)
    with caplog.at_level("WARNING", logger="jalign.data"):
        data = read_preferences(path, tokenizer)
    assert data.report.as_dict()["ignored_columns"] == ["id", "source"]
    warnings = [r.getMessage() for r in caplog.records if "ignoring columns" in r.getMessage()]
    assert warnings == [f"{path}: ignoring columns ['id', 'source'] (not read by this format)"]


def test_implicit_prompt_only_without_a_prompt_column(tmp_path, tokenizer):
    """TRL's rule (maybe_extract_prompt: extract when "prompt" is not in the
    example, and every row of a dataset has every column): one record with a
    prompt makes the prompt a column, so a record without one is a missing
    field, not an implicit prompt."""
    implicit = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    data = read_preferences(_write(tmp_path / "i.jsonl", [implicit] * 2), tokenizer)
    assert data.format.implicit_prompt
    mixed = _write(tmp_path / "m.jsonl", [implicit, {**implicit, "prompt": "Sky?"}])
    skipped = read_preferences(mixed, tokenizer, on_error="skip")
    assert not skipped.format.implicit_prompt
    assert skipped.report.as_dict()["skipped"] == {"missing_field": 1}
    assert [e.index for e in skipped.examples] == [1]
