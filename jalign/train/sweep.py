"""Sweeps: a grid over config fields, run locally or printed as per-point commands.

``--grid objective=dpo,ipo,dpo+0.2*sft beta=0.01,0.1`` is the Cartesian
product of the listed values; an objective value is any expression
`jalign.objectives.parse` reads. A key is a config path (``optimizer.learning_rate``); a bare
key that is not a config section names an objective hyperparameter, and
``beta`` there means each objective's regularisation strength
(``Objective.strength_path``: DPO's ``beta``, IPO's ``tau``, SPPO's ``eta``,
``dpo.beta`` in ``dpo + 0.2 * sft``), so one grid spans objectives whose
papers name it differently. A point whose objective has no single strength
is an error before anything runs (every point is checked first, also for
``--print-commands``). Each point runs in its own ``out_dir``; the final
metrics of every point (with the held-out ``eval/`` ones) are gathered into
``sweep.csv``, and the plots compare what is comparable across objectives
(their losses are not): implicit-reward accuracy, the chosen-minus-rejected
log-ratio margin and the chosen response's log-ratio ``log pi/ref`` (does the
policy raise or lower the likelihood of what the data prefers?), as curves
over steps (``curves.png``: one colour per objective, one line style per
strength) and, when the grid varies the strength, against it with one line
per objective (``strength.png``); with a true reward or a judge's win rate
reported by the experiment, reward against KL to the reference
(``frontier.png``).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import pathlib
import re
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
    """A folder name for ``point``: ``objective-dpo_plus_0.2xsft_beta-0.05``."""
    def clean(value: str) -> str:
        value = value.replace("+", "_plus_").replace("*", "x")
        return re.sub(r"[^A-Za-z0-9._=-]+", "", value)
    return "_".join(f"{k.split('.')[-1]}-{clean(v)}" for k, v in point.items())


def check_points(config, grid: dict[str, list[str]], base_overrides: Sequence[str] = ()) -> list[list[str]]:
    """Every point's ``--set`` assignments, each applied once, so a bad point fails before any runs.

    Raises:
      ValueError: naming the first point that cannot take its values.
    """
    checked = []
    for point in points(grid):
        try:
            assignments = [*base_overrides, *point_overrides(config, point)]
            apply_overrides(config, assignments)
        except ValueError as error:
            raise ValueError(f"sweep point {point_name(point)}: {error}") from None
        checked.append(assignments)
    return checked


def run_sweep(config, grid: dict[str, list[str]], out_dir: pathlib.Path,
              run_point: Callable[[object], dict], base_overrides: Sequence[str] = ()) -> list[dict]:
    """Runs every grid point one after another; writes ``sweep.csv`` and the plots (module docstring)."""
    checked = check_points(config, grid, base_overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for point, assignments in zip(points(grid), checked):
        name = point_name(point)
        result = run_point(apply_overrides(config, [*assignments, f"train.out_dir={out_dir / name}"]))
        rows.append({"point": name, **point, **result["metrics"]})
    write_results(rows, out_dir, list(grid))
    return rows


def launch_commands(experiment_file: str, grid: dict[str, list[str]], config, out_dir: pathlib.Path,
                    base_overrides: Sequence[str] = ()) -> list[str]:
    """One ``jalign train`` command per point: on a pod slice every host runs the same one."""
    commands = []
    for point, assignments in zip(points(grid), check_points(config, grid, base_overrides)):
        sets = [*assignments, f"train.out_dir={out_dir / point_name(point)}"]
        commands.append(shlex.join(["jalign", "train", experiment_file,
                                    *itertools.chain.from_iterable(("--set", s) for s in sets)]))
    return commands


ACCURACY = "rewards/accuracy"
MARGIN = "logratio margin"
CHOSEN = "logratio/chosen"
TITLES = {ACCURACY: "implicit-reward accuracy", MARGIN: "log-ratio margin, chosen - rejected",
          CHOSEN: "chosen log-ratio log(pi/ref)"}
REWARDS = ("true_reward", "win_rate")
KL = ("kl_to_reference", "kl/policy_kl")


def _metric(row: dict, name: str, source: str = "any") -> float:
    """``name`` from a metrics row, matched as a suffix (``dpo/rewards/accuracy``).

    ``source``: "eval" (held-out only), "train" (training only) or "any"
    (held-out when present).
    """
    if name == MARGIN:
        return _metric(row, "logratio/chosen", source) - _metric(row, "logratio/rejected", source)
    keys = [k for k in row if (k == name or k.endswith("/" + name))
            and {"eval": k.startswith("eval/"), "train": not k.startswith("eval/"), "any": True}[source]]
    keys.sort(key=lambda k: not k.startswith("eval/"))
    for key in keys:
        try:
            return float(row[key])
        except (TypeError, ValueError):
            continue
    return float("nan")


def _curves(point_dir: pathlib.Path) -> list[dict]:
    path = point_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_results(rows: list[dict], out_dir: pathlib.Path, keys: list[str]) -> None:
    """``sweep.csv`` (every final metric) and the plots of the module docstring."""
    columns = sorted({c for row in rows for c in row}, key=lambda c: (c not in ["point", *keys], c))
    with (out_dir / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    shown = (ACCURACY, MARGIN, CHOSEN)
    _plot_curves(rows, out_dir, keys, shown)
    if STRENGTH_KEY in keys and len({row[STRENGTH_KEY] for row in rows}) > 1:
        _plot_strength(rows, out_dir, keys, shown)
    if any(_has(row, REWARDS) and _has(row, KL) for row in rows):
        _plot_frontier(rows, out_dir, keys)


def _has(row: dict, names: tuple[str, ...]) -> bool:
    return any(k == n or k.endswith("/" + n) for k in row for n in names)


def _first(row: dict, names: tuple[str, ...]) -> float:
    return next((v for v in (_metric(row, n) for n in names) if v == v), float("nan"))


def _label(row: dict, keys: list[str]) -> str:
    """``dpo, beta=0.05``: the point's grid values (an objective by its expression alone)."""
    return ", ".join(str(row[k]) if k == "objective" else f"{k.split('.')[-1]}={row[k]}" for k in keys)


def _styles(rows: list[dict], keys: list[str]) -> list[dict]:
    """Per row: one colour per value of the grid keys other than the strength, one line style per strength."""
    def ranks(values):
        order = {v: i for i, v in enumerate(dict.fromkeys(values))}
        return [order[v] for v in values]

    others = ranks([tuple(str(row[k]) for k in keys if k != STRENGTH_KEY) for row in rows])
    strengths = ranks([row.get(STRENGTH_KEY) for row in rows])
    return [{"color": plt.cm.tab10(c % 10), "linestyle": ("-", "--", ":", "-.")[s % 4]}
            for c, s in zip(others, strengths)]


def _plot_curves(rows: list[dict], out_dir: pathlib.Path, keys: list[str], shown: tuple[str, ...]) -> None:
    """Held-out metrics over steps (training ones for a run without held-out data), one line per point."""
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4.2), squeeze=False)
    held_out = any(k.startswith("eval/") for row in rows for k in row)
    for row, style in zip(rows, _styles(rows, keys)):
        history = _curves(out_dir / row["point"])
        steps = [h["step"] for h in history]
        for ax, metric in zip(axes[0], shown):
            values = [_metric(h, metric, "eval" if held_out else "train") for h in history]
            keep = [(s, v) for s, v in zip(steps, values) if v == v]
            if keep:
                ax.plot(*zip(*keep), marker=".", label=_label(row, keys), **style)
    for ax, metric in zip(axes[0], shown):
        ax.set_title(f"held-out {TITLES[metric]}" if held_out else f"training-batch {TITLES[metric]}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)


def _plot_strength(rows: list[dict], out_dir: pathlib.Path, keys: list[str], shown: tuple[str, ...]) -> None:
    """Final metrics against the strength; one line per value of the other grid keys (the objective)."""
    others = [k for k in keys if k != STRENGTH_KEY]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4.2), squeeze=False)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(", ".join(str(row[k]) for k in others) or "all", []).append(row)
    for label, members in groups.items():
        members = sorted(members, key=lambda r: float(r[STRENGTH_KEY]))
        strengths = [float(r[STRENGTH_KEY]) for r in members]
        for ax, metric in zip(axes[0], shown):
            ax.plot(strengths, [_metric(r, metric) for r in members], marker="o", label=label)
    ticks = sorted({float(row[STRENGTH_KEY]) for row in rows})
    for ax, metric in zip(axes[0], shown):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(f"strength ({STRENGTH_KEY}: each objective's own, e.g. IPO's tau)")
        ax.set_title(f"final held-out {TITLES[metric]}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(out_dir / "strength.png", dpi=110)
    plt.close(fig)


def _plot_frontier(rows: list[dict], out_dir: pathlib.Path, keys: list[str]) -> None:
    """The experiment's true reward (or a judge's win rate) against KL to the reference, per point."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    objective_key = "objective" if "objective" in keys else None
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row[objective_key]) if objective_key else "all", []).append(row)
    for label, members in groups.items():
        points_ = sorted((_first(r, KL), _first(r, REWARDS), r["point"]) for r in members)
        ax.plot([p[0] for p in points_], [p[1] for p in points_], marker="o", label=label)
    ax.set_xlabel("KL(policy || reference)")
    ax.set_ylabel("true reward / win rate")
    ax.set_title("reward against KL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "frontier.png", dpi=110)
    plt.close(fig)
