"""LoRA adapters on chosen projections; the frozen base doubles as the reference.

`add_lora` attaches ``W + (alpha / r) * A @ B`` to every `Projection` whose
name or dotted path matches a pattern (fnmatch): A [in..., r] random, B
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


def _targets(model: nnx.Module, patterns: tuple[str, ...]):
    for path, module in nnx.iter_modules(model):
        if not isinstance(module, Projection):
            continue
        dotted = ".".join(str(p) for p in path)
        if any(fnmatch.fnmatch(dotted, p) or fnmatch.fnmatch(str(path[-1]), p) for p in patterns):
            yield dotted, module


def add_lora(model: nnx.Module, *, rank: int, alpha: float,
             targets: tuple[str, ...] = ("q_proj", "v_proj"), rngs: nnx.Rngs) -> list[str]:
    """Attaches adapters in place; returns the dotted paths of adapted projections.

    ``targets`` are fnmatch patterns on the projection name ("q_proj") or
    path ("layers.0.mlp.*"). A has logical axes (input names..., "lora"),
    B ("lora", output names...).
    """
    adapted = []
    for dotted, proj in _targets(model, targets):
        n_in = len(proj.in_axes)
        shape = proj.kernel.shape
        in_shape, out_shape = shape[:n_in], shape[n_in:]
        dtype = proj.kernel[...].dtype
        a = jax.random.normal(rngs.params(), in_shape + (rank,), dtype) / math.sqrt(
            math.prod(in_shape))
        proj.lora_a = nnx.LoRAParam(a, out_sharding=proj.names[:n_in] + ("lora",),
                                    eager_sharding=False)
        proj.lora_b = nnx.LoRAParam(jnp.zeros((rank,) + out_shape, dtype),
                                    out_sharding=("lora",) + proj.names[n_in:],
                                    eager_sharding=False)
        proj.lora_scale = LoRAScale(jnp.asarray(alpha / rank, jnp.float32))
        adapted.append(dotted)
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
    for _, proj in _targets(model, ("*",)):
        if proj.lora_a is None:
            continue
        a = proj.lora_a[...].astype(jnp.float32)
        b = proj.lora_b[...].astype(jnp.float32)
        delta = jnp.tensordot(a, b, axes=1) * proj.lora_scale[...]           # [in..., out...]
        kernel = proj.kernel[...]
        proj.kernel.set_value((kernel.astype(jnp.float32) + delta).astype(kernel.dtype))
        proj.lora_a = proj.lora_b = proj.lora_scale = None
    return model
