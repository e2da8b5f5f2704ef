"""Self-play objectives in the online loop: the dataset's own response as a slot, DR-PO's dataset reset, and
training through the CLI.

Independent references: the prompt file's records re-encoded here with the
tokenizer (what SPIN's data slot and a reset prompt must hold), the authors'
roll-in distribution (Cornell-RL/tril ``RollinProcessor``: reset with
probability beta, then h uniform in 1 .. len - 1) as exact frequencies, and
the plan's refusal message naming the missing field. The runs through
``jalign train`` build a model, so they are slow.
"""

import json
import pathlib
import sys

import numpy as np
import pytest

from jalign.train import loop
from jalign.train.dataset_responses import extended_prompts, judged_texts, prefix_lengths
from jalign.train.provider import RefusedObjective

from online_cli import train_online

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
from online_experiment import DATA, experiment  # noqa: E402

COMPLETIONS = DATA / "tiny_prompt_completions.jsonl"
SELFPLAY = ("spin", "selm", "xpo", "cream", "dataset_reset")


def test_spin_without_completions_is_refused_by_name_before_anything_is_built(tmp_path):
    """tiny_prompts.jsonl is prompt-only: SPIN's data slot has nothing to read."""
    with pytest.raises(RefusedObjective, match=r"spin online:\n.*'completion' field"):
        loop.plan_for(experiment(tmp_path, 1, "spin"))
    assert loop.plan_for(experiment(tmp_path, 1, "spin", prompts=str(COMPLETIONS))).reference_slot == "previous"


@pytest.mark.slow
def test_spin_data_slot_holds_the_records_completion(tmp_path):
    exp = experiment(tmp_path, 1, "spin", prompts=str(COMPLETIONS), max_new_tokens=12)
    run = loop.build(exp)
    _, batch = run.rollout(run.state, run.frozen, 1, exp.objective)
    tokens, mask = np.asarray(batch["response_tokens"]), np.asarray(batch["response_mask"]).astype(bool)
    records = [json.loads(line) for line in COMPLETIONS.read_text().splitlines()]
    completions = {r["prompt"]: (run.tokenizer(r["completion"], add_special_tokens=False)["input_ids"]
                                 + [run.tokenizer.eos_token_id])[:12] for r in records}
    prompt_tokens, prompt_mask = np.asarray(batch["prompt_tokens"]), np.asarray(batch["prompt_mask"]).astype(bool)
    for b in range(tokens.shape[0]):
        prompt = run.tokenizer.decode(prompt_tokens[b][prompt_mask[b]].tolist(), skip_special_tokens=True)
        assert tokens[b, 0][mask[b, 0]].tolist() == completions[prompt.strip()], "slot 0: the record's completion"
    assert mask[:, 1].any(-1).all(), "slot 1: the previous iterate's generation"


@pytest.mark.slow
@pytest.mark.parametrize("name", SELFPLAY)
def test_selfplay_objectives_train_with_generation_through_the_cli(name, tmp_path, monkeypatch, capsys):
    metrics, _ = train_online(name, tmp_path, monkeypatch, capsys, f"online.prompts={COMPLETIONS}")
    assert metrics["gen/length"] > 0


def test_dataset_reset_without_completions_is_refused_by_name(tmp_path):
    with pytest.raises(RefusedObjective, match=r"dataset_reset online:\n.*dataset_reset\): online.prompts has no "
                                               r"'completion' field"):
        loop.plan_for(experiment(tmp_path, 1, "dataset_reset"))


def test_roll_in_lengths_follow_the_authors_distribution():
    """tril's RollinProcessor: reset with probability beta, then h uniform over 1 .. len - 1 (rows of tril(ones))."""
    rng = np.random.default_rng(0)
    lengths = np.full(40_000, 5)
    h = prefix_lengths(lengths, 0.75, rng)
    counts = np.bincount(h, minlength=5) / len(h)
    np.testing.assert_allclose(counts, [0.25, 0.1875, 0.1875, 0.1875, 0.1875], atol=0.01)
    assert (prefix_lengths(np.array([0, 1]), 1.0, rng) == 0).all(), "nothing to roll in below 2 tokens"


def test_extended_prompts_append_the_prefix_and_left_pad():
    prompts = {"prompt_tokens": np.array([[0, 7, 8], [5, 6, 9]]), "prompt_mask": np.array([[0, 1, 1], [1, 1, 1]]),
               "record_index": np.array([3, 4])}
    out = extended_prompts(prompts, [np.array([1, 2]), np.array([], np.int32)], pad_id=0, buckets=(4, 8))
    np.testing.assert_array_equal(out["prompt_tokens"], [[7, 8, 1, 2], [0, 5, 6, 9]])
    np.testing.assert_array_equal(out["prompt_mask"], [[1, 1, 1, 1], [0, 1, 1, 1]])
    texts = judged_texts(np.array([[[4, 3, 0]]]), np.array([[[1, 1, 0]]]), np.array([[True]]), [np.array([1, 2])],
                         lambda ids: ",".join(map(str, ids)))
    assert texts == [["1,2,4"]], "the judge reads the roll-in, then the continuation without its stop token"


@pytest.mark.slow
def test_dataset_reset_generates_from_prefixes_of_the_completions(tmp_path):
    exp = experiment(tmp_path, 1, "dataset_reset", prompts=str(COMPLETIONS))
    run = loop.build(exp)
    _, batch = run.rollout(run.state, run.frozen, 1, exp.objective)
    records = [json.loads(line) for line in COMPLETIONS.read_text().splitlines()]
    prompt_tokens, prompt_mask = np.asarray(batch["prompt_tokens"]), np.asarray(batch["prompt_mask"]).astype(bool)
    encoded = [(run.tokenizer(r["prompt"])["input_ids"],
                run.tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [run.tokenizer.eos_token_id])
               for r in records]
    for b in range(prompt_tokens.shape[0]):
        ids = prompt_tokens[b][prompt_mask[b]].tolist()
        matches = [(p, c) for p, c in encoded if ids[:len(p)] == p and 1 <= len(ids) - len(p) <= len(c) - 1
                   and ids[len(p):] == c[:len(ids) - len(p)]]
        assert matches, "each prompt is a record's prompt plus 1 .. len - 1 tokens of its completion"


def test_a_malformed_completion_names_its_file_record_and_field(tmp_path):
    """A conversational completion must be one assistant message; a record without one is rejected by name."""
    from jalign.data.prompts import read_prompts
    from jalign.data.validation import MalformedRecordError
    from jalign.models.tokenizer import load_tokenizer
    from online_experiment import tokenizer_dir

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "What is 2 + 3?", "completion": " 5."}) + "\n"
                    + json.dumps({"prompt": "What is 4 + 5?", "completion": [{"role": "user", "content": "9"}]}) + "\n")
    tokenizer = load_tokenizer(str(tokenizer_dir(tmp_path)))
    with pytest.raises(MalformedRecordError, match=r"bad.jsonl: record 1.*'completion'.*one assistant message"):
        read_prompts(str(path), tokenizer, max_prompt_length=32, completions=True)
    data = read_prompts(str(path), tokenizer, max_prompt_length=32, completions=True, on_error="skip")
    assert data.completion(0).tolist() == tokenizer(" 5.", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id]
