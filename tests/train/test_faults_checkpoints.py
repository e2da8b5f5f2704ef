"""Damaged checkpoints fall back to the one before; the NaN guard names the last good one (issue 13).

One short run writes checkpoints 2, 3 and 4. Each test damages a copy of the
newest; the independent reference is checkpoint 3 restored from the
undamaged original. The end-to-end test resumes a run past a damaged
checkpoint and a torn metrics line and compares every metric with the
uninterrupted run, as ``test_resume`` does for a kill. The NaN-guard tests
check that a diverging step is refused and that the error names the newest
checkpoint that verifies.
"""

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import fault_experiment  # noqa: E402
from jalign.objectives import dpo  # noqa: E402
from jalign.train.checkpoint import CheckpointError, Checkpointer  # noqa: E402
from jalign.train import loop  # noqa: E402
from jalign.train.loop import NonFiniteLossError, train  # noqa: E402
from jalign.train.metrics_log import read_metrics, without_wall_clock  # noqa: E402
from jalign.train.step import TrainState, nonfinite_reason  # noqa: E402

STEPS = 4
loop_build = loop.build


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(run folder, experiment, the finished loop.Run)`` of a 4-step run.

    The run ``train`` built is kept (its jitted step is compiled; its final
    state serves as the shape to restore like) by wrapping ``loop.build``.
    """
    base = tmp_path_factory.mktemp("faults")
    exp = fault_experiment.experiment(base / "run", fault_experiment.tokenizer(base / "tokenizer"), steps=STEPS)
    built = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "build", lambda e: built.append(loop_build(e)) or built[-1])
        train(exp, progress=False)
    return base / "run", exp, built[0]


def _copy_checkpoints(run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    copy = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", copy)
    return copy


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)


def _truncate(path: pathlib.Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_64_bytes(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


DAMAGE = {
    "deleted state/manifest.ocdbt": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "truncated data file": lambda d: _truncate(_largest_data_file(d)),
    "deleted state data folder": lambda d: shutil.rmtree(d / "state" / "ocdbt.process_0" / "d"),
    "deleted data/ (iterator state)": lambda d: shutil.rmtree(d / "data"),
    "deleted progress/ (tokens seen)": lambda d: shutil.rmtree(d / "progress"),
    "deleted state/_METADATA": lambda d: (d / "state" / "_METADATA").unlink(),
    "64 flipped bytes in a data file": lambda d: _flip_64_bytes(_largest_data_file(d)),
}


def _assert_same_state(a, b) -> None:
    for x, y in zip(jax.tree.leaves(jax.random.key_data(a.rng)), jax.tree.leaves(jax.random.key_data(b.rng))):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves((a.step, a.params, a.opt_state)), jax.tree.leaves((b.step, b.params, b.opt_state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_one_before(trained, tmp_path, caplog, kind):
    run, _, built = trained
    like = built.state
    directory = _copy_checkpoints(run, tmp_path)
    DAMAGE[kind](directory / str(STEPS))
    checkpointer = Checkpointer(directory, keep=3)
    with caplog.at_level(logging.WARNING, logger="jalign.train.checkpoint"):
        restored = checkpointer.restore_newest(like)
    checkpointer.close()

    assert restored.step == STEPS - 1
    assert [s.step for s in restored.skipped] == [STEPS] and restored.skipped[0].reason
    assert f"checkpoint step {STEPS} skipped" in caplog.text and restored.skipped[0].reason in caplog.text
    moved = tmp_path / "checkpoints.damaged" / str(STEPS)
    assert (moved / "DAMAGED.txt").read_text().strip().endswith(restored.skipped[0].reason)
    assert not (directory / str(STEPS)).exists()
    pristine = Checkpointer(run / "checkpoints", keep=3)
    expected_state, expected_data = pristine.restore(STEPS - 1, like)
    pristine.close()
    _assert_same_state(restored.state, expected_state)
    assert restored.data_state == expected_data


def _as_before_tokens_seen(step_dir: pathlib.Path) -> None:
    """Rewrites a checkpoint as jalign wrote it before it counted tokens: no progress/ item, and a digest
    that names none (orbax's JSON item is the file ``digest/metadata``)."""
    shutil.rmtree(step_dir / "progress")
    digest_file = step_dir / "digest" / "metadata"
    digest = json.loads(digest_file.read_text())
    del digest["progress"]
    digest_file.write_text(json.dumps(digest))


def test_tokens_seen_restore_and_an_older_checkpoint_without_them_is_not_damaged(trained, tmp_path):
    """The newest checkpoint restores the run's logged tokens_seen at its step; the same checkpoint in the
    older layout restores as intact (nothing moved aside) with tokens_seen None."""
    run, _, built = trained
    like = built.state
    directory = _copy_checkpoints(run, tmp_path)
    checkpointer = Checkpointer(directory, keep=3)
    restored = checkpointer.restore_newest(like)
    checkpointer.close()
    logged = read_metrics(run / "metrics.jsonl")[STEPS - 1]
    assert restored.step == STEPS and restored.tokens_seen == logged["tokens_seen"] > 0

    _as_before_tokens_seen(directory / str(STEPS))
    checkpointer = Checkpointer(directory, keep=3)
    older = checkpointer.restore_newest(like)
    checkpointer.close()
    assert older.step == STEPS and older.skipped == () and older.tokens_seen is None
    assert not (tmp_path / "checkpoints.damaged").exists()
    _assert_same_state(older.state, restored.state)


def test_one_flipped_bit_that_orbax_reads_silently_is_caught_by_the_digest(trained, tmp_path):
    """The lowest mantissa bit of one parameter, rewritten through tensorstore: a valid, readable file."""
    run, _, built = trained
    like = built.state
    directory = _copy_checkpoints(run, tmp_path)
    state = {"driver": "ocdbt", "base": f"file://{directory / str(STEPS) / 'state'}/"}
    keys = [k.decode() for k in ts.KvStore.open(state).result().list().result()]
    name = sorted(k[:-len("/.zarray")] for k in keys if k.startswith("params.") and k.endswith("/.zarray"))[0]
    array = ts.open({"driver": "zarr", "kvstore": {**state, "path": name + "/"}}, open=True).result()
    values = array.read().result()
    flat = values.reshape(-1).view(np.uint32)
    flat[0] ^= 1
    array.write(values).result()

    checkpointer = Checkpointer(directory, keep=3)
    restored = checkpointer.restore_newest(like)
    checkpointer.close()
    assert restored.step == STEPS - 1
    assert "digest mismatch" in restored.skipped[0].reason


def test_no_intact_checkpoint_is_one_clear_error_and_nothing_is_moved(trained, tmp_path):
    run, _, built = trained
    like = built.state
    directory = _copy_checkpoints(run, tmp_path)
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    for step in steps:
        (directory / str(step) / "state" / "manifest.ocdbt").unlink()
    checkpointer = Checkpointer(directory, keep=3)
    with pytest.raises(CheckpointError) as error:
        checkpointer.restore_newest(like)
    checkpointer.close()
    assert isinstance(error.value, ValueError)
    message = str(error.value)
    assert "no intact checkpoint" in message and "\n" not in message
    assert all(f"step {s}: state/manifest.ocdbt is missing" in message for s in steps)
    assert sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) == steps


def test_resume_past_a_damaged_checkpoint_and_a_torn_log_matches_the_straight_run(trained, tmp_path):
    """The newest checkpoint loses its manifest and the log a half-written row; the rerun redoes the
    last step from checkpoint 3 and ends with the metrics of the uninterrupted run, bitwise."""
    run, exp, _ = trained
    resumed_dir = tmp_path / "run"
    shutil.copytree(run, resumed_dir)
    (resumed_dir / "checkpoints" / str(STEPS) / "state" / "manifest.ocdbt").unlink()
    with (resumed_dir / "metrics.jsonl").open("a") as log:
        log.write('{"step": 5, "loss": 0.69')
    result = train(fault_experiment.with_train(exp, out_dir=str(resumed_dir)), progress=False)

    assert result["resumed_from"] == STEPS - 1
    assert ([without_wall_clock(r) for r in read_metrics(resumed_dir / "metrics.jsonl")]
            == [without_wall_clock(r) for r in read_metrics(run / "metrics.jsonl")])
    checkpointer = Checkpointer(resumed_dir / "checkpoints", keep=3)
    assert checkpointer.newest_intact(trained[2].state) == (STEPS, [])
    checkpointer.close()


# --- the NaN guard stops and names the newest checkpoint that verifies ------------------------------------

@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e39 -> float32 inf
def test_learning_rate_1e39_stops_on_the_updated_state_naming_the_last_good_checkpoint(trained, tmp_path):
    """Resumed at step 4 with lr=1e39 (finite as a float64 config value, inf in float32): the loss and
    gradients of step 5 are finite, the updated parameters are not; nothing is applied or saved."""
    run, exp, _ = trained
    diverging = tmp_path / "run"
    shutil.copytree(run, diverging)
    exp = fault_experiment.experiment(diverging, pathlib.Path(exp.model.tokenizer), steps=STEPS + 2,
                                      learning_rate=1e39)
    with pytest.raises(NonFiniteLossError) as error:
        train(exp, progress=False, allow_changes=True)  # resuming under a new learning rate, deliberately
    message = str(error.value)
    assert "non-finite parameters or optimizer state after the update" in message
    assert f"at step {STEPS + 1}" in message
    assert f"last good checkpoint: step {STEPS} in {diverging / 'checkpoints'}" in message
    assert sorted(int(p.name) for p in (diverging / "checkpoints").iterdir() if p.name.isdigit())[-1] == STEPS


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e39 -> float32 inf
def test_a_diverging_step_found_one_step_behind_is_named_and_never_saved(trained, tmp_path):
    """As above, but step 5 is no checkpoint step: the loop reads its flag only after dispatching step 6.
    The error still names step 5 and checkpoint 4, and the end-of-run checkpoint is never written."""
    run, exp, _ = trained
    diverging = tmp_path / "run"
    shutil.copytree(run, diverging)
    exp = fault_experiment.experiment(diverging, pathlib.Path(exp.model.tokenizer), steps=STEPS + 3,
                                      learning_rate=1e39)
    with pytest.raises(NonFiniteLossError) as error:
        train(fault_experiment.with_train(exp, checkpoint_every=0), progress=False, allow_changes=True)
    message = str(error.value)
    assert f"at step {STEPS + 1};" in message
    assert f"last good checkpoint: step {STEPS} in {diverging / 'checkpoints'}" in message
    assert sorted(int(p.name) for p in (diverging / "checkpoints").iterdir() if p.name.isdigit())[-1] == STEPS


def test_beta_1e38_is_refused_by_the_step_for_an_infinite_gradient_norm(trained):
    """beta=1e38 passes the config check (finite, > 0); the loss stays finite (log 2 where the policy is
    its reference) and so does every gradient, but not their norm. Issue 13 saw 6 steps "succeed" so.
    The step is the run's own jitted step (beta is a traced argument: no recompilation)."""
    _, _, built = trained
    # The policy at its reference (every margin 0), in a copy: the step donates its state argument.
    state = dataclasses.replace(jax.tree.map(jnp.copy, built.state),
                                params=jax.tree.map(jnp.copy, built.frozen.reference))
    before = [np.asarray(x) for x in jax.tree.leaves((state.step, state.params, state.opt_state))]
    batch = loop.device_batch(next(built.iterator), built.mesh)
    after, metrics = built.step_fn(state, built.frozen, batch, dpo(beta=1e38))
    assert not bool(metrics["finite"])
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) == np.inf
    assert nonfinite_reason(metrics) == "non-finite gradient norm (inf) with a finite loss"
    for old, new in zip(before, jax.tree.leaves((after.step, after.params, after.opt_state))):
        np.testing.assert_array_equal(old, np.asarray(new))


def test_the_last_good_checkpoint_is_the_newest_that_verifies(trained, tmp_path):
    run, _, built = trained
    like = built.state
    directory = _copy_checkpoints(run, tmp_path)
    _flip_64_bytes(_largest_data_file(directory / str(STEPS)))
    checkpointer = Checkpointer(directory, keep=3)
    message = checkpointer.describe_last_good(like)
    checkpointer.close()
    assert message.startswith(f"last good checkpoint: step {STEPS - 1} in {directory} (step {STEPS} is damaged")
    assert (directory / str(STEPS)).exists()  # described, not moved


# --- the digest does not depend on the sharding ----------------------------------------------------------

_SHARDED_SAVE = """
import sys, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jalign.train.checkpoint import Checkpointer
from jalign.train.step import TrainState
mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "tensor"))
w = jax.device_put(jnp.arange(96, dtype=jnp.float32).reshape(8, 12) / 8, NamedSharding(mesh, P("data", "tensor")))
h = jax.device_put(jnp.ones((4, 8), jnp.bfloat16) / 3, NamedSharding(mesh, P(None, "tensor")))
state = TrainState(jnp.int32(5), {"w": w, "h": h}, {"mu": w * 2}, jax.random.key(1))
checkpointer = Checkpointer(sys.argv[1])
checkpointer.save(5, state, {"position": 7})
checkpointer.close()
"""


def test_a_checkpoint_written_on_8_devices_verifies_on_one(tmp_path):
    """The checksums are reductions of each array's bits by position: the same whatever the sharding."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _SHARDED_SAVE, str(tmp_path / "ckpt")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    like = TrainState(jnp.int32(0), {"w": jnp.zeros((8, 12)), "h": jnp.zeros((4, 8), jnp.bfloat16)},
                      {"mu": jnp.zeros((8, 12))}, jax.random.key(0))
    checkpointer = Checkpointer(tmp_path / "ckpt")
    state, data = checkpointer.restore(5, like)
    checkpointer.close()
    assert data == {"position": 7} and int(state.step) == 5
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.arange(96, dtype=np.float32).reshape(8, 12) / 8)
