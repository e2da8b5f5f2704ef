"""The metrics of a logging window: summed on device step by step, averaged when a row is logged."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from jalign.train.metrics_log import scalars
from jalign.train.optim import learning_rate_schedule, optimizer_updates


def _as_number(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32) if x.dtype == jnp.bool_ else x


_first = jax.jit(lambda new: jax.tree.map(_as_number, new))
_add = jax.jit(lambda total, new: jax.tree.map(lambda t, x: t + _as_number(x), total, new))


class MetricWindow:
    """The metrics of the steps since the last log row, summed on device; a row is their mean.

    Adding a step dispatches one small jitted sum and never waits, so only log
    steps fetch from the device. A row holds each metric's mean over the
    window (not one batch's value), ``tokens`` (non-padding tokens trained on
    in the window), ``tokens_seen`` (all trained on since step 1, carried
    across resumes by the checkpoint), ``tokens_per_s`` over the window's wall-clock time (it
    includes evaluation and checkpoint writes inside the window, not
    compilation), ``lr``, the learning rate of the newest update, and
    ``mfu``, the window's ``model_flops`` (a step metric the loop adds: its
    tokens times the model FLOPs per token of its batch's shape) per second
    over ``peak_flops``, when both are known (never on CPUs, whose peak is
    unknown). After a resume the first
    window holds the steps run since the resume.

    Args:
      exp: the experiment (learning-rate schedule).
      peak_flops: the mesh's devices' summed peak FLOP/s, or None.
      tokens_seen: tokens trained on before this window's first step (a
        resumed checkpoint's count); None: unknown, and rows omit it.
    """

    def __init__(self, exp, *, peak_flops: float | None = None,
                 tokens_seen: int | None = 0):
        self._tokens_seen = tokens_seen
        self._peak_flops = peak_flops
        self._schedule = learning_rate_schedule(exp.optimizer, optimizer_updates(exp))
        self._accumulation = exp.optimizer.accumulation_steps
        self._total, self._steps = None, 0
        self.restart_clock()

    def restart_clock(self) -> None:
        self._started = time.perf_counter()

    def add(self, metrics: dict) -> None:
        self._total = _first(metrics) if self._total is None else _add(self._total, metrics)
        self._steps += 1

    def tokens_seen_now(self) -> int | None:
        """Tokens trained on through the newest added step (fetches the window's count: the step is waited for)."""
        if self._tokens_seen is None or self._total is None:
            return self._tokens_seen
        return self._tokens_seen + int(self._total["tokens"])

    def row(self, step: int) -> dict:
        """The window's means (and token counts) as of ``step``; the window starts again."""
        values = scalars(self._total)
        seconds = time.perf_counter() - self._started
        tokens, flops = values.pop("tokens", None), values.pop("model_flops", None)
        row = {k: v / self._steps for k, v in values.items()}
        if tokens is not None:
            row.update(tokens=tokens, tokens_per_s=tokens / max(seconds, 1e-9))
            if self._tokens_seen is not None:
                self._tokens_seen += int(tokens)
                row["tokens_seen"] = self._tokens_seen
        if flops is not None and self._peak_flops is not None:
            row["mfu"] = flops / max(seconds, 1e-9) / self._peak_flops
        row["lr"] = float(self._schedule(max(step // self._accumulation - 1, 0)))
        self._total, self._steps = None, 0
        self.restart_clock()
        return row
