"""Logical axis names -> mesh axes: one rule table for parameters and activations.

Parameters and activations are annotated with logical names (see
``jalign/models/layers.py``); the table decides which mesh axis each lands on
(`jalign.models.layers.logical_to_spec`). Parameter names and activation names
are distinct, so the defaults give ZeRO-3 style FSDP: a weight's model
dimension lives on ``fsdp`` while activations keep the batch on ``data x fsdp``
and the model dimension whole, so XLA all-gathers each layer's weights when it
needs them and every device computes only its share of the batch. Tensor
parallelism splits heads, MLP width and vocabulary over ``tensor``. Axes of
size 1 drop out, so the same table serves pure data parallelism, FSDP and
FSDP + TP.

An experiment overrides entries through its mesh section
(``MeshConfig.rules``); the trainer activates the table around tracing with
`activate`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import jax
from flax import nnx
from jax.sharding import Mesh

from jalign.models.layers import MeshAxes, logical_to_spec

DEFAULT_RULES: dict[str, MeshAxes] = {
    # parameters
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
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> Iterator[None]:
    """Makes ``mesh`` and ``rules`` the ones that model code sees while tracing.

    Inside, ``jax.sharding.get_abstract_mesh()`` is ``mesh`` and flax's logical
    rules are ``rules``, so `jalign.models.layers.constrain` shards activations
    and the log-prob op picks its token and vocabulary axes. Usable inside a
    jitted function (it sets the abstract mesh only).
    """
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nnx.logical_axis_rules(list(rules.items())):
        yield


__all__ = ["DEFAULT_RULES", "MeshAxes", "activate", "logical_to_spec"]
