"""Data across processes: each reads only its shards, and all agree on every batch's shapes.

Several processes are simulated by threads, one per process, each calling
``read_preferences`` with its own ``Shards``; their one exchange is an
all-gather through a barrier (what ``process_allgather`` does across real
processes; ``tests/sharding/test_multihost.py`` runs two real ones). The
reference is one process holding every shard: same records, same report,
same global batches.
"""

import copy
import json
import pathlib
import threading

import numpy as np
import pytest

from jalign.data import MalformedRecordError, bucket_lengths, Shards, Tokenization, preference_batches, read_preferences

STANDARD = pathlib.Path(__file__).parents[2] / "experiments" / "data" / "tiny_pref.jsonl"
TOKENIZATION = Tokenization(max_length=64)


def _read_as_processes(monkeypatch, tokenizer, processes, count, source=STANDARD, **kwargs):
    """``read_preferences`` in ``processes`` threads, each one process; returns each one's result or error."""
    barrier, deposited = threading.Barrier(processes), [None] * processes

    def allgather(local, shards):
        if shards.process_count == 1:
            return [local]
        deposited[shards.process_index] = local
        barrier.wait(timeout=60)
        return list(deposited)

    monkeypatch.setattr("jalign.data.pipeline.exchange", allgather)
    results = [None] * processes

    def run(p):
        try:
            # A fast tokenizer refuses concurrent use ("Already borrowed"); each process has its own anyway.
            results[p] = read_preferences(source, copy.deepcopy(tokenizer), tokenization=TOKENIZATION,
                                          shards=Shards(count, p, processes), **kwargs)
        except Exception as error:  # noqa: BLE001 - each process's outcome is compared
            results[p] = error

    threads = [threading.Thread(target=run, args=(p,)) for p in range(processes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.fixture(scope="module")
def whole(tokenizer):
    """One process holding both shards of two."""
    return read_preferences(STANDARD, tokenizer, tokenization=TOKENIZATION, shards=Shards(2))


def test_each_process_tokenises_only_its_shards_and_reports_all(monkeypatch, whole, tokenizer):
    parts = _read_as_processes(monkeypatch, tokenizer, 2, 4)
    held = [sorted(e.index for e in part.examples) for part in parts]
    assert held[0] == [i for i in range(40) if i % 4 in (0, 1)]
    assert held[1] == [i for i in range(40) if i % 4 in (2, 3)]
    single = read_preferences(STANDARD, tokenizer, tokenization=TOKENIZATION)
    for part in parts:
        assert part.report.as_dict() == single.report.as_dict()
        np.testing.assert_array_equal(part.lengths, single.lengths)
    # The lengths table is what tokenising every record gives (independent: the examples themselves).
    expected = [(e.index, len(e.prompt), max(len(r) for r in e.responses)) for e in single.examples]
    np.testing.assert_array_equal(single.lengths, expected)


def test_processes_pad_every_step_alike_and_feed_the_one_process_batches(monkeypatch, whole, tokenizer):
    """Every process pads step n to the same [P, R]; side by side they are the one-process batch of step n."""
    parts = _read_as_processes(monkeypatch, tokenizer, 2, 2)
    per_process = [iter(preference_batches(p, batch_size=4, seed=3, num_epochs=None)) for p in parts]
    combined = iter(preference_batches(whole, batch_size=8, seed=3, num_epochs=None))
    shapes, disagreements = set(), 0
    buckets = bucket_lengths(TOKENIZATION.max_length)
    for _ in range(12):  # more than an epoch of each 20-record shard
        mine = [next(it) for it in per_process]
        assert mine[0]["prompt_tokens"].shape == mine[1]["prompt_tokens"].shape
        assert mine[0]["response_tokens"].shape == mine[1]["response_tokens"].shape
        expected = next(combined)
        for key in ("prompt_tokens", "prompt_mask", "response_tokens", "response_mask", "record_index"):
            np.testing.assert_array_equal(np.concatenate([m[key] for m in mine]), expected[key])
        shapes.add(expected["prompt_tokens"].shape[1:] + expected["response_tokens"].shape[2:])
        assert all(np.all(m["record_index"] % 2 == p) for p, m in enumerate(mine))
        # The bucket a process's own rows would pick for R, for the check below.
        own = [min(b for b in buckets if b >= m["response_mask"].sum(-1).max()) for m in mine]
        disagreements += own[0] != own[1]
    assert len(shapes) > 1 and disagreements, "the data must need more than one bucket for this test to mean anything"


def test_aligned_iterator_state_resumes_bitwise(whole):
    dataset = preference_batches(whole, batch_size=8, seed=7, num_epochs=None)
    it = iter(dataset)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives a checkpoint
    expected = [next(it) for _ in range(6)]
    restored = iter(dataset)
    restored.set_state(state)
    for got, want in zip([next(restored) for _ in range(6)], expected):
        for key in ("prompt_tokens", "response_tokens", "response_mask", "record_index"):
            np.testing.assert_array_equal(got[key], want[key])


def _with_bad_records(tmp_path, bad):
    lines = STANDARD.read_text().splitlines()
    for index in bad:
        lines[index] = json.dumps({"prompt": "Q", "chosen": " same", "rejected": " same"})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bad_record_in_one_shard_is_the_same_error_everywhere(monkeypatch, tmp_path, tokenizer):
    """Under on_error="raise" every process raises the one-process error: the source's first bad record."""
    path = _with_bad_records(tmp_path, [7, 12])  # 7 is process 1's, 12 process 0's (4 shards)
    with pytest.raises(MalformedRecordError) as single:
        read_preferences(path, tokenizer, tokenization=TOKENIZATION)
    parts = _read_as_processes(monkeypatch, tokenizer, 2, 4, source=path)
    assert single.value.index == 7
    for part in parts:
        assert isinstance(part, MalformedRecordError) and str(part) == str(single.value)


def test_skipped_records_are_counted_over_all_processes(monkeypatch, tmp_path, tokenizer):
    path = _with_bad_records(tmp_path, [7, 12, 13])
    single = read_preferences(path, tokenizer, tokenization=TOKENIZATION, on_error="skip")
    parts = _read_as_processes(monkeypatch, tokenizer, 2, 2, source=path, on_error="skip")
    assert single.report.as_dict()["skipped"] == {"identical_responses": 3}
    for part in parts:
        assert part.report.as_dict() == single.report.as_dict()
        np.testing.assert_array_equal(part.lengths, single.lengths)
    # Both processes still pad alike although their shards lost different numbers of records.
    first = [next(iter(preference_batches(p, batch_size=4, seed=0, num_epochs=None))) for p in parts]
    assert first[0]["response_tokens"].shape == first[1]["response_tokens"].shape


def test_shards_must_divide_over_processes():
    with pytest.raises(ValueError, match="data.shards=3 must be a positive multiple of the 2 processes"):
        Shards(3, 0, 2)


def test_ranked_lists_get_one_g_on_every_process(monkeypatch, tmp_path, tokenizer):
    """G is the source's first valid list's (3), although process 1's first record (index 1) has 4."""
    lines = STANDARD.with_name("tiny_ranked.jsonl").read_text().splitlines()
    four = json.loads(lines[1])
    four["responses"].append(" Nine.")
    four["scores"].append(0.0)
    lines[1] = json.dumps(four)
    path = tmp_path / "ranked.jsonl"
    path.write_text("\n".join(lines) + "\n")
    single = read_preferences(path, tokenizer, tokenization=TOKENIZATION, on_error="skip")
    parts = _read_as_processes(monkeypatch, tokenizer, 2, 2, source=path, on_error="skip")
    assert single.format.num_responses == 3 and single.report.as_dict()["skipped"] == {"response_count": 1}
    for part in parts:
        assert part.format.num_responses == 3 and {len(e.responses) for e in part.examples} == {3}
        assert part.report.as_dict() == single.report.as_dict()
