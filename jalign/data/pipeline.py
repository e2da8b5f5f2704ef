"""Preference data end to end: read, validate, tokenise, batch with grain.

:func:`read_preferences` makes one validating pass over a source, so every
malformed record raises (naming file, record and field) or is counted before
training starts, and the ``G`` of a ranked dataset is fixed. The kept,
tokenised examples stay in memory (preference datasets are at most a few
million records). :func:`preference_batches` builds the grain pipeline over
them: shuffle, repeat, batch; its iterator's ``get_state`` /
``set_state`` (or ``grain.checkpoint`` with Orbax) resume mid-epoch.

Across processes (``shards=Shards(count, jax.process_index(),
jax.process_count())``) each process reads and tokenises only its shards of
the source, and every process pads each step to the same shapes
(:mod:`jalign.data.shards`).

Typical use::

    data = read_preferences("prefs.jsonl", tokenizer,
                            tokenization=Tokenization(max_length=512),
                            on_error="skip")
    it = iter(preference_batches(data, batch_size=8, seed=0, num_epochs=None))
    batch = next(it)        # see Collator.__call__ for the arrays
    state = it.get_state()  # save with the train state; it.set_state(state)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Collection, Sequence

import grain
import numpy as np

from jalign.data.collate import Collator, bucket_lengths
from jalign.data.formats import RecordFormat
from jalign.data.shards import Shards, aligned_batches, exchange
from jalign.data.sources import open_source
from jalign.data.tokenization import TokenizedExample, Tokenization, tokenize
from jalign.data.validation import (REASONS, DataFileError, Malformed, MalformedRecordError, OnError, RecordPolicy,
                                    SkipReport)

_TRUNCATED = ("prompt", "response")


@dataclasses.dataclass(frozen=True)
class PreferenceData:
    """Validated, tokenised examples of one source.

    Attributes:
      examples: the kept examples of this process's shards, in source order.
      report: records read, kept and skipped per reason, over all shards.
      format: the record format (kind and, for ranked lists, ``G``).
      tokenization: the length budget the examples satisfy.
      pad_id: the tokenizer's pad id (EOS, then 0, if it has none).
      lengths: int32 ``[kept records of all shards, 3]``: record index,
        prompt length, longest response length, sorted by record index.
      shards: the shards and which of them this process holds.
    """

    examples: list[TokenizedExample]
    report: SkipReport
    format: RecordFormat
    tokenization: Tokenization
    pad_id: int
    lengths: np.ndarray
    shards: Shards = Shards()

    @property
    def num_responses(self) -> int:
        """``G``."""
        return len(self.examples[0].responses)

    def local(self) -> PreferenceData:
        """This process's examples as one unsharded dataset (for a pass that involves no other process)."""
        return dataclasses.replace(self, shards=Shards())

    def for_shards(self, shards: Shards) -> PreferenceData:
        """The share of ``shards``' process of data read whole (``lengths`` already covers every shard)."""
        if self.shards != Shards():
            raise ValueError(f"for_shards needs data read whole; this holds {self.shards}")
        return dataclasses.replace(self, shards=shards, examples=[
            e for e in self.examples if e.index % shards.count in shards.owned])

    def without(self, records: set[int]) -> PreferenceData:
        """The data less the given record indices (examples and lengths; the report is unchanged)."""
        return dataclasses.replace(
            self, examples=[e for e in self.examples if e.index not in records],
            lengths=self.lengths[~np.isin(self.lengths[:, 0], sorted(records))])


def read_preferences(source: Any, tokenizer: Any, *,
                     tokenization: Tokenization = Tokenization(),
                     kind: str | None = None,
                     preference_field: str | None = None,
                     num_responses: int | None = None,
                     labels: Sequence[str] = (),
                     on_error: OnError = "raise",
                     shards: Shards = Shards(),
                     only: Collection[int] | None = None) -> PreferenceData:
    """Reads, validates and tokenises the records of ``source`` this process holds.

    Args:
      source: a path or dataset accepted by
        :func:`jalign.data.sources.open_source`, or a source object.
      tokenizer: a Hugging Face tokenizer (``PreTrainedTokenizerFast``); it
        needs a chat template for conversational records.
      tokenization: the length budget and truncation policy.
      kind: ``"paired"``, ``"ranked"``, ``"unpaired"`` or ``"joint"``; detected from the
        source's columns if ``None``.
      preference_field: paired records' soft P(chosen > rejected) field.
      num_responses: ranked lists' ``G``; the first valid record's if ``None``.
      labels: further labels to read from record fields
        (``jalign.data.formats.LABEL_FIELDS``), e.g. ``("score",)`` for pairs.
      on_error: ``"raise"`` a ``MalformedRecordError`` (a ``ValueError``) at
        the first bad record, or ``"skip"`` and count it in ``report``.
      shards: read only this process's shards. With several processes every
        process must call this at the same point: they exchange, once, each
        kept record's lengths and the skip counts, so the report and
        ``lengths`` cover all shards, and under ``on_error="raise"`` every
        process raises the same error, for the first bad record of the source.
      only: read only these record indices (every process the same ones).

    Returns:
      The kept examples with the report (also logged): records kept, skipped
      per reason, truncated per part, and the columns the format ignores.

    Raises:
      MalformedRecordError: a bad record under ``on_error="raise"``.
      DataFileError: a bad file whatever ``on_error`` says (missing, empty,
        unreadable, no column for a field the format reads, a misspelt
        ``prompt`` column), or no record was kept.
    """
    source = open_source(source)
    fmt = RecordFormat.for_columns(source.columns, kind=kind,
                                   preference_field=preference_field,
                                   num_responses=num_responses, labels=labels,
                                   source=source.name)
    report = SkipReport(source.name,
                        ignored_columns=fmt.check_columns(source.columns, source.name))
    read = functools.partial(_read_one, source, tokenizer=tokenizer, tokenization=tokenization)
    if shards.count > 1 and fmt.kind == "ranked" and fmt.num_responses is None:
        # Each shard's first record may differ in G; every process fixes the source's first valid one's.
        fmt = dataclasses.replace(fmt, num_responses=_first_count(source, fmt, read))
    policy = RecordPolicy(on_error, report, source.locate)
    records = shards.records(len(source))
    examples, error = [], None
    if only is not None:
        only = set(only)
        records = [i for i in records if i in only]
    for index in records:
        try:
            example = policy.apply(index, functools.partial(read, index, fmt))
        except MalformedRecordError as raised:
            error = raised  # raised below, once every process knows the source's first bad record
            break
        if example is None:
            continue
        examples.append(example)
        report.truncated.update(example.truncated)
        if fmt.kind == "ranked" and fmt.num_responses is None:
            fmt = dataclasses.replace(fmt, num_responses=len(example.responses))
    lengths, first_bad = _share(examples, report, error, shards, shards.most_records(len(source)))
    if error is not None and error.index == first_bad:
        raise error
    if first_bad is not None:  # another process's: reading it here raises the same error
        RecordPolicy("raise", SkipReport(source.name), source.locate).apply(
            first_bad, functools.partial(read, first_bad, fmt))
    report.log()
    if not report.kept:
        first = next(iter(report.first.values()), "")
        raise DataFileError(source.name, f"no usable records: skipped "
                            f"{dict(report.skipped)}; first: {first}")
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id)
                   if i is not None), 0)
    return PreferenceData(examples, report, fmt, tokenization, pad_id, lengths, shards)


def _first_count(source: Any, fmt: RecordFormat, read) -> int | None:
    """``G`` of the first record that reads cleanly (None: none does)."""
    for index in range(len(source)):
        try:
            return len(read(index, fmt).responses)
        except Malformed:
            continue
    return None


def _share(examples: list[TokenizedExample], report: SkipReport, error: MalformedRecordError | None,
           shards: Shards, rows: int) -> tuple[np.ndarray, int | None]:
    """Exchanges what each process read: ``(lengths, None)`` with the counts in ``report`` summed over processes,
    or, when any process met a bad record under ``on_error="raise"``, ``(empty, the source's first one)``."""
    mine = np.full((rows, 3), -1, np.int32)
    for row, e in enumerate(examples):
        mine[row] = e.index, len(e.prompt), max(len(r) for r in e.responses)
    counts = np.array([report.total, report.kept] + [report.skipped[r] for r in REASONS]
                      + [report.truncated[t] for t in _TRUNCATED], np.int32)
    failed = np.array([-1 if error is None else error.index], np.int32)
    every = exchange({"lengths": mine, "counts": counts, "failed": failed}, shards)
    bad = [int(part["failed"][0]) for part in every if part["failed"][0] >= 0]
    if bad:
        return mine[:0], min(bad)
    total = np.sum([part["counts"] for part in every], axis=0)
    report.total, report.kept = int(total[0]), int(total[1])
    report.skipped.clear()
    report.skipped.update({r: int(n) for r, n in zip(REASONS, total[2:]) if n})
    report.truncated.clear()
    report.truncated.update({t: int(n) for t, n in zip(_TRUNCATED, total[2 + len(REASONS):]) if n})
    lengths = np.concatenate([part["lengths"] for part in every])
    lengths = lengths[lengths[:, 0] >= 0]
    return lengths[np.argsort(lengths[:, 0], kind="stable")], None


def _read_one(source: Any, index: int, fmt: RecordFormat, *, tokenizer: Any,
              tokenization: Tokenization) -> TokenizedExample:
    return tokenize(fmt.read(source[index]), index, tokenizer, tokenization)


def preference_batches(data: PreferenceData, *, batch_size: int, seed: int = 0,
                       shuffle: bool = True, num_epochs: int | None = 1,
                       drop_remainder: bool = False,
                       prompt_buckets: Sequence[int] | None = None,
                       response_buckets: Sequence[int] | None = None) -> grain.MapDataset:
    """A grain dataset of padded batches (see :class:`Collator`).

    Args:
      data: from :func:`read_preferences`.
      batch_size: ``B`` per process.
      seed: the shuffle seed; each epoch is reshuffled from it.
      shuffle: shuffle globally (within each shard).
      num_epochs: passes over the data; ``None`` repeats forever.
      drop_remainder: drop a last partial batch instead of filling it with
        padding rows (``example_weight`` 0).
      prompt_buckets: allowed ``P``; default
        ``bucket_lengths(max_prompt_length or max_length)``.
      response_buckets: allowed ``R``; default ``bucket_lengths(max_length)``.

    Returns:
      A ``grain.MapDataset``; ``iter()`` of it is a ``grain.DatasetIterator``
      with ``get_state()`` / ``set_state()``. With ``data.shards.count > 1``
      batch ``n`` holds ``B / len(owned)`` rows of each of this process's
      shards, each shard shuffled on its own, padded to the buckets of every
      shard's rows of batch ``n`` (:func:`jalign.data.shards.aligned_batches`);
      shards may differ by one record, so multi-process runs should use
      ``num_epochs=None``.
    """
    config = data.tokenization
    collator = Collator(
        batch_size=batch_size,
        prompt_buckets=tuple(prompt_buckets or bucket_lengths(
            config.max_prompt_length or config.max_length)),
        response_buckets=tuple(response_buckets or bucket_lengths(
            config.max_length)),
        pad_id=data.pad_id)
    if data.shards.count > 1:
        return aligned_batches(data.examples, data.lengths, data.shards, batch_size=batch_size, collator=collator,
                               seed=seed, shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder)
    dataset = grain.MapDataset.source(data.examples)
    if shuffle:
        dataset = dataset.shuffle(seed)
    if num_epochs != 1:
        dataset = dataset.repeat(num_epochs)
    return dataset.batch(batch_size, drop_remainder=drop_remainder,
                         batch_fn=collator)
