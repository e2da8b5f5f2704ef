"""Metrics to JSONL and TensorBoard, and a progress bar with ETA.

The JSONL file is the record of a run: one object per logged step. On resume
the lines after the restored step are dropped, so a resumed run's log reads
exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Mapping

import jax
import numpy as np
from tqdm import tqdm

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
        self._file = self._tb = None
        if jax.process_index() != 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_from)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.directory / "tensorboard"))

    def _truncate_after(self, step: int | None) -> None:
        if not self.path.exists():
            return
        keep = [] if step is None else [
            line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._file is None:
            return
        row = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]


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
