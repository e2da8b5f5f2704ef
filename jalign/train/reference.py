"""Reference log-probs computed once before training and kept with the data.

With ``train.reference = "precomputed"`` the reference model runs once over
the dataset; its per-token log-probs travel in every batch
(``reference_logprobs``), so training holds no reference weights and runs no
reference forward. The result is cached in the run folder, keyed by record
index, so a resumed run does not recompute it.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from flax import nnx

from jalign.data import PreferenceData, preference_batches
from jalign.models.scoring import score


def _score_all(data: PreferenceData, reference: nnx.Module, *, batch_size: int, impl: str) -> dict[int, list]:
    """record index -> per-response reference log-probs ``[R_g]``."""
    score_batch = nnx.jit(lambda model, batch: score(model, batch, impl=impl)[0])
    lengths = {e.index: [len(r) for r in e.responses] for e in data.examples}
    scores = {}
    for batch in preference_batches(data, batch_size=batch_size, shuffle=False, num_epochs=1):
        logprobs = np.asarray(score_batch(reference, {k: v for k, v in batch.items() if k != "record_index"}))
        for row, record in enumerate(batch["record_index"]):
            if record >= 0:
                scores[int(record)] = [logprobs[row, g, :n] for g, n in enumerate(lengths[int(record)])]
    return scores


def precompute_reference(data: PreferenceData, reference: nnx.Module, *, batch_size: int, impl: str = "auto",
                         cache: pathlib.Path | None = None) -> PreferenceData:
    """``data`` with every example's ``reference_logprobs`` filled in.

    Args:
      data: validated, tokenised examples.
      reference: the reference decoder.
      batch_size: examples per scoring batch.
      impl: the log-prob kernel implementation.
      cache: an ``.npz`` file to read the scores from, or write them to.
    """
    if cache is not None and cache.exists():
        stored = np.load(cache)
        scores = {e.index: [stored[f"{e.index}/{g}"] for g in range(len(e.responses))] for e in data.examples}
    else:
        scores = _score_all(data, reference, batch_size=batch_size, impl=impl)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, **{f"{i}/{g}": v for i, values in scores.items() for g, v in enumerate(values)})
    examples = [dataclasses.replace(e, reference_logprobs=tuple(np.asarray(v, np.float32) for v in scores[e.index]))
                for e in data.examples]
    return dataclasses.replace(data, examples=examples)
