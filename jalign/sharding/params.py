"""Shardings of parameters and optimizer state, from the parameters' logical names."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jalign.sharding.rules import DEFAULT_RULES, MeshAxes, logical_to_spec


def logical_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a variable was created with, or None."""
    metadata = variable.get_metadata()
    names = metadata.get("out_sharding", metadata.get("sharding_names"))
    return None if names is None else tuple(names)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state: Any, mesh: Mesh, rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> Any:
    """NamedShardings for an ``nnx.State`` (or any pytree of Variables/arrays).

    Variables with logical names are sharded by :func:`logical_to_spec`;
    everything else is replicated. The result has the structure of ``state``
    with each Variable replaced by its sharding (as ``nnx.State`` expects for
    ``jax.jit`` in/out shardings after ``nnx.split``).
    """
    def sharding(leaf):
        value = leaf.get_value() if _is_variable(leaf) else leaf
        names = logical_names(leaf) if _is_variable(leaf) else None
        spec = PartitionSpec() if names is None else logical_to_spec(names, value.shape, mesh, rules)
        return NamedSharding(mesh, spec)

    return jax.tree.map(sharding, state, is_leaf=_is_variable)


def optimizer_shardings(tx: optax.GradientTransformation, params: Any, param_shardings: Any,
                        mesh: Mesh, rules: Mapping[str, MeshAxes] = DEFAULT_RULES) -> Any:
    """Shardings of ``tx.init(params)``: moment buffers follow their parameter.

    For an ``nnx.State`` of Variables the buffers are Variables carrying the
    same logical names; for plain arrays they are matched to ``param_shardings``
    through ``optax.tree_map_params``.

    Args:
      tx: the optax transformation.
      params: parameter pytree (arrays or ShapeDtypeStructs).
      param_shardings: the matching pytree of NamedShardings.
      mesh: the mesh, for replicated non-parameter leaves (step counts).
      rules: the rule table.
    """
    abstract_state = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    if any(_is_variable(x) for x in jax.tree.leaves(params, is_leaf=_is_variable)):
        # nnx states: the moment buffers are Variables that kept their logical names.
        return state_shardings(abstract_state, mesh, rules)
    return optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_state, param_shardings,
        transform_non_params=lambda _: replicated)
