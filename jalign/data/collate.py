"""Padding tokenised examples into fixed-shape NumPy batches.

Lengths are padded up to the smallest of a few bucket lengths, so a jitted
train step compiles one program per (prompt bucket, response bucket) pair
rather than one per batch. Prompts are padded on the left and responses on
the right, so ``[prompt | response]`` is contiguous in every row. A batch with
fewer than ``batch_size`` examples (the last one of a finite dataset) is
filled with padding rows whose masks and ``example_weight`` are 0.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Sequence

import numpy as np

from jalign.data.tokenization import TokenizedExample


def bucket_lengths(max_length: int, *, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``max_length``, then ``max_length``.

    >>> bucket_lengths(100)
    (16, 32, 64, 100)
    """
    buckets = []
    length = smallest
    while length < max_length:
        buckets.append(length)
        length *= 2
    return tuple(buckets) + (max_length,)


def _bucket(length: int, buckets: tuple[int, ...], what: str) -> int:
    i = bisect.bisect_left(buckets, length)
    if i == len(buckets):
        raise ValueError(f"{what} length {length} exceeds the largest bucket "
                         f"{buckets[-1]}")
    return buckets[i]


@dataclasses.dataclass(frozen=True)
class Collator:
    """``batch_fn`` for grain: tokenised examples -> one padded batch.

    Attributes:
      batch_size: ``B``; shorter lists are filled with padding rows.
      prompt_buckets: ascending allowed prompt lengths ``P``.
      response_buckets: ascending allowed response lengths ``R``.
      pad_id: the id written at padded positions (masked out).
    """

    batch_size: int
    prompt_buckets: tuple[int, ...]
    response_buckets: tuple[int, ...]
    pad_id: int

    def __call__(self, examples: Sequence[TokenizedExample], *,
                 lengths: tuple[int, int] | None = None) -> dict:
        """Pads and stacks ``examples``.

        Args:
          examples: 1 to ``batch_size`` examples.
          lengths: the longest prompt and response to pad for, at least those
            of ``examples`` (each is rounded up to its bucket); default: those
            of ``examples``. Processes that feed parts of one global batch
            pass the global batch's, so all pick the same ``P`` and ``R``.

        Returns:
          ``prompt_tokens`` int32 ``[B, P]`` (left-padded), ``prompt_mask``
          int32 ``[B, P]``, ``response_tokens`` int32 ``[B, G, R]``
          (right-padded), ``response_mask`` int32 ``[B, G, R]``,
          ``record_index`` int64 ``[B]`` (-1 for padding rows), with
          precomputed reference log-probs ``reference_logprobs`` float32
          ``[B, G, R]``, and ``labels``:
          ``example_weight`` float32 ``[B]`` plus the examples' labels stacked
          (``preference`` ``[B]``, ``score`` / ``desirable`` ``[B, G]``).
        """
        if not 0 < len(examples) <= self.batch_size:
            raise ValueError(f"got {len(examples)} examples for a batch of "
                             f"{self.batch_size}")
        num_responses = len(examples[0].responses)
        longest = (max(len(e.prompt) for e in examples),
                   max(len(r) for e in examples for r in e.responses))
        if lengths is not None and (lengths[0] < longest[0] or lengths[1] < longest[1]):
            raise ValueError(f"lengths {lengths} are shorter than the examples' {longest}")
        longest = lengths or longest
        prompt_len = _bucket(longest[0], self.prompt_buckets, "prompt")
        response_len = _bucket(longest[1], self.response_buckets, "response")
        shape = (self.batch_size, num_responses, response_len)
        prompt = np.full((self.batch_size, prompt_len), self.pad_id, np.int32)
        prompt_mask = np.zeros((self.batch_size, prompt_len), np.int32)
        response = np.full(shape, self.pad_id, np.int32)
        response_mask = np.zeros(shape, np.int32)
        for b, example in enumerate(examples):
            if len(example.prompt):
                prompt[b, -len(example.prompt):] = example.prompt
                prompt_mask[b, -len(example.prompt):] = 1
            for g, tokens in enumerate(example.responses):
                response[b, g, :len(tokens)] = tokens
                response_mask[b, g, :len(tokens)] = 1
        index = np.full((self.batch_size,), -1, np.int64)
        index[:len(examples)] = [e.index for e in examples]
        batch = {"prompt_tokens": prompt, "prompt_mask": prompt_mask,
                 "response_tokens": response, "response_mask": response_mask,
                 "record_index": index, "labels": self._labels(examples)}
        if examples[0].reference_logprobs is not None:
            reference = np.zeros(shape, np.float32)
            for b, example in enumerate(examples):
                for g, logprobs in enumerate(example.reference_logprobs):
                    reference[b, g, :len(logprobs)] = logprobs
            batch["reference_logprobs"] = reference
        return batch

    def _labels(self, examples: Sequence[TokenizedExample]) -> dict:
        labels = {"example_weight": np.zeros((self.batch_size,), np.float32)}
        labels["example_weight"][:len(examples)] = 1.0
        for key, first in examples[0].labels.items():
            value = np.zeros((self.batch_size,) + np.shape(first), np.float32)
            value[:len(examples)] = np.stack([e.labels[key] for e in examples])
            labels[key] = value
        return labels
