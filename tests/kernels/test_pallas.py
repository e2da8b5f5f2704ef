"""Pallas TPU and GPU kernels against full logits (`reference_logprobs`).

Each kernel has a test class with ``INTERPRET = False`` that runs on its own
backend and an interpret-mode subclass that runs the same tests on CPU with
small shapes. The backward pass of both is the chunked recomputation, so the
gradient tests check the residuals (lse, entropy, lse_q) the kernels save.
"""

import jax
import jax.numpy as jnp
import pytest

from kernel_problems import (assert_grads_close, assert_mixed_precision,
                             assert_outputs_close, make_problem, run)

SHAPE = (37, 16, 203)  # ragged N and V against every tile size below


class _PallasKernelTest:
    IMPL = None
    BACKEND = None
    INTERPRET = False
    TILES = {}

    def setup_method(self):
        if not self.INTERPRET and jax.default_backend() != self.BACKEND:
            pytest.skip(f"needs a {self.BACKEND} backend")

    def run(self, prob, **kw):
        return run(prob, self.IMPL, interpret=self.INTERPRET, **self.TILES,
                   **kw)

    @pytest.mark.parametrize("softcap", [None, 30.0])
    def test_values_match_full_logits(self, softcap):
        """fp32 logprobs and all extras equal the naive full-logits values
        within 1e-5 relative, soft-capped or not."""
        prob = make_problem(1, *SHAPE, scale=3.0)
        assert_outputs_close(self.run(prob, softcap=softcap),
                             run(prob, "naive", softcap=softcap),
                             rtol=1e-5, atol=1e-5)

    def test_grads_match_full_logits(self):
        """Gradients of logprobs + entropy + ref_kl (hidden, weight, bias)
        equal autodiff through the naive full logits within 1e-5."""
        prob = make_problem(2, *SHAPE, scale=3.0)
        assert_grads_close(self.IMPL, prob, rtol=1e-5,
                           interpret=self.INTERPRET, **self.TILES)

    def test_extreme_logits(self):
        """Logits of magnitude 1e4 give the naive values within 1e-5
        relative (online max subtraction in fp32)."""
        prob = make_problem(3, *SHAPE, scale=1e4)
        assert_outputs_close(self.run(prob), run(prob, "naive"), rtol=1e-5,
                             atol=1e-1)

    @pytest.mark.parametrize("mask", ["empty", 1])
    def test_few_valid_tokens(self, mask):
        """With no or one valid token, skipped blocks leave no trace: masked
        outputs are exactly 0 and the valid one equals the naive value."""
        prob = make_problem(4, *SHAPE, mask=mask)
        assert_outputs_close(self.run(prob), run(prob, "naive"), rtol=1e-5,
                             atol=1e-6)

    def test_bf16_inputs(self):
        """bf16 inputs: values within 1e-4 of the naive bf16-matmul values
        (only the fp32 accumulation order differs)."""
        prob = make_problem(5, *SHAPE, dtype=jnp.bfloat16, scale=4.0)
        assert_outputs_close(self.run(prob), run(prob, "naive"), rtol=1e-4,
                             atol=1e-4)

    def test_bf16_hidden_with_fp32_weight(self):
        """bf16 compute with fp32 parameters (the GPU kernel used to refuse
        the mixed dot): log-probs equal fp32 math on the bf16-rounded weight;
        gradients in each operand's dtype."""
        assert_mixed_precision(self.IMPL, interpret=self.INTERPRET,
                               **self.TILES)

    def test_vmap(self):
        """vmap over a batch of problems equals the naive values per item."""
        probs = [make_problem(6 + i, 16, 16, 64, ref=False) for i in range(2)]
        batched = jax.tree.map(lambda *x: jnp.stack(x), *probs)
        got = jax.vmap(lambda p: self.run(p))(batched)
        for i, prob in enumerate(probs):
            assert_outputs_close(jax.tree.map(lambda x: x[i], got),
                                 run(prob, "naive"), rtol=1e-5, atol=1e-6)


class TestPallasTpu(_PallasKernelTest):
    IMPL = "pallas_tpu"
    BACKEND = "tpu"
    TILES = {"block_n": 8, "block_v": 128}


class TestPallasTpuInterpret(TestPallasTpu):
    INTERPRET = True


class TestPallasGpu(_PallasKernelTest):
    IMPL = "pallas_gpu"
    BACKEND = "gpu"
    TILES = {"block_n": 16, "block_v": 64}


class TestPallasGpuInterpret(TestPallasGpu):
    INTERPRET = True
