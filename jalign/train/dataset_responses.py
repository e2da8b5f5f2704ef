"""The dataset's own responses in the online loop: a ``"data"`` response slot and DR-PO's dataset reset.

Both read the prompt records' ``completion`` (TRL's prompt-completion
format). A ``"data"`` slot (SPIN's SFT target, Chen et al. 2024) is the
record's completion, cut to ``online.max_new_tokens``.

Chang et al. 2024 (*Dataset Reset Policy Optimization for RLHF*) start
generation from states of the offline data. The authors' roll-in
(Cornell-RL/tril ``RollinProcessor``) resets a prompt with probability
``beta`` and then forces the first ``h`` tokens of the reference response,
``h`` uniform in ``1 .. len - 1``; those tokens are masked out of the loss.
Here the ``h`` tokens join the prompt (so the objective conditions on them
and never trains on them) and the responses are the continuations; the judge
reads the rolled-in tokens and the continuation together, as the authors'
reward model does.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from jalign.data.prompts import PromptData
from jalign.data.sources import open_source
from jalign.objectives.declaration import DATA, Sampling


def samples_dataset(sampling: Sampling | None) -> bool:
    """Whether the rollout reads the prompt records' completions: a ``"data"`` slot or a dataset reset."""
    return sampling is not None and (DATA in sampling.responses or bool(sampling.reset))


def prompt_columns(exp: Any) -> tuple[str, ...]:
    """The prompt file's fields when the objective reads the dataset's responses (the plan checks
    ``completion``); ``()`` otherwise, without opening the file."""
    if not samples_dataset(exp.objective.sampling):
        return ()
    return tuple(open_source(exp.online.prompts).columns)


def completion_responses(data: PromptData, record_index: np.ndarray, copies: int, max_new_tokens: int,
                         stops: np.ndarray, decode: Callable[[np.ndarray], str]):
    """``(tokens, mask, texts, stopped)`` of each record's completion ``copies`` times, its first
    ``max_new_tokens`` tokens kept: int32 / bool ``[B, copies, N]``, ``[B][copies]`` texts (stop token
    dropped), bool ``[B, copies]``."""
    rows = [data.completion(int(i))[:max_new_tokens] for i in record_index]
    tokens = np.full((len(rows), copies, max_new_tokens), data.pad_id, np.int32)
    mask = np.zeros((len(rows), copies, max_new_tokens), bool)
    for i, ids in enumerate(rows):
        tokens[i, :, :len(ids)], mask[i, :, :len(ids)] = ids, True
    stopped = np.repeat(np.asarray([np.isin(ids[-1], stops) for ids in rows])[:, None], copies, 1)
    texts = [[decode(ids[:len(ids) - int(stop)])] * copies for ids, stop in zip(rows, stopped[:, 0])]
    return tokens, mask, texts, stopped


def prefix_lengths(lengths: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """int ``[B]`` roll-in lengths ``h``: 0 (no reset) with probability ``1 - probability`` or for a
    completion shorter than 2 tokens, else uniform in ``1 .. len - 1``."""
    lengths = np.asarray(lengths, np.int64)
    reset = rng.random(len(lengths)) < probability
    uniform = 1 + np.floor(rng.random(len(lengths)) * np.maximum(lengths - 1, 1)).astype(np.int64)
    return np.where(reset & (lengths >= 2), uniform, 0)


def extended_prompts(prompts: dict, prefixes: Sequence[np.ndarray], pad_id: int,
                     buckets: Sequence[int]) -> dict:
    """The batch's prompts with each row's prefix appended, left-padded to the smallest bucket that holds the longest.

    ``prompts``: ``prompt_tokens`` / ``prompt_mask`` int32 ``[B, P]`` (left-padded) and ``record_index``.
    """
    rows = [np.concatenate([tokens[mask.astype(bool)], prefix]).astype(np.int32)
            for tokens, mask, prefix in zip(prompts["prompt_tokens"], prompts["prompt_mask"], prefixes)]
    longest = max(len(row) for row in rows)
    length = next(b for b in buckets if b >= longest)
    tokens = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        tokens[i, length - len(row):], mask[i, length - len(row):] = row, 1
    return {**prompts, "prompt_tokens": tokens, "prompt_mask": mask}


def judged_texts(tokens: np.ndarray, mask: np.ndarray, stopped: np.ndarray, prefixes: Sequence[np.ndarray],
                 decode: Callable[[np.ndarray], str]) -> list[list[str]]:
    """``[B][C]`` what the judge reads: each row's rolled-in prefix followed by the continuation (stop token dropped).

    ``tokens``, ``mask``: ``[B, C, N]`` continuations; ``stopped``: bool ``[B, C]``.
    """
    lengths = mask.astype(bool).sum(-1)
    return [[decode(np.concatenate([prefixes[i], tokens[i, c, :lengths[i, c] - int(stopped[i, c])]]))
             for c in range(tokens.shape[1])] for i in range(tokens.shape[0])]
