"""Shaped-reward judges and DPA through `jalign train`'s online loop on a tiny random model (slow).

- LSC-combined rewards of two reward functions label ``online_dpo``'s pairs.
- DPA: ``rsf`` on direction-conditioned prompts, judged by each prompt's ``v . r``.
Both must train two steps with finite losses and non-zero updates; the judge's
labels are checked against the judge's own rewards by the default tests.
"""

import json
import math
import pathlib

import pytest

from jalign import cli
from jalign.train.metrics_log import read_metrics

HERE = pathlib.Path(__file__).parent


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["shaped_judge_experiment.py", "dpa_judge_experiment.py"])
def test_shaped_judges_train_online_through_the_cli(experiment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", str(HERE / experiment)]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    rows = read_metrics(tmp_path / "runs" / "shaped_judge" / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2] and all(row["update_norm"] > 0 for row in rows)
    assert math.isfinite(metrics["loss"]) and metrics["finite"] == 1.0
    assert 0.0 <= metrics["online/win_rate"] <= 1.0
