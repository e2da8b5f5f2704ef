"""The optax optimizer of an experiment: schedule, clipping, decay, accumulation."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer section of an experiment.

    Attributes:
      name: "adamw", "adam", "sgd" or "lion".
      learning_rate: peak learning rate.
      schedule: "constant", "cosine" (to ``final_fraction`` of the peak) or
        "linear" decay after warm-up.
      warmup_steps: linear warm-up from 0 (optimizer updates, not micro-steps).
      final_fraction: the schedule's end value as a fraction of the peak.
      weight_decay: decoupled weight decay (adamw, lion).
      max_grad_norm: global-norm clipping, None for none.
      b1, b2: Adam/Lion moment decay rates.
      accumulation_steps: micro-batches per update (``optax.MultiSteps``).
    """

    name: Literal["adamw", "adam", "sgd", "lion"] = "adamw"
    learning_rate: float = 1e-5
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = 0
    final_fraction: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    b1: float = 0.9
    b2: float = 0.999
    accumulation_steps: int = 1


def learning_rate_schedule(cfg: OptimizerConfig, total_updates: int) -> optax.Schedule:
    """Warm-up then the configured decay, over ``total_updates`` optimizer updates."""
    decay_steps = max(total_updates - cfg.warmup_steps, 1)
    end = cfg.learning_rate * cfg.final_fraction
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps, alpha=cfg.final_fraction)
    else:
        decay = optax.linear_schedule(cfg.learning_rate, end, decay_steps)
    if cfg.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def fp32_state(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` with its state (moments, accumulated gradients) in fp32 whatever the parameters' dtype.

    bf16 parameters keep fp32 Adam moments: gradients and parameters are cast
    to fp32 before ``tx`` sees them, and the updates back to each parameter's
    dtype. For fp32 parameters it changes nothing.
    """
    def up(tree):
        return jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree)

    def init(params):
        return tx.init(up(params))

    def update(updates, state, params=None):
        new, state = tx.update(up(updates), state, None if params is None else up(params))
        return jax.tree.map(lambda u, g: u.astype(g.dtype), new, updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimizerConfig, total_updates: int) -> optax.GradientTransformation:
    """The full transformation: clip, optimizer with schedule, accumulation; its state is fp32 (`fp32_state`)."""
    lr = learning_rate_schedule(cfg, total_updates)
    if cfg.name == "adamw":
        core = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        core = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
    elif cfg.name == "lion":
        core = optax.lion(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    else:
        core = optax.sgd(lr)
    chain = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm else []
    tx = optax.chain(*chain, core)
    if cfg.accumulation_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulation_steps)
    return fp32_state(tx)


def optimizer_updates(exp) -> int:
    """Optimizer updates in the whole run (micro-steps over accumulation): the schedule's length."""
    return max(exp.train.steps // exp.optimizer.accumulation_steps, 1)
