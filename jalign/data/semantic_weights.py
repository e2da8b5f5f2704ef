"""Sem-DPO's per-pair weights, computed from each record by a function the experiment supplies.

Mohamed et al., *Sem-DPO: Mitigating Semantic Inconsistency in Preference
Optimization for Prompt Engineering*, 2025 (arXiv 2507.20133), scale each
pair's DPO loss by a weight that falls as the winning response drifts from
the prompt's meaning (their abstract: an exponential of the cosine distance
between the two in an embedding space). The paper's exact weight and its
embedding model were not available to us, so the weight is the experiment's
function: ``data.semantic_weight = fn`` with ``fn(prompt, chosen) -> w``,
``w >= 0`` (for instance ``exp(-alpha * (1 - cos(e(prompt), e(chosen))))``
with an embedding ``e`` of its choice). :class:`SemanticWeighted` adds the
result to every paired record as its ``semantic_weight`` field, which
``sem_dpo`` reads as ``labels["semantic_weight"]``; a record that already has
the field is an error, so one weight never silently replaces another.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from jalign.data.source_base import Source
from jalign.data.validation import DataFileError, Malformed

FIELD = "semantic_weight"


class SemanticWeighted(Source):
    """A paired source whose records gain ``semantic_weight = weight(prompt, chosen)``.

    Raises:
      DataFileError: the source has no ``chosen`` column, or already has a ``semantic_weight`` one.
    """

    def __init__(self, source: Source, weight: Callable[[Any, Any], float]):
        if not callable(weight):
            raise DataFileError(source.name, f"data.semantic_weight must be a function (prompt, chosen) -> weight; "
                                f"got {type(weight).__name__}")
        if "chosen" not in source.columns:
            raise DataFileError(source.name, f"data.semantic_weight weights paired records; this source has no "
                                f"'chosen' column (columns {list(source.columns)})")
        if FIELD in source.columns:
            raise DataFileError(source.name, f"data.semantic_weight is set, but the records already carry a "
                                f"'{FIELD}' field: unset one of them")
        self.source, self.weight = source, weight
        self.name, self.columns = source.name, (*source.columns, FIELD)

    def __len__(self) -> int:
        return len(self.source)

    def locate(self, index: int) -> str:
        return self.source.locate(index)

    def _read(self, index: int) -> dict:
        record = self.source[index]
        value = self.weight(record.get("prompt"), record["chosen"])
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise Malformed("wrong_type", FIELD, f"data.semantic_weight returned {type(value).__name__}, "
                            "not a number") from None
        if not math.isfinite(value) or value < 0:
            raise Malformed("wrong_type", FIELD, f"data.semantic_weight returned {value}; weights are finite "
                            "and non-negative")
        return {**record, FIELD: value}
