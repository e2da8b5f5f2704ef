"""`jalign train` and `jalign sweep` on an experiment file, through the console script."""

import csv
import json
import os
import pathlib
import subprocess
import sys


REPO = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENT = str(REPO / "experiments" / "tiny_pref_dpo.py")


def _jalign(*args, cwd):
    # A bare environment, but the same jalign as this test (PYTHONPATH may point at a checkout).
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
           **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
    out = subprocess.run([sys.executable, "-m", "jalign.cli", *args], cwd=cwd, capture_output=True, text=True,
                         env=env)
    return out


def test_train_applies_overrides_and_writes_metrics(tmp_path):
    out = _jalign("train", EXPERIMENT, "--set", "train.steps=2", "--set", "train.log_every=1",
                  "--set", f"train.out_dir={tmp_path / 'run'}", "--set", "objective.beta=0.3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_train_rejects_a_typo_listing_valid_fields(tmp_path):
    out = _jalign("train", EXPERIMENT, "--set", "train.stepz=2", cwd=tmp_path)
    assert out.returncode != 0
    assert "TrainSection has no field 'stepz'; valid fields: ['steps'" in out.stderr


def test_sweep_runs_every_point_and_gathers_one_table(tmp_path):
    """objective=ipo,dpo+0.2*sft x beta: `beta` reaches IPO as its tau and the composed
    objective's DPO term as its beta; the table holds held-out metrics, and the plots are written."""
    out = _jalign("sweep", EXPERIMENT, "--grid", "objective=ipo,dpo+0.2*sft", "beta=0.1,0.5",
                  "--set", "train.steps=2", "--set", "train.log_every=1", "--set", "train.eval_every=1",
                  "--out", str(tmp_path / "sweep"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    with (tmp_path / "sweep" / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["objective"], r["beta"]) for r in rows] == [
        ("ipo", "0.1"), ("ipo", "0.5"), ("dpo+0.2*sft", "0.1"), ("dpo+0.2*sft", "0.5")]
    ipo = json.loads((tmp_path / "sweep" / "objective-ipo_beta-0.5" / "config.json").read_text())
    assert ipo["objective.tau"] == 0.5
    assert all(float(r["loss"]) > 0 for r in rows)
    assert all(0 <= float(r["eval/rewards/accuracy"] or r["eval/dpo/rewards/accuracy"]) <= 1 for r in rows)
    composed = json.loads((tmp_path / "sweep" / "objective-dpo_plus_0.2xsft_beta-0.5" / "config.json").read_text())
    assert (composed["objective.dpo.beta"], composed["objective.sft.weight"]) == (0.5, 0.2), composed
    for plot in ("curves.png", "strength.png"):
        assert (tmp_path / "sweep" / plot).stat().st_size > 5000


def test_a_point_that_cannot_take_its_values_fails_before_anything_runs(tmp_path):
    """dpo+ipo has two strengths, so `beta` is ambiguous: one error, no point run, no command printed."""
    for extra in ((), ("--print-commands",)):
        out = _jalign("sweep", EXPERIMENT, "--grid", "objective=dpo,dpo+ipo", "beta=0.1", *extra,
                      "--out", str(tmp_path / "sweep"), cwd=tmp_path)
        assert out.returncode == 2, out.stderr[-3000:]
        assert "sweep point objective-dpo_plus_ipo_beta-0.1" in out.stderr and "no single" in out.stderr
        assert out.stdout.strip() == ""
        assert not (tmp_path / "sweep").exists()


def test_sweep_prints_one_command_per_point_for_pod_slices(tmp_path):
    out = _jalign("sweep", EXPERIMENT, "--grid", "objective=dpo,ipo", "beta=0.1", "--print-commands",
                  "--out", "gs_runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "--set objective=ipo --set objective.tau=0.1" in lines[1]
    assert lines[0].startswith("jalign train ")
