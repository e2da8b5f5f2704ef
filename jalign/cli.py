"""The `jalign` command line: `jalign objectives`, `jalign reproduce NAME`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _objectives_table(args) -> int:
    from jalign.objectives.registry import hyperparameter_defaults, registered

    table = registered()
    if args.name:
        unknown = [n for n in args.name if n not in table]
        if unknown:
            print(f"unknown objective(s) {unknown}; valid objectives: {', '.join(table)}", file=sys.stderr)
            return 2
        table = {n: table[n] for n in args.name}
    for name, cls in table.items():
        hypers = ", ".join(
            f"{k}={'<required>' if v is dataclasses.MISSING else v!r}"
            for k, v in hyperparameter_defaults(cls).items())
        print(f"{name}\n  paper:    {cls.citation}\n  requires: {cls.requires.describe()}"
              f"\n  hyperparameters: {hypers or '-'}")
    return 0


def reproductions() -> dict[str, pathlib.Path]:
    """Name -> file of every reproduction in ``experiments/reproduce``."""
    folder = REPO_ROOT / "experiments" / "reproduce"
    return {p.stem: p for p in sorted(folder.glob("*.py")) if not p.stem.startswith("_")}


def load_module(path: pathlib.Path):
    """Imports a Python file by path (experiment and reproduction files)."""
    spec = importlib.util.spec_from_file_location(f"jalign_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reproduce(args) -> int:
    available = reproductions()
    if args.name not in available:
        print(f"unknown reproduction {args.name!r}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    out_dir = pathlib.Path(args.out or f"runs/reproduce/{args.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = load_module(available[args.name]).main(out_dir, quick=args.quick)
    print(json.dumps(results, indent=2, default=float))
    print(f"wrote {out_dir}/{args.name}.png and {out_dir}/{args.name}.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jalign", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    objectives = commands.add_parser("objectives", help="list objectives with citation, inputs, hyperparameters")
    objectives.add_argument("name", nargs="*", help="only these objectives")
    objectives.set_defaults(run=_objectives_table)

    reproduce = commands.add_parser("reproduce", help="run a theory-paper reproduction")
    reproduce.add_argument("name", help="reproduction name (file in experiments/reproduce)")
    reproduce.add_argument("--out", help="output folder (default runs/reproduce/NAME)")
    reproduce.add_argument("--quick", action="store_true", help="shortened run, seconds")
    reproduce.set_defaults(run=_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
