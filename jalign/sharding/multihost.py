"""Multi-controller start-up and host-local <-> global arrays.

On a TPU pod slice (or several GPU hosts) every host runs the same command;
``initialize`` joins them through ``jax.distributed``. On a single process it
does nothing, so the same experiment runs on a laptop unchanged.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

ENV_COORDINATOR = "JALIGN_COORDINATOR"
ENV_NUM_PROCESSES = "JALIGN_NUM_PROCESSES"
ENV_PROCESS_ID = "JALIGN_PROCESS_ID"


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Joins a multi-process JAX run; returns whether one was joined.

    Arguments default to the ``JALIGN_COORDINATOR`` / ``JALIGN_NUM_PROCESSES`` /
    ``JALIGN_PROCESS_ID`` environment variables. With none of them set, a
    single process runs alone (and on TPU VMs ``jax.distributed.initialize()``
    discovers the slice by itself: pass ``num_processes=-1`` to ask for that).
    On CPU, cross-process collectives use gloo.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if num_processes == -1:
        jax.distributed.initialize()
        return True
    if coordinator is None or num_processes in (None, 1):
        return False
    # Affects only the CPU client; asking for the backend here would start it too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value is None else int(value)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, batch_axes=("data", "fsdp")) -> dict[str, jax.Array]:
    """Assembles each process's rows of a batch into global arrays sharded on ``batch_axes``.

    Args:
      local: this process's slice, leading dimension = global batch / processes.
      mesh: the global mesh.
      batch_axes: mesh axes the leading (batch) dimension is split over.
    """
    def assemble(x):
        spec = PartitionSpec(batch_axes, *([None] * (np.ndim(x) - 1)))
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), np.asarray(x))

    return jax.tree.map(assemble, local)


def place(tree, shardings):
    """Puts a pytree that every process holds identically onto ``shardings``.

    One process: ``jax.device_put``. Several: each process builds its
    addressable shards from its own copy (``jax.make_array_from_callback``),
    since ``device_put`` cannot target other hosts' devices. ``shardings`` may
    be a prefix of ``tree`` (one sharding for a whole ``nnx.Variable``).
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, sharding):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: put(x, s), sub), shardings, tree)
