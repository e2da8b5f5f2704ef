"""The tiled greedy-token pass (``jalign.kernels.argmax``) against NumPy's argmax of full float64 logits.

The reference is independent of jalign: the inputs upcast to float64, the
full ``[N, V]`` logits ``h @ W + b`` in NumPy and ``numpy.argmax`` (lowest
index on ties, as ``torch.argmax`` in the authors' IFT trainer).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jalign.kernels import Head
from jalign.kernels.argmax import greedy_tokens, greedy_tokens_reference

N, H, V = 37, 16, 203   # ragged against the tiles below


def _head(seed, *, bias=True, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 3)
    return Head(jax.random.normal(k[0], (N, H)).astype(dtype),
                (3.0 / np.sqrt(H) * jax.random.normal(k[1], (H, V))).astype(dtype),
                jax.random.normal(k[2], (V,)) if bias else None)


def _numpy_argmax(head):
    z = np.asarray(head.hidden, np.float64) @ np.asarray(head.weight, np.float64)
    if head.bias is not None:
        z = z + np.asarray(head.bias, np.float64)
    return z.argmax(-1)


@pytest.mark.parametrize("tiles", [dict(block_n=16, block_v=64), dict(block_n=256, block_v=4096),
                                   dict(block_n=5, block_v=V)])
@pytest.mark.parametrize("bias", [True, False])
def test_greedy_tokens_equal_numpy_argmax_of_full_logits(tiles, bias):
    head = _head(0, bias=bias)
    got = jax.jit(lambda h: greedy_tokens(h, **tiles))(head)
    assert got.dtype == jnp.int32 and got.shape == (N,)
    np.testing.assert_array_equal(got, _numpy_argmax(head))
    np.testing.assert_array_equal(greedy_tokens_reference(head), _numpy_argmax(head))


def test_ties_go_to_the_lowest_index_across_tiles():
    """Equal logits in tile 0 and tile 2 (and the shifted last tile): the first column wins, as in NumPy."""
    weight = np.zeros((2, 10), np.float32)
    weight[0, [3, 7, 9]] = 1.0            # row 0: a tie across tiles 0 and 1 and the last
    weight[1, [8, 9]] = 1.0               # row 1: a tie inside the shifted last tile
    head = Head(jnp.asarray([[1.0, 0.0], [0.0, 1.0]]), jnp.asarray(weight))
    np.testing.assert_array_equal(greedy_tokens(head, block_n=1, block_v=4), [3, 8])


def test_bf16_inputs_and_extreme_logits():
    """bf16 hidden states and logits of about 1e4 still pick NumPy's token (computed on the same bf16 values)."""
    head = _head(1, dtype=jnp.bfloat16)
    head = head._replace(weight=(head.weight * 3000).astype(jnp.bfloat16), bias=None)
    z = np.asarray(jnp.asarray(head.hidden, jnp.float32) @ jnp.asarray(head.weight, jnp.float32))
    got = greedy_tokens(head, block_n=8, block_v=64)
    top = np.take_along_axis(z, np.asarray(got)[:, None], 1)[:, 0]
    # bf16 products may round a near-tie either way; the chosen logit is the maximum up to bf16 resolution.
    np.testing.assert_allclose(top, z.max(-1), rtol=2 ** -7)
    assert np.mean(np.asarray(got) == z.argmax(-1)) > 0.9


def test_no_gradient():
    head = _head(2)
    grad = jax.grad(lambda h: jnp.sum(greedy_tokens(Head(h, head.weight, head.bias)).astype(jnp.float32)))
    np.testing.assert_array_equal(grad(head.hidden), 0.0)
