"""Data shards across processes: who reads which records, and batches whose shapes every process agrees on.

A source is cut into ``count`` shards by record index (record ``i`` is in
shard ``i % count``); process ``p`` of ``P`` reads and tokenises only shards
``p * count / P ... (p + 1) * count / P - 1``. The data order is a function of
the seed and ``count`` alone, so one process holding every shard feeds the
same global batches as ``P`` processes each holding its share.

Every process must pad step ``n`` to the same ``[P, R]``, or the step's
collectives disagree. Each process learns, once after reading, every kept
record's prompt and longest-response length in every shard (one small
all-gather of ``[records, 3]`` int32). Since the per-shard order of step ``n``
is a pure function of the seed, ``n`` and the shard's record count, every
process then computes the lengths of all shards' rows of step ``n`` and picks
the same buckets, with no communication per step. An all-gather of the
per-process maxima at every step would also agree, but it is a device
collective that queues behind the running train step, so the host would stall
on it before it could dispatch the next one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np
from jax.experimental import multihost_utils

from jalign.data.collate import Collator
from jalign.data.tokenization import TokenizedExample


@dataclasses.dataclass(frozen=True)
class Shards:
    """The shards of a source and the ones this process reads.

    Attributes:
      count: shards the source is cut into (record ``i`` is in shard ``i % count``).
      process_index: this process.
      process_count: processes sharing the shards; ``count`` must divide over them.
    """

    count: int = 1
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if self.count < 1 or self.count % self.process_count:
            raise ValueError(f"data.shards={self.count} must be a positive multiple of the "
                             f"{self.process_count} processes")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process {self.process_index} is not one of {self.process_count}")

    @property
    def owned(self) -> range:
        """The shards this process reads."""
        per = self.count // self.process_count
        return range(self.process_index * per, (self.process_index + 1) * per)

    def records(self, total: int) -> list[int]:
        """This process's record indices among ``total``, in source order."""
        return [i for i in range(total) if i % self.count in self.owned]

    def most_records(self, total: int) -> int:
        """The most records any process reads (the row count every process pads its part of an exchange to)."""
        per = self.count // self.process_count
        return per * -(-total // self.count)


def exchange(local: dict[str, np.ndarray], shards: Shards) -> list[dict[str, np.ndarray]]:
    """Every process's ``local`` (same keys, shapes and dtypes everywhere), in process order.

    One process: ``[local]``. Several: one ``process_allgather``; every
    process must call it at the same point.
    """
    if shards.process_count == 1:
        return [local]
    gathered = multihost_utils.process_allgather(local)
    return [{k: np.asarray(v[p]) for k, v in gathered.items()} for p in range(shards.process_count)]


def _order(size: int, *, batch_size: int, seed: int, shuffle: bool, num_epochs: int | None,
           drop_remainder: bool) -> grain.MapDataset:
    """Positions ``[b]`` into one shard's records for every step (the same pipeline as one unsharded source)."""
    order = grain.MapDataset.range(size)
    if shuffle:
        order = order.shuffle(seed)
    if num_epochs != 1:
        order = order.repeat(num_epochs)
    return order.batch(batch_size, drop_remainder=drop_remainder)


@dataclasses.dataclass(frozen=True)
class _AlignedBatch:
    """``step -> batch``: this process's shards' rows, padded to the buckets of every shard's rows."""

    orders: tuple[grain.MapDataset, ...]  # one per shard
    lengths: tuple[np.ndarray, ...]  # per shard, ``[records, 2]``: prompt, longest response
    examples: dict[int, Sequence[TokenizedExample]]  # this process's shards
    collator: Collator

    def __call__(self, step: int) -> dict:
        picks = [np.asarray(order[step]) for order in self.orders]
        needed = np.max(np.concatenate([lengths[p] for lengths, p in zip(self.lengths, picks)]), axis=0)
        parts = [self.collator([self.examples[s][i] for i in picks[s]], lengths=(int(needed[0]), int(needed[1])))
                 for s in sorted(self.examples)]
        return _concatenate(parts)


def _concatenate(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {k: _concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts, axis=0)


def aligned_batches(examples: Sequence[TokenizedExample], lengths: np.ndarray, shards: Shards, *, batch_size: int,
                    collator: Collator, seed: int, shuffle: bool, num_epochs: int | None,
                    drop_remainder: bool) -> grain.MapDataset:
    """Step ``n``: this process's ``batch_size`` rows of global batch ``n``, ``batch_size / len(shards.owned)``
    from each of its shards in shard order, padded to the buckets of all shards' rows of step ``n``.

    Args:
      examples: this process's kept examples.
      lengths: int ``[kept records of all shards, 3]``: record index, prompt
        length, longest response length, sorted by record index.
      shards: the shards and this process's share.

    With finite ``num_epochs`` the dataset ends with its shortest shard.
    """
    owned = shards.owned
    if batch_size % len(owned):
        raise ValueError(f"a batch of {batch_size} rows per process does not divide over its {len(owned)} shards")
    per_shard = batch_size // len(owned)
    by_shard = [lengths[lengths[:, 0] % shards.count == s] for s in range(shards.count)]
    empty = [s for s, rows in enumerate(by_shard) if not len(rows)]
    if empty:
        raise ValueError(f"data shard(s) {empty} of {shards.count} hold no usable record; use fewer data.shards")
    orders = tuple(_order(len(rows), batch_size=per_shard, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                          drop_remainder=drop_remainder) for rows in by_shard)
    mine = {s: [e for e in examples if e.index % shards.count == s] for s in owned}
    if any(len(mine[s]) != len(by_shard[s]) for s in owned):
        raise ValueError("this process's examples are not the kept records of its shards in the length table")
    batch = _AlignedBatch(orders, tuple(rows[:, 1:] for rows in by_shard), mine,
                          dataclasses.replace(collator, batch_size=per_shard))
    return grain.MapDataset.range(min(len(order) for order in orders)).map(batch)
