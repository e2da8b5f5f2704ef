"""Typed ``--set a.b=value`` overrides of nested config dataclasses.

Every config section is a frozen dataclass, so its fields and their types are
the schema: a path must name a field (an error lists the valid ones), and the
value is parsed to the field's annotated type. The objective is a config field
too: ``objective.beta=0.05`` sets a hyperparameter of a single objective,
``objective.dpo.beta=0.05`` one term of a composed objective (terms addressed
by their metric names, ``dpo``, ``dpo_1``, ...), ``objective.sft.weight=0.5``
the weight of a scaled term, and ``objective=ipo`` replaces the objective by a
registered one with its defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from jalign.objectives import Objective, Scaled, Sum, parse


def parse_assignment(text: str) -> tuple[list[str], str]:
    """``"a.b=1"`` -> ``(["a", "b"], "1")``."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like path.to.field=value")
    path, value = text.split("=", 1)
    return path.strip().split("."), value.strip()


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def coerce(text: str, annotation: Any, where: str) -> Any:
    """Parses ``text`` to ``annotation`` (int, float, bool, str, Optional, tuples, Literal)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    try:
        if annotation is Any:
            return text
        if origin in (typing.Union, types.UnionType):
            # "none" is None unless a choice spells it exactly (model.remat=none is the "none" policy).
            spelled = any(text in map(str, typing.get_args(a)) for a in args if typing.get_origin(a) is typing.Literal)
            if text.lower() == "none" and type(None) in args and not spelled:
                return None
            errors = []
            for option in (a for a in args if a is not type(None)):
                try:
                    return coerce(text, option, where)
                except ValueError as error:
                    errors.append(str(error))
            raise ValueError("; ".join(errors))
        if origin is typing.Literal:
            for option in args:
                if str(option) == text:
                    return option
            raise ValueError(f"expected one of {list(args)}")
        if origin is tuple:
            items = [t for t in text.strip("()[]").split(",") if t.strip()]
            element = args[0] if args else str
            return tuple(coerce(item.strip(), element, where) for item in items)
        if annotation is bool:
            return _parse_bool(text)
        if annotation in (int, float, str):
            return annotation(text)
    except ValueError as error:
        raise ValueError(f"{where}: cannot parse {text!r} as {annotation}: {error}") from None
    raise ValueError(f"{where}: fields of type {annotation} cannot be set from the command line")


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(obj)}


def _set_objective(objective: Objective, path: list[str], text: str, where: str) -> Objective:
    if isinstance(objective, Sum):
        terms = objective.named_terms()
        names = [name for name, _ in terms]
        if not path or path[0] not in names:
            raise ValueError(f"{where}: no objective term {path[:1]}; terms: {names}")
        index = names.index(path[0])
        replaced = [term for _, term in terms]
        replaced[index] = _set_objective(replaced[index], path[1:], text, where)
        return Sum(tuple(replaced))
    if isinstance(objective, Scaled):
        if path == ["weight"]:
            return dataclasses.replace(objective, weight=coerce(text, float, where))
        return dataclasses.replace(objective, inner=_set_objective(objective.inner, path, text, where))
    return _set_field(objective, path, text, where)


def _set_field(obj: Any, path: list[str], text: str, where: str) -> Any:
    if not path:
        raise ValueError(f"{where}: names a section, not a field")
    types_ = _field_types(obj)
    name = path[0]
    if name not in types_:
        raise ValueError(f"{where}: {type(obj).__name__} has no field {name!r}; valid fields: {list(types_)}")
    current = getattr(obj, name)
    if isinstance(current, Objective):
        value = parse(text) if len(path) == 1 else _set_objective(current, path[1:], text, where)
    elif dataclasses.is_dataclass(current) and not isinstance(current, type):
        value = _set_field(current, path[1:], text, where)
    elif isinstance(current, Mapping) and len(path) == 2:  # a table such as mesh.rules.embed
        value = {**current, path[1]: coerce(text, typing.get_args(types_[name])[1], where)}
    elif len(path) > 1:
        raise ValueError(f"{where}: {name!r} is a plain field with no sub-fields")
    else:
        value = coerce(text, types_[name], where)
    return dataclasses.replace(obj, **{name: value})


def apply_overrides(config: Any, assignments: list[str]) -> Any:
    """Returns ``config`` with each ``path=value`` assignment applied in order."""
    for assignment in assignments:
        path, text = parse_assignment(assignment)
        config = _set_field(config, path, text, f"--set {assignment}")
    return config
