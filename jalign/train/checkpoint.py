"""Verified orbax checkpoints of a run: train state, data-iterator state, RNG and step together.

A checkpoint also holds the run's progress counters (``tokens_seen``, the
non-padding tokens trained on through its step) as a small JSON item beside
the data state. They live there rather than in ``TrainState`` for two
reasons: a Python int on the host never overflows (an int32 device counter
would wrap after 2**31 tokens, and JAX has no int64 without x64), and a
checkpoint written before the counter existed still restores (orbax cannot
restore a ``TrainState`` leaf the checkpoint lacks, so such a checkpoint
would read as damaged and be moved aside); its ``tokens_seen`` is None.

Each checkpoint carries a digest of what it holds: two 32-bit checksums of
every array's bits (parameters, optimizer state, RNG key data, step) and a
SHA-256 of the data-iterator state. Restoring recomputes the digest from what
was read back, so damage is found even where orbax reads without complaint
(flipped bytes that still decompress to numbers). The checksums are
computed on device, shard by shard, and reduced like any other jitted value:
nothing is gathered onto one host, and the result does not depend on the
sharding, so a checkpoint written on one mesh verifies on another.

Before orbax restores a checkpoint, every array in it is read once on the
host, one at a time, so that a missing or truncated file gives one clean
reason instead of orbax's concurrent failure (see :func:`_check_readable`);
a restore therefore reads the checkpoint twice.

:meth:`Checkpointer.restore_newest` restores the newest intact checkpoint. A
damaged newer one is moved aside to ``<directory>.damaged/`` (kept, never
deleted) and logged as a warning with the reason, so training can write that
step again. When every checkpoint fails, one :class:`CheckpointError` lists
each step and why; nothing is moved then, since the failure may be the run's
(a changed model) rather than the files'.

A checkpoint is written only when every parameter and optimizer buffer is
finite, so a run that diverges keeps its last good checkpoint. Writes are
asynchronous: ``save`` returns once orbax has copied the arrays to host memory
(its default synchronous device-to-host transfer, so the next step may reuse
the donated buffers) and writes the files in the background. A checkpoint
becomes visible only when orbax has finalised its folder, so a process killed
mid-write leaves the previous checkpoints as they were.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from jalign.train.step import TrainState

logger = logging.getLogger(__name__)

DIGEST_FORMAT = 1


class NonFiniteStateError(RuntimeError):
    """Raised instead of saving a state that holds NaN or inf."""


class CheckpointError(ValueError):
    """No checkpoint can be restored: each one is damaged or does not fit this run."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A checkpoint that could not be restored, and why."""

    step: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Restored:
    """The newest intact checkpoint: its step, train state, data state and tokens seen, and the newer ones skipped.

    ``tokens_seen`` is None for a checkpoint written before jalign counted them.
    """

    step: int
    state: TrainState
    data_state: dict
    skipped: tuple[Skipped, ...]
    tokens_seen: int | None = None


class _Damaged(Exception):
    """A checkpoint failed to read or verify; the message says how."""


# --- digest -------------------------------------------------------------------------------------------

def _u32(value: int) -> np.uint32:
    return np.uint32(value & 0xFFFFFFFF)


def _words(x: jax.Array) -> jax.Array:
    """The bits of every element as uint32 (64-bit elements as two words along a new last axis)."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    bits = x.dtype.itemsize * 8
    if bits >= 32:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")).astype(jnp.uint32)


def _positions(shape: tuple[int, ...]) -> jax.Array:
    """Row-major flat index of every element, mod 2**32, built from iotas (no reshape of sharded data)."""
    index, stride = jnp.zeros(shape, jnp.uint32), 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * _u32(stride)
        stride *= shape[axis]
    return index


def _mix(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: every input bit flips each output bit with probability ~1/2."""
    h = h ^ (h >> 16)
    h = h * _u32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * _u32(0xC2B2AE35)
    return h ^ (h >> 16)


def _leaf_digest(x: jax.Array) -> jax.Array:
    """``[2]`` uint32: sum_i w_i (2i+1) and sum_i mix(w_i ^ mix(i)), both mod 2**32.

    The first changes with any single flipped bit (an odd multiple of 2**b is
    never 0 mod 2**32); the second makes changes at several positions
    cancel only with probability ~2**-32.
    """
    words = _words(x)
    index = _positions(words.shape)
    linear = jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)
    mixed = jnp.sum(_mix(words ^ _mix(index + _u32(0x9E3779B9))), dtype=jnp.uint32)
    return jnp.stack([linear, mixed])


def _leaf_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.asarray(True)


@functools.lru_cache(maxsize=8)
def _inspector(out_sharding: NamedSharding | None):
    """Jitted ``tree -> (digests, finite flags)``, outputs replicated so every process can read them."""
    def inspect(tree):
        return jax.tree.map(_leaf_digest, tree), jax.tree.map(_leaf_finite, tree)

    return jax.jit(inspect, out_shardings=out_sharding)


def _replicated(tree) -> NamedSharding | None:
    for leaf in jax.tree.leaves(tree):
        if isinstance(getattr(leaf, "sharding", None), NamedSharding):
            return NamedSharding(leaf.sharding.mesh, PartitionSpec())
    return None


def _inspect(tree) -> tuple[dict[str, list[int]], list[str]]:
    """``({path: [checksum, checksum]}, [paths of non-finite float leaves])`` of a state tree."""
    digests, finite = jax.device_get(_inspector(_replicated(tree))(tree))
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
    sums = {p: [int(v) for v in np.asarray(d)] for p, d in zip(paths, jax.tree.leaves(digests))}
    return sums, [p for p, ok in zip(paths, jax.tree.leaves(finite)) if not bool(ok)]


def _data_digest(data_state: Any) -> str:
    """SHA-256 of the data-iterator state as canonical JSON (what a JSON round trip preserves)."""
    return hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()


def _verify(stored: Any, state_tree, data_state: Any, progress: dict | None) -> None:
    """Raises :class:`_Damaged` unless ``stored`` is the digest of what was read back.

    ``progress`` is None for a checkpoint without the progress item; its digest then names none either.
    """
    if not isinstance(stored, dict) or stored.get("format") != DIGEST_FORMAT:
        raise _Damaged(f"no digest of format {DIGEST_FORMAT}")
    arrays, _ = _inspect(state_tree)
    expected = stored.get("arrays", {})
    differ = sorted(p for p in set(arrays) | set(expected) if arrays.get(p) != expected.get(p))
    if differ:
        raise _Damaged(f"digest mismatch in {len(differ)} array(s), e.g. {differ[:3]}")
    if stored.get("data") != _data_digest(data_state):
        raise _Damaged("digest mismatch in the data-iterator state")
    if stored.get("progress") != (None if progress is None else _data_digest(progress)):
        raise _Damaged("digest mismatch in the progress counters")


def _reason(error: BaseException) -> str:
    """One short line: the error's first line without tensorstore's spec dump."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = (lines[0] if lines else "").split(" [tensorstore_spec")[0].split(" See full TensorStore")[0]
    text = text if len(text) <= 200 else text[:197] + "..."
    return text if isinstance(error, _Damaged) else f"{type(error).__name__}: {text}"


# --- reading ------------------------------------------------------------------------------------------

def _check_readable(state_dir: pathlib.Path, expected_arrays: int) -> None:
    """Reads and decodes every array of an orbax state folder, one at a time; raises :class:`_Damaged`.

    Orbax restores all arrays concurrently and, when one read fails, leaves
    the others running: the failure is raised, but hundreds of lines of
    "Event loop is closed" and ignored-coroutine tracebacks follow on stderr.
    Reading each array here first (tensorstore futures, no event loop) turns
    a missing or truncated file, or a chunk that no longer decompresses, into
    one clean reason before orbax runs. It costs one more read of the
    checkpoint; the processes of a multi-host run share the arrays out.
    """
    for required in ("_METADATA", "manifest.ocdbt"):
        if not (state_dir / required).is_file():
            raise _Damaged(f"state/{required} is missing")
    base = {"driver": "ocdbt", "base": f"file://{state_dir}/"}
    try:
        keys = [key.decode() for key in ts.KvStore.open(base).result().list().result()]
    except Exception as error:  # noqa: BLE001 - any failure to open means the folder is damaged
        raise _Damaged(f"state/ cannot be opened: {_reason(error)}") from None
    drivers = {"/.zarray": "zarr", "/zarr.json": "zarr3"}
    arrays = sorted((key[:-len(tail)], driver) for key in keys for tail, driver in drivers.items()
                    if key.endswith(tail))
    failure = ""
    if len(arrays) < expected_arrays:
        failure = f"state/ holds {len(arrays)} of {expected_arrays} arrays"
    for name, driver in arrays[jax.process_index()::jax.process_count()]:
        if failure:
            break
        try:
            ts.open({"driver": driver, "kvstore": {**base, "path": name + "/"}}, open=True).result().read().result()
        except Exception as error:  # noqa: BLE001 - tensorstore raises ValueError or its own errors
            failure = f"array {name} cannot be read: {_reason(error)}"
    if jax.process_count() > 1:
        failed = multihost_utils.process_allgather(np.asarray(bool(failure)))
        failure = failure or ("an array cannot be read (found by another process)" if failed.any() else "")
    if failure:
        raise _Damaged(failure)


# --- checkpointer -------------------------------------------------------------------------------------

def _savable(state: TrainState) -> TrainState:
    """PRNG keys are saved as their raw key data."""
    return dataclasses.replace(state, rng=jax.random.key_data(state.rng))


def abstract_state(like: TrainState) -> TrainState:
    """Shapes, dtypes and shardings of ``like`` in its saved form (what a restore needs)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _savable(like))


class Checkpointer:
    """Saves and restores ``(TrainState, data iterator state)`` by step, with a digest.

    Args:
      directory: where step folders go (created if missing).
      keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data", "digest", "progress"))

    @property
    def damaged_directory(self) -> pathlib.Path:
        """Where damaged checkpoints are moved: ``<directory>.damaged``."""
        return self.directory.with_name(self.directory.name + ".damaged")

    def latest_step(self) -> int | None:
        """The newest finalised checkpoint's step (not verified; see :meth:`newest_intact`)."""
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict, *, tokens_seen: int | None = None) -> None:
        """Starts writing the checkpoint of ``step`` with its digest; refuses non-finite states.

        ``tokens_seen``: non-padding tokens trained on through ``step`` (None: not counted).
        """
        savable = _savable(state)
        arrays, bad = _inspect(savable)
        if bad:
            raise NonFiniteStateError(f"refusing to save step {step}: non-finite values at {bad[:5]}")
        progress = {"tokens_seen": tokens_seen}
        digest = {"format": DIGEST_FORMAT, "arrays": arrays, "data": _data_digest(data_state),
                  "progress": _data_digest(progress)}
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(savable), data=ocp.args.JsonSave(data_state),
            digest=ocp.args.JsonSave(digest), progress=ocp.args.JsonSave(progress)))

    def wait(self) -> None:
        """Blocks until the checkpoint being written (if any) is finalised."""
        self._manager.wait_until_finished()

    def _read(self, step: int, abstract: TrainState) -> tuple[TrainState, dict, int | None]:
        """Reads and verifies ``step`` (state, data state, tokens seen); raises :class:`_Damaged` or orbax's error."""
        _check_readable(self.directory / str(step) / "state", len(jax.tree.leaves(abstract)))
        items = dict(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
                     digest=ocp.args.JsonRestore())
        has_progress = (self.directory / str(step) / "progress").is_dir()  # written since tokens_seen exists
        if has_progress:
            items["progress"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        raw, data_state = restored["state"], restored["data"]
        progress = restored["progress"] if has_progress else None
        _verify(restored["digest"], raw, data_state, progress)
        tokens_seen = None if progress is None else progress.get("tokens_seen")
        return dataclasses.replace(raw, rng=jax.random.wrap_key_data(raw.rng)), data_state, tokens_seen

    def steps(self) -> list[int]:
        """The steps of the finalised checkpoints, oldest first (not verified)."""
        return sorted(self._manager.all_steps())

    def restore_params(self, step: int, like: Any) -> tuple[Any, tuple[str, ...]]:
        """Only ``TrainState.params`` of ``step``, placed like ``like``, each array verified against the digest.

        Reads neither the optimizer state nor the data state (what an export
        needs). ``like`` is a params tree of arrays or ``jax.ShapeDtypeStruct``
        with shardings; parameters of the checkpoint it does not name (a head
        the run trained beside the policy) are left unread.

        Returns:
          ``(params, left_out)``: the params and the saved parameter paths not restored.

        Raises:
          CheckpointError: the checkpoint is damaged or does not hold ``like``'s parameters.
        """
        self.wait()
        abstract = {"params": jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), like)}
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=abstract,
                                             restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                             partial_restore=True),
                digest=ocp.args.JsonRestore()))
            params, stored = restored["state"]["params"], restored["digest"]
            arrays, _ = _inspect(TrainState(None, params, None, None))
            expected = stored.get("arrays", {}) if isinstance(stored, dict) else {}
            differ = sorted(p for p in arrays if arrays[p] != expected.get(p))
            if differ:
                raise _Damaged(f"digest mismatch in {len(differ)} array(s), e.g. {differ[:3]}")
        except Exception as error:  # noqa: BLE001 - any failure to read is reported as one error
            raise CheckpointError(f"checkpoint step {step} in {self.directory} cannot be restored: "
                                  f"{_reason(error)}") from None
        left_out = tuple(p for p in expected if p.startswith(".params") and p not in arrays)
        return params, left_out

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
        """The verified state of ``step``, placed like ``like`` (same shapes and shardings), and the data state.

        Raises:
          CheckpointError: the checkpoint is damaged or does not fit ``like``.
        """
        self.wait()
        try:
            return self._read(step, abstract_state(like))[:2]
        except Exception as error:  # noqa: BLE001 - any failure to read is reported as one error
            raise CheckpointError(f"checkpoint step {step} in {self.directory} cannot be restored: "
                                  f"{_reason(error)}") from None

    def _first_intact(self, abstract: TrainState) -> tuple[int | None, tuple, list[Skipped]]:
        """``(step, (state, data_state, tokens_seen), skipped)`` of the newest checkpoint that reads and verifies."""
        self.wait()
        skipped = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                return step, self._read(step, abstract), skipped
            except Exception as error:  # noqa: BLE001 - a damaged checkpoint may fail in any layer
                skipped.append(Skipped(step, _reason(error)))
        return None, (), skipped

    def newest_intact(self, like: TrainState) -> tuple[int | None, list[Skipped]]:
        """The newest checkpoint that reads back and matches its digest (None: none), and newer damaged ones.

        ``like`` may be a state or its :func:`abstract_state`. Nothing is moved.
        """
        abstract = like if isinstance(jax.tree.leaves(like)[0], jax.ShapeDtypeStruct) else abstract_state(like)
        step, _, skipped = self._first_intact(abstract)
        return step, skipped

    def restore_newest(self, like: TrainState) -> Restored | None:
        """Restores the newest intact checkpoint, moving damaged newer ones aside (see the module doc).

        Returns:
          None when the directory holds no checkpoint.

        Raises:
          CheckpointError: checkpoints exist but none can be restored (each is listed with its reason).
        """
        step, found, skipped = self._first_intact(abstract_state(like))
        if step is None and skipped:
            listed = "; ".join(f"step {s.step}: {s.reason}" for s in skipped)
            raise CheckpointError(f"no intact checkpoint in {self.directory} (each is damaged or does not fit "
                                  f"this experiment): {listed}")
        if step is None:
            return None
        for bad in skipped:
            moved = self._move_aside(bad)
            logger.warning("checkpoint step %d skipped: %s; moved to %s; restoring step %d instead",
                           bad.step, bad.reason, moved, step)
        return Restored(step, found[0], found[1], tuple(skipped), found[2])

    def _move_aside(self, bad: Skipped) -> pathlib.Path:
        """Moves a damaged step folder to :attr:`damaged_directory` with a note of why (process 0 moves)."""
        target = self.damaged_directory / str(bad.step)
        suffix = 1
        while target.exists():
            target, suffix = self.damaged_directory / f"{bad.step}.{suffix}", suffix + 1
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(bad.step)), str(target))
            (target / "DAMAGED.txt").write_text(f"skipped on restore: {bad.reason}\n")
        multihost_utils.sync_global_devices(f"jalign_checkpoint_moved_{bad.step}")
        self._manager.reload()
        return target

    def describe_last_good(self, like: TrainState) -> str:
        """``"last good checkpoint: step N in DIR"`` after verifying it, or why there is none."""
        step, skipped = self.newest_intact(like)
        damaged = "; ".join(f"step {s.step} is damaged ({s.reason})" for s in skipped)
        if step is None:
            return f"no intact checkpoint in {self.directory}" + (f": {damaged}" if damaged else " yet")
        return f"last good checkpoint: step {step} in {self.directory}" + (f" ({damaged})" if damaged else "")

    def close(self) -> None:
        """Waits for the checkpoint being written, then releases orbax's resources."""
        self._manager.close()
