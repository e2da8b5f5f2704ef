"""Mesh, logical-axis rules, parameter/optimizer shardings, multi-host start-up."""

from jalign.sharding.mesh import AXES, MeshConfig, make_mesh
from jalign.sharding.multihost import global_batch, initialize, place
from jalign.sharding.params import logical_names, optimizer_shardings, state_shardings
from jalign.sharding.rules import DEFAULT_RULES, logical_to_spec

__all__ = [
    "AXES", "DEFAULT_RULES", "MeshConfig", "global_batch", "initialize", "logical_names",
    "logical_to_spec", "make_mesh", "optimizer_shardings", "place", "state_shardings",
]
