"""``policy_kl`` = KL(pi || ref) per token against NumPy float64 full logits.

The reference is independent of every jalign implementation: the inputs
upcast to float64, ``z = h W + b`` and ``zq`` of the reference in NumPy, and
``sum_v p_v (log p_v - log q_v)`` with log-softmax by ``scipy``'s formula
(max-shifted log-sum-exp). ``ref_kl`` of the same call is checked as the
other direction, KL(ref || pi), so the two cannot be swapped unnoticed.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jalign.kernels import sequence_logprobs
from kernel_problems import make_problem

TILES = {"block_n": 16, "block_v": 64}
SHAPE = (37, 16, 203)  # ragged against the tiles: several row and column blocks


def _log_softmax(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))


def _kls(prob) -> tuple[np.ndarray, np.ndarray]:
    """``(KL(pi || ref), KL(ref || pi))`` ``[N]`` in float64, 0 where masked."""
    f64 = lambda key: np.asarray(jnp.asarray(prob[key], jnp.float32), np.float64)
    logp = _log_softmax(f64("hidden") @ f64("weight") + f64("bias"))
    logq = _log_softmax(f64("ref_hidden") @ f64("ref_weight"))
    mask = np.asarray(prob["mask"])
    forward = (np.exp(logp) * (logp - logq)).sum(-1)
    reverse = (np.exp(logq) * (logq - logp)).sum(-1)
    return np.where(mask, forward, 0.0), np.where(mask, reverse, 0.0)


def _run(prob, impl):
    out = sequence_logprobs(prob["hidden"], prob["weight"], prob["targets"], prob["mask"], bias=prob["bias"],
                            ref_hidden=prob["ref_hidden"], ref_weight=prob["ref_weight"],
                            extras=("ref_kl", "policy_kl"), impl=impl, **TILES)
    return np.asarray(out.policy_kl), np.asarray(out.ref_kl)


@pytest.mark.parametrize("scale,tol", [(3.0, 1e-5), (1e3, 1e-2), (1e4, 1e-1)])
def test_policy_kl_matches_float64_full_logits(scale, tol):
    """fp32 inputs, logits of magnitude ``scale``. Tolerance: an fp32 logit of
    size ``scale`` carries ~6e-8 * scale rounding, and a KL at extreme scale
    is itself of order ``scale`` (so 1e-5 of the scale, absolute)."""
    prob = make_problem(5, *SHAPE, scale=scale)
    forward, reverse = _kls(prob)
    got_forward, got_reverse = _run(prob, "chunked")
    np.testing.assert_allclose(got_forward, forward, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(got_reverse, reverse, rtol=1e-5, atol=tol)
    assert np.all(got_forward >= -tol)
    # The two directions differ (the test would not notice a swap otherwise).
    assert np.max(np.abs(forward - reverse)) > 10 * tol


def test_policy_kl_of_bf16_inputs():
    """bf16 hidden states and weights: the products are exact in the fp32
    accumulator, so the NumPy float64 values of the bf16 inputs hold to 1e-3."""
    prob = make_problem(6, *SHAPE, dtype=jnp.bfloat16, scale=4.0)
    forward, reverse = _kls(prob)
    got_forward, got_reverse = _run(prob, "chunked")
    np.testing.assert_allclose(got_forward, forward, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got_reverse, reverse, rtol=1e-3, atol=1e-3)


def test_policy_kl_needs_the_reference():
    prob = make_problem(7, *SHAPE)
    with pytest.raises(ValueError, match="'policy_kl' needs ref_hidden"):
        sequence_logprobs(prob["hidden"], prob["weight"], prob["targets"], prob["mask"], extras=("policy_kl",),
                          impl="chunked")
