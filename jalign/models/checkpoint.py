"""Hugging Face checkpoint import and export.

One table per family maps Hugging Face tensor names to module paths with a
transform each way. `load_hf` builds the model abstractly with
``nnx.eval_shape`` (no memory for random weights), reads each tensor from the
safetensors shards of a local directory, transforms it, checks its shape and
fills the parameter, given a mesh directly in its sharding. `save_hf` inverts
the table and writes safetensors (sharded with an index above a size
threshold) plus a config.json that
``transformers.AutoModelForCausalLM.from_pretrained`` loads.

Memory: both directions hold at most one jalign parameter in host memory at a
time (a stacked ``[L, ...]`` layer parameter counts as one), plus, when
saving, the tensors of the shard being written. A loaded parameter goes from
the host straight to its sharding, each device receiving only its shard.

Layer parameters are stacked (``layers.<rest>`` with a leading layer axis);
the table names per-layer paths, and ``layers.{i}.<rest>`` means slice ``i``.

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
import math
import os
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from jalign.models.config import ModelConfig, config_from_hf, config_to_hf, num_labels, read_hf_config
from jalign.models.decoder import Decoder
from jalign.models.layers import MeshAxes, logical_to_spec
from jalign.models.preference_heads import VECTOR_HEADS, add_score_head

# config.json key recording a score head's kind (a "pairwise" head is [E, 1] like a "reward" one).
SCORE_KIND_KEY = "jalign_score_kind"

# transformers' names for a sharded checkpoint: its index and the shard files.
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# transformers' default ``max_shard_size`` ("5GB").
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9

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
    """HF tensor name -> safetensors file: from ``model.safetensors.index.json`` when present,
    else by listing every ``*.safetensors`` file's keys (a single-file checkpoint)."""
    index_file = os.path.join(directory, INDEX_NAME)
    if os.path.exists(index_file):
        with open(index_file) as f:
            weight_map = json.load(f)["weight_map"]
        return {key: os.path.join(directory, file) for key, file in weight_map.items()}
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    index = {}
    for file in files:
        with safe_open(file, framework="numpy") as f:
            index.update({key: file for key in f.keys()})
    return index


def _read(index: dict[str, str], key: str) -> np.ndarray:
    """One tensor into host memory (the file is memory-mapped; nothing else is read)."""
    if key not in index:
        raise KeyError(f"checkpoint has no tensor {key!r} (files: {sorted(set(index.values()))})")
    with safe_open(index[key], framework="numpy") as f:
        return f.get_tensor(key)


def _load_entry(cfg: ModelConfig, entry: Entry, index: dict[str, str],
                shapes: list[tuple[int, ...]]) -> tuple[np.ndarray, ...]:
    """Reads an entry's HF tensors, checks their shapes, returns transformed host values."""
    specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    expected = jax.eval_shape(lambda *xs: entry.save(cfg, *xs), *specs)
    raw = [_read(index, k) for k in entry.hf]
    for key, x, want in zip(entry.hf, raw, expected):
        if x.shape != want.shape:
            raise ValueError(f"{index[key]}: tensor {key!r} has shape {x.shape}, "
                             f"expected {want.shape} for {entry.paths}")
    return tuple(np.asarray(x) for x in entry.load(cfg, *raw))


def _locate(dotted: str) -> tuple[tuple, int | None]:
    """Where the table's path ``dotted`` lives: ``(param path, layer)``; ``layers.{i}.<rest>`` is
    slice ``i`` of the stacked ``layers.<rest>``, any other path a whole parameter (layer None)."""
    path = _path(dotted)
    if path[0] != "layers":
        return path, None
    return ("layers",) + path[2:], path[1]


def _sharding(var: nnx.Variable, mesh, rules: Mapping[str, MeshAxes]) -> NamedSharding:
    """The parameter's sharding from its logical names (replicated without names)."""
    names = var.get_metadata().get("out_sharding")
    spec = (jax.sharding.PartitionSpec() if names is None
            else logical_to_spec(tuple(names), var.shape, mesh, rules))
    return NamedSharding(mesh, spec)


def _place(host: np.ndarray, sharding: NamedSharding | None) -> jax.Array:
    """A host array onto ``sharding``, each device (of any process) taking only its own slice."""
    if sharding is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _score_kind(hf: dict, labels: int, kind: str | None) -> str:
    """The head kind: ``kind``, else the one recorded by `save_hf`, else reward (N = 1) / embedding."""
    kind = kind or hf.get(SCORE_KIND_KEY) or ("reward" if labels == 1 else "embedding")
    one_output = kind not in VECTOR_HEADS     # reward and pairwise heads are [E, 1]
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


def load_hf(directory: str, *, score_kind: str | None = None, mesh: jax.sharding.Mesh | None = None,
            rules: Mapping[str, MeshAxes] | None = None, **overrides) -> Decoder:
    """Loads a HF checkpoint directory (config.json + safetensors) into a `Decoder`.

    Reads one safetensors file or the shards ``model.safetensors.index.json``
    names, one jalign parameter at a time. With ``mesh`` (and ``rules``, the
    logical-axis table) every parameter goes straight to its sharding, each
    device receiving only its shard, so the model is never whole on one device
    or, beyond its largest parameter, in host memory; without, parameters land
    on the default device.

    A ``*ForSequenceClassification`` checkpoint with ``N`` labels also fills
    ``model.score_head``, a `ScoreHead` of kind ``score_kind`` (default: the
    kind `save_hf` recorded, else "reward" for N = 1 and "embedding" otherwise).
    ``overrides`` set `ModelConfig` fields such as ``dtype``/``param_dtype``/``remat``.
    Raises ValueError naming the file and tensor on any shape mismatch, and on
    tensors the table does not know.
    """
    if mesh is not None and rules is None:
        raise ValueError("load_hf: pass the logical-axis rules with the mesh")
    hf = read_hf_config(directory)
    cfg = config_from_hf(hf, **overrides)
    labels = num_labels(hf)
    head = None if labels is None else (_score_kind(hf, labels, score_kind), labels)
    graphdef, state = nnx.split(_abstract_model(cfg, head))
    targets = dict(nnx.to_flat_state(state))
    index = _shard_index(directory)
    table = weight_table(cfg, score=head is not None)
    sources: dict[tuple, list] = {}          # parameter path -> [(layer or None, entry, output position)]
    for entry in table:
        for position, dotted in enumerate(entry.paths):
            path, layer = _locate(dotted)
            if path not in targets:
                raise ValueError(f"{directory}: the {cfg.model_type} table names {dotted!r}, not in the model")
            sources.setdefault(path, []).append((layer, entry, position))
    filled = {}
    # Parameter by parameter, so the host holds one at a time; an entry that fills several
    # (GPT-2's packed q/k/v) is read once for each.
    for path, parts in sources.items():
        var = targets[path]
        host = np.empty(var.shape, var.dtype)
        for layer, entry, position in parts:
            shapes = [_entry_shape(targets, p) for p in entry.paths]
            value = _load_entry(cfg, entry, index, shapes)[position]
            host[() if layer is None else layer] = value
        filled[path] = var.replace(_place(host, None if mesh is None else _sharding(var, mesh, rules)))
        del host  # before the next parameter's buffer is allocated
    used = {k for entry in table for k in entry.hf}
    unknown = [k for k in index if k not in used and not k.endswith(_IGNORED_SUFFIXES)
               and not (cfg.tie_embeddings and k == "lm_head.weight")]
    if unknown:
        raise ValueError(f"{directory}: tensors not in the {cfg.model_type} table: {unknown}")
    missing = [p for p in targets if p not in filled]
    if missing:
        raise ValueError(f"{directory}: parameters not filled by the checkpoint: {missing}")
    return nnx.merge(graphdef, nnx.from_flat_state(list(filled.items())))


def _entry_shape(params: Mapping[tuple, object], dotted: str) -> tuple[int, ...]:
    """The shape of the table path ``dotted`` (one layer's slice of a stacked parameter)."""
    path, layer = _locate(dotted)
    shape = tuple(params[path].shape)
    return shape if layer is None else shape[1:]


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


def _gather(params: Mapping[tuple, nnx.Variable], dotted: str) -> np.ndarray:
    """One table path's value on the host, gathered from its shards (across processes too)."""
    path, layer = _locate(dotted)
    value = params[path][...]
    value = value if layer is None else value[layer]
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


def _plan_shards(cfg: ModelConfig, table: list[Entry], params, max_bytes: int) -> list[list[Entry]]:
    """Table entries grouped into files of at most ``max_bytes`` each (an entry stays whole,
    and one larger than the limit gets a file of its own), from shapes alone."""
    itemsize = np.dtype(cfg.param_dtype).itemsize
    shards, size = [[]], 0
    for entry in table:
        inputs = [jax.ShapeDtypeStruct(_entry_shape(params, p), cfg.param_dtype) for p in entry.paths]
        outputs = jax.eval_shape(lambda *xs: entry.save(cfg, *xs), *inputs)
        nbytes = sum(math.prod(o.shape) * itemsize for o in outputs)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def save_hf(model: Decoder, directory: str, *, pad_token_id: int | None = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Writes ``model`` as a HF checkpoint: safetensors + config.json.

    Up to ``max_shard_bytes`` of tensors go to ``model.safetensors``; a larger
    model is split as transformers splits it, into
    ``model-0000k-of-0000n.safetensors`` files of at most that size plus
    ``model.safetensors.index.json``. Parameters are gathered from their
    shards one at a time, so the host holds at most one file's tensors; with
    several processes every one must call this and process 0 writes.

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
    table = weight_table(cfg, score=getattr(model, "score_head", None) is not None)
    shards = _plan_shards(cfg, table, params, max_shard_bytes)
    names = ([SINGLE_NAME] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    write = jax.process_index() == 0
    if write:
        os.makedirs(directory, exist_ok=True)
        # A previous export's files would shadow or contradict this one's.
        shard_files = glob.glob(os.path.join(directory, "model-*-of-*.safetensors"))
        for stale in [os.path.join(directory, SINGLE_NAME), os.path.join(directory, INDEX_NAME), *shard_files]:
            if os.path.exists(stale):
                os.remove(stale)
    weight_map, total = {}, 0
    for name, entries in zip(names, shards):
        tensors = {}
        for entry in entries:
            values = entry.save(cfg, *(_gather(params, p) for p in entry.paths))
            for key, value in zip(entry.hf, values):
                tensors[key] = np.ascontiguousarray(np.asarray(value), dtype=cfg.param_dtype)
                weight_map[key] = name
                total += tensors[key].nbytes
        if write:
            save_file(tensors, os.path.join(directory, name), metadata={"format": "pt"})
        del tensors
    if not write:
        return
    if len(shards) > 1:
        with open(os.path.join(directory, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
