"""Orbax checkpoints of a run: train state, data-iterator state, RNG and step together.

A checkpoint is written only when every parameter and optimizer buffer is
finite, so a run that diverges keeps its last good checkpoint. Restoring
places arrays directly with their target shardings.
"""

from __future__ import annotations

import pathlib
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jalign.train.step import TrainState


class NonFiniteStateError(RuntimeError):
    """Raised instead of saving a state that holds NaN or inf."""


def _savable(state: TrainState) -> TrainState:
    """PRNG keys are saved as their raw key data."""
    return TrainState(state.step, state.params, state.opt_state, jax.random.key_data(state.rng))


def _nonfinite_paths(tree) -> list[str]:
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jnp.issubdtype(leaf.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(leaf))):
            bad.append(jax.tree_util.keystr(path))
    return bad


class Checkpointer:
    """Saves and restores ``(TrainState, data iterator state)`` by step.

    Args:
      directory: where step folders go (created if missing).
      keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict) -> None:
        """Writes the checkpoint of ``step``; refuses non-finite states."""
        savable = _savable(state)
        bad = _nonfinite_paths((savable.params, savable.opt_state))
        if bad:
            raise NonFiniteStateError(f"refusing to save step {step}: non-finite values at {bad[:5]}")
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(savable), data=ocp.args.JsonSave(data_state)))
        self._manager.wait_until_finished()

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
        """The state of ``step``, placed like ``like`` (same shapes and shardings), and the data state."""
        abstract_state = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _savable(like))
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        raw = restored["state"]
        state = TrainState(raw.step, raw.params, raw.opt_state, jax.random.wrap_key_data(raw.rng))
        return state, restored["data"]

    def close(self) -> None:
        self._manager.close()
