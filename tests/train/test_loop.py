"""The loop never stalls the host on a step it has just dispatched.

Every step's finite flag is read one step behind: step n+1 is dispatched
before the host waits on step n. Only steps whose state is used at once
(a checkpoint, an evaluation, the last step) are checked before the next
dispatch, so a non-finite state is never saved. Metrics are fetched only on
log steps, and the asynchronous checkpoint writes are never waited on
between steps. The test records the loop's calls in order; the expected
sequence is written by hand from the schedule below.
"""

import dataclasses
import pathlib
import sys

from jalign.train import loop, metric_window
from jalign.train.checkpoint import Checkpointer
from jalign.train.loop import train
from jalign.train.metrics_log import read_metrics

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_experiment import experiment  # noqa: E402


def test_flags_are_read_one_step_behind_and_checkpoints_are_not_waited_on(tmp_path, monkeypatch):
    exp = experiment(tmp_path, 5, checkpoint_every=3)
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, log_every=2))
    events = []
    build, finished_row, scalars = loop.build, loop._finished_row, metric_window.scalars
    save, wait = Checkpointer.save, Checkpointer.wait

    def recording_build(e):
        run = build(e)
        step_fn = run.step_fn

        def dispatch(*args):
            events.append(f"dispatch {sum(e.startswith('dispatch') for e in events) + 1}")
            return step_fn(*args)

        run.step_fn = dispatch
        return run

    monkeypatch.setattr(loop, "build", recording_build)
    monkeypatch.setattr(loop, "_finished_row", lambda run, e, c, step, *a, **k: events.append(f"check {step}")
                        or finished_row(run, e, c, step, *a, **k))
    monkeypatch.setattr(metric_window, "scalars", lambda metrics: events.append("fetch") or scalars(metrics))
    monkeypatch.setattr(Checkpointer, "save", lambda self, step, *a, **k: events.append(f"save {step}")
                        or save(self, step, *a, **k))
    monkeypatch.setattr(Checkpointer, "wait", lambda self: events.append("wait") or wait(self))
    result = train(exp, progress=False)
    first = events.index("dispatch 1")
    assert events[first:] == [
        "dispatch 1", "dispatch 2", "check 1",
        "dispatch 3", "check 2", "fetch", "check 3", "save 3",  # a checkpoint step is checked before saving
        "dispatch 4", "dispatch 5", "check 4", "fetch", "check 5", "fetch", "save 5",
    ]
    assert [row["step"] for row in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [2, 4, 5]
    assert result["metrics"]["loss"] > 0
