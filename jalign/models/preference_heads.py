"""Preference-model heads on the shared decoder: rewards, pairwise logits, preference embeddings.

A head reads the final hidden state at the last token of a sequence, as
Hugging Face's ``*ForSequenceClassification`` does (the rightmost non-padding
token), through one bias-free linear map ``score``:

- ``"reward"``: ``[E, 1]``, a Bradley-Terry reward ``r(x, y)``;
- ``"pairwise"``: ``[E, 1]`` read at the end of ``x + A + B``, the logit
  ``s(x, A, B)``; both orders are scored in one forward (as two completions
  of the shared prompt), and the loss uses ``s(x, A, B) - s(x, B, A)``;
- ``"embedding"``: ``[E, K]``, a general preference model's embedding
  ``v(x, y)`` (Zhang et al. 2024);
- ``"multi_reward"``: ``[E, K]``, ``K`` attribute rewards ``r(x, y)`` of a
  multi-objective reward model (Wang et al. 2024, DPA: a linear regression
  head on the last hidden state).

Standard responses end in EOS (``jalign.data``), which delimits ``A`` from
``B`` in the pairwise input.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jalign.objectives.declaration import EMBEDDING, MULTI_REWARD, PAIRWISE, REWARD

HEADS = (REWARD, PAIRWISE, EMBEDDING, MULTI_REWARD)
VECTOR_HEADS = (EMBEDDING, MULTI_REWARD)  # heads with model.score_dim outputs


class ScoreHead(nnx.Module):
    """``score``: a bias-free ``[E, N]`` map of the last token's hidden state (HF's ``score.weight`` is ``[N, E]``).

    Attributes:
      kind: one of :data:`HEADS`.
      kernel: ``[E, N]`` float32 parameter.
    """

    def __init__(self, kind: str, hidden_size: int, outputs: int, *, rngs: nnx.Rngs):
        if kind not in HEADS:
            raise ValueError(f"head kind must be one of {HEADS}; got {kind!r}")
        if kind == EMBEDDING and outputs % 2:
            raise ValueError(f"a preference embedding needs an even dimension; got {outputs}")
        # HF initialises `score` with N(0, initializer_range = 0.02); the GPM authors their value head
        # with N(0, 1 / (E + 1)).
        std = 1.0 / (hidden_size + 1) if kind == EMBEDDING else 0.02
        self.kind = kind
        self.kernel = nnx.Param(std * jax.random.normal(rngs.params(), (hidden_size, outputs), jnp.float32),
                                out_sharding=("embed", None), eager_sharding=False)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """``[..., E]`` -> ``[..., N]`` float32."""
        return jnp.einsum("...E,EN->...N", hidden.astype(jnp.float32), self.kernel[...])


def add_score_head(model: nnx.Module, kind: str, *, outputs: int = 1, rngs: nnx.Rngs) -> None:
    """Attaches a :class:`ScoreHead` to ``model`` as ``model.score_head``."""
    model.score_head = ScoreHead(kind, model.cfg.hidden_size, outputs if kind in VECTOR_HEADS else 1, rngs=rngs)


def last_token_hidden(model: Any, prompt: jax.Array, prompt_mask: jax.Array, completions: jax.Array,
                      completion_mask: jax.Array) -> jax.Array:
    """Final hidden state at each completion's last token, ``[B, G, E]``.

    The prompt ``[B, P]`` is encoded once; ``completions`` ``[B, G, C]`` are
    right-padded continuations of it. A completion of length 0 reads the
    prompt's last position's continuation slot 0.
    """
    cache = model.encode_prompt(prompt, prompt_mask)
    hidden = model.forward_completions(cache, completions, completion_mask, return_hidden=True)  # [B, G, C, E]
    last = jnp.maximum(jnp.sum(completion_mask.astype(jnp.int32), axis=-1) - 1, 0)              # [B, G]
    return jnp.take_along_axis(hidden, last[..., None, None], axis=2)[:, :, 0]


def both_orders(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[B, 2, R]`` right-padded responses ``(A, B)`` -> ``[B, 2, 2R]`` completions ``(A B, B A)``."""
    mask = mask.astype(bool)
    lengths = jnp.sum(mask, axis=-1)                                          # [B, 2]
    width = tokens.shape[-1]
    positions = jnp.arange(2 * width)

    def join(first: int, second: int):
        n = lengths[:, first][:, None]                                        # [B, 1]
        in_first = positions[None] < n
        from_second = jnp.clip(positions[None] - n, 0, width - 1)
        head = tokens[:, first][:, jnp.minimum(positions, width - 1)]         # [B, 2R]
        tail = jnp.take_along_axis(tokens[:, second], from_second, axis=-1)    # [B, 2R]
        joined = jnp.where(in_first, head, tail)
        valid = positions[None] < n + lengths[:, second][:, None]
        return jnp.where(valid, joined, 0), valid

    ab, ab_mask = join(0, 1)
    ba, ba_mask = join(1, 0)
    return jnp.stack([ab, ba], axis=1), jnp.stack([ab_mask, ba_mask], axis=1)


def preference_scores(model: Any, batch: dict) -> jax.Array:
    """The head's scores of a collated batch: ``[B, G]`` rewards, ``[B, 2]`` pairwise logits or ``[B, G, K]``
    (embeddings, attribute rewards)."""
    head = model.score_head
    tokens, mask = batch["response_tokens"], batch["response_mask"]
    if head.kind == PAIRWISE:
        tokens, mask = both_orders(tokens, mask)
    hidden = last_token_hidden(model, batch["prompt_tokens"], batch["prompt_mask"], tokens, mask)
    out = head(hidden)                                                        # [B, G, N]
    return out if head.kind in VECTOR_HEADS else out[..., 0]
