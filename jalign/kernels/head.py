"""The operand of every log-prob op: hidden states and their output projection.

A `Head` carries the token-major hidden states and the projection they meet;
the policy's and, for ``ref_kl`` and ``policy_kl``, the reference's travel as two values. The
compute dtype of a head is its hidden states' dtype: the weight is cast to it
before every matmul (fp32 master weights with bf16 activations multiply in
bf16, as the decoder's own logits do), and accumulation is always fp32.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Head(NamedTuple):
    """Hidden states and the output projection they are scored with.

    Attributes:
        hidden: ``[N, H]`` hidden states (any float dtype: the compute dtype).
        weight: ``[H, V]`` projection (any float dtype).
        bias: ``[V]`` (fp32 inside the ops; None before `with_bias`).
    """

    hidden: jax.Array
    weight: jax.Array
    bias: jax.Array | None = None

    def with_bias(self):
        """The same head with a zero fp32 ``[V]`` bias in place of None."""
        if self.bias is not None:
            return self
        zeros = jnp.zeros(self.weight.shape[1:], jnp.float32)
        return self._replace(bias=zeros)


def precision(dtype):
    """Full-precision matmul passes for fp32 operands (XLA, MXU and Triton
    would otherwise use one bf16 or TF32 pass); the default otherwise."""
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


def project(hidden, weight, bias, softcap):
    """Logits of one tile in fp32: ``softcap * tanh((h @ w + b) / softcap)``.

    Args:
        hidden: ``[n, H]``. weight: ``[H, v]`` (cast to hidden's dtype).
        bias: ``[v]`` or ``[1, v]``. softcap: a float or None (no capping).
    Returns:
        ``[n, v]`` fp32 logits.
    """
    y = jnp.dot(hidden, weight.astype(hidden.dtype),
                precision=precision(hidden.dtype),
                preferred_element_type=jnp.float32)
    y = y + bias.astype(jnp.float32).reshape(1, -1)
    if softcap is not None:
        y = softcap * jnp.tanh(y / softcap)
    return y
