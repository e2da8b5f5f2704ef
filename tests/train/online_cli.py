"""One online `jalign train` run of ``tests/train/online_experiment.py``, shared by the online training tests."""

import json
import math
import pathlib

from jalign import cli
from jalign.train.metrics_log import read_metrics

EXPERIMENT = pathlib.Path(__file__).with_name("online_experiment.py")


def train_online(objective: str, tmp_path, monkeypatch, capsys, *sets: str) -> tuple[dict, list[dict]]:
    """Trains ``objective`` (plus ``--set`` assignments) in ``tmp_path``; ``(final metrics, metric rows)``.

    Asserts what every online run must show: both steps logged, a non-zero
    update at each, and a finite loss.
    """
    monkeypatch.chdir(tmp_path)
    argv = ["train", str(EXPERIMENT), "--set", f"objective={objective}", "--set", "train.checkpoint_every=0"]
    for assignment in sets:
        argv += ["--set", assignment]
    assert cli.main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    rows = read_metrics(tmp_path / "runs" / "online_tiny" / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2] and all(row["update_norm"] > 0 for row in rows)
    assert math.isfinite(metrics["loss"]) and metrics["finite"] == 1.0
    return metrics, rows
