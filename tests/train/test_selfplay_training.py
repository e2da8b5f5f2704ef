"""Self-play objectives in the online loop: the dataset's own response as a slot, and training through the CLI.

Independent references: the prompt file's completions re-encoded here with
the tokenizer (what SPIN's data slot must hold), and the plan's refusal
message naming the missing field. The runs through ``jalign train`` build a
model, so they are slow.
"""

import dataclasses
import json
import math
import pathlib
import sys

import numpy as np
import pytest

from jalign import cli
from jalign.train import loop
from jalign.train.metrics_log import read_metrics
from jalign.train.provider import RefusedObjective

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
from online_experiment import DATA, experiment  # noqa: E402

COMPLETIONS = DATA / "tiny_prompt_completions.jsonl"
SELFPLAY = ("spin", "selm", "xpo", "cream")


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
    monkeypatch.chdir(tmp_path)
    argv = ["train", str(HERE / "online_experiment.py"), "--set", f"objective={name}",
            "--set", "train.checkpoint_every=0", "--set", f"online.prompts={COMPLETIONS}"]
    assert cli.main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    rows = read_metrics(tmp_path / "runs" / "online_tiny" / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2] and all(row["update_norm"] > 0 for row in rows)
    assert math.isfinite(metrics["loss"]) and metrics["finite"] == 1.0
    assert metrics["gen/length"] > 0
