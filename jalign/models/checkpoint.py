"""Hugging Face checkpoint import and export.

One table per family maps Hugging Face tensor names to module paths with a
transform each way. `load_hf` builds the model abstractly with
``nnx.eval_shape`` (no memory for random weights), reads each tensor from the
safetensors shards of a local directory, transforms it, checks its shape and
fills the parameter. `save_hf` inverts the table and writes safetensors plus a
config.json that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

Reward models: a ``*ForSequenceClassification`` checkpoint (every family here)
holds the same decoder, no ``lm_head``, and ``score.weight`` [N, E]. It loads
as a tied `Decoder` (see `config_from_hf`) with a ``ScoreHead`` ``[E, N]`` as
``model.score_head``, and a model carrying one is saved that way.
transformers pools the rightmost token that is not ``pad_token_id``, where
jalign reads the last token of the mask: they agree when the pad id never
occurs inside a sequence (so not when pad is EOS and sequences end in EOS).

HF linear weights are [out, in]; jalign kernels are [in, out] with heads
split out (q: [E, N, D], o: [N, D, E]). GPT-2 Conv1D weights are already
[in, out], and its c_attn packs q, k and v.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from safetensors import safe_open
from safetensors.flax import save_file

from jalign.models.config import ModelConfig, config_from_hf, config_to_hf, num_labels, read_hf_config
from jalign.models.decoder import Decoder
from jalign.models.preference_heads import add_score_head

# config.json key recording a score head's kind (a "pairwise" head is [E, 1] like a "reward" one).
SCORE_KIND_KEY = "jalign_score_kind"

# Buffers some exporters write that carry no parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias")


class Entry(NamedTuple):
    """HF names -> module paths; ``load(cfg, *hf) -> params``, ``save(cfg, *params) -> hf``."""

    hf: tuple[str, ...]
    paths: tuple[str, ...]
    load: Callable
    save: Callable


def _same(hf: str, path: str) -> Entry:
    return Entry((hf,), (path,), lambda c, x: (x,), lambda c, x: (x,))


def _linear(hf: str, path: str) -> Entry:
    """HF weight [out, in] <-> kernel [in, out]."""
    return Entry((hf,), (path,), lambda c, w: (w.T,), lambda c, k: (k.T,))


def _heads_in(hf: str, path: str, kv: bool) -> Entry:
    """q/k/v weight [heads * D, E] <-> kernel [E, heads, D]."""
    def heads(c):
        return c.num_kv_heads if kv else c.num_heads
    return Entry((hf,), (path,),
                 lambda c, w: (w.T.reshape(w.shape[1], heads(c), c.head_dim),),
                 lambda c, k: (k.reshape(k.shape[0], -1).T,))


def _heads_bias(hf: str, path: str) -> Entry:
    """q/k/v bias [heads * D] <-> [heads, D]."""
    return Entry((hf,), (path,), lambda c, b: (b.reshape(-1, c.head_dim),),
                 lambda c, b: (b.reshape(-1),))


def _heads_out(hf: str, path: str, transposed: bool) -> Entry:
    """o weight [E, N * D] (GPT-2 Conv1D: [N * D, E]) <-> kernel [N, D, E]."""
    def load(c, w):
        w = w if transposed else w.T
        return (w.reshape(c.num_heads, c.head_dim, -1),)

    def save(c, k):
        w = k.reshape(-1, k.shape[-1])
        return (w if transposed else w.T,)
    return Entry((hf,), (path,), load, save)


def _gpt2_qkv(hf: str, path: str, part: str) -> Entry:
    """GPT-2 c_attn weight [E, 3E] / bias [3E] <-> q, k, v kernels [E, N, D] / biases."""
    paths = tuple(f"{path}.{p}_proj.{part}" for p in "qkv")

    def load(c, w):
        return tuple(x.reshape(*x.shape[:-1], c.num_heads, c.head_dim)
                     for x in jnp.split(w, 3, axis=-1))

    def save(c, *xs):
        return (jnp.concatenate([x.reshape(*x.shape[:-2], -1) for x in xs], -1),)
    return Entry((hf,), paths, load, save)


def _gpt2_table(cfg: ModelConfig) -> list[Entry]:
    t = [_same("transformer.wte.weight", "embed"), _same("transformer.wpe.weight", "pos_embed"),
         _same("transformer.ln_f.weight", "final_norm.scale"),
         _same("transformer.ln_f.bias", "final_norm.bias")]
    for i in range(cfg.num_layers):
        h, m = f"transformer.h.{i}", f"layers.{i}"
        t += [_same(f"{h}.ln_1.weight", f"{m}.input_norm.scale"),
              _same(f"{h}.ln_1.bias", f"{m}.input_norm.bias"),
              _same(f"{h}.ln_2.weight", f"{m}.mlp_norm.scale"),
              _same(f"{h}.ln_2.bias", f"{m}.mlp_norm.bias"),
              _gpt2_qkv(f"{h}.attn.c_attn.weight", f"{m}.attn", "kernel"),
              _gpt2_qkv(f"{h}.attn.c_attn.bias", f"{m}.attn", "bias"),
              _heads_out(f"{h}.attn.c_proj.weight", f"{m}.attn.o_proj.kernel", transposed=True),
              _same(f"{h}.attn.c_proj.bias", f"{m}.attn.o_proj.bias"),
              _same(f"{h}.mlp.c_fc.weight", f"{m}.mlp.up_proj.kernel"),
              _same(f"{h}.mlp.c_fc.bias", f"{m}.mlp.up_proj.bias"),
              _same(f"{h}.mlp.c_proj.weight", f"{m}.mlp.down_proj.kernel"),
              _same(f"{h}.mlp.c_proj.bias", f"{m}.mlp.down_proj.bias")]
    return t


def _layer_entries(cfg: ModelConfig, i: int) -> list[Entry]:
    h, m = f"model.layers.{i}", f"layers.{i}"
    mlp_norm = "pre_feedforward_layernorm" if cfg.post_norms else "post_attention_layernorm"
    t = [_same(f"{h}.input_layernorm.weight", f"{m}.input_norm.scale"),
         _same(f"{h}.{mlp_norm}.weight", f"{m}.mlp_norm.scale")]
    if cfg.post_norms:
        t += [_same(f"{h}.post_attention_layernorm.weight", f"{m}.post_attn_norm.scale"),
              _same(f"{h}.post_feedforward_layernorm.weight", f"{m}.post_mlp_norm.scale")]
    for p in "qkv":
        t.append(_heads_in(f"{h}.self_attn.{p}_proj.weight", f"{m}.attn.{p}_proj.kernel", p != "q"))
        if cfg.qkv_bias:
            t.append(_heads_bias(f"{h}.self_attn.{p}_proj.bias", f"{m}.attn.{p}_proj.bias"))
    t.append(_heads_out(f"{h}.self_attn.o_proj.weight", f"{m}.attn.o_proj.kernel", transposed=False))
    if cfg.out_bias:
        t.append(_same(f"{h}.self_attn.o_proj.bias", f"{m}.attn.o_proj.bias"))
    if cfg.qk_norm:
        t += [_same(f"{h}.self_attn.q_norm.weight", f"{m}.attn.q_norm.scale"),
              _same(f"{h}.self_attn.k_norm.weight", f"{m}.attn.k_norm.scale")]
    for p in ("gate_proj", "up_proj", "down_proj"):
        t.append(_linear(f"{h}.mlp.{p}.weight", f"{m}.mlp.{p}.kernel"))
        if cfg.mlp_bias:
            t.append(_same(f"{h}.mlp.{p}.bias", f"{m}.mlp.{p}.bias"))
    return t


def weight_table(cfg: ModelConfig, *, score: bool = False) -> list[Entry]:
    """The HF <-> jalign parameter table for ``cfg``'s family.

    ``score``: a ``*ForSequenceClassification`` model, ``score.weight`` [N, E]
    <-> ``score_head.kernel`` [E, N] in place of any ``lm_head``.
    """
    if cfg.model_type == "gpt2":
        t = _gpt2_table(cfg)
    else:
        t = [_same("model.embed_tokens.weight", "embed"), _same("model.norm.weight", "final_norm.scale")]
        for i in range(cfg.num_layers):
            t += _layer_entries(cfg, i)
    if score:
        t.append(_linear("score.weight", "score_head.kernel"))
    elif not cfg.tie_embeddings:
        t.append(_linear("lm_head.weight", "lm_head.kernel"))
    return t


def _path(dotted: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def _shard_index(directory: str) -> dict[str, str]:
    """HF tensor name -> safetensors file, over every shard in ``directory``."""
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    index = {}
    for file in files:
        with safe_open(file, framework="flax") as f:
            index.update({key: file for key in f.keys()})
    return index


def _read(index: dict[str, str], key: str) -> jax.Array:
    if key not in index:
        raise KeyError(f"checkpoint has no tensor {key!r} (files: {sorted(set(index.values()))})")
    with safe_open(index[key], framework="flax") as f:
        return f.get_tensor(key)


def _load_entry(cfg: ModelConfig, entry: Entry, index: dict[str, str],
                shapes: list[tuple[int, ...]]) -> tuple[jax.Array, ...]:
    """Reads an entry's HF tensors, checks their shapes, returns transformed values."""
    specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    expected = jax.eval_shape(lambda *xs: entry.save(cfg, *xs), *specs)
    raw = [_read(index, k) for k in entry.hf]
    for key, x, want in zip(entry.hf, raw, expected):
        if x.shape != want.shape:
            raise ValueError(f"{index[key]}: tensor {key!r} has shape {x.shape}, "
                             f"expected {want.shape} for {entry.paths}")
    return entry.load(cfg, *raw)


def _score_kind(hf: dict, labels: int, kind: str | None) -> str:
    """The head kind: ``kind``, else the one recorded by `save_hf`, else reward (N = 1) / embedding."""
    kind = kind or hf.get(SCORE_KIND_KEY) or ("reward" if labels == 1 else "embedding")
    one_output = kind != "embedding"          # reward and pairwise heads are [E, 1]
    if one_output != (labels == 1):
        raise ValueError(f"a {kind!r} score head does not fit num_labels={labels}")
    return kind


def _abstract_model(cfg: ModelConfig, head: tuple[str, int] | None) -> Decoder:
    def build():
        model = Decoder(cfg, rngs=nnx.Rngs(0))
        if head is not None:
            add_score_head(model, head[0], outputs=head[1], rngs=nnx.Rngs(0))
        return model
    return nnx.eval_shape(build)


def load_hf(directory: str, *, score_kind: str | None = None, **overrides) -> Decoder:
    """Loads a HF checkpoint directory (config.json + safetensors) into a `Decoder`.

    A ``*ForSequenceClassification`` checkpoint with ``N`` labels also fills
    ``model.score_head``, a `ScoreHead` of kind ``score_kind`` (default: the
    kind `save_hf` recorded, else "reward" for N = 1 and "embedding" otherwise).
    ``overrides`` set `ModelConfig` fields such as ``dtype``/``param_dtype``/``remat``.
    Raises ValueError naming the file and tensor on any shape mismatch, and on
    tensors the table does not know.
    """
    hf = read_hf_config(directory)
    cfg = config_from_hf(hf, **overrides)
    labels = num_labels(hf)
    head = None if labels is None else (_score_kind(hf, labels, score_kind), labels)
    graphdef, state = nnx.split(_abstract_model(cfg, head))
    targets = dict(nnx.to_flat_state(state))
    index = _shard_index(directory)
    filled = {}
    table = weight_table(cfg, score=head is not None)
    for entry in table:
        abstract_vars = [targets[_path(p)] for p in entry.paths]
        values = _load_entry(cfg, entry, index, [v.shape for v in abstract_vars])
        for path, var, value in zip(entry.paths, abstract_vars, values):
            filled[_path(path)] = var.replace(jnp.asarray(value, var.dtype))
    used = {k for entry in table for k in entry.hf}
    unknown = [k for k in index if k not in used and not k.endswith(_IGNORED_SUFFIXES)
               and not (cfg.tie_embeddings and k == "lm_head.weight")]
    if unknown:
        raise ValueError(f"{directory}: tensors not in the {cfg.model_type} table: {unknown}")
    missing = [p for p in targets if p not in filled]
    if missing:
        raise ValueError(f"{directory}: parameters not filled by the checkpoint: {missing}")
    return nnx.merge(graphdef, nnx.from_flat_state(list(filled.items())))


def _hf_config(model: Decoder, pad_token_id: int | None) -> dict:
    """config.json of ``model``: a causal LM, or a sequence classifier when it has a score head."""
    head = getattr(model, "score_head", None)
    if head is None:
        return config_to_hf(model.cfg)
    cfg = model.cfg if pad_token_id is None else model.cfg.replace(pad_token_id=pad_token_id)
    if cfg.pad_token_id is None:
        raise ValueError("a score head is exported as *ForSequenceClassification, which pools the "
                         "rightmost token != pad_token_id: pass pad_token_id= or set cfg.pad_token_id")
    hf = config_to_hf(cfg, labels=head.kernel.shape[-1])
    hf[SCORE_KIND_KEY] = head.kind
    return hf


def save_hf(model: Decoder, directory: str, *, pad_token_id: int | None = None) -> None:
    """Writes ``model`` as a HF checkpoint: model.safetensors + config.json.

    A model with a ``score_head`` is written as ``*ForSequenceClassification``:
    ``score.weight`` [N, E], no ``lm_head`` (untied LM heads are dropped), and
    ``pad_token_id`` (this argument, else ``model.cfg.pad_token_id``; one is
    required). LoRA adapters, if any, must be merged first (`jalign.models.lora.merge`).
    """
    cfg = model.cfg
    if nnx.state(model, nnx.LoRAParam):
        raise ValueError("model has LoRA adapters; merge them first (jalign.models.lora.merge)")
    hf = _hf_config(model, pad_token_id)
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors = {}
    for entry in weight_table(cfg, score=getattr(model, "score_head", None) is not None):
        values = entry.save(cfg, *(params[_path(p)][...] for p in entry.paths))
        for key, value in zip(entry.hf, values):
            tensors[key] = jnp.asarray(value, cfg.param_dtype)
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
