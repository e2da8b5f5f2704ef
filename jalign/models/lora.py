"""LoRA adapters on chosen projections; the frozen base doubles as the reference.

`add_lora` attaches ``W + (alpha / r) * A @ B`` to every `Projection` whose
name or per-layer dotted path matches a pattern (fnmatch): A [in..., r] random, B
[r, out...] zero, so a fresh adapter leaves the model unchanged. Adapters are
``nnx.LoRAParam``; train them with ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)``
and the base ``nnx.Param`` weights never change.

`reference_view` returns the same model with adapter scales set to zero: it
shares every base array with the policy (nothing is copied), so the policy
and its reference cost one set of weights. `merge` folds adapters into the
kernels for export.
"""

from __future__ import annotations

import fnmatch
import math

import jax
import jax.numpy as jnp
from flax import nnx

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
