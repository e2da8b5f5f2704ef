"""Two processes joined by jax.distributed on 127.0.0.1 compute what one process computes.

Each process holds half of a batch; `global_batch` assembles the global array
and a jitted reduction over it must equal the same reduction done by one
process holding the whole batch (NumPy, independent).
"""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

WORKER = textwrap.dedent("""
    import sys, numpy as np, jax, jax.numpy as jnp
    from jalign.sharding import MeshConfig, global_batch, initialize, make_mesh

    assert initialize()
    rank = jax.process_index()
    full = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    local = full[rank * 4:(rank + 1) * 4]
    mesh = make_mesh(MeshConfig(data=-1))
    batch = global_batch({"x": local}, mesh)
    assert batch["x"].shape == (8, 3), batch["x"].shape
    total = jax.jit(lambda b: jnp.sum(b["x"] ** 2, axis=0))(batch)
    print("RESULT", " ".join(f"{v:.1f}" for v in np.asarray(jax.device_get(total))))
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one():
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JALIGN_COORDINATOR=f"127.0.0.1:{port}", JALIGN_NUM_PROCESSES="2",
                   JALIGN_PROCESS_ID=str(rank))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    expected = np.sum(np.arange(24, dtype=np.float32).reshape(8, 3) ** 2, axis=0)
    for out, _ in outputs:
        line = [l for l in out.splitlines() if l.startswith("RESULT")][0]
        np.testing.assert_allclose([float(v) for v in line.split()[1:]], expected)
