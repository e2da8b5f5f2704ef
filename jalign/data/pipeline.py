"""Preference data end to end: read, validate, tokenise, batch with grain.

:func:`read_preferences` makes one validating pass over a source, so every
malformed record raises (naming file, record and field) or is counted before
training starts, and the ``G`` of a ranked dataset is fixed. The kept,
tokenised examples stay in memory (preference datasets are at most a few
million records). :func:`preference_batches` builds the grain pipeline over
them: shard, shuffle, repeat, batch; its iterator's ``get_state`` /
``set_state`` (or ``grain.checkpoint`` with Orbax) resume mid-epoch.

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
from typing import Any, Sequence

import grain

from jalign.data.collate import Collator, bucket_lengths
from jalign.data.formats import RecordFormat
from jalign.data.sources import open_source
from jalign.data.tokenization import TokenizedExample, Tokenization, tokenize
from jalign.data.validation import DataFileError, OnError, RecordPolicy, SkipReport


@dataclasses.dataclass(frozen=True)
class PreferenceData:
    """Validated, tokenised examples of one source.

    Attributes:
      examples: the kept examples, in source order.
      report: records read, kept and skipped per reason.
      format: the record format (kind and, for ranked lists, ``G``).
      tokenization: the length budget the examples satisfy.
      pad_id: the tokenizer's pad id (EOS, then 0, if it has none).
    """

    examples: list[TokenizedExample]
    report: SkipReport
    format: RecordFormat
    tokenization: Tokenization
    pad_id: int

    @property
    def num_responses(self) -> int:
        """``G``."""
        return len(self.examples[0].responses)


def read_preferences(source: Any, tokenizer: Any, *,
                     tokenization: Tokenization = Tokenization(),
                     kind: str | None = None,
                     preference_field: str | None = None,
                     num_responses: int | None = None,
                     labels: Sequence[str] = (),
                     on_error: OnError = "raise") -> PreferenceData:
    """Reads, validates and tokenises every record of ``source``.

    Args:
      source: a path or dataset accepted by
        :func:`jalign.data.sources.open_source`, or a source object.
      tokenizer: a Hugging Face tokenizer (``PreTrainedTokenizerFast``); it
        needs a chat template for conversational records.
      tokenization: the length budget and truncation policy.
      kind: ``"paired"``, ``"ranked"`` or ``"unpaired"``; detected from the
        source's columns if ``None``.
      preference_field: paired records' soft P(chosen > rejected) field.
      num_responses: ranked lists' ``G``; the first valid record's if ``None``.
      labels: further labels to read from record fields
        (``jalign.data.formats.LABEL_FIELDS``), e.g. ``("score",)`` for pairs.
      on_error: ``"raise"`` a ``MalformedRecordError`` (a ``ValueError``) at
        the first bad record, or ``"skip"`` and count it in ``report``.

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
    policy = RecordPolicy(on_error, report, source.locate)
    examples = []
    for index in range(len(source)):
        example = policy.apply(index, functools.partial(
            _read_one, source, index, fmt, tokenizer, tokenization))
        if example is None:
            continue
        examples.append(example)
        report.truncated.update(example.truncated)
        if fmt.kind == "ranked" and fmt.num_responses is None:
            fmt = dataclasses.replace(fmt, num_responses=len(example.responses))
    report.log()
    if not examples:
        first = next(iter(report.first.values()), "")
        raise DataFileError(source.name, f"no usable records: skipped "
                            f"{dict(report.skipped)}; first: {first}")
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id)
                   if i is not None), 0)
    return PreferenceData(examples, policy.report, fmt, tokenization, pad_id)


def _read_one(source: Any, index: int, fmt: RecordFormat, tokenizer: Any,
              tokenization: Tokenization) -> TokenizedExample:
    return tokenize(fmt.read(source[index]), index, tokenizer, tokenization)


def preference_batches(data: PreferenceData, *, batch_size: int, seed: int = 0,
                       shuffle: bool = True, num_epochs: int | None = 1,
                       drop_remainder: bool = False,
                       prompt_buckets: Sequence[int] | None = None,
                       response_buckets: Sequence[int] | None = None,
                       shard_index: int = 0,
                       shard_count: int = 1) -> grain.MapDataset:
    """A grain dataset of padded batches (see :class:`Collator`).

    Args:
      data: from :func:`read_preferences`.
      batch_size: ``B`` per process.
      seed: the shuffle seed; each epoch is reshuffled from it.
      shuffle: shuffle globally (within this shard).
      num_epochs: passes over the data; ``None`` repeats forever.
      drop_remainder: drop a last partial batch instead of filling it with
        padding rows (``example_weight`` 0).
      prompt_buckets: allowed ``P``; default
        ``bucket_lengths(max_prompt_length or max_length)``.
      response_buckets: allowed ``R``; default ``bucket_lengths(max_length)``.
      shard_index: this process's shard (e.g. ``jax.process_index()``).
      shard_count: number of shards; shard ``i`` reads examples
        ``i, i + shard_count, ...``. Shards may differ by one example, so
        multi-process runs should use ``num_epochs=None``.

    Returns:
      A ``grain.MapDataset``; ``iter()`` of it is a ``grain.DatasetIterator``
      with ``get_state()`` / ``set_state()``.
    """
    config = data.tokenization
    collator = Collator(
        batch_size=batch_size,
        prompt_buckets=tuple(prompt_buckets or bucket_lengths(
            config.max_prompt_length or config.max_length)),
        response_buckets=tuple(response_buckets or bucket_lengths(
            config.max_length)),
        pad_id=data.pad_id)
    dataset = grain.MapDataset.source(data.examples)
    if shard_count > 1:
        dataset = dataset.slice(slice(shard_index, None, shard_count))
    if shuffle:
        dataset = dataset.shuffle(seed)
    if num_epochs != 1:
        dataset = dataset.repeat(num_epochs)
    return dataset.batch(batch_size, drop_remainder=drop_remainder,
                         batch_fn=collator)
