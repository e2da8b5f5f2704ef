"""Sweeps: a grid over config fields, run locally or printed as per-point commands.

``--grid objective=dpo,ipo beta=0.01,0.1`` is the Cartesian product of the
listed values. A key is a config path (``optimizer.learning_rate``); a bare
key that is not a config section names an objective hyperparameter, and
``beta`` there means each objective's regularisation strength
(``Objective.strength_path``: DPO's ``beta``, IPO's ``tau``, SPPO's ``eta``,
``dpo.beta`` in ``dpo + 0.2 * sft``), so one grid spans objectives whose
papers name it differently. A point whose objective has no single strength
is an error before anything runs. Each point runs in its own ``out_dir``; the final metrics
of every point are gathered into ``sweep.csv`` and ``sweep.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import pathlib
import shlex
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jalign.objectives import Objective  # noqa: E402
from jalign.train.overrides import apply_overrides  # noqa: E402

STRENGTH_KEY = "beta"


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["a=1,2", "b=x"]`` -> ``{"a": ["1", "2"], "b": ["x"]}``."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"grid entry {item!r} must look like key=v1,v2")
        key, values = item.split("=", 1)
        grid[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def _objective_path(objective: Objective, key: str) -> str:
    """The override path of a bare grid key; ``beta`` is the objective's declared strength."""
    if key != STRENGTH_KEY:
        return f"objective.{key}"
    path = objective.strength_path
    if path is None:
        terms = [name for name, term in objective.named_terms() if term.strength_path is not None]
        why = f"its terms {terms} each have one" if len(terms) > 1 else "it has none"
        raise ValueError(f"grid key {key!r}: {objective.name} has no single regularisation strength ({why}); "
                         "name the hyperparameter instead, e.g. objective.<term>.<field>")
    return f"objective.{path}"


def point_overrides(config, point: dict[str, str]) -> list[str]:
    """The ``--set`` assignments of one grid point (objective replacement first)."""
    sections = {f.name for f in dataclasses.fields(config)}
    ordered = sorted(point.items(), key=lambda kv: kv[0] != "objective")
    assignments = []
    for key, value in ordered:
        if key.split(".")[0] in sections:
            assignments.append(f"{key}={value}")
            config = apply_overrides(config, [assignments[-1]])
        else:
            assignments.append(f"{_objective_path(config.objective, key)}={value}")
    return assignments


def points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict[str, str]) -> str:
    return "_".join(f"{k.split('.')[-1]}-{v}" for k, v in point.items())


def run_sweep(config, grid: dict[str, list[str]], out_dir: pathlib.Path,
              run_point: Callable[[object], dict], base_overrides: Sequence[str] = ()) -> list[dict]:
    """Runs every grid point one after another; writes ``sweep.csv`` and ``sweep.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for point in points(grid):
        name = point_name(point)
        assignments = [*base_overrides, *point_overrides(config, point),
                       f"train.out_dir={out_dir / name}"]
        result = run_point(apply_overrides(config, assignments))
        rows.append({"point": name, **point, **result["metrics"]})
    write_results(rows, out_dir, list(grid))
    return rows


def launch_commands(experiment_file: str, grid: dict[str, list[str]], config, out_dir: pathlib.Path,
                    base_overrides: Sequence[str] = ()) -> list[str]:
    """One ``jalign train`` command per point: on a pod slice every host runs the same one."""
    commands = []
    for point in points(grid):
        sets = [*base_overrides, *point_overrides(config, point),
                f"train.out_dir={out_dir / point_name(point)}"]
        commands.append(shlex.join(["jalign", "train", experiment_file,
                                    *itertools.chain.from_iterable(("--set", s) for s in sets)]))
    return commands


def write_results(rows: list[dict], out_dir: pathlib.Path, keys: list[str]) -> None:
    """``sweep.csv`` (every metric) and ``sweep.png`` (loss and accuracy per point)."""
    columns = sorted({c for row in rows for c in row}, key=lambda c: (c not in ["point", *keys], c))
    with (out_dir / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = [m for m in ("loss", "rewards/accuracy", "kl/logratio") if any(
        k == m or k.endswith("/" + m) for row in rows for k in row)]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(5 * max(len(shown), 1), 4), squeeze=False)
    for ax, metric in zip(axes[0], shown):
        values = [next((v for k, v in row.items() if k == metric or k.endswith("/" + metric)), float("nan"))
                  for row in rows]
        ax.bar(range(len(rows)), values)
        ax.set_xticks(range(len(rows)), [row["point"] for row in rows], rotation=45, ha="right", fontsize=7)
        ax.set_title(metric)
    fig.tight_layout()
    fig.savefig(out_dir / "sweep.png", dpi=110)
    plt.close(fig)
