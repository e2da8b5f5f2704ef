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
from typing import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jalign.data import PreferenceData, preference_batches
from jalign.models.layers import logical_to_spec
from jalign.models.scoring import score
from jalign.sharding import activate, place


def _score_all(data: PreferenceData, reference: nnx.Module, *, batch_size: int, impl: str, mesh: Mesh,
               rules: Mapping) -> dict[int, list]:
    """record index -> per-response reference log-probs ``[R_g]``.

    Runs as the train step does: the reference's sharded state is an argument
    (not a constant), rows are split over the rule table's ``batch`` axes,
    and the rules are active while tracing. The log-probs come back
    replicated, so every process reads all of them.
    """
    graphdef, state = nnx.split(reference)

    def score_batch(state, batch):
        with activate(mesh, rules):
            return score(nnx.merge(graphdef, state), batch, impl=impl)[0]          # [B, G, R]

    jitted = jax.jit(score_batch, out_shardings=NamedSharding(mesh, PartitionSpec()))
    lengths = {e.index: [len(r) for r in e.responses] for e in data.examples}
    scores = {}
    for batch in preference_batches(data, batch_size=batch_size, shuffle=False, num_epochs=1):
        rows = {k: v for k, v in batch.items() if k != "record_index"}
        shardings = jax.tree.map(lambda x: NamedSharding(mesh, logical_to_spec(
            ("batch",) + (None,) * (np.ndim(x) - 1), np.shape(x), mesh, rules)), rows)
        logprobs = np.asarray(jitted(state, place(rows, shardings)))
        for row, record in enumerate(batch["record_index"]):
            if record >= 0:
                scores[int(record)] = [logprobs[row, g, :n] for g, n in enumerate(lengths[int(record)])]
    return scores


def precompute_reference(data: PreferenceData, reference: nnx.Module, *, mesh: Mesh, rules: Mapping,
                         batch_size: int, impl: str = "auto", cache: pathlib.Path | None = None) -> PreferenceData:
    """``data`` with every example's ``reference_logprobs`` filled in.

    Args:
      data: validated, tokenised examples.
      reference: the reference decoder, its arrays sharded over ``mesh``.
      mesh: the run's mesh; scoring batches are split over its batch axes.
      rules: the run's logical-axis rule table.
      batch_size: examples per scoring batch.
      impl: the log-prob kernel implementation.
      cache: an ``.npz`` file to read the scores from, or write them to.
    """
    if cache is not None and cache.exists():
        stored = np.load(cache)
        scores = {e.index: [stored[f"{e.index}/{g}"] for g in range(len(e.responses))] for e in data.examples}
    else:
        scores = _score_all(data, reference, batch_size=batch_size, impl=impl, mesh=mesh, rules=rules)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, **{f"{i}/{g}": v for i, values in scores.items() for g, v in enumerate(values)})
    examples = [dataclasses.replace(e, reference_logprobs=tuple(np.asarray(v, np.float32) for v in scores[e.index]))
                for e in data.examples]
    return dataclasses.replace(data, examples=examples)
