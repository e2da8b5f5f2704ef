"""The `jalign` command line: train, sweep, export, reproduce, objectives.

Errors the user can fix print one line, ``jalign: error: ...``, and exit 2
(``--debug`` adds the traceback). They are a missing file or folder
(``FileNotFoundError`` and its kin, from anywhere) and a ``ValueError``
raised by jalign's own code or the experiment file: config and override
errors, data errors, a refused objective, a changed config on resume. A
``ValueError`` raised inside a library (JAX, NumPy, orbax...) and every other
exception is a bug, and keeps its traceback. Ctrl-C exits 130, saying where
the run stopped; a lost peer in a multi-host run exits 75
(``jalign.sharding.multihost``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import sys
import traceback

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
USER_MODULE_PREFIX = "jalign_user_"  # experiment and reproduction files, imported by path
USAGE_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130
FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _objectives_table(args) -> int:
    from jalign.methods import methods
    from jalign.objectives.registry import hyperparameter_defaults, registered

    table, others = registered(), methods()
    if args.name:
        unknown = [n for n in args.name if n not in table and n not in others]
        if unknown:
            raise ValueError(f"unknown objective(s) or method(s) {unknown}; valid objectives: {', '.join(table)}; "
                             f"methods that are not objectives: {', '.join(others)}")
        table = {n: table[n] for n in args.name if n in table}
        others = {n: others[n] for n in args.name if n in others}
    for name, cls in table.items():
        hypers = ", ".join(
            f"{k}={'<required>' if v is dataclasses.MISSING else v!r}"
            for k, v in hyperparameter_defaults(cls).items())
        default = cls()
        strength = default.strength_path or "-"
        lines = [f"{name}", f"  paper:    {cls.citation}", f"  requires: {default.requires.describe()}"]
        if default.sampling is not None:
            lines.append(f"  sampling: {default.sampling.describe()}")
        lines += [f"  strength: {strength}", f"  hyperparameters: {hypers or '-'}"]
        print("\n".join(lines))
    if table and others:
        print("\nmethods that are not objectives (jalign/methods.py):")
    for name, method in others.items():
        print("\n".join([f"{name} ({method.kind})", f"  paper:    {method.citation}", f"  use:      {method.usage}",
                         f"  where:    {', '.join(method.where)}"]))
    return 0


def reproductions() -> dict[str, pathlib.Path]:
    """Name -> file of every reproduction in ``experiments/reproduce``."""
    folder = REPO_ROOT / "experiments" / "reproduce"
    return {p.stem: p for p in sorted(folder.glob("*.py")) if not p.stem.startswith("_")}


def load_module(path: pathlib.Path):
    """Imports a Python file by path (experiment and reproduction files)."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix != ".py":
        raise ValueError(f"{path}: experiment files are Python files (.py) defining experiment()")
    spec = importlib.util.spec_from_file_location(f"{USER_MODULE_PREFIX}{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reproduce(args) -> int:
    available = reproductions()
    if args.name not in available:
        raise ValueError(f"unknown reproduction {args.name!r}; available: {', '.join(available)}")
    out_dir = pathlib.Path(args.out or f"runs/reproduce/{args.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = load_module(available[args.name]).main(out_dir, quick=args.quick)
    print(json.dumps(results, indent=2, default=float))
    print(f"wrote {out_dir}/{args.name}.png and {out_dir}/{args.name}.json")
    return 0


def load_experiment(path: str, overrides: list[str]):
    """Calls ``experiment()`` in an experiment file and applies ``--set`` overrides."""
    from jalign.train.overrides import apply_overrides

    module = load_module(pathlib.Path(path))
    if not hasattr(module, "experiment"):
        raise ValueError(f"{path}: an experiment file must define experiment() -> Experiment")
    return module, apply_overrides(module.experiment(), overrides)


def _run_experiment(module, config) -> dict:
    """The file's own ``run(config)`` when it has one (custom evaluation), else ``train``."""
    if hasattr(module, "run"):
        return module.run(config)
    from jalign.train.loop import train

    return train(config)


def _join_processes() -> None:
    """Multi-host start-up (a no-op for one process); must precede any JAX computation."""
    from jalign.sharding import initialize

    initialize()


def _train(args) -> int:
    _join_processes()
    module, config = load_experiment(args.file, args.set)
    result = _run_experiment(module, config)
    print(json.dumps(result, indent=2, default=float))
    return 0


def _sweep(args) -> int:
    from jalign.train import sweep

    _join_processes()
    module, config = load_experiment(args.file, args.set)
    grid = sweep.parse_grid(args.grid)
    out_dir = pathlib.Path(args.out)
    if args.print_commands:
        print("\n".join(sweep.launch_commands(args.file, grid, config, out_dir, args.set)))
        return 0
    rows = sweep.run_sweep(config, grid, out_dir, lambda cfg: _run_experiment(module, cfg))
    plots = ", ".join(p.name for p in sorted(out_dir.glob("*.png")))
    print(f"{len(rows)} points; wrote {out_dir / 'sweep.csv'} and {plots} in {out_dir}")
    return 0


def _export(args) -> int:
    from jalign.train.export import export

    result = export(args.run_dir, args.out_dir, step=args.step, merge_lora=args.merge_lora, peft=args.peft,
                    dtype=args.dtype)
    base = f"; load it onto the base in {result['base']} with peft" if result["base"] else ""
    print(f"wrote {result['out_dir']} ({result['format']}) from checkpoint step {result['step']}{base}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jalign", description=__doc__.split("\n\n")[0],
                                     epilog="exit status: 0 done, 2 user error, 75 lost peer, 130 interrupted")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    commands = parser.add_subparsers(dest="command", required=True)

    objectives = commands.add_parser("objectives", help="list objectives with citation, inputs, hyperparameters")
    objectives.add_argument("name", nargs="*", help="only these objectives")
    objectives.set_defaults(run=_objectives_table)

    train = commands.add_parser("train", help="run an experiment file")
    train.add_argument("file", help="experiment file defining experiment()")
    train.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="typed override")
    _resume_and_debug_flags(train)
    train.set_defaults(run=_train)

    sweep = commands.add_parser("sweep", help="run an experiment over a grid of config values")
    sweep.add_argument("file", help="experiment file defining experiment()")
    sweep.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                       help="grid axes: config paths, or objective hyperparameters (beta = KL strength)")
    sweep.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override for all points")
    sweep.add_argument("--out", default="runs/sweep", help="sweep folder (one sub-folder per point)")
    sweep.add_argument("--print-commands", action="store_true",
                       help="print one `jalign train` command per point (run it on every host of a slice)")
    _resume_and_debug_flags(sweep)
    sweep.set_defaults(run=_sweep)

    export = commands.add_parser("export", help="write a run's checkpoint as a Hugging Face directory")
    export.add_argument("run_dir", help="the run's folder (train.out_dir)")
    export.add_argument("out_dir", help="the Hugging Face directory to write")
    export.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    lora = export.add_mutually_exclusive_group()
    lora.add_argument("--merge-lora", action="store_true", help="fold a LoRA run's adapters into the weights")
    lora.add_argument("--peft", action="store_true", help="write a LoRA run's adapters as a PEFT adapter")
    export.add_argument("--dtype", help="saved precision: float32, bfloat16 or float16 (default: the run's)")
    export.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    export.set_defaults(run=_export)

    reproduce = commands.add_parser("reproduce", help="run a theory-paper reproduction")
    reproduce.add_argument("name", help="reproduction name (file in experiments/reproduce)")
    reproduce.add_argument("--out", help="output folder (default runs/reproduce/NAME)")
    reproduce.add_argument("--quick", action="store_true", help="shortened run, seconds")
    reproduce.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    reproduce.set_defaults(run=_reproduce)
    return parser


def _resume_and_debug_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--allow-changes", action="store_true",
                         help="resume a run even though its config changed in fields that change what is trained")
    # Also accepted after the command; SUPPRESS keeps `jalign --debug train ...` from being reset.
    command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def is_user_error(error: BaseException) -> bool:
    """A missing file, or a ``ValueError`` that jalign or the experiment file raised (see the module docstring)."""
    if isinstance(error, FILE_ERRORS):
        return True
    if not isinstance(error, ValueError) or error.__traceback__ is None:
        return False
    raised = error.__traceback__
    while raised.tb_next is not None:
        raised = raised.tb_next
    if raised.tb_frame.f_globals.get("__name__", "").startswith(USER_MODULE_PREFIX):
        return True
    return pathlib.Path(raised.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def _peer_failure(error: BaseException) -> str | None:
    if "jax" not in sys.modules:  # nothing distributed can have started
        return None
    from jalign.sharding import peer_failure

    return peer_failure(error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jalign.train.run_config import allowing_changes

    try:
        with allowing_changes(getattr(args, "allow_changes", False)):
            return args.run(args)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            traceback.print_exc()
        print(f"jalign: {str(interrupt) or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as error:  # noqa: BLE001 - sorted below; bugs are re-raised with their traceback
        lost = _peer_failure(error)
        if lost is not None:
            from jalign.sharding import exit_for_peer_failure

            if args.debug:
                traceback.print_exc()
            exit_for_peer_failure(lost)
        if not is_user_error(error):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"jalign: error: {error}", file=sys.stderr)
        return USAGE_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
