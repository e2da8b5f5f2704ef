"""A Bradley-Terry reward model trained by `jalign train` ranks held-out quickstart pairs by true reward.

The labels come from the quickstart task's programmatic reward (the share of
the favoured letter), independent of the model; the held-out fifth of the
pairs is never trained on.
"""

import json
import pathlib

from jalign import cli

EXPERIMENT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "reward_model.py"


def test_bt_reward_model_ranks_held_out_pairs_by_true_reward(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", str(EXPERIMENT), "--set", "train.log_every=400"]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (tmp_path / "runs/reward_model/metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    assert final["step"] == 400
    assert final["eval/pair_accuracy"] >= 0.9, final
    assert final["eval/logloss"] < 0.5  # better than chance (log 2 = 0.69) by a wide margin
