"""Logged training metrics are means over the logging window, checked against the per-step values.

The reference is the same run logged every step (training is deterministic,
so the two runs take identical steps): a row at step 6 with ``log_every=3``
must hold the mean of the per-step rows 4..6, the tokens of those steps
summed, the learning rate of step 6's update, and the tokens seen since step
1 (the running sum of the per-step ``tokens``). Both KL directions are logged
through ``train.extras``; at step 1 the policy is the reference, so both are 0.
"""

import dataclasses
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jalign.train import loop, mfu
from jalign.train.loop import train
from jalign.train.metric_window import MetricWindow
from jalign.train.metrics_log import read_metrics

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_experiment import experiment  # noqa: E402

PER_STEP_ONLY = ("tokens_per_s", "mfu")  # wall-clock: differs between runs
PEAK = 1e12  # a pretend device peak for the windowed run (the CPU's is unknown)


def _run(tmp_path: pathlib.Path, log_every: int) -> list[dict]:
    exp = experiment(tmp_path, 6, checkpoint_every=0)
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, log_every=log_every,
                                                              out_dir=str(tmp_path / f"every{log_every}"),
                                                              extras=("entropy", "ref_kl", "policy_kl")))
    train(exp, progress=False)
    return read_metrics(tmp_path / f"every{log_every}" / "metrics.jsonl")


def test_rows_are_window_means_of_the_per_step_values(tmp_path, monkeypatch):
    per_step = _run(tmp_path, 1)
    monkeypatch.setattr(loop, "device_peak", lambda kind: PEAK)
    windowed = _run(tmp_path, 3)
    arch = experiment(tmp_path, 6).model.arch
    low, high = (mfu.train_flops_per_token(arch, n, reference_forward=True) for n in (32, 256))
    assert [r["step"] for r in windowed] == [3, 6]
    for row in windowed:
        steps = [r for r in per_step if row["step"] - 3 < r["step"] <= row["step"]]
        for key, value in row.items():
            if key in ("step", *PER_STEP_ONLY):
                continue
            if key == "tokens":
                assert value == sum(r["tokens"] for r in steps) > 0
            elif key == "tokens_seen":
                assert value == sum(r["tokens"] for r in per_step[:row["step"]])
            elif key == "lr":
                assert value == steps[-1]["lr"]
            else:
                np.testing.assert_allclose(value, np.mean([r[key] for r in steps]), rtol=1e-5, err_msg=key)
        assert row["tokens_per_s"] > 0
        # Each batch's padded prompt + response length is a bucket of 16..128 each: the FLOPs per token
        # (policy forward and backward, frozen reference forward) lie between those of 32 and 256 positions.
        assert low * row["tokens_per_s"] / PEAK <= row["mfu"] <= high * row["tokens_per_s"] / PEAK
    assert [r["tokens_seen"] for r in per_step] == list(np.cumsum([r["tokens"] for r in per_step]))
    assert abs(per_step[0]["kl/policy_kl"]) < 1e-5 and abs(per_step[0]["kl/ref_kl"]) < 1e-5
    assert per_step[-1]["kl/policy_kl"] > 1e-4 and per_step[-1]["kl/ref_kl"] > 1e-4
    assert per_step[-1]["kl/policy_kl"] != per_step[-1]["kl/ref_kl"]
    # The CPU's peak FLOP/s is unknown: no MFU rather than a made-up one.
    assert not any("mfu" in r for r in per_step)
    # The warm-up is visible: the first update's learning rate is 0, the third's the peak.
    assert per_step[0]["lr"] == 0.0 and np.isclose(per_step[2]["lr"], 1e-3, rtol=1e-6)
    # A window mean differs from the last batch's value (the quantity logged before).
    assert any(row["loss"] != per_step[row["step"] - 1]["loss"] for row in windowed)


def test_mfu_is_the_model_flops_rate_over_the_peak(tmp_path):
    """A window of 2 steps of 100 and 50 tokens at 6e6 FLOPs each: ``mfu`` is their 9e8 FLOPs per second of the
    row over the peak (the row's tokens/s times 6e6 over the peak), and absent without a peak."""
    exp = experiment(tmp_path, 4, checkpoint_every=0)
    window = MetricWindow(exp, peak_flops=1e12, tokens_seen=1000)
    bare = MetricWindow(exp)
    for tokens in (100, 50):
        metrics = {"loss": jnp.float32(tokens / 50), "tokens": jnp.int32(tokens),
                   "model_flops": jnp.float32(tokens * 6e6)}
        window.add(metrics)
        bare.add(metrics)
    assert window.tokens_seen_now() == 1150
    row = window.row(2)
    assert row["loss"] == 1.5 and row["tokens"] == 150 and row["tokens_seen"] == 1150
    assert "model_flops" not in row
    assert row["mfu"] == pytest.approx(6e6 * row["tokens_per_s"] / 1e12, rel=1e-6)
    assert "mfu" not in bare.row(2)
