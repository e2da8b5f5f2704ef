"""The objective registry: names, citations, requirements, hyperparameters.

``@objective("dpo", citation=..., requires=...)`` turns a class into a frozen
pytree dataclass and records it under its name; ``make("dpo", beta=0.1)``
builds one from configuration and rejects unknown names or hyperparameters
with an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jalign.objectives.core import Objective, Requirements, register_pytree

_REGISTRY: dict[str, type[Objective]] = {}


def objective(name: str, *, citation: str, requires: Requirements):
    """Class decorator: a registered objective named ``name``.

    Args:
      name: registry name, a Python identifier (it is also the factory name
        exported from ``jalign.objectives``).
      citation: paper and equation implemented, e.g. ``"Rafailov et al. 2023, Eq. 7"``.
      requires: what the input batch must hold.
    """
    if not name.isidentifier():
        raise ValueError(f"objective name must be an identifier; got {name!r}")

    def register(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is registered twice ({_REGISTRY[name]} and {cls})")
        cls = register_pytree(cls)
        cls.name, cls.citation, cls.requires = name, citation, requires
        _REGISTRY[name] = cls
        return cls

    return register


def registered() -> dict[str, type[Objective]]:
    """Name -> class of every registered objective, sorted by name."""
    import jalign.objectives  # noqa: F401  (imports every family module)

    return dict(sorted(_REGISTRY.items()))


def hyperparameter_defaults(cls: type[Objective]) -> dict[str, Any]:
    """Field name -> default (``dataclasses.MISSING`` when required)."""
    defaults = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
        else:
            defaults[field.name] = dataclasses.MISSING
    return defaults


def make(name: str, **hyperparameters: Any) -> Objective:
    """Builds the objective registered as ``name``.

    Raises:
      ValueError: for an unknown name or hyperparameter, listing the valid ones.
    """
    table = registered()
    if name not in table:
        raise ValueError(f"unknown objective {name!r}; valid objectives: {', '.join(table)}")
    cls = table[name]
    valid = list(hyperparameter_defaults(cls))
    unknown = sorted(set(hyperparameters) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown hyperparameter(s) {unknown}; valid: {valid}")
    return cls(**hyperparameters)
