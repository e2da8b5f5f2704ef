"""Sequence log-prob ops: per-token log pi(target) without [N, V] logits.

`sequence_logprobs` is the entry point; `sharded_sequence_logprobs` runs it
with tokens and vocabulary sharded over a mesh.
"""

from jalign.kernels.api import (IMPLS, TokenLogProbs, resolve_impl,
                                sequence_logprobs)
from jalign.kernels.sharded import sharded_sequence_logprobs

__all__ = ["IMPLS", "TokenLogProbs", "resolve_impl", "sequence_logprobs",
           "sharded_sequence_logprobs"]
