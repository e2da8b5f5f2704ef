"""The real train step with the log-prob op under `shard_map` (issue 9, multi-chip log-probs).

Each test runs one mode of ``kernel_step_script.py`` in a subprocess with 8
simulated CPU devices (pytest's jax has one) and checks its ``RESULT`` line.
"""

import json
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent


def _run(mode: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(HERE / "kernel_step_script.py"), mode], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_step_exports_for_tpu_and_cuda_with_pallas_kernels():
    """`jax.export` of the jitted DPO step (frozen reference) for platforms=['tpu'] on fsdp=8 and on
    data=2 x fsdp=2 x tensor=2 with impl="pallas_tpu", and for ['cuda'] with bf16 compute and fp32
    parameters with impl="pallas_gpu" (one device, and 2x2x2). Without `shard_map` the TPU export
    fails ("Mosaic kernels cannot be automatically partitioned"); without the weight cast the CUDA
    one fails ("a and b must have the same element type"). Each module holds the kernel's custom
    call: the policy's and the frozen reference's forward (2)."""
    result = _run("export")
    for name, got in result.items():
        platform = name.split("/")[0]
        assert got["platforms"] == [platform], name
        assert got["devices"] == (1 if "/one/" in name else 8), name
        kernel = "mosaic" if platform == "tpu" else "triton"
        assert got[kernel] == 2, (name, got)


def test_step_hlo_has_no_token_by_vocabulary_buffer_under_tensor_parallelism():
    """Compiled step on data=2 x fsdp=2 x tensor=2 with V=16384: with the chunked op under
    `shard_map` no buffer has a token dimension and a device's whole vocabulary shard (or the full
    vocabulary); the same grep finds the [tokens, V/2] logits of impl="naive", so it can fail."""
    result = _run("hlo")
    assert result["chunked"]["token_vocab"] == [], result["chunked"]
    assert result["naive"]["token_vocab"], result["naive"]


def test_sharded_logprobs_and_gradients_equal_single_device():
    """DPO loss of the step's `make_logprobs` (chunked op): per-token policy log-probs and the
    gradient of every parameter on data=2 x fsdp=2 x tensor=2 (the op under `shard_map`) equal the
    same function on one device with the plain op (log-probs 1e-5 absolute, gradients 1e-4
    relative to each leaf's largest entry)."""
    result = _run("equality")
    assert result["manual"], "the sharded program holds no shard_map"
    assert result["n_valid"] > 0
    assert result["logprob_err"] < 1e-5, result
    assert result["grad_rel_err"] < 1e-4, result
