"""Running an experiment: build, resume, step, log, evaluate, checkpoint.

``train(experiment)`` is the whole run. It resumes from the newest checkpoint
in ``train.out_dir`` when one exists (parameters, optimizer state, data
iterator position, RNG and step), so a run killed at any point and started
again with the same command continues to exactly the same numbers.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jalign.data import Tokenization, preference_batches, read_preferences
from jalign.models import Decoder, load_hf, lora
from jalign.models.tokenizer import load_tokenizer
from jalign.sharding import global_batch, make_mesh, place
from jalign.train.checkpoint import Checkpointer
from jalign.train.config import Experiment
from jalign.train.logprobs import needed_extras
from jalign.train.metrics_log import MetricsWriter, Progress, scalars
from jalign.train.optim import make_optimizer
from jalign.train.reference import precompute_reference
from jalign.train.step import TrainState, jit_step, make_step

Evaluate = Callable[[int, nnx.Module, nnx.Module], dict]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the state was not updated or saved."""


@dataclasses.dataclass
class Run:
    """What ``build`` assembles: models, data iterator, step and its state."""

    graphdef: Any
    rest: Any
    state: TrainState
    state_sharding: Any
    reference_params: Any
    step_fn: Callable
    iterator: Any
    tokenizer: Any
    data_report: dict
    mesh: Any


def build_model(exp: Experiment) -> tuple[nnx.Module, Any]:
    """The policy decoder and its tokenizer."""
    section = exp.model
    tokenizer_dir = section.tokenizer or section.hf_dir
    if tokenizer_dir is None:
        raise ValueError("model.tokenizer (or model.hf_dir) must name a local tokenizer directory")
    tokenizer = load_tokenizer(tokenizer_dir)
    if section.hf_dir is not None:
        model = load_hf(section.hf_dir)
    elif section.arch is not None:
        model = Decoder(section.arch, rngs=nnx.Rngs(section.init_seed))
    else:
        raise ValueError("set model.hf_dir (a local checkpoint) or model.arch (random initialisation)")
    if section.lora_rank > 0:
        lora.add_lora(model, rank=section.lora_rank, alpha=section.lora_alpha,
                      targets=section.lora_targets, rngs=nnx.Rngs(section.init_seed + 1))
    return model, tokenizer


def _device_batch(batch: dict, mesh) -> dict:
    batch = {k: v for k, v in batch.items() if k != "record_index"}
    return global_batch(batch, mesh) if jax.process_count() > 1 else batch


def build(exp: Experiment) -> Run:
    """Model, reference, data pipeline, optimizer and the jitted step."""
    model, tokenizer = build_model(exp)
    use_lora = exp.model.lora_rank > 0
    graphdef, params, rest = nnx.split(model, nnx.LoRAParam if use_lora else nnx.Param, ...)
    reference_params = None if use_lora else jax.tree.map(jnp.copy, params)
    data = read_preferences(
        exp.data.train, tokenizer, kind=exp.data.kind, preference_field=exp.data.preference_field,
        on_error=exp.data.on_error,
        tokenization=Tokenization(max_length=exp.data.max_length, max_prompt_length=exp.data.max_prompt_length,
                                  truncation=exp.data.truncation))
    precomputed = exp.train.reference == "precomputed"
    extras = tuple(sorted(set(needed_extras(exp.objective)) | set(exp.train.extras)))
    if precomputed:
        if "ref_kl" in extras:
            raise ValueError("extras 'ref_kl' needs the reference model; it is unavailable with "
                             "train.reference='precomputed'")
        reference_model = lora.reference_view(model) if use_lora else model
        data = precompute_reference(data, reference_model, batch_size=exp.train.batch_size,
                                    impl=exp.train.logprob_impl,
                                    cache=pathlib.Path(exp.train.out_dir) / "reference_logprobs.npz")
        reference_params = None
    processes = jax.process_count()
    if exp.train.batch_size % processes:
        raise ValueError(f"train.batch_size={exp.train.batch_size} must divide over {processes} processes")
    dataset = preference_batches(data, batch_size=exp.train.batch_size // processes, seed=exp.train.seed,
                                 shuffle=exp.data.shuffle, num_epochs=None,
                                 shard_index=jax.process_index(), shard_count=processes)
    iterator = iter(dataset)
    mesh = make_mesh(exp.mesh)
    updates = max(exp.train.steps // exp.optimizer.accumulation_steps, 1)
    tx = make_optimizer(exp.optimizer, updates)
    step = make_step(graphdef, rest, tx, extras=extras, impl=exp.train.logprob_impl,
                     lora_reference=use_lora and not precomputed)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(exp.train.seed))
    sample = _device_batch(dataset[0], mesh)
    jitted, sharding = jit_step(step, mesh, state, reference_params, sample, exp.objective, tx)
    if reference_params is not None:
        reference_params = place(reference_params, sharding.params)
    return Run(graphdef, rest, place(state, sharding), sharding, reference_params, jitted, iterator,
               tokenizer, data.report.as_dict(), mesh)


def policy_and_reference(run: Run) -> tuple[nnx.Module, nnx.Module | None]:
    """The current policy and its reference as modules (for evaluation hooks).

    The reference is None when it was precomputed for a fully fine-tuned model.
    """
    policy = nnx.merge(run.graphdef, run.state.params, run.rest)
    if run.reference_params is not None:
        return policy, nnx.merge(run.graphdef, run.reference_params, run.rest)
    has_lora = any(True for _ in jax.tree.leaves(nnx.state(policy, nnx.LoRAParam)))
    return policy, lora.reference_view(policy) if has_lora else None


def train(exp: Experiment, *, evaluate: Evaluate | None = None, stop_at: int | None = None,
          progress: bool = True) -> dict:
    """Runs (or resumes) ``exp``; returns the last logged metrics and run facts.

    Args:
      exp: the experiment.
      evaluate: called every ``train.eval_every`` steps and at the end with
        ``(step, policy, reference)``; its dict is logged with the metrics.
      stop_at: stop after this step without finishing (tests of resumption).
      progress: show the progress bar.
    """
    out = pathlib.Path(exp.train.out_dir)
    run = build(exp)
    checkpointer = Checkpointer(out / "checkpoints", keep=exp.train.keep_checkpoints)
    start = checkpointer.latest_step() or 0
    if start:
        run.state, data_state = checkpointer.restore(start, run.state)
        run.iterator.set_state(data_state)
    writer = MetricsWriter(out, resume_from=start if start else None,
                           tensorboard=jax.process_index() == 0)
    bar = Progress(exp.train.steps, start, disable=not progress or jax.process_index() != 0)
    last: dict = {}
    end = exp.train.steps if stop_at is None else min(stop_at, exp.train.steps)
    try:
        for step in range(start + 1, end + 1):
            batch = _device_batch(next(run.iterator), run.mesh)
            run.state, metrics = run.step_fn(run.state, run.reference_params, batch, exp.objective)
            if not bool(metrics["finite"]):
                raise NonFiniteLossError(
                    f"non-finite loss or gradient at step {step}; state not updated, last good checkpoint: "
                    f"step {checkpointer.latest_step()} in {checkpointer.directory}")
            if step % exp.train.log_every == 0 or step == end:
                last = scalars(metrics)
                if evaluate is not None and exp.train.eval_every and (step % exp.train.eval_every == 0
                                                                      or step == exp.train.steps):
                    last.update(evaluate(step, *policy_and_reference(run)))
                writer.write(step, last)
                bar.advance_to(step, last)
            checkpoint_due = exp.train.checkpoint_every and step % exp.train.checkpoint_every == 0
            if checkpoint_due or step == exp.train.steps:
                checkpointer.save(step, run.state, run.iterator.get_state())
    finally:
        bar.close()
        writer.close()
        checkpointer.close()
    return {"metrics": last, "data": run.data_report, "steps": end, "resumed_from": start}


def final_policy(exp: Experiment) -> nnx.Module:
    """The policy of ``exp``'s newest checkpoint, as a module."""
    run = build(exp)
    checkpointer = Checkpointer(pathlib.Path(exp.train.out_dir) / "checkpoints")
    step = checkpointer.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
    run.state, _ = checkpointer.restore(step, run.state)
    checkpointer.close()
    return policy_and_reference(run)[0]
