"""The Pallas kernels lower for TPU (Mosaic) and CUDA (Triton) on a CPU host.

`jax.export` runs each backend's Pallas lowering to its custom call without
that hardware; the final Mosaic/PTX compilation happens on the device and is
not covered here.
"""

import jax
import jax.numpy as jnp
import pytest

from jalign.kernels import sequence_logprobs

N, H, V = 64, 128, 1000
EXTRAS = ("entropy", "ref_kl", "topk_mass", "topk_entropy",
          "log_prob_sq_sum")
# Triton custom calls carry no cross-version compatibility guarantee.
TRITON_CHECK = jax.export.DisabledSafetyCheck.custom_call(
    "__gpu$xla.gpu.triton")


def _export(impl, platform, dtype, param_dtype=None):
    def f(h, w, b, rh, rw, t, m):
        out = sequence_logprobs(h, w, t, m, bias=b, softcap=30.0,
                                ref_hidden=rh, ref_weight=rw, extras=EXTRAS,
                                top_k=8, impl=impl)
        # log_prob_sq_sum is summed too so that it is not dead code.
        return jnp.sum(out.logprobs + out.entropy - out.ref_kl
                       + out.log_prob_sq_sum)

    spec = jax.ShapeDtypeStruct
    param_dtype = param_dtype or dtype
    args = (spec((N, H), dtype), spec((H, V), param_dtype),
            spec((V,), jnp.float32), spec((N, H), dtype),
            spec((H, V), param_dtype), spec((N,), jnp.int32),
            spec((N,), jnp.bool_))
    fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))
    return jax.export.export(fn, platforms=[platform],
                             disabled_checks=[TRITON_CHECK])(*args)


# (hidden dtype, weight dtype): bf16 compute with fp32 parameters included.
DTYPES = [(jnp.float32, jnp.float32), (jnp.bfloat16, jnp.bfloat16),
          (jnp.bfloat16, jnp.float32)]


@pytest.mark.parametrize("dtype,param_dtype", DTYPES)
def test_pallas_tpu_lowers_for_tpu(dtype, param_dtype):
    """Forward and backward export for platforms=['tpu'] with every extra
    (log_prob_sq_sum included); the module holds the Mosaic kernel as a
    tpu_custom_call."""
    exported = _export("pallas_tpu", "tpu", dtype, param_dtype)
    assert exported.platforms == ("tpu",)
    assert "tpu_custom_call" in exported.mlir_module()


@pytest.mark.parametrize("dtype,param_dtype", DTYPES)
def test_pallas_gpu_lowers_for_cuda(dtype, param_dtype):
    """Forward and backward export for platforms=['cuda'] with every extra
    (log_prob_sq_sum included); the module holds the Triton kernel as a
    custom call. bf16 hidden with an fp32 weight used to fail in Triton's
    lowering ("a and b must have the same element type")."""
    exported = _export("pallas_gpu", "cuda", dtype, param_dtype)
    assert exported.platforms == ("cuda",)
    assert "__gpu$xla.gpu.triton" in exported.mlir_module()
