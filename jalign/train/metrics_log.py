"""Metrics to JSONL and TensorBoard, and a progress bar with ETA.

The JSONL file is the record of a run: one object per logged step. On resume
the lines after the restored step are dropped, so a resumed run's log reads
exactly like an uninterrupted one. A process killed (or a disk filled) while
writing a line leaves it torn; on resume that line is dropped with a warning,
and the file is rewritten atomically. TensorBoard gets the same treatment:
the resumed writer purges the events from the first step it will write again
(``purge_step``), so no step shows twice. Sampled generations
(``jalign.train.generations``) go to ``generations.jsonl``, one row per
prompt per evaluation, and to TensorBoard's text tab; on resume they are cut
back the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import time
from typing import Any, Mapping

import jax
import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

PROGRESS_KEYS = ("loss", "rewards/accuracy", "rewards/margin", "kl/logratio")


def scalars(metrics: Mapping) -> dict[str, float]:
    """Device scalars -> plain floats (fetched once)."""
    return {key: float(np.asarray(value)) for key, value in metrics.items()}


class MetricsWriter:
    """Appends ``{"step": s, **metrics}`` lines to ``metrics.jsonl`` and TensorBoard events.

    In a multi-host run every process computes the same rows; only process 0
    writes them (the others' writers do nothing).
    """

    def __init__(self, directory: str | pathlib.Path, *, resume_from: int | None = None,
                 tensorboard: bool = True):
        self.directory = pathlib.Path(directory)
        self.path = self.directory / "metrics.jsonl"
        self.generations_path = self.directory / "generations.jsonl"
        self._file = self._tb = None
        if jax.process_index() != 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in (self.path, self.generations_path):
            _truncate_after(path, resume_from)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            # Events of steps after ``resume_from`` (or of an earlier attempt) are hidden from TensorBoard.
            # tensorboardX names files by the second and opens them "wb": the nanosecond suffix keeps a
            # writer started within the same second from erasing the last one's events, in name order.
            self._tb = SummaryWriter(str(self.directory / "tensorboard"), purge_step=(resume_from or 0) + 1,
                                     filename_suffix=f".{time.time_ns()}")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._file is None:
            return
        row = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)

    def write_generations(self, step: int, rows: list[Mapping[str, Any]]) -> None:
        """Appends ``{"step": step, **row}`` per row to ``generations.jsonl``; one TensorBoard text per record."""
        if self._file is None:
            return
        with self.generations_path.open("a") as f:
            f.writelines(json.dumps({"step": step, **row}) + "\n" for row in rows)
        if self._tb is not None:
            for row in rows:
                self._tb.add_text(f"generations/record_{row['record']}", _markdown(row), step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def _truncate_after(path: pathlib.Path, step: int | None) -> None:
    """Keeps the full records up to ``step`` (none when starting afresh), replacing the file atomically."""
    if not path.exists():
        return
    keep = [] if step is None else [line for row, line in _records(path) if row["step"] <= step]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in keep))
    os.replace(partial, path)


def _markdown(row: Mapping[str, Any]) -> str:
    """A generation row as TensorBoard's markdown: each text an indented code block, shown verbatim."""
    def verbatim(text: str) -> str:
        return "\n".join("    " + line for line in text.splitlines() or ["(empty)"])

    return "\n\n".join(f"**{part}**\n\n{verbatim(row[part])}" for part in ("prompt", "response", "chosen"))


def _records(path: pathlib.Path) -> list[tuple[dict, str]]:
    """``(record, line)`` of each full record of a metrics file; a torn line is dropped with a warning."""
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            logger.warning("%s: line %d is not a full record (a write cut short?); dropped: %.80r",
                           path, number, line)
            continue
        rows.append((row, line))
    return rows


# Metrics measured by the clock, which two runs of the same numbers do not share.
WALL_CLOCK = ("tokens_per_s", "gen/tokens_per_s", "mfu")
WALL_CLOCK_PREFIXES = ("time/",)  # an online run's seconds in generation, judging and update, and their shares


def without_wall_clock(row: Mapping[str, Any]) -> dict:
    """``row`` less its wall-clock metrics: what a resumed run must reproduce exactly."""
    return {k: v for k, v in row.items() if k not in WALL_CLOCK and not k.startswith(WALL_CLOCK_PREFIXES)}


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` file (a torn line, as a killed run may leave, is skipped)."""
    return [row for row, _ in _records(pathlib.Path(path))]


class Progress:
    """A tqdm bar over steps showing ETA and the key metrics."""

    def __init__(self, total: int, initial: int = 0, *, disable: bool = False):
        self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=disable)

    def advance_to(self, step: int, metrics: Mapping[str, float]) -> None:
        """Moves the bar to ``step`` and shows the key metrics."""
        shown = {k.split("/")[-1]: f"{v:.4g}" for k, v in metrics.items()
                 if any(k == p or k.endswith("/" + p) for p in PROGRESS_KEYS)}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()
