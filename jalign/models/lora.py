"""LoRA adapters on chosen projections; the frozen base doubles as the reference.

`add_lora` attaches ``W + (alpha / r) * A @ B`` to every `Projection` whose
name or per-layer dotted path matches a pattern (fnmatch): A [in..., r] random, B
[r, out...] zero, so a fresh adapter leaves the model unchanged. Adapters are
``nnx.LoRAParam``; train them with ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)``
and the base ``nnx.Param`` weights never change.

`reference_view` returns the same model with adapter scales set to zero: it
shares every base array with the policy (nothing is copied), so the policy
and its reference cost one set of weights. `merge` folds adapters into the
kernels for export; `peft_adapter` converts them to PEFT's LoRA format.
"""

from __future__ import annotations

import fnmatch
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.models.checkpoint import weight_table
from jalign.models.layers import Projection


class LoRAScale(nnx.Variable):
    """The adapter multiplier alpha / rank (not trained; 0 disables the adapter)."""


def _layer_axes(proj: Projection) -> int:
    """How many leading layer axes ``proj.kernel`` has beyond its own (1 inside the stacked blocks)."""
    return proj.kernel.ndim - len(proj.names)


def _projections(model: nnx.Module):
    """Every `Projection` with its per-layer dotted paths (``layers.{i}.attn.q_proj``; one when unstacked)."""
    for path, module in nnx.iter_modules(model):
        if not isinstance(module, Projection):
            continue
        dotted = ".".join(str(p) for p in path)
        if _layer_axes(module):
            rest = dotted.removeprefix("layers.")
            yield module, str(path[-1]), [f"layers.{i}.{rest}" for i in range(module.kernel.shape[0])]
        else:
            yield module, str(path[-1]), [dotted]


def add_lora(model: nnx.Module, *, rank: int, alpha: float,
             targets: tuple[str, ...] = ("q_proj", "v_proj"), rngs: nnx.Rngs) -> list[str]:
    """Attaches adapters in place; returns the per-layer dotted paths of adapted projections.

    ``targets`` are fnmatch patterns on the projection name ("q_proj") or
    per-layer path ("layers.0.mlp.*"). A has logical axes (input names...,
    "lora"), B ("lora", output names...), each after the kernel's leading
    layer axis when it has one: in the stacked blocks every layer gets an
    adapter, and layers no pattern names get scale 0 (inert).
    """
    adapted = []
    for proj, name, paths in _projections(model):
        hits = [p for p in paths if any(fnmatch.fnmatch(p, t) or fnmatch.fnmatch(name, t) for t in targets)]
        if not hits:
            continue
        lead = _layer_axes(proj)
        n_in = len(proj.in_axes)
        shape = proj.kernel.shape
        layers, in_shape, out_shape = shape[:lead], shape[lead:lead + n_in], shape[lead + n_in:]
        layer_names = proj.kernel.get_metadata()["out_sharding"][:lead]
        dtype = proj.kernel[...].dtype
        a = jax.random.normal(rngs.params(), layers + in_shape + (rank,), dtype) / math.sqrt(
            math.prod(in_shape))
        proj.lora_a = nnx.LoRAParam(a, out_sharding=layer_names + proj.names[:n_in] + ("lora",),
                                    eager_sharding=False)
        proj.lora_b = nnx.LoRAParam(jnp.zeros(layers + (rank,) + out_shape, dtype),
                                    out_sharding=layer_names + ("lora",) + proj.names[n_in:],
                                    eager_sharding=False)
        scale = [alpha / rank if p in hits else 0.0 for p in paths]
        proj.lora_scale = LoRAScale(jnp.asarray(scale, jnp.float32).reshape(layers))
        adapted += hits
    if not adapted:
        raise ValueError(f"no projection matches {targets}")
    return adapted


def reference_view(model: nnx.Module) -> nnx.Module:
    """The model with adapters disabled, sharing all base arrays with ``model``.

    Works inside ``nnx.jit``/``nnx.grad``: gradients do not reach the
    adapters through it (their scale is a zero constant).
    """
    graphdef, scales, rest = nnx.split(model, LoRAScale, ...)
    zeros = jax.tree.map(jnp.zeros_like, scales)
    return nnx.merge(graphdef, zeros, rest)


def merge(model: nnx.Module) -> nnx.Module:
    """Folds every adapter into its kernel (in place) and removes it; returns model."""
    for proj, _, _ in _projections(model):
        if proj.lora_a is None:
            continue
        lead = _layer_axes(proj)
        kernel = proj.kernel[...]
        layers = kernel.shape[:lead]
        a = proj.lora_a[...].astype(jnp.float32)                            # [L.., in..., r]
        b = proj.lora_b[...].astype(jnp.float32)                            # [L.., r, out...]
        rank = a.shape[-1]
        delta = a.reshape(layers + (-1, rank)) @ b.reshape(layers + (rank, -1))  # [L.., in, out]
        scale = proj.lora_scale[...].reshape(layers + (1, 1))
        delta = (delta * scale).reshape(kernel.shape)                       # [L.., in..., out...]
        proj.kernel.set_value((kernel.astype(jnp.float32) + delta).astype(kernel.dtype))
        proj.lora_a = proj.lora_b = proj.lora_scale = None
    return model


def _hf_modules(cfg) -> dict[str, str]:
    """Per-layer projection path (``layers.0.attn.q_proj``) -> Hugging Face module name, for plain linears.

    Every rope family stores a projection as one torch ``Linear`` whose weight
    is the kernel flattened to ``[in, out]`` and transposed; GPT-2 packs q, k
    and v into one ``Conv1D``, which an adapter per projection does not map to.
    """
    if cfg.model_type == "gpt2":
        raise ValueError("a PEFT adapter needs one torch Linear per adapted projection; GPT-2 packs q, k and v "
                         "into c_attn: export with --merge-lora instead")
    modules = {}
    for entry in weight_table(cfg):
        (hf,), (path,) = entry.hf, entry.paths
        if path.endswith(".kernel") and hf.endswith(".weight"):
            modules[path.removesuffix(".kernel")] = hf.removesuffix(".weight")
    return modules


def peft_adapter(model: nnx.Module, *, alpha: float) -> tuple[dict[str, np.ndarray], dict]:
    """The model's adapters in PEFT's LoRA format: ``(tensors, adapter_config fields)``.

    Per adapted layer, ``lora_A.weight`` ``[r, in]`` is A flattened to
    ``[in, r]`` and transposed, ``lora_B.weight`` ``[out, r]`` likewise from B
    ``[r, out...]`` (torch ``Linear`` weights are ``[out, in]``), under PEFT's
    key ``base_model.model.<module>.lora_A.weight``. PEFT scales by
    ``lora_alpha / r`` as jalign does; a layer whose scale is 0 (no target
    pattern named it) is left out. ``target_modules`` names a projection by its
    short name when every layer has it adapted, else each adapted module in full.
    """
    modules = _hf_modules(model.cfg)
    tensors, targets, rank = {}, set(), None
    for proj, name, paths in _projections(model):
        if proj.lora_a is None:
            continue
        lead = _layer_axes(proj)
        rank = proj.lora_a.shape[-1]
        scales = np.asarray(proj.lora_scale[...]).reshape(-1)
        if not np.allclose(scales[scales != 0], alpha / rank):
            raise ValueError(f"{name}: adapter scales {sorted(set(scales.tolist()))} are not lora_alpha / r = "
                             f"{alpha} / {rank}")
        adapted = [i for i, scale in enumerate(scales) if scale != 0]
        if lead and len(adapted) == len(paths):
            targets.add(modules[paths[0]].rsplit(".", 1)[-1])
        else:
            targets.update(modules[paths[i]] for i in adapted)
        for i in adapted:
            a = np.asarray(proj.lora_a[...][i] if lead else proj.lora_a[...])    # [in..., r]
            b = np.asarray(proj.lora_b[...][i] if lead else proj.lora_b[...])    # [r, out...]
            key = f"base_model.model.{modules[paths[i]]}"
            tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
            tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(b.reshape(rank, -1).T)
    if rank is None:
        raise ValueError("model has no LoRA adapters")
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": sorted(targets),
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False}
    return tensors, config
