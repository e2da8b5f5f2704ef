"""The resolved config of a run, saved beside its checkpoints, and the check that a resume is the same run.

``train`` writes ``config.json`` in ``train.out_dir``: the experiment
flattened to the dotted paths ``--set`` takes (``objective.dpo.beta``,
``optimizer.learning_rate``; ``objective`` itself holds the objective's
name). When a run resumes from a checkpoint, its config is compared with the
saved one first, before anything is built. A difference in a field that
changes what is trained refuses the resume and lists each changed field, old
and new value; ``allow_changes`` (``jalign train --allow-changes``) accepts
them, says so, and saves the new config.

Every field changes what is trained except those in ``FREE_FIELDS``, which
change only where the run writes, how often it logs, evaluates or
checkpoints, how the same numbers are computed (log-prob kernel, mesh,
rematerialisation), or extra metrics. ``train.steps`` is free when the learning rate is constant:
with a decaying schedule the step count sets the schedule, so a longer run
would train its remaining steps at other learning rates than the saved run.
New fields are compared unless listed here, so a forgotten one errs towards
refusing.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
import json
import math
import os
import pathlib
import sys
from typing import Any, Mapping

CONFIG_FILE = "config.json"
FREE_FIELDS = ("train.out_dir", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
               "train.eval_every", "train.eval_generations", "train.eval_max_new_tokens",
               "train.eval_temperature", "train.logprob_impl", "train.extras", "data.eval", "data.eval_split", "mesh",
               "model.arch.remat", "model.remat")
_ABSENT = "(absent)"
_ALLOW_CHANGES = contextvars.ContextVar("jalign_allow_config_changes", default=False)


class ConfigChangedError(ValueError):
    """A resume whose config differs from the saved run's in fields that change what is trained."""


@contextlib.contextmanager
def allowing_changes(allow: bool = True):
    """Within this block, ``train`` resumes runs whose config changed (``jalign train --allow-changes``)."""
    token = _ALLOW_CHANGES.set(allow)
    try:
        yield
    finally:
        _ALLOW_CHANGES.reset(token)


def flatten(config: Any, path: str = "") -> dict[str, Any]:
    """``{dotted.path: JSON value}`` of a config of nested dataclasses and objectives."""
    from jalign.objectives import Objective

    if isinstance(config, Objective):
        return {path: config.name, **_objective_fields(config, path)}
    describe = getattr(config, "describe", None)
    if callable(describe) and callable(getattr(config, "preference", None)):  # a judge: what it is, not its weights
        return {path: describe()}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        flat = {}
        for field in dataclasses.fields(config):
            flat.update(flatten(getattr(config, field.name), f"{path}.{field.name}" if path else field.name))
        return flat
    return {path: _plain(config)}


def _objective_fields(objective, path: str) -> dict[str, Any]:
    """Hyperparameters addressed as ``--set`` addresses them: by term name, a scaled term's ``weight``."""
    from jalign.objectives import Scaled, Sum

    if isinstance(objective, Sum):
        return {key: value for name, term in objective.named_terms()
                for key, value in _objective_fields(term, f"{path}.{name}").items()}
    if isinstance(objective, Scaled):
        return {f"{path}.weight": _plain(objective.weight), **_objective_fields(objective.inner, path)}
    flat = {}
    for field in dataclasses.fields(objective):
        flat.update(flatten(getattr(objective, field.name), f"{path}.{field.name}"))
    return flat


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # NumPy / JAX scalars and arrays
        return value.tolist()
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))  # a function's address changes from run to run


def changed_fields(saved: Mapping[str, Any], current: Mapping[str, Any],
                   defaults: Mapping[str, Any] | None = None) -> list[str]:
    """``"path: old -> new"`` for each field that differs and changes what is trained.

    A field absent from ``saved`` whose current value is its default (in
    ``defaults``) is no change: it was added to jalign after the run was
    saved, and the saved run trained as the default says.
    """
    constant_lr = current.get("optimizer.schedule") == "constant" == saved.get("optimizer.schedule")
    changes = []
    for key in [*current, *(k for k in saved if k not in current)]:
        if any(key == f or key.startswith(f + ".") for f in FREE_FIELDS) or (key == "train.steps" and constant_lr):
            continue
        old, new = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if old is _ABSENT and defaults is not None and key in defaults and _same(defaults[key], new):
            continue
        if not _same(old, new):
            changes.append(f"{key}: {_show(old)} -> {_show(new)}")
    return changes


def _same(a: Any, b: Any) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b


def _show(value: Any) -> str:
    return value if value is _ABSENT else json.dumps(value)


def _defaults(config: Any) -> dict[str, Any] | None:
    """The flattened values of a config built from its defaults (None when its type has no defaults)."""
    try:
        return json.loads(json.dumps(flatten(type(config)())))
    except TypeError:
        return None


def check_and_save(config: Any, out_dir: pathlib.Path, *, resuming: bool, allow_changes: bool | None = None,
                   write: bool = True) -> None:
    """Refuses a resume whose config changed (unless allowed), then saves ``config`` as ``out_dir/config.json``.

    Args:
      config: the resolved experiment.
      out_dir: the run's folder.
      resuming: whether the run continues from a checkpoint in ``out_dir``.
      allow_changes: accept changed fields; None reads ``allowing_changes``.
      write: save the file (one process of a multi-host run writes it).
    """
    path = pathlib.Path(out_dir) / CONFIG_FILE
    current = json.loads(json.dumps(flatten(config)))  # the values as they will read back
    if resuming and path.exists():
        changes = changed_fields(json.loads(path.read_text()), current, _defaults(config))
        allow = _ALLOW_CHANGES.get() if allow_changes is None else allow_changes
        if changes and not allow:
            raise ConfigChangedError(
                f"{path.parent} holds a run with another config; resuming would change what it trains:\n  "
                + "\n  ".join(changes)
                + "\nrerun with --allow-changes to resume under the new config, or set train.out_dir for a new run")
        if changes and write:
            print(f"resuming with a changed config (allowed): {'; '.join(changes)}", file=sys.stderr)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{CONFIG_FILE}.{os.getpid()}")
        partial.write_text(json.dumps(current, indent=1) + "\n")
        os.replace(partial, path)  # a kill never leaves half a file
