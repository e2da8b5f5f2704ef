"""Multi-host faults on 127.0.0.1: a missing, dead or hung peer ends the run with one clear line.

Each process runs `jalign train` on an experiment file whose `run()` loops
over cross-process collectives (or idles between them, as a process writing
a checkpoint does), with `JALIGN_PEER_TIMEOUT` of a few seconds. Exit status
75 (not SIGABRT's -6) shows that jalign's own timeout, not JAX's backstop
(twice as long), ended the process. Without jalign's handling a survivor
aborted after ~67 s and a lone process after ~308 s.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from jalign.sharding import PEER_FAILURE_EXIT

REPO = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 3  # seconds: JALIGN_PEER_TIMEOUT for these runs
WORKER = textwrap.dedent("""
    import os, time
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from jalign.sharding import MeshConfig, make_mesh
    from jalign.train.config import Experiment

    def experiment():
        return Experiment()

    def run(config):
        mesh = make_mesh(MeshConfig(data=-1))
        total = jax.jit(jnp.sum)
        def collective():
            local = np.ones(jax.local_device_count(), np.float32)
            sharding = NamedSharding(mesh, PartitionSpec("data"))
            return float(total(jax.make_array_from_process_local_data(sharding, local)))
        assert collective() == jax.device_count()
        print("READY", flush=True)
        if os.environ["WORKER_MODE"] == "finish_unevenly":
            time.sleep(jax.process_index() * 1.5 * float(os.environ["JALIGN_PEER_TIMEOUT"]))
            return {"finished": jax.process_index()}
        while True:
            if os.environ["WORKER_MODE"] == "collectives":
                collective()
            else:
                time.sleep(0.05)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: pathlib.Path, ranks, mode: str = "collectives") -> list[subprocess.Popen]:
    worker = tmp_path / "peer_worker.py"
    worker.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in ranks:
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), WORKER_MODE=mode,
                   JALIGN_COORDINATOR=f"127.0.0.1:{port}", JALIGN_NUM_PROCESSES="2", JALIGN_PROCESS_ID=str(rank),
                   JALIGN_PEER_TIMEOUT=str(TIMEOUT))
        procs.append(subprocess.Popen([sys.executable, "-m", "jalign.cli", "train", str(worker)], cwd=tmp_path,
                                      env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def _wait_for_ready(proc: subprocess.Popen) -> None:
    """Reads stdout up to the worker's READY (gloo prints its own lines there); a failed join ends the worker."""
    for line in proc.stdout:
        if line.strip() == "READY":
            return
    pytest.fail(f"worker exited before joining: {proc.wait()} {proc.stderr.read()[-3000:]}")


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("jalign: error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "Check failure" not in stderr, stderr[-3000:]
    return lines[0]


def test_a_missing_peer_ends_the_lone_process_within_the_timeout(tmp_path):
    (lone,) = _start(tmp_path, ranks=[0])
    start = time.time()
    _, err = lone.communicate(timeout=120)
    elapsed = time.time() - start
    assert lone.returncode == PEER_FAILURE_EXIT, err[-3000:]
    line = _error_line(err)
    assert f"process 0 of 2 could not join the others at 127.0.0.1:" in line
    assert f"within {TIMEOUT} s (JALIGN_PEER_TIMEOUT)" in line
    assert elapsed < 60, elapsed  # start-up plus the timeout; JAX alone waited ~308 s


@pytest.mark.parametrize("victim, fault, mode, message", ids=["killed-in-collective", "killed-while-idle",
                                                                "hung", "coordinator-hung"], argvalues=[
    # the survivor's collective fails at once: lost connection
    (1, "kill", "collectives", "lost a peer process during a collective"),
    # nothing fails (a checkpoint write, say): the heartbeat watch notices the silence
    (1, "kill", "idle", f"process 1 of 2 stopped responding: no heartbeat for {TIMEOUT} s"),
    # a hung peer: the survivor blocks in a collective until the watch ends it
    (1, "stop", "collectives", f"process 1 of 2 stopped responding: no heartbeat for {TIMEOUT} s"),
    # a hung coordinator blocks calls to JAX's key-value store instead of failing them
    (0, "stop", "idle", f"process 0 (the coordinator) stopped answering: no reply for {TIMEOUT} s"),
])
def test_a_dead_or_hung_peer_ends_the_survivor_within_the_timeout(tmp_path, victim, fault, mode, message):
    """(A dead process 0 takes JAX's coordination service with it: the others abort at once, JAX's way.)"""
    procs = _start(tmp_path, ranks=[0, 1], mode=mode)
    survivor, victim = procs[1 - victim], procs[victim]
    try:
        for proc in (survivor, victim):
            _wait_for_ready(proc)
        victim.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        start = time.time()
        _, err = survivor.communicate(timeout=120)
        elapsed = time.time() - start
    finally:
        victim.kill()
        victim.communicate()
        survivor.kill()
    assert survivor.returncode == PEER_FAILURE_EXIT, err[-3000:]
    line = _error_line(err)
    assert message in line and line.endswith("rerun the same command on every host to resume"), line
    assert elapsed < 2 * TIMEOUT + 5, elapsed  # before JAX's backstop (2 * timeout + 5 s) would abort


def test_a_peer_finishing_later_than_the_timeout_is_not_a_fault(tmp_path):
    """Process 1 ends 1.5 timeouts after process 0: a finished process is not mistaken for a dead one."""
    procs = _start(tmp_path, ranks=[0, 1], mode="finish_unevenly")
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]


def test_only_process_0_writes_metrics(tmp_path, monkeypatch):
    """Every process computes the same rows; the others' writers leave no file and no TensorBoard events."""
    import jax

    from jalign.train.metrics_log import MetricsWriter

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    writer = MetricsWriter(tmp_path / "other", tensorboard=True)
    writer.write(1, {"loss": 0.5})
    writer.close()
    assert not (tmp_path / "other").exists()
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    writer = MetricsWriter(tmp_path / "first", tensorboard=False)
    writer.write(1, {"loss": 0.5})
    writer.close()
    assert (tmp_path / "first" / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'
