"""Generation inside one jit on 8 simulated CPU devices equals generation on one device.

The checks run `sharded_sampling_script.py` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set
before jax starts); the reference is `generate` with the unsharded model on one device.
"""

import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("sharded_sampling_script.py")


def _run(*args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("OK"), out.stdout
    return out.stdout


def test_sampling_on_a_mesh_equals_one_device():
    """Temperature 1 on a (fsdp=4, tensor=2) mesh with sharded params: same tokens and masks.

    One ``jax.jit`` traced under the rule table, prompts [8, 6] split over
    fsdp, per-row stops; log-probs equal to 1e-5, and the compiled program
    keeps only per-device [L, B/4, S, K/2, D] KV caches.
    """
    _run()


@pytest.mark.slow
def test_greedy_and_lora_mixture_on_a_mesh_equal_one_device():
    """The same for greedy decoding and the geometric mixture with the LoRA base view (traced beta)."""
    _run("--all")
