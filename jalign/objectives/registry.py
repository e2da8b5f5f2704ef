"""The objective registry: names, citations, requirements, hyperparameters.

``@objective("dpo", strength="beta", citation=..., requires=..., strength="beta")`` turns a
class into a frozen pytree dataclass, attaches its declarations and records it
under its name; ``make("dpo", beta=0.1)`` builds one from configuration and
rejects unknown names or hyperparameters with an error that lists the valid
ones. ``parse("dpo(beta=0.05) + 0.2 * sft")`` builds a composed objective from
the same text a user would write in Python (the command line and sweeps use it).
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

from jalign.objectives.core import Objective, Requirements, Sampling, register_pytree

_REGISTRY: dict[str, type[Objective]] = {}


def objective(name: str, *, citation: str, requires: Requirements, strength: str | None,
              sampling: Sampling | None = None):
    """Class decorator: a registered objective named ``name``.

    Args:
      name: registry name, a Python identifier (it is also the factory name
        exported from ``jalign.objectives``).
      citation: paper and equation implemented, e.g. ``"Rafailov et al. 2023, Eq. 7"``.
      requires: what the input batch must hold (for the default
        hyperparameters; a class whose needs depend on them overrides the
        ``requires`` property).
      strength: the field holding the regularisation strength, under the
        paper's name (``"beta"``, ``"tau"``, ``"eta"``), or ``None`` when the
        objective has none. Sweeps and tools address it through
        ``Objective.strength_path``.
      sampling: for online objectives, where responses and labels come from.
    """
    if not name.isidentifier():
        raise ValueError(f"objective name must be an identifier; got {name!r}")

    def register(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is registered twice ({_REGISTRY[name]} and {cls})")
        cls = register_pytree(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        if strength is not None and strength not in fields:
            raise ValueError(f"{name}: strength={strength!r} is not a field; fields: {sorted(fields)}")
        if sampling is not None and "mixture" in sampling.sources() and sampling.mixture not in fields:
            raise ValueError(f"{name}: sampling mixture {sampling.mixture!r} is not a field")
        cls.name, cls.citation = name, citation
        # The citation is written once, here; help() and the docs show it with the class.
        cls.__doc__ = f"{(cls.__doc__ or name).rstrip()}\n\n    Paper: {citation}\n"
        cls.declared_requires, cls.declared_sampling, cls.strength_field = requires, sampling, strength
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


def parse(expression: str) -> Objective:
    """An objective from text: registered names, keyword hyperparameters, ``+`` and scalar ``*``.

    ``"dpo"``, ``"ipo(tau=0.05)"``, ``"dpo + 0.2*sft"``, ``"0.5*kto(beta=0.1) + sft"``, and a
    wrapper's inner objective as a keyword: ``"dataset_reset(inner=ppo(beta=0.1))"``.
    Only that grammar is accepted (the text is parsed, never evaluated).

    Raises:
      ValueError: naming the part of ``expression`` that is not understood, or
        an unknown objective or hyperparameter (from `make`).
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as error:
        raise ValueError(f"cannot parse objective {expression!r}: {error.msg}") from None
    return _build(tree, expression)


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _number(node.operand)
        return None if value is None else (-value if isinstance(node.op, ast.USub) else value)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    return None


def _build(node: ast.AST, text: str) -> Objective:
    if isinstance(node, ast.Name):
        return make(node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        values = {}
        for keyword in node.keywords:
            value = _number(keyword.value)
            if value is None and isinstance(keyword.value, ast.Constant):
                value = keyword.value.value
            if isinstance(keyword.value, ast.Call) or (isinstance(keyword.value, ast.Name)
                                                         and keyword.value.id in _REGISTRY):  # a wrapper's inner
                value = _build(keyword.value, text)
            if keyword.arg is None or value is None:
                raise ValueError(f"in {text!r}: {node.func.id}(...) takes name=number or name=objective arguments only")
            values[keyword.arg] = value
        return make(node.func.id, **values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _build(node.left, text) + _build(node.right, text)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        for weight, term in ((node.left, node.right), (node.right, node.left)):
            if _number(weight) is not None:
                return _number(weight) * _build(term, text)
    raise ValueError(f"cannot parse objective {text!r} at {ast.unparse(node)!r}: write names, name(key=value), "
                     "'+' and number * objective")
