"""Two processes joined by jax.distributed on 127.0.0.1 train what one process trains.

Both runs call ``jalign.train.loop.train`` on the shipped variable-length
``experiments/data/tiny_pref.jsonl`` with ``data.shards=2``: the data order
is a function of the seed and the shard count, not of the number of
processes. Each of the two processes reads and tokenises only its shard and
feeds its half of every global batch; the single process reads both shards
and feeds the whole batch. Records differ in length, so each process's rows
alone would pick different padded shapes (the gloo "collective mismatch" this
test was written against); the per-step losses must match the single
process's, which is the independent reference (one device, no collectives),
and so must the final evaluation of a held-out tenth of the records and the
policy's greedy answers to two of them, which only process 0 writes. The
model runs as the trainer runs it at scale: scanned layers with the ``full``
remat policy.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = 4
WORKER = textwrap.dedent("""
    import dataclasses, json, pathlib, sys
    sys.path.insert(0, sys.argv[3])
    import jax
    from jalign.sharding import initialize
    from jalign.train.loop import train
    import tiny_experiment

    initialize()
    exp = tiny_experiment.experiment(pathlib.Path(sys.argv[1]), int(sys.argv[2]), checkpoint_every=0)
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, shards=2, eval_fraction=0.1),
                              model=dataclasses.replace(exp.model, arch=exp.model.arch.replace(remat="full")),
                              train=dataclasses.replace(exp.train, eval_generations=2, eval_max_new_tokens=4))
    result = train(exp, progress=False)
    print("REPORT", json.dumps(result["data"]))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]


def _report(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("REPORT")][0][len("REPORT "):])


def one_and_two_processes(worker: str, tmp_path: pathlib.Path, steps: int) -> tuple[pathlib.Path, pathlib.Path, list[str]]:
    """Runs ``worker`` (argv: out dir, steps, tests/train) in one process, then in two joined by jax.distributed.

    Returns the single run's folder, the pair's folder, and the three processes' stdout (single first).
    """
    base = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
                XLA_FLAGS="--xla_force_host_platform_device_count=1")
    tests = str(REPO / "tests" / "train")
    script = tmp_path / "worker.py"
    script.write_text(worker)
    single_out, multi_out = tmp_path / "single", tmp_path / "multi"
    single = subprocess.run([sys.executable, str(script), str(single_out), str(steps), tests], env=base,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(multi_out), str(steps), tests], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(base, JALIGN_COORDINATOR=f"127.0.0.1:{port}", JALIGN_NUM_PROCESSES="2",
                                       JALIGN_PROCESS_ID=str(rank)))
             for rank in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    return single_out, multi_out, [single.stdout] + [out for out, _ in outputs]


def test_two_processes_train_like_one_on_variable_length_data(tmp_path):
    single_out, multi_out, stdouts = one_and_two_processes(WORKER, tmp_path, STEPS)
    expected, got = _rows(single_out), _rows(multi_out)
    assert [row["step"] for row in got] == [row["step"] for row in expected] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([row["loss"] for row in got], [row["loss"] for row in expected], rtol=2e-5)
    # The held-out records (chosen among all shards) are evaluated whole by every process.
    assert expected[-1]["eval/loss"] > 0
    np.testing.assert_allclose(got[-1]["eval/loss"], expected[-1]["eval/loss"], rtol=2e-5)
    # Each process counted only its records; the report is the sum over processes.
    assert _report(stdouts[1]) == _report(stdouts[2]) == _report(stdouts[0])
    assert _report(stdouts[0])["kept"] == 40
    generations = [(out / "run" / "generations.jsonl").read_text().splitlines() for out in (single_out, multi_out)]
    assert len(generations[0]) == 2 and generations[1] == generations[0]
