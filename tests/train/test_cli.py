"""`jalign train` and `jalign sweep` on an experiment file, through the console script."""

import csv
import pathlib
import subprocess
import sys


REPO = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENT = str(REPO / "experiments" / "tiny_pref_dpo.py")


def _jalign(*args, cwd):
    out = subprocess.run([sys.executable, "-m", "jalign.cli", *args], cwd=cwd, capture_output=True, text=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
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
    """objective=dpo,ipo x beta: `beta` reaches IPO as its tau (the KL strength)."""
    out = _jalign("sweep", EXPERIMENT, "--grid", "objective=dpo,ipo", "beta=0.1,0.5", "--set", "train.steps=1",
                  "--set", "train.log_every=1", "--out", str(tmp_path / "sweep"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    with (tmp_path / "sweep" / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["objective"], r["beta"]) for r in rows] == [("dpo", "0.1"), ("dpo", "0.5"), ("ipo", "0.1"),
                                                          ("ipo", "0.5")]
    assert all(float(r["loss"]) > 0 for r in rows)
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 5000


def test_sweep_prints_one_command_per_point_for_pod_slices(tmp_path):
    out = _jalign("sweep", EXPERIMENT, "--grid", "objective=dpo,ipo", "beta=0.1", "--print-commands",
                  "--out", "gs_runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "--set objective=ipo --set objective.tau=0.1" in lines[1]
    assert lines[0].startswith("jalign train ")
