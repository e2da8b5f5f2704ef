"""Moving batches between hosts and devices, the same way on one process and on many.

A batch that every process holds whole (a global batch of prompts, an
evaluation batch, generated responses) is fed by each process's contiguous
share of its rows; device outputs sharded over processes are gathered whole
onto every process.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils

from jalign.sharding import global_batch


def device_batch(batch: dict, mesh) -> dict:
    """This process's rows of a batch as the step's input (global arrays across processes)."""
    batch = {k: v for k, v in batch.items() if k != "record_index"}
    return global_batch(batch, mesh) if jax.process_count() > 1 else batch


def process_rows(batch: dict) -> dict:
    """This process's contiguous share of the rows of a batch that every process holds whole."""
    rows = len(jax.tree.leaves(batch)[0]) // jax.process_count()
    return jax.tree.map(lambda x: x[jax.process_index() * rows:(jax.process_index() + 1) * rows], batch)


def gathered(outputs):
    """Outputs sharded over processes, fetched whole onto every process (as they are on one process)."""
    return multihost_utils.process_allgather(outputs, tiled=True) if jax.process_count() > 1 else outputs
