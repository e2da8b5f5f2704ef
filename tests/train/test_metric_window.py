"""Logged training metrics are means over the logging window, checked against the per-step values.

The reference is the same run logged every step (training is deterministic,
so the two runs take identical steps): a row at step 6 with ``log_every=3``
must hold the mean of the per-step rows 4..6, the tokens of those steps
summed, and the learning rate of step 6's update.
"""

import dataclasses
import pathlib
import sys

import numpy as np

from jalign.train.loop import train
from jalign.train.metrics_log import read_metrics

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_experiment import experiment  # noqa: E402

PER_STEP_ONLY = ("tokens_per_s",)  # wall-clock: differs between runs


def _run(tmp_path: pathlib.Path, log_every: int) -> list[dict]:
    exp = experiment(tmp_path, 6, checkpoint_every=0)
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, log_every=log_every,
                                                              out_dir=str(tmp_path / f"every{log_every}")))
    train(exp, progress=False)
    return read_metrics(tmp_path / f"every{log_every}" / "metrics.jsonl")


def test_rows_are_window_means_of_the_per_step_values(tmp_path):
    per_step, windowed = _run(tmp_path, 1), _run(tmp_path, 3)
    assert [r["step"] for r in windowed] == [3, 6]
    for row in windowed:
        steps = [r for r in per_step if row["step"] - 3 < r["step"] <= row["step"]]
        for key, value in row.items():
            if key in ("step", *PER_STEP_ONLY):
                continue
            if key == "tokens":
                assert value == sum(r["tokens"] for r in steps) > 0
            elif key == "lr":
                assert value == steps[-1]["lr"]
            else:
                np.testing.assert_allclose(value, np.mean([r[key] for r in steps]), rtol=1e-5, err_msg=key)
        assert row["tokens_per_s"] > 0
    # The warm-up is visible: the first update's learning rate is 0, the third's the peak.
    assert per_step[0]["lr"] == 0.0 and np.isclose(per_step[2]["lr"], 1e-3, rtol=1e-6)
    # A window mean differs from the last batch's value (the quantity logged before).
    assert any(row["loss"] != per_step[row["step"] - 1]["loss"] for row in windowed)
