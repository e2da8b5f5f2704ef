"""Model FLOPs per token against XLA's own count, and the device-peak table.

The independent reference is ``cost_analysis()["flops"]`` of the compiled
forward of a one-layer decoder (one layer: XLA counts a scanned loop's body
once). XLA counts every dot as 2 M N K, as the formula does, plus the
elementwise work (norms, rotary, softmax, SiLU) the formula leaves out: that
is ~3.5% here, hence the 5% tolerance. A sequence of 256 positions makes
attention a quarter of the total, so leaving it out (or doubling it) fails.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jalign.models import Decoder, ModelConfig
from jalign.train import mfu

CFG = ModelConfig("llama", vocab_size=512, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                  head_dim=16, mlp_dim=256)


def test_forward_flops_match_xla_cost_analysis():
    batch, seq = 2, 256
    graphdef, state = nnx.split(Decoder(CFG, rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    cost = forward.lower(state, jnp.zeros((batch, seq), jnp.int32)).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = mfu.forward_flops_per_token(CFG, seq) * batch * seq
    assert ours == pytest.approx(xla, rel=0.05)
    # The attention term matters at this length: 2N alone is far off.
    assert 2 * mfu.matmul_params(CFG) * batch * seq < 0.8 * xla


def test_hand_count_of_a_sliding_window_and_the_train_step():
    """Hand count: N = 64*16*(2*4 + 2*2) + 3*64*256 + 64*512 = 94208; a 2-layer model whose first layer
    slides over 8 keys attends 8 + T keys per query over its layers."""
    cfg = CFG.replace(num_layers=2, sliding_window=8, layer_types=("sliding_attention", "full_attention"))
    n = 2 * (64 * 16 * 12 + 3 * 64 * 256) + 64 * 512
    assert mfu.matmul_params(cfg) == n
    forward = 2 * n + 4 * 4 * 16 * (8 + 32)
    assert mfu.forward_flops_per_token(cfg, 32) == forward
    assert mfu.train_flops_per_token(cfg, 32, reference_forward=False) == 3 * forward
    assert mfu.train_flops_per_token(cfg, 32, reference_forward=True) == 4 * forward


@pytest.mark.parametrize("kind,peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("cpu", None), ("TPU v7x", None)])
def test_device_peaks_by_kind(kind, peak):
    assert mfu.device_peak(kind) == peak
