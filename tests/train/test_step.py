"""The train step: sharded equals unsharded; the non-finite guard keeps the state."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

HERE = pathlib.Path(__file__).parent


def test_sharded_step_matches_single_device_step():
    """data x fsdp x tensor = 2x2x2 on 8 simulated CPU devices vs one device: same losses and params.

    The reference is the same step compiled for one device (no partitioning),
    so the check isolates the sharding layer: specs, optimizer-state
    placement, batch sharding and the partitioned kernels.
    """
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(HERE / "step_script.py")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-4000:]


def _result(stdout: str) -> dict:
    return json.loads([l for l in stdout.splitlines() if l.startswith("RESULT")][0][len("RESULT "):])


@pytest.mark.slow  # tests/sharding/test_multihost.py runs two processes on the shipped data by default
def test_two_processes_match_one_process():
    """Two jax.distributed processes on 127.0.0.1 (2 CPU devices each, half the batch each)
    reproduce the losses and parameters of one process running the whole batch on one device."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = dict(os.environ, JAX_PLATFORMS="cpu")
    single = subprocess.run([sys.executable, str(HERE / "step_script.py"), "single"], env=base,
                            capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    procs = [subprocess.Popen(
        [sys.executable, str(HERE / "step_script.py"), "multiprocess"], text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=2",
                 JALIGN_COORDINATOR=f"127.0.0.1:{port}", JALIGN_NUM_PROCESSES="2", JALIGN_PROCESS_ID=str(rank)))
        for rank in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    expected = _result(single.stdout)
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        got = _result(out)
        np.testing.assert_allclose(got["losses"], expected["losses"], rtol=2e-5)
        for key, value in expected["digest"].items():
            np.testing.assert_allclose(got["digest"][key], value, rtol=1e-4, err_msg=key)


def test_nonfinite_loss_leaves_state_unchanged_and_flags_it():
    """A batch whose label makes the loss NaN: parameters, optimizer state and step stay as they were."""
    sys.path.insert(0, str(HERE))
    from step_script import CFG, _batch
    from jalign.objectives import dpo
    from jalign.sharding import MeshConfig, make_mesh
    from jalign.train.provider import Plan
    from jalign.train.step import FrozenModels, TrainState, jit_step, make_step
    from jalign.models import Decoder

    graphdef, params, rest = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = optax.adam(1e-2)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(0))
    batch = _batch()
    bad = dpo(beta=float("nan"))
    # The state is donated: the reference copy shares no buffers with it.
    reference = FrozenModels(rest=rest, reference=jax.tree.map(jnp.copy, params))
    step = make_step(graphdef, tx, Plan(reference="frozen"), impl="chunked")
    jitted, sharding, _ = jit_step(step, make_mesh(MeshConfig()), state, reference, batch, bad, tx)
    before = jax.tree.map(np.asarray, state.params)
    after, metrics = jitted(jax.device_put(state, sharding), reference, batch, bad)
    assert not bool(metrics["finite"])
    assert int(after.step) == 0
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(after.params)):
        np.testing.assert_array_equal(old, new)


def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
    """accumulation_steps=2 over the two halves of a batch == one update on the whole batch.

    The batch-mean loss of the whole batch is the mean of the halves' means, so
    optax.MultiSteps' averaged gradient equals the whole batch's gradient. The
    test compares that gradient itself: plain SGD with learning rate 1 makes
    the parameter change equal to minus the gradient, so the tolerance is
    fp32 reduction-order noise relative to the gradient's scale (1e-5 of its
    largest entry). Comparing Adam updates instead would divide by sqrt(v) and
    amplify that noise in near-zero coordinates (issue 13).
    """
    sys.path.insert(0, str(HERE))
    from step_script import CFG, _batch
    from jalign.models import Decoder
    from jalign.objectives import dpo
    from jalign.sharding import MeshConfig, make_mesh
    from jalign.train.optim import OptimizerConfig, make_optimizer
    from jalign.train.provider import Plan
    from jalign.train.step import FrozenModels, TrainState, jit_step, make_step

    graphdef, params, rest = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)), nnx.Param, ...)
    reference = FrozenModels(rest=rest, reference=jax.tree.map(jnp.copy, params))
    batch, objective, mesh = _batch(), dpo(beta=0.5), make_mesh(MeshConfig())
    halves = [jax.tree.map(lambda x, i=i: x[i * 4:(i + 1) * 4], batch) for i in range(2)]

    def applied_gradient(accumulation, batches):
        cfg = OptimizerConfig(name="sgd", learning_rate=1.0, schedule="constant", max_grad_norm=None,
                              weight_decay=0.0, accumulation_steps=accumulation)
        tx = make_optimizer(cfg, total_updates=1)
        state = TrainState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.copy, params), tx.init(params),
                           jax.random.key(0))
        step = make_step(graphdef, tx, Plan(reference="frozen"), impl="chunked")
        jitted, sharding, _ = jit_step(step, mesh, state, reference, batches[0], objective, tx)
        state = jax.device_put(state, sharding)
        for micro in batches:
            state, _ = jitted(state, reference, micro, objective)
        return [np.asarray(p) - np.asarray(a) for p, a in zip(jax.tree.leaves(params),
                                                              jax.tree.leaves(state.params))]

    accumulated, whole = applied_gradient(2, halves), applied_gradient(1, [batch])
    scale = max(float(np.max(np.abs(g))) for g in whole)
    assert scale > 0
    for a, w in zip(accumulated, whole):
        np.testing.assert_allclose(a, w, rtol=0, atol=1e-5 * scale)
