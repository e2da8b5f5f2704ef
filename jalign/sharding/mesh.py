"""The device mesh: named axes (data, fsdp, tensor) sized from a small config."""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from jalign.sharding.rules import DEFAULT_RULES, MeshAxes

AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes (one of them may be -1 to take the remaining devices) and the rule table.

    ``rules`` overrides entries of `DEFAULT_RULES` (logical name -> mesh axis,
    axes or None), e.g. ``{"embed": None}`` for pure data parallelism with
    replicated weights on an fsdp axis.
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: Mapping[str, MeshAxes] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("data", "fsdp", "tensor"):
            size = getattr(self, name)
            if not isinstance(size, int) or isinstance(size, bool) or not (size == -1 or size >= 1):
                raise ValueError(f"mesh.{name} must be a positive device count or -1 (the rest); got {size!r}")
        for name, axes in self.rules.items():
            named = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            unknown = [a for a in named if a not in AXES]
            if unknown:
                raise ValueError(f"mesh.rules.{name}: unknown mesh axes {unknown}; the mesh has {list(AXES)}")

    def rule_table(self) -> dict[str, MeshAxes]:
        """`DEFAULT_RULES` with this mesh section's ``rules`` entries replacing theirs."""
        return {**DEFAULT_RULES, **self.rules}

    def sizes(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"at most one mesh axis may be -1; got {self}")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"{num_devices} devices are not divisible by the fixed axes of {self}")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices; have {num_devices}")
        return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all, across processes) with axes :data:`AXES`."""
    devices = jax.devices() if devices is None else list(devices)
    sizes = config.sizes(len(devices))
    # Auto axes: XLA's partitioner propagates shardings from the jit boundary,
    # so model and kernel code need no sharding-in-types annotations.
    auto = (AxisType.Auto,) * len(AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(sizes, AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(sizes), AXES, axis_types=auto)
