"""Mesh, logical-axis rules, parameter/optimizer shardings, multi-host start-up and peer faults."""

from jalign.sharding.mesh import AXES, MeshConfig, make_mesh
from jalign.sharding.multihost import (PEER_FAILURE_EXIT, exit_for_peer_failure, global_batch, initialize,
                                      peer_failure, place)
from jalign.sharding.params import logical_names, optimizer_shardings, state_shardings
from jalign.sharding.rules import DEFAULT_RULES, activate, logical_to_spec

__all__ = [
    "AXES", "DEFAULT_RULES", "activate", "MeshConfig", "PEER_FAILURE_EXIT", "exit_for_peer_failure", "global_batch",
    "initialize", "logical_names", "logical_to_spec", "make_mesh", "optimizer_shardings", "peer_failure", "place",
    "state_shardings",
]
