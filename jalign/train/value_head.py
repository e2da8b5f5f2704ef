"""PPO's critic: a learned per-token value head on the policy's final hidden states.

The head is trained with the policy (its parameters are part of the trained
state, the optimizer's and the checkpoint's, like SparsePO's mask head) and
serves ``extras["values"]`` with gradient. The value of token ``t`` is read
at the hidden state predicting ``y_t``, i.e. of the state ``(x, y_<t)``, as
the DR-PO authors slice ``full_value[:, context_length - 1 : -1]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jalign.models.layers import param
from jalign.models.scoring import Responses

VALUE_EXTRAS = ("values",)


class ValueHead(nnx.Module):
    """``V = h w + b``: ``[B, G, R, E]`` final hidden states -> ``[B, G, R]`` fp32 values.

    Initialised as the DR-PO authors' ``ScalarModel.scalar_head``
    (``layer_init(nn.Linear(hidden_size, 1), std=1 / sqrt(hidden_size + 1))``,
    bias 0; ``Cornell-RL/drpo`` ``src/tldr/drpo.py``), whose critic is a
    separate reward-model copy; here the head shares the policy's trunk (TRL's
    ``AutoModelForCausalLMWithValueHead``), so the value loss also trains it.
    """

    def __init__(self, hidden_size: int, *, rngs: nnx.Rngs):
        self.kernel = param(rngs, (hidden_size,), ("embed",), jnp.float32, fan_in=hidden_size + 1)
        self.bias = param(rngs, (), (), jnp.float32, init="zeros")

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return jnp.einsum("BGRE,E->BGR", jnp.asarray(hidden, jnp.float32), self.kernel[...]) + self.bias[...]


def add_value_head(model: nnx.Module, *, rngs: nnx.Rngs) -> None:
    """Attaches a :class:`ValueHead` sized for ``model`` as ``model.value_head``."""
    model.value_head = ValueHead(model.cfg.hidden_size, rngs=rngs)


def token_values(policy: nnx.Module, own: Responses) -> jax.Array:
    """``[B, G, R]`` values of the policy's own view (with gradient); 0 off the response."""
    return policy.value_head(own.hidden) * own.target_mask
