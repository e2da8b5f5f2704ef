"""A run killed at a random step and restarted matches an uninterrupted run exactly.

The independent reference is the same experiment run start to finish in one
process. Every logged metric of every step must be bitwise equal (CPU).
"""

import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np

from jalign.train.loop import train
from jalign.train.metrics_log import read_metrics, without_wall_clock

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
from tiny_experiment import experiment  # noqa: E402

STEPS = 6


def _wait_for(condition, proc) -> None:
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.005)


def kill_after(out: pathlib.Path, step: int, rng: random.Random, command: list[str]) -> None:
    """Starts training (``command``, writing to ``out``) in a subprocess and SIGKILLs it at a random moment
    after checkpoint ``step``.

    The moment is a random fraction of one step's duration (measured in this
    run: checkpoint ``step`` final -> metrics row ``step + 1``) after row
    ``step + 1``, so it can land inside the next checkpoint write or the
    next step's computation, on a fast machine or a slow one.
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    finalised = out / "run" / "checkpoints" / str(step)  # orbax renames the temporary folder when done
    metrics = out / "run" / "metrics.jsonl"
    _wait_for(finalised.is_dir, proc)
    start = time.time()
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > step, proc)
    time.sleep(rng.uniform(0.0, time.time() - start))
    assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_run_resumes_to_identical_metrics(tmp_path):
    reference = train(experiment(tmp_path / "straight", STEPS), progress=False)
    interrupted = tmp_path / "killed"
    experiment(interrupted, STEPS)  # tokenizer first, so the subprocess starts straight into training
    rng = random.Random(os.getpid())
    kill_after_step = rng.randint(1, STEPS - 3)
    kill_after(interrupted, kill_after_step, rng,
               [sys.executable, str(HERE / "tiny_experiment.py"), str(interrupted), str(STEPS)])
    resumed = train(experiment(interrupted, STEPS), progress=False)
    assert kill_after_step <= resumed["resumed_from"] < STEPS
    straight_rows = read_metrics(tmp_path / "straight" / "run" / "metrics.jsonl")
    resumed_rows = read_metrics(interrupted / "run" / "metrics.jsonl")
    assert [r["step"] for r in resumed_rows] == list(range(1, STEPS + 1))
    assert [without_wall_clock(r) for r in resumed_rows] == [without_wall_clock(r) for r in straight_rows]
    # tokens_seen is among the equal metrics: the checkpoint carried the count over the kill.
    assert all("tokens_seen" in r for r in resumed_rows)
    assert without_wall_clock(resumed["metrics"]) == without_wall_clock(reference["metrics"])


def test_stop_and_resume_in_process_truncates_the_log(tmp_path):
    """Stopping after step 3 with checkpoints every 2 steps redoes step 3 on resume; tokens seen stay the
    running sum of the per-step tokens across the resume (checkpoint 2 carries steps 1-2's)."""
    exp = experiment(tmp_path, 4, checkpoint_every=2)
    train(exp, stop_at=3, progress=False)
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 3
    resumed = train(exp, progress=False)
    assert resumed["resumed_from"] == 2
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["tokens_seen"] for r in rows] == list(np.cumsum([r["tokens"] for r in rows]))
