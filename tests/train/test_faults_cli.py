"""The command line under faults: one line and exit 2 for user errors, Ctrl-C then resume, a changed config refused.

User errors are checked through `jalign.cli.main` in this process (cheap) and
once through a real subprocess (exit status, nothing else on stderr).
Training runs are subprocesses of `python -m jalign.cli`, as a user starts
them; they share a persistent compilation cache so that only the first
compiles the tiny model's step.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jalign import cli
from jalign.train.run_config import changed_fields, flatten

HERE = pathlib.Path(__file__).parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from tiny_experiment import experiment as tiny_experiment  # noqa: E402

# Long enough that SIGINT lands mid-run: checkpoints are written asynchronously, and a step's folder
# appears only once orbax has finalised it, some steps after the save started.
STEPS = 40
INTERRUPTED = re.compile(
    r"^jalign: interrupted at step (\d+); last checkpoint (\d+); rerun the same command to resume$", re.MULTILINE)


def _experiment_file(folder: pathlib.Path, body: str, name: str = "exp.py") -> str:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _tiny_file(folder: pathlib.Path) -> str:
    """An experiment file for the tiny DPO run in ``folder/run`` (its tokenizer trained here, once)."""
    tiny_experiment(folder, STEPS)
    return _experiment_file(folder, f"""
        import pathlib, sys
        sys.path.insert(0, {str(HERE)!r})
        from tiny_experiment import experiment as tiny

        def experiment():
            return tiny(pathlib.Path({str(folder)!r}), {STEPS})
    """)


def _error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jalign: error: "), err
    return lines[0]


def _saved_dataset_dict(folder: pathlib.Path) -> pathlib.Path:
    import datasets

    rows = datasets.Dataset.from_list([{"prompt": "Q?", "chosen": " a.", "rejected": " b."}])
    datasets.disable_progress_bars()  # the test reads this process's stderr for the one error line
    try:
        datasets.DatasetDict({"train": rows, "test": rows}).save_to_disk(folder / "prefs")
    finally:
        datasets.enable_progress_bars()
    return folder / "prefs"


def _one_object(folder: pathlib.Path) -> pathlib.Path:
    (folder / "one.json").write_text('{\n "prompt": "Q?",\n "chosen": " a.",\n "rejected": " b."\n}\n')
    return folder / "one.json"


USER_ERRORS = {  # case: (folder, tiny experiment file, --set out_dir) -> (argv, expected part of the message)
    "missing file": lambda d, tiny, out: (["train", str(d / "nope.py")], f"no such file: {d / 'nope.py'}"),
    "not python": lambda d, tiny, out: (["train", str(pathlib.Path(tiny).rename(d / "exp.txt"))],
                                        "exp.txt: experiment files are Python files (.py)"),
    "no experiment()": lambda d, tiny, out: (["train", _experiment_file(d, "x = 1\n", "empty.py")],
                                             "must define experiment()"),
    "override typo": lambda d, tiny, out: (["train", tiny, "--set", "train.stepz=2"],
                                           "TrainSection has no field 'stepz'"),
    "unparsable value": lambda d, tiny, out: (["train", tiny, "--set", "optimizer.learning_rate=fast"],
                                              "cannot parse 'fast'"),
    "missing data file": lambda d, tiny, out: (["train", tiny, "--set", f"data.train={d / 'none.jsonl'}", *out],
                                               "none.jsonl"),
    "datasets directory without a split": lambda d, tiny, out: (
        ["train", tiny, "--set", f"data.train={_saved_dataset_dict(d)}", *out],
        "holds splits ['test', 'train']; pass split= (an experiment's data.split or data.eval_split)"),
    "tfds name without a split": lambda d, tiny, out: (["train", tiny, "--set", "data.train=tfds:my_prefs", *out],
                                                       "tfds:my_prefs: expected tfds:NAME/SPLIT"),
    "json file of one object": lambda d, tiny, out: (["train", tiny, "--set", f"data.train={_one_object(d)}", *out],
                                                     "one.json: is one JSON object; expected a JSON array"),
    "refused objective": lambda d, tiny, out: (["train", tiny, "--set", "objective=online_dpo", *out], "online_dpo"),
    "raised by the experiment file": lambda d, tiny, out: (["train", _experiment_file(d, """
        def experiment():
            raise ValueError("set MODEL_DIR to a local checkpoint")
    """, "own.py")], "set MODEL_DIR to a local checkpoint"),
    "unknown objective name": lambda d, tiny, out: (["objectives", "dpoo"], "unknown objective(s) or method(s) ['dpoo']"),
}


@pytest.mark.parametrize("case", USER_ERRORS)
def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys, case):
    argv, expected = USER_ERRORS[case](tmp_path, _tiny_file(tmp_path), ["--set", f"train.out_dir={tmp_path / 'run'}"])
    assert cli.main(argv) == 2
    assert expected in _error_of(capsys)


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    for argv in (["--debug", "train", str(tmp_path / "nope.py")], ["train", str(tmp_path / "nope.py"), "--debug"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "FileNotFoundError" in err
        assert err.strip().splitlines()[-1] == f"jalign: error: no such file: {tmp_path / 'nope.py'}"


@pytest.mark.parametrize("body, error", [
    # a ValueError from inside a library is a bug, however it is worded
    ("import numpy as np\ndef experiment():\n    return np.reshape(np.arange(3), (2, 2))\n", ValueError),
    ("def experiment():\n    return 1 / 0\n", ZeroDivisionError),
])
def test_internal_errors_keep_their_traceback(tmp_path, body, error):
    with pytest.raises(error):
        cli.main(["train", _experiment_file(tmp_path, body)])


@pytest.mark.parametrize("case", ["not python", "override typo"])
def test_a_user_error_from_the_console_is_one_line_and_status_2(tmp_path, case):
    """As run from a shell (`python -m jalign.cli`, where the CLI module is ``__main__``)."""
    argv, expected = USER_ERRORS[case](tmp_path, _tiny_file(tmp_path), [])
    out = subprocess.run([sys.executable, "-m", "jalign.cli", *argv], cwd=tmp_path, capture_output=True, text=True,
                         env=_env(tmp_path / "cache"))
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("jalign: error: ") and expected in line


def _env(cache: pathlib.Path) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A tiny run stopped by SIGINT after its second checkpoint, then the same command again.

    Returns the run folder, the command, its env, the first process, the checkpoints it left, the second process.
    """
    folder = tmp_path_factory.mktemp("interrupted")
    command = [sys.executable, "-m", "jalign.cli", "train", _tiny_file(folder)]
    env = _env(tmp_path_factory.mktemp("compilation_cache"))
    run = folder / "run"
    # A shell's background jobs (CI starts the suite as one) inherit SIGINT ignored, and Python then never
    # raises KeyboardInterrupt; a terminal's Ctrl-C reaches a process whose SIGINT is at its default.
    first = subprocess.Popen(command, cwd=folder, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while first.poll() is None and time.time() < deadline and _logged_steps(run) < 3:
        time.sleep(0.005)
    first.send_signal(signal.SIGINT)
    _, first_err = first.communicate(timeout=600)
    kept = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    again = subprocess.run(command, cwd=folder, env=env, text=True, capture_output=True, timeout=600)
    return run, command, env, subprocess.CompletedProcess(command, first.returncode, "", first_err), kept, again


def _logged_steps(run: pathlib.Path) -> int:
    """Rows in the run's metrics log (one per step here). Checkpoint folders are a poor signal: they
    appear only once orbax finalises an asynchronous save, and older ones are deleted as new ones land."""
    try:
        return len((run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_ctrl_c_says_where_the_run_stopped_and_exits_130(interrupted_run):
    _, _, _, first, kept, _ = interrupted_run
    assert first.returncode == 130, first.stderr[-3000:]
    assert "Traceback" not in first.stderr, first.stderr[-3000:]
    step, checkpoint = map(int, INTERRUPTED.search(first.stderr).groups())
    assert 1 <= checkpoint <= step < STEPS  # saves started before the interrupt are finished first
    assert kept[-1] == checkpoint  # finished and intact: the resume below restores it


def test_rerunning_the_same_command_resumes_from_the_last_checkpoint(interrupted_run):
    run, _, _, first, _, again = interrupted_run
    assert again.returncode == 0, again.stderr[-3000:]
    checkpoint = INTERRUPTED.search(first.stderr).group(2)
    assert f"resuming from step {checkpoint} ({run / 'checkpoints' / checkpoint})\n" in again.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))


def test_a_changed_config_on_resume_is_refused_unless_allowed(interrupted_run):
    run, command, env, _, _, _ = interrupted_run
    changed = [*command, "--set", "objective.dpo.beta=0.3", "--set", "optimizer.learning_rate=3e-4",
               "--set", "train.log_every=2"]
    refused = subprocess.run(changed, cwd=run.parent, env=env, text=True, capture_output=True, timeout=600)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    assert "objective.dpo.beta: 0.1 -> 0.3" in refused.stderr
    assert "optimizer.learning_rate: 0.001 -> 0.0003" in refused.stderr
    assert "log_every" not in refused.stderr and "--allow-changes" in refused.stderr
    assert json.loads((run / "config.json").read_text())["objective.dpo.beta"] == 0.1

    allowed = subprocess.run([*changed, "--allow-changes"], cwd=run.parent, env=env, text=True, capture_output=True,
                             timeout=600)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert f"resuming from step {STEPS} (" in allowed.stderr
    assert json.loads((run / "config.json").read_text())["objective.dpo.beta"] == 0.3


def test_which_fields_change_what_is_trained(tmp_path):
    """Where a run writes, how often it logs or checkpoints, and a longer constant-rate run are the same run."""
    from jalign.train.overrides import apply_overrides

    base = tiny_experiment(tmp_path, STEPS)
    saved = json.loads(json.dumps(flatten(base)))

    def changes(*assignments, config=base):
        return changed_fields(json.loads(json.dumps(flatten(config))), json.loads(json.dumps(flatten(
            apply_overrides(config, list(assignments))))))

    assert changes("train.log_every=5", "train.checkpoint_every=3", "train.keep_checkpoints=4",
                   f"train.out_dir={tmp_path / 'moved'}", "train.eval_every=2", "train.logprob_impl=naive",
                   "mesh.data=2", "data.eval=held_out.jsonl", "data.eval_split=test", "model.remat=dots",
                   "train.extras=entropy,ref_kl") == []
    assert changes("train.steps=80") == [f"train.steps: {STEPS} -> 80"]  # cosine: the schedule stretches
    constant = apply_overrides(base, ["optimizer.schedule=constant"])
    assert changes("train.steps=80", config=constant) == []
    assert changes("objective.sft.weight=0.2") == ["objective.sft.weight: 0.1 -> 0.2"]
    assert changes("objective=ipo")[:3] == ['objective: "dpo+sft" -> "ipo"', "objective.tau: (absent) -> 0.1",
                                            "objective.average: (absent) -> false"]
    assert changes("train.batch_size=8", "train.seed=1", "data.max_length=64", "data.split=train") == [
        "data.max_length: 128 -> 64", 'data.split: null -> "train"', "train.batch_size: 4 -> 8",
        "train.seed: 0 -> 1"]
    assert saved["objective"] == "dpo+sft" and saved["objective.sft.weight"] == 0.1
    # A run saved before the online section existed trained as its defaults say; only a non-default value changes it.
    from jalign.train.config import Experiment
    older = {k: v for k, v in saved.items() if not k.startswith("online.")}
    defaults = json.loads(json.dumps(flatten(Experiment())))
    assert changed_fields(older, saved, defaults) == []
    more = json.loads(json.dumps(flatten(apply_overrides(base, ["online.win_samples=3"]))))
    assert changed_fields(older, more, defaults) == ["online.win_samples: (absent) -> 3"]
