"""Pure, composable preference objectives over log-prob pytrees.

Every registered objective is exported here under its registry name, so an
experiment reads ``dpo(beta=0.1) + 0.2 * sft()``. ``objectives`` imports only
jax, chex and numpy: no models, sharding, data or training code.
"""

from jalign.objectives import (  # noqa: F401  (importing a family registers its objectives)
    anchored, distributional, fdpo, gpo, listwise, online, pairwise, reference_free, robust, sft,
    token_level, unpaired, weighted,
)
from jalign.objectives.batch import LogProbs, from_sequences
from jalign.objectives.core import Objective, Requirements, Scaled, Sum, batch_mean, static_field
from jalign.objectives.registry import _REGISTRY, make, objective, registered

globals().update(_REGISTRY)

__all__ = [
    "LogProbs", "Objective", "Requirements", "Scaled", "Sum", "batch_mean", "from_sequences",
    "make", "objective", "registered", "static_field", *_REGISTRY,
]
