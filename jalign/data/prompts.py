"""Prompt-only data for online training: read, validate, tokenise, batch with grain.

A record is TRL's prompt-only format: ``{"prompt": "text"}`` or
``{"prompt": [{"role": ..., "content": ...}, ...]}``. A conversational prompt
is rendered with the tokenizer's chat template and its generation prompt (the
assistant turn's header, so generation continues as the assistant); a text
prompt is encoded with the tokenizer's own special tokens (a BOS), as the
preference pipeline encodes prompts. A prompt longer than
``max_prompt_length`` keeps its end, next to where the response starts, and
is counted as truncated. Malformed records raise (naming file, record and
field) or are counted and skipped, as for preference data.

An objective that samples the dataset's own response (a ``"data"`` source:
SPIN's SFT target, Chen et al. 2024) reads TRL's prompt-completion format:
``completion`` as a string or a list holding one assistant message. Its
text is encoded without special tokens and ends with the tokenizer's EOS, as
an offline response does.

Every process reads every prompt (a prompt set is small beside what is
generated from it) and draws the same global batch each step; each process
then feeds its contiguous share of the batch's rows. The prompts of step
``n`` therefore depend on the seed alone, not on the number of processes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import grain
import numpy as np

from jalign.data.collate import bucket_lengths
from jalign.data.fields import Text, check_text, get
from jalign.data.sources import open_source
from jalign.data.tokenization import _apply_template, _encode
from jalign.data.validation import DataFileError, Malformed, OnError, RecordPolicy, SkipReport


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt: its record index, the prompt as the record gives it (what a judge reads), its token ids."""

    index: int
    text: Text
    tokens: np.ndarray
    completion: np.ndarray | None = None  # the record's completion token ids (EOS last), when read


@dataclasses.dataclass(frozen=True)
class PromptData:
    """The kept prompts of one source, the report of reading it, and the padding they need."""

    prompts: list[Prompt]
    report: SkipReport
    pad_id: int
    max_prompt_length: int

    def text(self, index: int) -> Text:
        """The prompt of record ``index`` as the record gives it."""
        return self._texts[index]

    def completion(self, index: int) -> np.ndarray:
        """int32 token ids of record ``index``'s completion (read with ``completions=True``)."""
        return self._by_index[index].completion

    @functools.cached_property
    def _texts(self) -> dict[int, Text]:
        return {p.index: p.text for p in self.prompts}

    @functools.cached_property
    def _by_index(self) -> dict[int, Prompt]:
        return {p.index: p for p in self.prompts}


def _read_completion(record: dict, tokenizer: Any) -> np.ndarray:
    """The record's completion as token ids ending with EOS; raises ``Malformed``."""
    value = get(record, "completion")
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise Malformed("wrong_type", "completion", "a conversational completion must be one assistant message")
        value = value[0].get("content")
    check_text(value, "completion", False)
    ids = _encode(tokenizer, [value], "completion", add_special_tokens=False)[0]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    if not ids:
        raise Malformed("invalid_text", "completion", "the completion encodes to no tokens")
    return np.asarray(ids, np.int32)


def _read_prompt(record: Any, index: int, tokenizer: Any, max_prompt_length: int,
                 completions: bool = False) -> tuple[Prompt, bool]:
    """One record's prompt and whether it was cut; raises ``Malformed``."""
    if not isinstance(record, dict):
        raise Malformed("wrong_type", None, f"a record must be an object; got {type(record).__name__}")
    value = get(record, "prompt")
    if check_text(value, "prompt", None):
        ids = _encode(tokenizer, [_apply_template(tokenizer, value, "prompt", add_generation_prompt=True)],
                      "prompt", add_special_tokens=False)[0]
    else:
        ids = _encode(tokenizer, [value], "prompt")[0]
    if not ids:
        raise Malformed("invalid_text", "prompt", "the prompt encodes to no tokens")
    cut = len(ids) > max_prompt_length
    completion = _read_completion(record, tokenizer) if completions else None
    return Prompt(index, value, np.asarray(ids[-max_prompt_length:], np.int32), completion), cut


def read_prompts(source: Any, tokenizer: Any, *, max_prompt_length: int, on_error: OnError = "raise",
                 completions: bool = False) -> PromptData:
    """Reads, validates and tokenises every prompt of ``source``.

    Args:
      source: a JSONL/Parquet file, a ``datasets`` directory or a source object
        (:func:`jalign.data.sources.open_source`) whose records have ``prompt``.
      tokenizer: a Hugging Face tokenizer (with a chat template for messages).
      max_prompt_length: most prompt tokens; longer prompts keep their end.
      on_error: ``"raise"`` at the first malformed record or ``"skip"`` and count.
      completions: also read every record's ``completion`` (TRL's
        prompt-completion format), for a ``"data"`` sampling source.

    Raises:
      MalformedRecordError: a bad record under ``on_error="raise"``.
      DataFileError: no ``prompt`` column (or ``completion`` column when
        ``completions``), or no record was kept.
    """
    source = open_source(source)
    wanted = ("prompt", "completion") if completions else ("prompt",)
    for field in wanted:
        if field not in source.columns:
            raise DataFileError(source.name, f"{'prompt-completion' if completions else 'prompt-only'} data needs a "
                                             f"{field!r} field; the records have {sorted(source.columns)}")
    report = SkipReport(source.name, ignored_columns=tuple(c for c in source.columns if c not in wanted))
    policy = RecordPolicy(on_error, report, source.locate)
    prompts = []
    for index in range(len(source)):
        read = policy.apply(index, lambda: _read_prompt(source[index], index, tokenizer, max_prompt_length,
                                                        completions))
        if read is None:
            continue
        prompt, cut = read
        prompts.append(prompt)
        if cut:
            report.truncated["prompt"] += 1
    report.kept = len(prompts)
    report.log()
    if not prompts:
        first = next(iter(report.first.values()), "")
        raise DataFileError(source.name, f"no usable prompts: skipped {dict(report.skipped)}; first: {first}")
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    return PromptData(prompts, report, pad_id, max_prompt_length)


@dataclasses.dataclass(frozen=True)
class _Collate:
    """Left-pads a global batch of prompts to the smallest bucket that holds its longest."""

    buckets: tuple[int, ...]
    pad_id: int

    def __call__(self, prompts: list[Prompt]) -> dict:
        longest = max(len(p.tokens) for p in prompts)
        length = next(b for b in self.buckets if b >= longest)
        tokens = np.full((len(prompts), length), self.pad_id, np.int32)
        mask = np.zeros((len(prompts), length), np.int32)
        for row, prompt in enumerate(prompts):
            tokens[row, length - len(prompt.tokens):] = prompt.tokens
            mask[row, length - len(prompt.tokens):] = 1
        return {"prompt_tokens": tokens, "prompt_mask": mask,
                "record_index": np.asarray([p.index for p in prompts], np.int64)}


def prompt_batches(data: PromptData, *, batch_size: int, seed: int = 0, shuffle: bool = True) -> grain.MapDataset:
    """Global batches of prompts, repeated forever: ``prompt_tokens``/``prompt_mask`` int32 ``[B, P]``
    (left-padded to a power-of-two bucket), ``record_index`` int64 ``[B]``.

    ``iter()`` of it is a ``grain.DatasetIterator`` whose ``get_state`` /
    ``set_state`` resume mid-epoch. Each epoch is reshuffled from ``seed``.
    """
    dataset = grain.MapDataset.source(data.prompts)
    if shuffle:
        dataset = dataset.shuffle(seed)
    return dataset.repeat(None).batch(batch_size, drop_remainder=True,
                                      batch_fn=_Collate(bucket_lengths(data.max_prompt_length), data.pad_id))
