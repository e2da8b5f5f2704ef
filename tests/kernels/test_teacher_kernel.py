"""AlignDistil's extrapolated teacher (``jalign.kernels.teacher``) against NumPy float64 full logits.

The reference is independent of every jalign implementation: the inputs
upcast to float64, the three models' full ``[N, V]`` logits in NumPy, the
total variation ``sum_v |p_dpo - p_c|``, the weight ``w = s * tv + 1e-3``
and the teacher ``softmax(((1 + w) z_dpo - w z_c) / T)`` exactly as the
authors' trainer builds them (``aligndistil_offpolicy_trainer.py``), then
``KL(pi || teacher)`` and its closed-form gradient
``dKL/dz = p (log p - log q - KL)`` pulled back through ``W``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jalign.kernels import Head, sequence_logprobs
from jalign.kernels.teacher import extrapolated_teacher, total_variation
from kernel_problems import make_problem

N, H, HC, V = 37, 16, 12, 203   # ragged against the tiles below
TILES = {"block_n": 16, "block_v": 64}
SCALE, TEMPERATURE = 10.0, 0.7


def _problem(seed, *, scale=3.0, dtype=jnp.float32):
    policy = make_problem(seed, N, H, V, scale=scale, dtype=dtype)       # policy head and a DPO head ("ref_*")
    other = make_problem(seed + 100, N, HC, V, scale=scale, dtype=dtype, bias=False)
    return dict(policy=Head(policy["hidden"], policy["weight"], policy["bias"]),
                dpo=Head(policy["ref_hidden"], policy["ref_weight"], policy["bias"] * 0.5),
                contrast=Head(other["hidden"], other["weight"], None),
                targets=policy["targets"], mask=policy["mask"])


def _f64(x):
    return None if x is None else np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def _logits(head):
    z = _f64(head.hidden) @ _f64(head.weight)
    return z if head.bias is None else z + _f64(head.bias)


def _log_softmax(z):
    top = z.max(-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(-1, keepdims=True))


def _numpy(prob):
    """``(tv [N], w [N], KL(pi || teacher) [N], dKL/d hidden [N, H])`` in float64."""
    z_d, z_c, z_p = _logits(prob["dpo"]), _logits(prob["contrast"]), _logits(prob["policy"])
    tv = np.abs(np.exp(_log_softmax(z_d)) - np.exp(_log_softmax(z_c))).sum(-1)
    w = SCALE * tv + 1e-3
    logq = _log_softmax((z_d + w[:, None] * (z_d - z_c)) / TEMPERATURE)
    logp = _log_softmax(z_p)
    p = np.exp(logp)
    kl = (p * (logp - logq)).sum(-1)
    mask = np.asarray(prob["mask"])
    dz = p * (logp - logq - kl[:, None]) * mask[:, None]
    return tv, w, np.where(mask, kl, 0.0), dz @ _f64(prob["policy"].weight).T


@functools.partial(jax.jit, static_argnames=("impl", "block_n", "block_v", "interpret"))
def _teacher_kl(prob, impl, **kw):
    tv = total_variation(prob["dpo"], prob["contrast"], **TILES)
    teacher = extrapolated_teacher(prob["dpo"], prob["contrast"], SCALE * tv + 1e-3, temperature=TEMPERATURE)

    def kl_sum(hidden):
        out = sequence_logprobs(hidden, prob["policy"].weight, prob["targets"], prob["mask"],
                                bias=prob["policy"].bias, ref_hidden=teacher.hidden, ref_weight=teacher.weight,
                                extras=("policy_kl",), impl=impl, **kw)
        return jnp.sum(out.policy_kl), out.policy_kl

    (_, kl), grad = jax.value_and_grad(kl_sum, has_aux=True)(prob["policy"].hidden)
    return tv, kl, grad


class _TeacherTest:
    IMPL = "chunked"
    BACKEND = None
    INTERPRET = False
    KW = TILES

    def setup_method(self):
        if self.BACKEND and not self.INTERPRET and jax.default_backend() != self.BACKEND:
            pytest.skip(f"needs a {self.BACKEND} backend")

    def run(self, prob):
        out = _teacher_kl(prob, self.IMPL, **self.KW, **({"interpret": True} if self.INTERPRET else {}))
        return tuple(np.asarray(x, np.float64) for x in out)

    def test_teacher_kl_and_gradient_match_float64_full_logits(self):
        prob = _problem(1)
        tv, _, kl, grad = _numpy(prob)
        got_tv, got_kl, got_grad = self.run(prob)
        np.testing.assert_allclose(got_tv, tv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_kl, kl, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_grad, grad, rtol=1e-3, atol=1e-4)
        # The extrapolation matters: the weights spread well beyond 1e-3 and the KL is not the DPO model's.
        assert np.ptp(tv) > 0.1 and np.max(kl) > 0.1


class TestChunked(_TeacherTest):
    def test_extreme_logits_stay_finite(self):
        """Logits of magnitude 1e3: total variation in [0, 2], finite non-negative KL and gradient."""
        tv, kl, grad = self.run(_problem(2, scale=1e3))
        assert np.all((tv >= -1e-6) & (tv <= 2 + 1e-5))
        assert np.all(np.isfinite(kl)) and np.all(kl >= -1e-2) and np.all(np.isfinite(grad))

    @pytest.mark.slow
    def test_bf16_inputs(self):
        """bf16 hidden states and weights: the fp32 accumulator keeps the float64 values of the bf16
        inputs to ~1e-2 (the teacher's scaled hidden states are rounded to bf16 once)."""
        prob = _problem(3, dtype=jnp.bfloat16)
        tv, _, kl, _ = _numpy(prob)
        got_tv, got_kl, _ = self.run(prob)
        np.testing.assert_allclose(got_tv, tv, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_kl, kl, rtol=3e-2, atol=3e-2)


def test_soft_capped_heads_are_refused():
    prob = _problem(4)
    with pytest.raises(ValueError, match="soft-cap"):
        extrapolated_teacher(prob["dpo"], prob["contrast"], jnp.ones((N,)), softcap=30.0)


class TestPallasGpu(_TeacherTest):
    IMPL = "pallas_gpu"
    BACKEND = "gpu"


@pytest.mark.slow
class TestPallasGpuInterpret(TestPallasGpu):
    INTERPRET = True


class TestPallasTpu(_TeacherTest):
    IMPL = "pallas_tpu"
    BACKEND = "tpu"
    KW = {"block_n": 8, "block_v": 128}


@pytest.mark.slow
class TestPallasTpuInterpret(TestPallasTpu):
    INTERPRET = True
