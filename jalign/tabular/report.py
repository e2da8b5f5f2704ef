"""Writing a reproduction's outputs: one PNG and one JSON of its numbers."""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np


def to_jsonable(value: Any) -> Any:
    """Arrays and NumPy scalars to lists and floats, recursively."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "shape"):
        return np.asarray(value).tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def write_outputs(out_dir: pathlib.Path, name: str, figure, numbers: dict) -> dict:
    """Saves ``<name>.png`` and ``<name>.json`` into ``out_dir``; returns the JSON-able numbers."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_dir / f"{name}.png", dpi=120, bbox_inches="tight")
    numbers = to_jsonable(numbers)
    (out_dir / f"{name}.json").write_text(json.dumps(numbers, indent=2))
    return numbers


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Runs ``fn`` and blocks on its result; returns ``(result, seconds)``."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    return result, time.perf_counter() - start


def script_arguments(doc: str) -> argparse.Namespace:
    """``--out`` and ``--quick`` for running a reproduction file as a script."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/reproduce"))
    parser.add_argument("--quick", action="store_true", help="shortened run (seconds)")
    return parser.parse_args()
