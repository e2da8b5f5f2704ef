"""Sequence log-prob ops: per-token log pi(target) without [N, V] logits.

`sequence_logprobs` is the entry point (`jalign.kernels.logprobs`);
`sharded_sequence_logprobs` runs it with tokens and vocabulary sharded over
a mesh.
"""

from jalign.kernels.head import Head
from jalign.kernels.logprobs import (IMPLS, LogprobImpl, TokenLogProbs, block_sizes_for,
                                     reference_logprobs, resolve_impl,
                                     sequence_logprobs)
from jalign.kernels.sharded import sharded_sequence_logprobs

__all__ = ["Head", "IMPLS", "LogprobImpl", "TokenLogProbs", "block_sizes_for",
           "reference_logprobs", "resolve_impl", "sequence_logprobs",
           "sharded_sequence_logprobs"]
