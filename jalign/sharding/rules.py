"""Logical axis names -> mesh axes: one rule table, one place.

Parameters and activations are annotated with logical names (see
``jalign/models/layers.py``); the table below decides which mesh axis each
lands on. A dimension that the chosen mesh axes do not divide is replicated
instead (e.g. 2 KV heads on a tensor axis of 4), and no mesh axis is used twice
in one array: the first dimension that claims it wins.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from jax.sharding import Mesh, PartitionSpec

MeshAxes = str | tuple[str, ...] | None

# The default table for a (data, fsdp, tensor) mesh: batch over data x fsdp,
# weights' model dimension over fsdp (ZeRO-3 style), heads/MLP/vocab over tensor.
DEFAULT_RULES: dict[str, MeshAxes] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "positions": None,
    "lora": None,
    "layers": None,
}


def _axes_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> PartitionSpec:
    """The PartitionSpec of an array whose dimensions carry logical ``names``.

    Args:
      names: one logical name (or None) per dimension.
      shape: the array's shape, to check divisibility.
      mesh: the device mesh (its axis sizes).
      rules: logical name -> mesh axis, axes, or None.

    Raises:
      ValueError: a name missing from ``rules`` (listing the known names), or a
        rank mismatch.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match {tuple(shape)=}")
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"no sharding rule for logical axis {name!r}; known: {sorted(rules)}")
        axes = tuple(a for a in _axes_tuple(rules[name]) if a in mesh.shape and a not in used)
        product = 1
        for axis in axes:
            product *= mesh.shape[axis]
        if not axes or product == 1 or size % product:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)
