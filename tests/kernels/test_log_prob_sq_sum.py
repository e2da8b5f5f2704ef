"""The ``log_prob_sq_sum`` extra (WPO's log sum_v pi(v)^2) on every path.

References come from full fp32 logits through `jax.nn`
(`log_prob_sq_sum_reference`) or, for extreme logits, from float64 NumPy on
logits the kernels compute exactly. Each implementation has a test class;
the Pallas ones run on their backend and, in interpret-mode subclasses, on
CPU (as in test_pallas.py). The sharded op and the TPU/CUDA lowering are
covered with every other extra in test_sharded.py and test_export.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from kernel_problems import (ALL_EXTRAS, log_prob_sq_sum_reference,
                             make_problem, run)

SHAPE = (37, 16, 203)  # ragged N and V against every tile size below


def exact_extreme_problem(seed, n, h, v, *, scale=1e4):
    """A problem whose fp32 logits every implementation computes exactly,
    and their float64 ``log sum softmax^2`` per token.

    Hidden rows are one-hot, so ``h @ W + b`` is one weight entry plus the
    bias: a single fp32 rounding, the same everywhere. Half of each weight
    row sits near ``+scale`` and half near ``-scale``, with O(1) spread, so
    the distribution has several likely tokens (a value well below 0) and
    ``exp(2 z)`` would overflow fp32 many times over.
    """
    prob = make_problem(seed, n, h, v, mask="ragged")
    k1, k2 = jax.random.split(jax.random.key(seed + 1000))
    sign = jnp.where(jax.random.bernoulli(k1, 0.5, (h, v)), 1.0, -1.0)
    prob["weight"] = (scale * sign + 3.0 * jax.random.normal(k2, (h, v))
                      ).astype(jnp.float32)
    prob["hidden"] = jax.nn.one_hot(jnp.arange(n) % h, h, dtype=jnp.float32)
    z = (np.asarray(prob["weight"])[np.arange(n) % h]
         + np.asarray(prob["bias"])).astype(np.float64)  # fp32 sum, exact
    logp = z - logsumexp(z, axis=1, keepdims=True)
    want = np.where(prob["mask"], logsumexp(2.0 * logp, axis=1), 0.0)
    return prob, want


class _SqSumTest:
    IMPL = None
    BACKEND = None  # None: runs on any backend
    INTERPRET = False
    TILES = {}

    def setup_method(self):
        if (self.BACKEND and not self.INTERPRET
                and jax.default_backend() != self.BACKEND):
            pytest.skip(f"needs a {self.BACKEND} backend")

    @property
    def kw(self):
        return {**self.TILES, **({"interpret": True} if self.INTERPRET
                                 else {})}

    def run(self, prob, **kw):
        return run(prob, self.IMPL, **self.kw, **kw)

    @pytest.mark.parametrize("softcap", [None, 30.0])
    def test_values_match_full_logits(self, softcap):
        """fp32: equal to logsumexp(2 log_softmax(z)) of full fp32 logits
        within 1e-5, with bias and soft-capping; exactly 0 where masked."""
        prob = make_problem(1, *SHAPE, scale=3.0)
        got = np.asarray(self.run(prob, softcap=softcap).log_prob_sq_sum)
        want = log_prob_sq_sum_reference(prob, softcap=softcap)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.all(got[~np.asarray(prob["mask"])] == 0)
        assert np.min(want) < -1.0  # not a near-one-hot distribution

    def test_bf16_inputs(self):
        """bf16 hidden/weight/bias against fp32 logits of the same (upcast)
        values, within 1e-4 absolute. bf16 products are exact in fp32, so the
        logits differ only by fp32 accumulation order over H=16 terms:
        <= 16 * 2^-24 * sum|h w| ~ 1e-5 here. d log sum p^2 / dz =
        2 (p^2 / sum p^2 - p) has l1 norm <= 4, so the value moves by at
        most ~4e-5."""
        prob = make_problem(5, *SHAPE, dtype=jnp.bfloat16, scale=4.0)
        got = self.run(prob).log_prob_sq_sum
        np.testing.assert_allclose(got, log_prob_sq_sum_reference(prob),
                                   rtol=0, atol=1e-4)

    def test_extreme_logits(self):
        """Logits near +-1e4 (exp(2 z) overflows fp32): finite and equal to
        the float64 value from the same fp32 logits within 1e-5."""
        prob, want = exact_extreme_problem(3, *SHAPE)
        got = np.asarray(self.run(prob).log_prob_sq_sum)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.min(want) < -0.5  # several tokens share the mass

    def test_no_gradient_and_other_grads_unchanged(self):
        """log_prob_sq_sum is a constant: adding 5 * its sum to a loss of
        logprobs, entropy and ref_kl leaves the gradients of hidden, weight
        and bias equal to those computed without requesting it."""
        prob = make_problem(2, *SHAPE, scale=3.0)

        def loss(extras):
            def f(h, w, b):
                out = run({**prob, "hidden": h, "weight": w, "bias": b},
                          self.IMPL, extras=extras, **self.kw)
                total = jnp.sum(0.7 * out.logprobs + 0.4 * out.entropy
                                - 1.3 * out.ref_kl)
                if out.log_prob_sq_sum is not None:
                    total += 5.0 * jnp.sum(out.log_prob_sq_sum)
                return total
            return jax.grad(f, argnums=(0, 1, 2))(
                prob["hidden"], prob["weight"], prob["bias"])

        without = tuple(e for e in ALL_EXTRAS if e != "log_prob_sq_sum")
        for name, g, w in zip(("hidden", "weight", "bias"), loss(ALL_EXTRAS),
                              loss(without)):
            np.testing.assert_array_equal(g, w, err_msg=name)


class TestChunked(_SqSumTest):
    IMPL = "chunked"
    TILES = {"block_n": 16, "block_v": 64}


class TestNaive(_SqSumTest):
    IMPL = "naive"


class TestPallasTpu(_SqSumTest):
    IMPL = "pallas_tpu"
    BACKEND = "tpu"
    TILES = {"block_n": 8, "block_v": 128}


class TestPallasTpuInterpret(TestPallasTpu):
    INTERPRET = True


class TestPallasGpu(_SqSumTest):
    IMPL = "pallas_gpu"
    BACKEND = "gpu"
    TILES = {"block_n": 16, "block_v": 64}


class TestPallasGpuInterpret(TestPallasGpu):
    INTERPRET = True
