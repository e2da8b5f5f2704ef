"""Decoder configuration: one frozen dataclass, named presets, HF conversion.

Every field comment names the Hugging Face ``config.json`` key it maps from
(GPT-2 spellings after the slash). The families differ only through these
switches; `jalign.models.decoder` reads them and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Literal, get_args

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2")

# Remat policies: "none" keeps every activation; "full" recomputes each block in the backward pass
# (jax.checkpoint_policies.nothing_saveable); "dots" keeps the outputs of the weight matmuls and
# recomputes the rest (dots_with_no_batch_dims_saveable: the attention score/value products have batch
# dimensions and are recomputed); "dots_all" keeps every matmul output (checkpoint_dots).
RematPolicy = Literal["none", "full", "dots", "dots_all"]
REMAT_POLICIES = get_args(RematPolicy)
_REMAT_ALIASES = {False: "none", True: "full"}

_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "gelu": "gelu", "gelu_fast": "gelu_tanh"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer."""

    model_type: str                    # model_type (one of FAMILIES)
    vocab_size: int                    # vocab_size
    hidden_size: int                   # hidden_size / n_embd
    num_layers: int                    # num_hidden_layers / n_layer
    num_heads: int                     # num_attention_heads / n_head
    num_kv_heads: int                  # num_key_value_heads (GPT-2: n_head)
    head_dim: int                      # head_dim (default hidden_size // heads)
    mlp_dim: int                       # intermediate_size / n_inner (4 * n_embd)
    norm: str = "rms"                  # "rms" (RMSNorm) | "layer" (GPT-2 LayerNorm)
    norm_eps: float = 1e-6             # rms_norm_eps / layer_norm_epsilon
    norm_offset: float = 0.0           # Gemma RMSNorm multiplies by (1 + weight)
    post_norms: bool = False           # Gemma 2 post_attention/post_feedforward norms
    positions: str = "rope"            # "rope" | "learned" (GPT-2 wpe)
    max_positions: int = 8192          # max_position_embeddings / n_positions
    rope_theta: float = 10000.0        # rope_parameters.rope_theta
    rope_type: str = "default"         # rope_parameters.rope_type: default|linear|llama3
    rope_factor: float = 1.0           # rope_parameters.factor
    rope_low_freq_factor: float = 1.0  # rope_parameters.low_freq_factor (llama3)
    rope_high_freq_factor: float = 4.0  # rope_parameters.high_freq_factor (llama3)
    rope_original_max_positions: int = 8192  # rope_parameters.original_max_position_embeddings
    gated_mlp: bool = True             # gate_proj * up_proj (GPT-2: c_fc only)
    activation: str = "silu"           # hidden_act / hidden_activation / activation_function
    qkv_bias: bool = False             # attention_bias (Qwen2: always on q/k/v)
    out_bias: bool = False             # attention_bias on o_proj (GPT-2: c_proj bias)
    mlp_bias: bool = False             # mlp_bias (GPT-2: always)
    qk_norm: bool = False              # Qwen3 q_norm / k_norm over head_dim
    query_scale: float | None = None   # query_pre_attn_scalar ** -0.5 (else head_dim ** -0.5)
    attn_softcap: float | None = None  # attn_logit_softcapping
    final_softcap: float | None = None  # final_logit_softcapping
    sliding_window: int | None = None  # sliding_window (key i-W < j <= i)
    layer_types: tuple[str, ...] = ()  # layer_types: "full_attention" | "sliding_attention"
    tie_embeddings: bool = False       # tie_word_embeddings (always True for *ForSequenceClassification)
    embed_scale: bool = False          # Gemma: embeddings times sqrt(hidden_size)
    bos_token_id: int | None = None    # bos_token_id
    eos_token_id: int | None = None    # eos_token_id (first one when a list)
    pad_token_id: int | None = None    # pad_token_id
    dtype: str = "float32"             # compute dtype of activations (not in HF)
    param_dtype: str = "float32"       # storage dtype of parameters (HF dtype)
    remat: RematPolicy = "none"        # what a block keeps for the backward pass: one of REMAT_POLICIES

    def __post_init__(self):
        if isinstance(self.remat, bool):       # older configs and call sites wrote remat=True/False
            object.__setattr__(self, "remat", _REMAT_ALIASES[self.remat])
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}; expected one of {REMAT_POLICIES}")
        if self.model_type not in FAMILIES:
            raise ValueError(f"unknown model_type {self.model_type!r}; expected one of {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_heads=} is not a multiple of {self.num_kv_heads=}")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(f"{len(self.layer_types)=} != {self.num_layers=}")
        if self.activation not in _ACTIVATIONS.values():
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.rope_type not in ("default", "linear", "llama3"):
            raise ValueError(f"unsupported rope_type {self.rope_type!r}")

    def window(self, layer: int) -> int | None:
        """Sliding-window width of ``layer``, or None for full attention."""
        if self.layer_types:
            return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None
        return self.sliding_window

    def windows(self) -> tuple[int | None, ...]:
        """`window` of every layer, in order."""
        return tuple(self.window(i) for i in range(self.num_layers))

    @property
    def scale(self) -> float:
        """Multiplier applied to q.k attention scores."""
        return self.query_scale if self.query_scale is not None else self.head_dim ** -0.5

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _rope_fields(hf: dict) -> dict:
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    return dict(
        rope_theta=float(theta), rope_type=rope_type,
        rope_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_positions=int(rope.get("original_max_position_embeddings", 8192)))


def _first(token_id):
    return token_id[0] if isinstance(token_id, list) else token_id


def _gpt2_fields(hf: dict) -> dict:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError("GPT-2 scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn unsupported")
    hidden, heads = hf["n_embd"], hf["n_head"]
    return dict(
        hidden_size=hidden, num_layers=hf["n_layer"], num_heads=heads, num_kv_heads=heads,
        head_dim=hidden // heads, mlp_dim=hf.get("n_inner") or 4 * hidden, norm="layer",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), positions="learned",
        max_positions=hf["n_positions"], gated_mlp=False,
        activation=_ACTIVATIONS[hf.get("activation_function", "gelu_new")],
        qkv_bias=True, out_bias=True, mlp_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True))


def _rope_family_fields(hf: dict, model_type: str) -> dict:
    heads = hf["num_attention_heads"]
    hidden = hf["hidden_size"]
    num_layers = hf["num_hidden_layers"]
    fields = dict(
        hidden_size=hidden, num_layers=num_layers, num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hidden // heads, mlp_dim=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        max_positions=hf.get("max_position_embeddings", 8192),
        activation=_ACTIVATIONS[hf.get("hidden_activation") or hf.get("hidden_act", "silu")],
        qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
        out_bias=model_type != "qwen2" and bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_embeddings=hf.get("tie_word_embeddings", model_type.startswith("gemma")),
        **_rope_fields(hf))
    if model_type in ("gemma", "gemma2"):
        fields.update(norm_offset=1.0, embed_scale=True)
    if model_type == "gemma2":
        fields.update(post_norms=True, attn_softcap=hf.get("attn_logit_softcapping"),
                      final_softcap=hf.get("final_logit_softcapping"),
                      query_scale=hf.get("query_pre_attn_scalar", 256) ** -0.5)
    if model_type == "qwen3":
        fields.update(qk_norm=True)
    if model_type == "mistral":
        fields.update(sliding_window=hf.get("sliding_window"))
    elif model_type in ("gemma2", "qwen2", "qwen3"):
        use = model_type == "gemma2" or hf.get("use_sliding_window", False)
        fields.update(sliding_window=hf.get("sliding_window") if use else None,
                      layer_types=_layer_types(hf, model_type, num_layers) if use else ())
    return fields


def _layer_types(hf: dict, model_type: str, num_layers: int) -> tuple[str, ...]:
    """``layer_types``, or the HF v4 default when a config.json predates the key."""
    if hf.get("layer_types"):
        return tuple(hf["layer_types"])
    if model_type == "gemma2":     # even layers slide
        return tuple("sliding_attention" if i % 2 == 0 else "full_attention"
                     for i in range(num_layers))
    first = hf.get("max_window_layers", num_layers)    # Qwen: layers >= max_window_layers slide
    return tuple("sliding_attention" if i >= first else "full_attention"
                 for i in range(num_layers))


def config_from_hf(hf: dict | str | os.PathLike, **overrides: Any) -> ModelConfig:
    """Builds a ModelConfig from a HF config dict, a config.json, or its directory.

    ``overrides`` set non-HF fields such as ``dtype``, ``param_dtype``, ``remat``.
    A ``*ForSequenceClassification`` checkpoint has no ``lm_head``, so its
    decoder is tied (``tie_embeddings=True``) whatever ``tie_word_embeddings``
    says: `Decoder.logits` then reads the embedding, and the score head
    (`jalign.models.checkpoint.load_hf`) is what the checkpoint was trained for.
    """
    hf = read_hf_config(hf)
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {FAMILIES}")
    fields = _gpt2_fields(hf) if model_type == "gpt2" else _rope_family_fields(hf, model_type)
    if num_labels(hf) is not None:     # a reward model has no LM head: logits use the embedding
        fields.update(tie_embeddings=True)
    fields.update(model_type=model_type, vocab_size=hf["vocab_size"],
                  bos_token_id=_first(hf.get("bos_token_id")),
                  eos_token_id=_first(hf.get("eos_token_id")),
                  pad_token_id=_first(hf.get("pad_token_id")))
    fields.update(overrides)
    return ModelConfig(**fields)


def read_hf_config(hf: dict | str | os.PathLike) -> dict:
    """A HF config dict, read from a config.json or its directory unless already a dict."""
    if isinstance(hf, dict):
        return hf
    path = os.path.join(hf, "config.json") if os.path.isdir(hf) else hf
    with open(path) as f:
        return json.load(f)


def num_labels(hf: dict) -> int | None:
    """``N`` of a ``*ForSequenceClassification`` config (``score.weight`` is [N, E]); None otherwise.

    transformers writes ``id2label`` rather than ``num_labels``, and defaults to 2 labels.
    """
    if not any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or ()):
        return None
    return len(hf["id2label"]) if hf.get("id2label") else int(hf.get("num_labels", 2))


_HF_ACT = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
         "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
         "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gpt2": "GPT2LMHeadModel"}
_SEQ_CLS_ARCH = {"llama": "LlamaForSequenceClassification",
                 "mistral": "MistralForSequenceClassification",
                 "qwen2": "Qwen2ForSequenceClassification", "qwen3": "Qwen3ForSequenceClassification",
                 "gemma": "GemmaForSequenceClassification",
                 "gemma2": "Gemma2ForSequenceClassification", "gpt2": "GPT2ForSequenceClassification"}


def _rope_parameters(cfg: ModelConfig) -> dict:
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type in ("linear", "llama3"):
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_positions)
    return rope


def config_to_hf(cfg: ModelConfig, *, labels: int | None = None) -> dict:
    """Inverse of `config_from_hf`: a dict `transformers.AutoConfig` accepts.

    ``labels=N`` describes a ``*ForSequenceClassification`` model with ``N``
    outputs (``id2label``/``label2id`` as transformers writes them) instead of
    a causal LM.
    """
    arch = (_ARCH if labels is None else _SEQ_CLS_ARCH)[cfg.model_type]
    hf: dict[str, Any] = dict(
        model_type=cfg.model_type, architectures=[arch],
        vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id, dtype=cfg.param_dtype)
    if labels is not None:
        hf.update(id2label={str(i): f"LABEL_{i}" for i in range(labels)},
                  label2id={f"LABEL_{i}": i for i in range(labels)})
    if cfg.model_type == "gpt2":
        act = "gelu_new" if cfg.activation == "gelu_tanh" else cfg.activation
        hf.update(n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads,
                  n_inner=cfg.mlp_dim, n_positions=cfg.max_positions,
                  layer_norm_epsilon=cfg.norm_eps, activation_function=act)
        return hf
    hf.update(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, intermediate_size=cfg.mlp_dim, rms_norm_eps=cfg.norm_eps,
        max_position_embeddings=cfg.max_positions, hidden_act=_HF_ACT[cfg.activation],
        rope_parameters=_rope_parameters(cfg), mlp_bias=cfg.mlp_bias,
        attention_bias=cfg.qkv_bias and cfg.model_type != "qwen2")
    if cfg.model_type == "gemma2":
        hf.update(hidden_activation=_HF_ACT[cfg.activation],
                  query_pre_attn_scalar=round(cfg.scale ** -2),
                  attn_logit_softcapping=cfg.attn_softcap,
                  final_logit_softcapping=cfg.final_softcap)
    if cfg.sliding_window is not None:
        hf.update(sliding_window=cfg.sliding_window, use_sliding_window=True)
    if cfg.layer_types:
        hf.update(layer_types=list(cfg.layer_types))
    return hf


# Named presets: the published config.json of common checkpoints, keyed as transformers' config classes
# key them (rope_theta and rope scaling inside rope_parameters), read by config_from_hf like any checkpoint.
HF_PRESETS: dict[str, dict[str, Any]] = {
    "llama2_7b": dict(  # meta-llama/Llama-2-7b-hf
        model_type="llama", vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, head_dim=128, intermediate_size=11008, hidden_act="silu", rms_norm_eps=1e-5,
        max_position_embeddings=4096, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    "llama3_2_1b": dict(  # meta-llama/Llama-3.2-1B
        model_type="llama", vocab_size=128256, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, intermediate_size=8192, hidden_act="silu", rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192),
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001),
    "llama3_1_8b": dict(  # meta-llama/Llama-3.1-8B
        model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, intermediate_size=14336, hidden_act="silu", rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192),
        tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001),
    "mistral_7b": dict(  # mistralai/Mistral-7B-v0.1
        model_type="mistral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, intermediate_size=14336, hidden_act="silu", rms_norm_eps=1e-5,
        max_position_embeddings=32768, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        sliding_window=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    "qwen2_5_0_5b": dict(  # Qwen/Qwen2.5-0.5B
        model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, hidden_act="silu", rms_norm_eps=1e-6,
        max_position_embeddings=32768, rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        use_sliding_window=False, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643),
    "qwen3_0_6b": dict(  # Qwen/Qwen3-0.6B
        model_type="qwen3", vocab_size=151936, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, intermediate_size=3072, hidden_act="silu", rms_norm_eps=1e-6,
        max_position_embeddings=40960, rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        attention_bias=False, use_sliding_window=False, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151645),
    "gemma_2b": dict(  # google/gemma-2b
        model_type="gemma", vocab_size=256000, hidden_size=2048, num_hidden_layers=18, num_attention_heads=8,
        num_key_value_heads=1, head_dim=256, intermediate_size=16384, hidden_act="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, max_position_embeddings=8192, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0),
    "gemma2_2b": dict(  # google/gemma-2-2b
        model_type="gemma2", vocab_size=256000, hidden_size=2304, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, intermediate_size=9216, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, max_position_embeddings=8192, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096,
        layer_types=["sliding_attention", "full_attention"] * 13,
        tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0),
    "gpt2_small": dict(  # openai-community/gpt2
        model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024,
        layer_norm_epsilon=1e-5, activation_function="gelu_new", tie_word_embeddings=True,
        bos_token_id=50256, eos_token_id=50256),
}


def _preset(name: str) -> Callable[..., ModelConfig]:
    def preset(**overrides: Any) -> ModelConfig:
        return config_from_hf(HF_PRESETS[name], **overrides)
    preset.__name__ = preset.__qualname__ = name
    preset.__doc__ = (f"`ModelConfig` of ``HF_PRESETS[{name!r}]``; ``overrides`` set fields such as ``dtype``, "
                      "``remat`` or a smaller ``num_layers``.")
    return preset


llama2_7b = _preset("llama2_7b")
llama3_2_1b = _preset("llama3_2_1b")
llama3_1_8b = _preset("llama3_1_8b")
mistral_7b = _preset("mistral_7b")
qwen2_5_0_5b = _preset("qwen2_5_0_5b")
qwen3_0_6b = _preset("qwen3_0_6b")
gemma_2b = _preset("gemma_2b")
gemma2_2b = _preset("gemma2_2b")
gpt2_small = _preset("gpt2_small")

PRESETS: dict[str, Callable[..., ModelConfig]] = {f.__name__: f for f in (
    llama2_7b, llama3_2_1b, llama3_1_8b, mistral_7b, qwen2_5_0_5b, qwen3_0_6b, gemma_2b, gemma2_2b, gpt2_small)}
