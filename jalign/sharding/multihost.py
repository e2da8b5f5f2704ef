"""Multi-controller start-up, peer faults, and host-local <-> global arrays.

On a TPU pod slice (or several GPU hosts) every host runs the same command;
``initialize`` joins them through ``jax.distributed``. On a single process it
does nothing, so the same experiment runs on a laptop unchanged.

Faults are bounded by one timeout (``JALIGN_PEER_TIMEOUT``, default 60 s): a
process that cannot join the others within it, or that stops hearing from a
peer for that long, prints one ``jalign: error: ...`` line and exits with
``PEER_FAILURE_EXIT`` (75, EX_TEMPFAIL: rerun the same command on every host
once they are all up; the last checkpoint is intact). JAX's own timeouts are
set to twice as long, as a backstop: they end the process with SIGABRT and a
C++ stack, which is what happens when process 0 (which hosts JAX's
coordination service) dies, since the others lose the service at once.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

ENV_COORDINATOR = "JALIGN_COORDINATOR"
ENV_NUM_PROCESSES = "JALIGN_NUM_PROCESSES"
ENV_PROCESS_ID = "JALIGN_PROCESS_ID"
ENV_PEER_TIMEOUT = "JALIGN_PEER_TIMEOUT"
DEFAULT_PEER_TIMEOUT = 60.0
PEER_FAILURE_EXIT = 75

_RESUME = "; the last checkpoint is intact: rerun the same command on every host to resume"
_HEARTBEATS = "jalign/heartbeat/"
_FINISHED = "finished"
# Text of the errors a collective raises when a peer's connection drops (gloo on CPU).
_LOST_CONNECTION = ("Connection closed by peer", "Connection reset by peer", "heartbeat timeout",
                    "stopped sending heartbeats")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, peer_timeout: float | None = None) -> bool:
    """Joins a multi-process JAX run; returns whether one was joined.

    Arguments default to the ``JALIGN_COORDINATOR`` / ``JALIGN_NUM_PROCESSES`` /
    ``JALIGN_PROCESS_ID`` / ``JALIGN_PEER_TIMEOUT`` environment variables. With
    none of them set, a single process runs alone (and on TPU VMs
    ``jax.distributed.initialize()`` discovers the slice by itself: pass
    ``num_processes=-1`` to ask for that). On CPU, cross-process collectives
    use gloo.

    Args:
      peer_timeout: seconds allowed for every process to join, and for a peer
        to go silent before this process gives up (see the module docstring).
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if num_processes != -1 and (coordinator is None or num_processes in (None, 1)):
        return False
    timeout = peer_timeout if peer_timeout is not None else _env_float(ENV_PEER_TIMEOUT, DEFAULT_PEER_TIMEOUT)
    if not 0 < timeout < math.inf:
        raise ValueError(f"{ENV_PEER_TIMEOUT} must be a positive number of seconds; got {timeout}")
    backstop = dict(initialization_timeout=math.ceil(2 * timeout) + 5,
                    heartbeat_timeout_seconds=math.ceil(2 * timeout) + 5)
    who = "this process" if process_id is None else f"process {process_id} of {num_processes}"
    joining = threading.Timer(timeout, exit_for_peer_failure, [
        f"{who} could not join the others at {coordinator or 'the auto-detected coordinator'} within "
        f"{timeout:g} s ({ENV_PEER_TIMEOUT}): start the same command on every host, each with its own "
        f"{ENV_PROCESS_ID}, and check that the coordinator address is reachable"])
    joining.daemon = True
    joining.start()
    try:
        if num_processes == -1:
            jax.distributed.initialize(**backstop)
        else:
            # Affects only the CPU client; asking for the backend here would start it too early.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                       process_id=process_id, **backstop)
    finally:
        joining.cancel()
    _PeerWatch.start_for_this_run(timeout)
    return True


def exit_for_peer_failure(message: str) -> None:
    """Prints ``jalign: error: MESSAGE`` and ends the process with ``PEER_FAILURE_EXIT`` at once.

    ``os._exit`` skips JAX's shutdown barrier, which would wait for the lost peer.
    """
    sys.stdout.flush()
    print(f"jalign: error: {message}", file=sys.stderr, flush=True)
    os._exit(PEER_FAILURE_EXIT)


def peer_failure(error: BaseException) -> str | None:
    """What ``error`` says about a lost peer, if it is a collective failing because a peer went away."""
    if not (jax.distributed.is_initialized() and jax.process_count() > 1):
        return None
    if not any(marker in str(error) for marker in _LOST_CONNECTION):
        return None
    return f"lost a peer process during a collective ({_first_line(error)}){_RESUME}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


class _PeerWatch(threading.Thread):
    """Heartbeats through JAX's key-value store; ends the run when a peer goes silent.

    Every process bumps a counter under ``jalign/heartbeat/<id>`` every
    ``interval`` seconds and reads everyone's. A peer whose counter has not
    moved for ``timeout`` seconds (this process's clock; no clock sync
    needed) has died or hung: ``exit_for_peer_failure``. A process that exits
    normally marks itself finished, so slower peers do not mistake it for a
    dead one. The store lives in process 0: an error from it means process 0
    is gone, and a second thread catches a store that stops answering (a hung
    process 0 blocks the calls instead of failing them).
    """

    def __init__(self, client, me: int, count: int, timeout: float):
        super().__init__(name="jalign-peer-watch", daemon=True)
        self._client, self._me, self._timeout = client, me, timeout
        self._peers = [p for p in range(count) if p != me]
        self._count = count
        self._interval = min(max(timeout / 10, 0.2), 5.0)
        self._stop = threading.Event()
        self._answered = time.monotonic()

    @classmethod
    def start_for_this_run(cls, timeout: float) -> None:
        try:  # the client is not public API; without it JAX's own (aborting) timeouts remain
            from jax._src.distributed import global_state
            client = global_state.client
        except (ImportError, AttributeError):
            return
        if client is None or jax.process_count() == 1:
            return
        watch = cls(client, jax.process_index(), jax.process_count(), timeout)
        watch.start()
        threading.Thread(target=watch.guard_coordinator, name="jalign-coordinator-watch", daemon=True).start()
        atexit.register(watch.finish)  # runs before JAX's own shutdown hook, registered earlier

    def finish(self) -> None:
        self._stop.set()
        try:
            self._client.key_value_set(f"{_HEARTBEATS}{self._me}", _FINISHED, allow_overwrite=True)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass

    def run(self) -> None:
        seen = {p: (None, time.monotonic()) for p in self._peers}
        beat = 0
        while not self._stop.is_set():
            beat += 1
            try:
                self._client.key_value_set(f"{_HEARTBEATS}{self._me}", str(beat), allow_overwrite=True)
                values = dict(self._client.key_value_dir_get(_HEARTBEATS))
            except Exception as error:  # noqa: BLE001 - any failure of the store is fatal to the run
                if self._stop.is_set():
                    return
                exit_for_peer_failure(f"lost contact with process 0 (the coordinator): {_first_line(error)}{_RESUME}")
            now = self._answered = time.monotonic()
            for peer in self._peers:
                value = values.get(f"{_HEARTBEATS}{peer}")
                if value == _FINISHED:
                    seen[peer] = (value, math.inf)
                elif value != seen[peer][0]:
                    seen[peer] = (value, now)
                elif now - seen[peer][1] > self._timeout and not self._stop.is_set():
                    exit_for_peer_failure(f"process {peer} of {self._count} stopped responding: no heartbeat for "
                                          f"{self._timeout:g} s ({ENV_PEER_TIMEOUT}){_RESUME}")
            self._stop.wait(self._interval)

    def guard_coordinator(self) -> None:
        while not self._stop.wait(self._interval):
            if time.monotonic() - self._answered > self._timeout:
                exit_for_peer_failure(f"process 0 (the coordinator) stopped answering: no reply for "
                                      f"{self._timeout:g} s ({ENV_PEER_TIMEOUT}){_RESUME}")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value is None else int(value)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return default if value is None else float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds; got {value!r}") from None


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
