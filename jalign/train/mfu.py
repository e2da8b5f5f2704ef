"""Model FLOPs utilisation: the model's FLOPs per trained token and device peaks.

MFU is ``flops_per_token * tokens_per_s / (devices * peak)``, the convention
of PaLM (Chowdhery et al., 2022, Appendix B) that MaxText also logs: only the
FLOPs the model needs, not what remat recomputes, nor generation, judging
or evaluation. Per token of a sequence of ``T`` positions, a decoder with
``N`` matmul parameters on a token's path (attention and MLP projections of
every layer and the output projection; the embedding lookup is free) costs

.. math::
    6 N + 12 L H_q D T_a \\quad \\text{(forward and backward)}, \\qquad
    2 N + 4 L H_q D T_a \\quad \\text{(forward only)}

with ``L`` layers, ``H_q`` query heads of size ``D`` and ``T_a`` the keys
each query meets (``T``, or the sliding window where smaller: scores and
values of a full ``T x T`` product, the PaLM count, which ignores the causal
mask). A train step runs the policy forward and backward and, when the
reference is a model on device (a frozen copy, the LoRA base or the previous
iterate), the reference forward on the same tokens. A LoRA run is counted
the same way (6N): its frozen base weights get no weight gradient, so its
true cost is nearer 4N and its MFU reads high by up to 1.5x.
"""

from __future__ import annotations

from jalign.models.config import ModelConfig

# Dense (no sparsity) bf16 peak FLOP/s per chip, by `jax.Device.device_kind`.
# TPUs by exact kind, from the Cloud TPU system-architecture pages
# (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e: "peak compute per chip, bf16").
TPU_PEAK_BF16 = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5": 459e12,       # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
}
# NVIDIA GPUs by the first name their kind contains ("NVIDIA H100 80GB HBM3"),
# from NVIDIA's H100, H200 and A100 data sheets: "BF16 Tensor Core" halved
# where the sheet quotes it with sparsity (H100 SXM 1,979 -> 989 TFLOPS).
GPU_PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),       # SXM
    ("H200 NVL", 835e12),
    ("H200", 989e12),       # SXM
    ("A100", 312e12),       # SXM and PCIe alike
)


def device_peak(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one device of ``device_kind``; None when unknown (CPUs)."""
    if device_kind in TPU_PEAK_BF16:
        return TPU_PEAK_BF16[device_kind]
    return next((peak for name, peak in GPU_PEAK_BF16 if name in device_kind), None)


def matmul_params(cfg: ModelConfig) -> int:
    """``N``: parameters of the matmuls a token passes through (biases, norms and embedding lookup left out)."""
    attention = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = (3 if cfg.gated_mlp else 2) * cfg.hidden_size * cfg.mlp_dim
    return cfg.num_layers * (attention + mlp) + cfg.hidden_size * cfg.vocab_size


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs of one query's scores and weighted values, over all layers: ``4 H_q D T_a`` per layer."""
    return sum(4 * cfg.num_heads * cfg.head_dim * min(seq_len, cfg.window(layer) or seq_len)
               for layer in range(cfg.num_layers))


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """``2 N`` plus attention: one forward pass of a token in a sequence of ``seq_len`` positions."""
    return 2 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len)


def train_flops_per_token(cfg: ModelConfig, seq_len: int, *, reference_forward: bool) -> int:
    """Forward and backward (3 forward's FLOPs) of the policy, plus a reference forward when one runs."""
    return (3 + int(reference_forward)) * forward_flops_per_token(cfg, seq_len)


def mfu(flops_per_token: float, tokens_per_s: float, *, devices: int, peak: float) -> float:
    """The fraction of ``devices`` devices' ``peak`` FLOP/s the model's FLOPs at ``tokens_per_s`` make up."""
    return flops_per_token * tokens_per_s / (devices * peak)
