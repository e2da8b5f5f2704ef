"""The train step: one ``jax.jit`` with explicit shardings that calls the objective.

The step knows nothing about any particular objective: it builds the
``LogProbs`` of a batch, calls ``objective(lp)``, differentiates, and applies
the optax update. A step is accepted only when the loss, the gradient norm and
the updated parameters and optimizer state are all finite; otherwise the state
is left untouched and the ``finite`` flag is lowered, so the loop can stop
with the last good checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jalign.models import lora
from jalign.objectives import LogProbs, Objective
from jalign.objectives.sequence import log_ratios, masked_mean, masked_sum
from jalign.sharding import DEFAULT_RULES, activate, optimizer_shardings, state_shardings
from jalign.objectives.declaration import PREVIOUS
from jalign.train.provider import FROZEN_MODELS, LORA_BASE, Plan, batch_logprobs


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything that changes during training (checkpointed together).

    Attributes:
      step: int32 scalar, optimizer micro-steps taken.
      params: the trainable ``nnx.State``.
      opt_state: the optax state.
      rng: a PRNG key for stochastic objectives and sampling.
      previous: the frozen previous iterate's parameters (like ``params``)
        for objectives that sample from or regress onto it (SPPO, INPO);
        else None. Refreshed by the online loop, checkpointed with the rest.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    previous: Any = None


jax.tree_util.register_dataclass(TrainState, data_fields=["step", "params", "opt_state", "rng", "previous"],
                                 meta_fields=[])


def diagnostics(lp: LogProbs) -> dict[str, jax.Array]:
    """Batch diagnostics beyond the objective's own: KL, entropy, lengths.

    ``kl/logratio`` is the mean sequence log-ratio log pi/pi_ref over the batch's
    responses (a Monte-Carlo KL estimate only for on-policy samples);
    ``kl/ref_kl`` the exact per-sequence KL(pi_ref || pi) of the next-token
    distributions summed over tokens (TDPO's direction), ``kl/policy_kl`` the
    same sum of KL(pi || pi_ref) (the usual direction, RLHF's KL penalty) and
    ``entropy`` the mean per-token policy entropy, when those extras exist
    (``train.extras``).
    """
    if lp.mask is None:  # a preference model's batch: scores only
        return {}
    out = {"length": jnp.mean(jnp.sum(lp.mask, axis=-1))}
    if lp.reference is not None:
        out["kl/logratio"] = jnp.mean(jax.lax.stop_gradient(log_ratios(lp)))
    if "ref_kl" in lp.extras:
        out["kl/ref_kl"] = jnp.mean(jax.lax.stop_gradient(masked_sum(lp.extras["ref_kl"], lp)))
    if "policy_kl" in lp.extras:
        out["kl/policy_kl"] = jnp.mean(jax.lax.stop_gradient(masked_sum(lp.extras["policy_kl"], lp)))
    if "entropy" in lp.extras:
        out["entropy"] = jnp.mean(jax.lax.stop_gradient(masked_mean(lp.extras["entropy"], lp)))
    return out


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def nonfinite_reason(metrics: dict) -> str:
    """What made a step non-finite, read from its metrics (the step's ``finite`` flag is False)."""
    loss, grad_norm = (float(metrics[key]) for key in ("loss", "grad_norm"))
    if not math.isfinite(loss):
        return f"non-finite loss ({loss})"
    if not math.isfinite(grad_norm):
        return f"non-finite gradient norm ({grad_norm}) with a finite loss"
    return ("non-finite parameters or optimizer state after the update, from a finite loss and gradient "
            "(a learning rate too large?)")


@dataclasses.dataclass(frozen=True)
class FrozenModels:
    """Parameters the step reads but never trains, passed as (sharded) step arguments.

    Arguments rather than values the step closes over, so the compiled program
    holds no weights as constants and each device holds only its shard.

    Attributes:
      rest: the policy's state outside the trainable filter (``nnx.split``'s
        last part): the base weights and adapter scales of a LoRA policy,
        next to nothing for full fine-tuning.
      reference: the frozen reference's trainable-parameter state (merged
        with the policy's graphdef and ``rest``): a copy for a ``"frozen"``
        plan, the checkpoints' average for a ``"soup"`` one; else None.
      guide: the guide model's ``nnx.State`` (TGDPO's token rewards), or None.
      teacher: the (DPO, reverse-DPO) models' ``nnx.State`` pair (AlignDistil's teacher), or None.
    """

    rest: Any
    reference: Any = None
    guide: Any = None
    teacher: Any = None


jax.tree_util.register_dataclass(FrozenModels, data_fields=["rest", "reference", "guide", "teacher"],
                                 meta_fields=[])


def reference_decoder(graphdef: nnx.GraphDef, plan: Plan, policy: nnx.Module, frozen: FrozenModels) -> nnx.Module | None:
    """The reference model a plan names: the policy with LoRA adapters off, the frozen copy (or soup), or None."""
    if plan.reference == LORA_BASE:
        return lora.reference_view(policy)
    if plan.reference in FROZEN_MODELS:
        return nnx.merge(graphdef, frozen.reference, frozen.rest)
    return None


def make_logprobs(graphdef: nnx.GraphDef, plan: Plan, *, impl: str = "auto",
                  guide_graphdef: nnx.GraphDef | None = None, teacher_graphdefs: tuple | None = None) -> Callable:
    """``logprobs(params, frozen, batch, previous=None) -> LogProbs`` as the plan says, for the train and eval steps.

    ``frozen`` is a :class:`FrozenModels`. The plan decides the reference: a
    frozen copy (``frozen.reference``), the policy itself with LoRA adapters
    disabled (one copy of the base weights serves both), precomputed
    log-probs in the batch, or none; or, for SPPO's reference slot, the
    previous iterate (``previous``: parameters like ``params``).
    """
    def previous_model(previous, frozen: FrozenModels):
        return None if previous is None else nnx.merge(graphdef, previous, frozen.rest)

    def reference_model(policy, frozen: FrozenModels, previous):
        if plan.reference_slot == PREVIOUS:
            return previous_model(previous, frozen)
        return reference_decoder(graphdef, plan, policy, frozen)

    def logprobs(params, frozen: FrozenModels, batch, previous=None) -> LogProbs:
        policy = nnx.merge(graphdef, params, frozen.rest)
        guide = None if frozen.guide is None else nnx.merge(guide_graphdef, frozen.guide)
        teacher = (None if frozen.teacher is None
                   else tuple(nnx.merge(g, s) for g, s in zip(teacher_graphdefs, frozen.teacher)))
        return batch_logprobs(plan, policy, reference_model(policy, frozen, previous), batch, impl=impl,
                              guide=guide, previous=previous_model(previous, frozen), teacher=teacher)

    return logprobs


def make_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, plan: Plan, *,
              impl: str = "auto", guide_graphdef: nnx.GraphDef | None = None,
              teacher_graphdefs: tuple | None = None) -> Callable:
    """``step(state, frozen, batch, objective) -> (state, metrics)``, unjitted (see :func:`make_logprobs`)."""
    loss_and_grads = _loss_and_grads(graphdef, plan, impl=impl, guide_graphdef=guide_graphdef,
                                     teacher_graphdefs=teacher_graphdefs)

    def step(state: TrainState, frozen: FrozenModels, batch, objective):
        (loss, metrics), grads = loss_and_grads(state, frozen, batch, objective)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        # The norm is non-finite when any gradient is, and also when finite gradients are too large for
        # their sum of squares (beta=1e38); the updated state catches what a finite gradient turns into
        # inf (a learning rate of 1e39).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite((params, opt_state))
        new = TrainState(state.step + 1, params, opt_state, jax.random.split(state.rng)[0], state.previous)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        tokens = sum(jnp.sum(v, dtype=jnp.int32) for k, v in batch.items() if k.endswith("_mask"))
        metrics = {**metrics, "grad_norm": grad_norm,
                   "update_norm": jnp.where(finite, optax.tree.norm(updates), 0.0), "finite": finite,
                   "tokens": jnp.asarray(tokens, jnp.int32)}
        return new, metrics

    return step


def _loss_and_grads(graphdef: nnx.GraphDef, plan: Plan, *, impl: str, guide_graphdef: nnx.GraphDef | None,
                    teacher_graphdefs: tuple | None = None):
    """``(state, frozen, batch, objective) -> ((loss, metrics), grads)`` at ``state.params``."""
    logprobs = make_logprobs(graphdef, plan, impl=impl, guide_graphdef=guide_graphdef,
                             teacher_graphdefs=teacher_graphdefs)

    def loss_fn(params, previous, frozen: FrozenModels, batch, objective: Objective):
        lp = logprobs(params, frozen, batch, previous)
        loss, metrics = objective(lp)
        return loss, {**metrics, **diagnostics(lp)}

    def loss_and_grads(state: TrainState, frozen: FrozenModels, batch, objective):
        return jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.previous, frozen, batch, objective)

    return loss_and_grads


def make_half_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, plan: Plan, *,
                   impl: str = "auto") -> Callable:
    """``half_step(state, frozen, batch, objective) -> params``: EGPO's extrapolation, unjitted.

    One optimizer update of the objective from ``state`` (its optimizer state
    is used and discarded), as ``jalign.tabular.engine`` takes it: the
    policy it gives is the win-rate opponent of the real step, whose gradient
    is taken at ``state.params``.
    """
    loss_and_grads = _loss_and_grads(graphdef, plan, impl=impl, guide_graphdef=None)

    def half_step(state: TrainState, frozen: FrozenModels, batch, objective):
        _, grads = loss_and_grads(state, frozen, batch, objective)
        updates, _ = tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates)

    return half_step


def batch_sharding(mesh: Mesh, batch: dict) -> Any:
    """Leading (batch) dimension of every array over (data, fsdp); the rest replicated."""
    def spec(x):
        return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (x.ndim - 1))))

    return jax.tree.map(spec, batch)


def jit_step(step: Callable, mesh: Mesh, state: TrainState, frozen: FrozenModels, batch, objective,
             tx: optax.GradientTransformation, rules=DEFAULT_RULES):
    """The step jitted with explicit in/out shardings; the state buffer is donated.

    The step is traced under ``activate(mesh, rules)``: activations follow the
    rule table (batch over the data-parallel axes), so each device computes
    its share of the batch and parameters are gathered where they are used.

    Returns:
      ``(jitted_step, state_sharding, frozen_sharding)``; place the initial
      state and the frozen models with ``jax.device_put`` on them.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    param_sharding = state_shardings(state.params, mesh, rules)
    state_sharding = TrainState(
        step=replicated, params=param_sharding,
        opt_state=optimizer_shardings(tx, state.params, param_sharding, mesh, rules), rng=replicated,
        previous=None if state.previous is None else param_sharding)
    frozen_sharding = FrozenModels(
        rest=state_shardings(frozen.rest, mesh, rules),
        reference=None if frozen.reference is None else state_shardings(frozen.reference, mesh, rules),
        guide=None if frozen.guide is None else state_shardings(frozen.guide, mesh, rules),
        teacher=None if frozen.teacher is None else state_shardings(frozen.teacher, mesh, rules))
    objective_sharding = jax.tree.map(lambda _: replicated, objective)

    def step_under_rules(*args):
        with activate(mesh, rules):
            return step(*args)

    jitted = jax.jit(
        step_under_rules,
        in_shardings=(state_sharding, frozen_sharding, batch_sharding(mesh, batch), objective_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,))
    return jitted, state_sharding, frozen_sharding
