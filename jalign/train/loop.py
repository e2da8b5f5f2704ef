"""Running an experiment: build, resume, step, log, evaluate, checkpoint.

``train(experiment)`` is the whole run. It resumes from the newest checkpoint
in ``train.out_dir`` when one exists (parameters, optimizer state, data
iterator position, RNG and step), so a run killed at any point and started
again with the same command continues to exactly the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.data import Shards, Tokenization, preference_batches, read_preferences
from jalign.data.formats import detect_kind
from jalign.models import Decoder, load_hf, lora
from jalign.models.preference_heads import add_score_head
from jalign.models.tokenizer import load_tokenizer
from jalign.objectives.declaration import PREVIOUS
from jalign.sharding import make_mesh, state_shardings
from jalign.train.checkpoint import Checkpointer, abstract_state
from jalign.train.config import Experiment
from jalign.train.metric_window import MetricWindow
from jalign.train.metrics_log import MetricsWriter, Progress
from jalign.train.mfu import device_peak, train_flops_per_token
from jalign.train.dataset_responses import prompt_columns
from jalign.train.online import Rollout
from jalign.train.optim import make_optimizer, optimizer_updates
from jalign.train.reference import precompute_reference
from jalign.train.run_config import check_and_save
from jalign.train.provider import FROZEN_MODELS, LORA_BASE, PRECOMPUTED, SOUP, Plan, plan_inputs
from jalign.train.soup import load_soup, soup_weights
from jalign.train.evaluation import aggregate, make_eval_step
from jalign.train.generations import EvalGenerations
from jalign.train.hosts import device_batch, gathered, process_rows
from jalign.train.step import FrozenModels, TrainState, jit_step, make_logprobs, make_step, nonfinite_reason
from jalign.train.token_inputs import add_token_mask_head, trainable_filter
from jalign.train.value_head import add_value_head

Evaluate = Callable[[int, nnx.Module, nnx.Module], dict]


class NonFiniteLossError(RuntimeError):
    """A step produced a non-finite loss, gradient norm or updated state; it was not applied or saved."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: where the run stopped; its last checkpoint is intact."""

    def __init__(self, step: int, checkpoint: int | None):
        last = "none" if checkpoint is None else checkpoint
        super().__init__(f"interrupted at step {step}; last checkpoint {last}; rerun the same command to resume")
        self.step, self.checkpoint = step, checkpoint


@dataclasses.dataclass
class Run:
    """What ``build`` assembles: models, data iterator, step and its state.

    ``frozen.rest`` holds the policy's untrained state (a LoRA policy's base
    weights), merged with ``graphdef`` and ``state.params`` into the policy.
    An online run has a ``rollout`` (generation and judging) and its
    ``iterator`` is the rollout's prompt iterator. ``generations`` answers
    held-out prompts at each evaluation (``train.eval_generations``).
    ``flops_per_token(batch)`` is the step's model FLOPs per token of
    ``batch`` (``jalign.train.mfu``); None for a preference model's scores,
    which skip the output projection.
    """

    graphdef: Any
    state: TrainState
    state_sharding: Any
    frozen: FrozenModels
    plan: Plan
    step_fn: Callable
    eval_fn: Callable
    eval_data: Any
    iterator: Any
    tokenizer: Any
    data_report: dict
    mesh: Any
    rollout: Rollout | None = None
    generations: EvalGenerations | None = None
    flops_per_token: Callable[[dict], float | None] = lambda batch: None


def _create_sharded(make: Callable[..., nnx.Module], mesh, rules, *args) -> nnx.Module:
    """``make(*args)`` with every array created directly in its sharding.

    The module is first traced abstractly (``nnx.eval_shape``: no memory) for
    its parameters' logical names; one ``jax.jit`` then computes its state with
    those shardings as outputs, so each device only ever holds its shards
    (across processes too). ``args`` (already sharded states) are donated:
    parameters that pass through unchanged reuse their buffers.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(make, *args))
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(lambda *a: nnx.state(make(*a)), out_shardings=shardings,
                    donate_argnums=tuple(range(len(args))))(*args)
    return nnx.merge(graphdef, state)


def _with_adapters_and_heads(model: nnx.Module, exp: Experiment, plan: Plan | None) -> nnx.Module:
    """The decoder with the LoRA adapters and heads that the run trains (in place)."""
    section = exp.model
    if section.lora_rank > 0:
        lora.add_lora(model, rank=section.lora_rank, alpha=section.lora_alpha,
                      targets=section.lora_targets, rngs=nnx.Rngs(section.init_seed + 1))
    if plan is not None and plan.needs_mask_head:
        add_token_mask_head(model, rngs=nnx.Rngs(section.init_seed + 2))
    if plan is not None and plan.needs_value_head:
        add_value_head(model, rngs=nnx.Rngs(section.init_seed + 4))
    loaded_head = getattr(model, "score_head", None)
    if plan is not None and plan.scores is not None and loaded_head is None:
        add_score_head(model, plan.scores, outputs=section.score_dim, rngs=nnx.Rngs(section.init_seed + 3))
    elif plan is not None and plan.scores is not None and loaded_head.kind != plan.scores:
        raise ValueError(f"{section.hf_dir} holds a {loaded_head.kind} head; {exp.objective.name} trains a "
                         f"{plan.scores} head")
    return model


def build_model(exp: Experiment, plan: Plan | None, mesh, rules) -> tuple[nnx.Module, Any]:
    """The policy decoder (with the heads the plan needs), created in its shardings, and its tokenizer.

    A checkpoint (``model.hf_dir``) is loaded tensor by tensor onto the mesh;
    a random initialisation (``model.arch``) runs as one sharded ``jax.jit``.
    Adapters and heads are added inside that jit, so they are sharded too.
    """
    section = exp.model
    tokenizer_dir = section.tokenizer or section.hf_dir
    if tokenizer_dir is None:
        raise ValueError("model.tokenizer (or model.hf_dir) must name a local tokenizer directory")
    tokenizer = load_tokenizer(tokenizer_dir)
    if section.hf_dir is not None:
        base_graphdef, base = nnx.split(load_hf(section.hf_dir, mesh=mesh, rules=rules, **section.precision()))

        def make(state):
            return _with_adapters_and_heads(nnx.merge(base_graphdef, state), exp, plan)
        model = _create_sharded(make, mesh, rules, base)
    elif section.arch is not None:
        def make():
            arch = section.arch.replace(**section.precision())
            return _with_adapters_and_heads(Decoder(arch, rngs=nnx.Rngs(section.init_seed)), exp, plan)
        model = _create_sharded(make, mesh, rules)
    else:
        raise ValueError("set model.hf_dir (a local checkpoint) or model.arch (random initialisation)")
    return model, tokenizer


def plan_for(exp: Experiment) -> Plan:
    """The provider's plan for ``exp`` (refuses before any model is built or compiled)."""
    if exp.model.reference_soup or exp.model.reference_soup_weights:
        soup_weights(exp.model.reference_soup, exp.model.reference_soup_weights)
    if exp.online.enabled:
        if exp.data.train:
            raise ValueError(f"set either data.train (offline training) or online.prompts (generation in the "
                             f"loop), not both; got data.train={exp.data.train!r}, online.prompts={exp.online.prompts!r}")
        return plan_inputs(exp.objective, reference_mode=exp.train.reference, lora=exp.model.lora_rank > 0,
                           metric_extras=exp.train.extras, online=True, columns=prompt_columns(exp),
                           soup=bool(exp.model.reference_soup))
    source = exp.data.open_train()
    kind = exp.data.kind or detect_kind(source.columns, source=source.name)
    return plan_inputs(exp.objective, data_kind=kind, columns=source.columns, reference_mode=exp.train.reference,
                       lora=exp.model.lora_rank > 0, guide=exp.model.guide is not None,
                       metric_extras=exp.train.extras, soup=bool(exp.model.reference_soup),
                       teacher=exp.model.teacher_spec())


def _initial_state(tx, params, frozen_like: FrozenModels, sharding: TrainState, frozen_sharding: FrozenModels,
                   seed: int, soup: Any = None) -> tuple[TrainState, FrozenModels]:
    """The step's first state and frozen models, each created by a jit whose outputs are in their shardings.

    The reference copy and the previous iterate are ``jnp.copy`` (new
    buffers: the step donates the policy's) and the optimizer state
    ``tx.init``, all from the sharded parameters; nothing is assembled whole
    and then placed. A ``soup`` (SALSA's reference, already in its
    shardings) takes the reference copy's place.
    """
    def copy(tree):
        return jax.tree.map(jnp.copy, tree)

    opt_state = jax.jit(tx.init, out_shardings=sharding.opt_state)(params)
    step, rng = jax.jit(lambda: (jnp.zeros((), jnp.int32), jax.random.key(seed)),
                        out_shardings=(sharding.step, sharding.rng))()
    reference = (soup if soup is not None or frozen_like.reference is None
                 else jax.jit(copy, out_shardings=frozen_sharding.reference)(params))
    previous = None if sharding.previous is None else jax.jit(copy, out_shardings=sharding.previous)(params)
    return (TrainState(step, params, opt_state, rng, previous),
            dataclasses.replace(frozen_like, reference=reference))


def build(exp: Experiment) -> Run:
    """Plan, model, reference, data pipeline, optimizer and the jitted step, all state created sharded."""
    plan = plan_for(exp)
    mesh, rules = make_mesh(exp.mesh), exp.mesh.rule_table()
    model, tokenizer = build_model(exp, plan, mesh, rules)
    heads = (("token_mask_head",) if plan.needs_mask_head else ()) + (("score_head",) if plan.scores else ()) + (
        ("value_head",) if plan.needs_value_head else ())
    trainable = trainable_filter(lora=exp.model.lora_rank > 0, heads=heads)
    graphdef, params, rest = nnx.split(model, trainable, ...)
    tx = make_optimizer(exp.optimizer, optimizer_updates(exp))
    guide_graphdef, guide_state = None, None
    if plan.needs_guide:
        guide_graphdef, guide_state = nnx.split(load_hf(exp.model.guide, mesh=mesh, rules=rules,
                                                        **exp.model.precision()))
    teacher_graphdefs, teacher_state = None, None
    if plan.needs_teacher:
        teacher_graphdefs, teacher_state = zip(*(nnx.split(load_hf(d, mesh=mesh, rules=rules, **exp.model.precision()))
                                                 for d in (exp.model.teacher, exp.model.teacher_contrast)))
    rollout, eval_data = None, None
    if exp.online.enabled:
        rollout = Rollout(plan, exp, graphdef, tokenizer, tx, mesh, rules)
        iterator, data_report, sample = rollout.iterator, rollout.prompts.report.as_dict(), rollout.example_batch()
    else:
        dataset, eval_data, data_report = _offline_data(exp, plan, model, tokenizer, mesh, rules)
        iterator, sample = iter(dataset), dataset[0]
    generations = None
    if exp.train.eval_generations:
        generations = EvalGenerations(exp, graphdef, tokenizer, eval_data, mesh, rules, scores=plan.scores)
    step = make_step(graphdef, tx, plan, impl=exp.train.logprob_impl, guide_graphdef=guide_graphdef,
                     teacher_graphdefs=teacher_graphdefs)
    eval_fn = jax.jit(make_eval_step(make_logprobs(graphdef, plan, impl=exp.train.logprob_impl,
                                                   guide_graphdef=guide_graphdef,
                                                   teacher_graphdefs=teacher_graphdefs)))
    # Shapes only, for the step's shardings: the real values are then created in them.
    frozen_like = FrozenModels(rest=rest, reference=params if plan.reference in FROZEN_MODELS else None,
                               guide=guide_state, teacher=teacher_state)
    state_like = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p), jax.random.key(0),
                                                     p if plan.needs_previous else None), params)
    sample = device_batch(sample, mesh)
    jitted, sharding, frozen_sharding = jit_step(step, mesh, state_like, frozen_like, sample, exp.objective, tx,
                                                 rules)
    soup = None if plan.reference != SOUP else load_soup(
        exp.model.reference_soup, exp.model.reference_soup_weights, params, mesh=mesh, rules=rules,
        precision=exp.model.precision())
    state, frozen = _initial_state(tx, params, frozen_like, sharding, frozen_sharding, exp.train.seed, soup)
    return Run(graphdef, state, sharding, frozen, plan, jitted, eval_fn, eval_data, iterator, tokenizer,
               data_report, mesh, rollout, generations, functools.partial(_flops_per_token, model.cfg, plan))


def _flops_per_token(cfg, plan: Plan, batch: dict) -> float | None:
    """The step's model FLOPs per token of ``batch``, whose padded ``prompt + response`` length
    (one of the collator's buckets) sets the attention term (``jalign.train.mfu``)."""
    if not plan.logprobs:
        return None
    seq_len = batch["prompt_tokens"].shape[-1] + batch["response_tokens"].shape[-1]
    on_device = plan.reference in (*FROZEN_MODELS, LORA_BASE) or plan.reference_slot == PREVIOUS
    return float(train_flops_per_token(cfg, seq_len, reference_forward=on_device))


def _offline_data(exp: Experiment, plan: Plan, model: nnx.Module, tokenizer, mesh, rules):
    """``(batches, held-out data or None, report)``: the preference data this process feeds, read and tokenised.

    With a precomputed reference the data is scored once here (and cached in ``out_dir``).
    """
    tokenization = Tokenization(max_length=exp.data.max_length, max_prompt_length=exp.data.max_prompt_length,
                                truncation=exp.data.truncation)
    read = functools.partial(read_preferences, tokenizer=tokenizer, kind=exp.data.kind,
                             preference_field=exp.data.preference_field, labels=plan.data_labels,
                             on_error=exp.data.on_error, tokenization=tokenization)
    processes = jax.process_count()
    shards = Shards(exp.data.shards or processes, jax.process_index(), processes)
    if exp.train.batch_size % shards.count:
        raise ValueError(f"train.batch_size={exp.train.batch_size} must divide over data.shards={shards.count}")
    # The sharded reference scores batches that every process holds alike, so it needs every record.
    data = read(exp.data.open_train(), shards=Shards() if plan.reference == PRECOMPUTED else shards)
    data, eval_data = _held_out(exp, data, read)
    if plan.reference == PRECOMPUTED:
        reference_model = lora.reference_view(model) if exp.model.lora_rank > 0 else model
        precompute = functools.partial(precompute_reference, reference=reference_model, mesh=mesh, rules=rules,
                                       batch_size=exp.train.batch_size, impl=exp.train.logprob_impl)
        data = precompute(data, cache=pathlib.Path(exp.train.out_dir) / "reference_logprobs.npz").for_shards(shards)
        if eval_data is not None:
            eval_data = precompute(eval_data, cache=pathlib.Path(exp.train.out_dir) / "eval_reference_logprobs.npz")
    dataset = preference_batches(data, batch_size=exp.train.batch_size // processes, seed=exp.train.seed,
                                 shuffle=exp.data.shuffle, num_epochs=None)
    return dataset, eval_data, data.report.as_dict()


def _held_out(exp: Experiment, data, read):
    """``(train, eval)``: a separate eval file, a seeded fraction of the training records, or no eval.

    The fraction is chosen among the kept records of all shards, so every
    process holds out the same ones; every process evaluates all of them.
    """
    held_out = exp.data.open_eval()
    if held_out is not None:
        return data, read(held_out)
    if not exp.data.eval_fraction:
        return data, None
    if not 0 < exp.data.eval_fraction < 1:
        raise ValueError(f"data.eval_fraction must be in (0, 1); got {exp.data.eval_fraction}")
    order = np.random.default_rng(exp.train.seed).permutation(len(data.lengths))
    count = max(1, int(round(exp.data.eval_fraction * len(order))))
    held = set(data.lengths[order[:count], 0].tolist())
    if count >= len(order):
        raise ValueError(f"data.eval_fraction={exp.data.eval_fraction} leaves no training records")
    if data.shards.process_count > 1:  # the held-out records are spread over the processes' shards
        return data.without(held), read(exp.data.open_train(), only=held)
    return data.without(held), data.local().without(set(data.lengths[:, 0].tolist()) - held)


def evaluate_held_out(run: Run, exp: Experiment) -> dict[str, float]:
    """The objective's metrics over the whole held-out set (``jalign.train.evaluation``), prefixed ``eval/``.

    Every process holds the whole held-out set and feeds its rows of each
    batch; the per-example outputs are gathered onto every process.
    """
    batches = preference_batches(run.eval_data, batch_size=exp.train.batch_size, shuffle=False, num_epochs=1)
    outputs = (gathered(run.eval_fn(run.state.params, run.frozen, device_batch(process_rows(batch), run.mesh),
                                     exp.objective))
               for batch in batches)
    return {f"eval/{k}": v for k, v in aggregate(outputs, run.eval_data.num_responses).items()}


def policy_and_reference(run: Run) -> tuple[nnx.Module, nnx.Module | None]:
    """The current policy and its reference as modules (for evaluation hooks).

    The reference is None when it was precomputed for a fully fine-tuned
    model, or when the objective needs none.
    """
    policy = nnx.merge(run.graphdef, run.state.params, run.frozen.rest)
    if run.plan.reference in FROZEN_MODELS:
        return policy, nnx.merge(run.graphdef, run.frozen.reference, run.frozen.rest)
    has_lora = any(True for _ in jax.tree.leaves(nnx.state(policy, nnx.LoRAParam)))
    return policy, lora.reference_view(policy) if has_lora else None


def train(exp: Experiment, *, evaluate: Evaluate | None = None, stop_at: int | None = None,
          progress: bool = True, allow_changes: bool | None = None) -> dict:
    """Runs (or resumes) ``exp``; returns the last logged metrics and run facts.

    Args:
      exp: the experiment.
      evaluate: called every ``train.eval_every`` steps and at the end with
        ``(step, policy, reference)``; its dict is logged with the metrics.
      stop_at: stop after this step without finishing (tests of resumption).
      progress: show the progress bar.
      allow_changes: resume even if the saved config differs in a field that
        changes what is trained (``jalign.train.run_config``); None: as
        ``run_config.allowing_changes`` says (``jalign train --allow-changes``).

    Raises:
      TrainingInterrupted: on Ctrl-C (a ``KeyboardInterrupt``), naming the step and the last checkpoint.
    """
    out = pathlib.Path(exp.train.out_dir)
    check_and_save(exp, out, resuming=_has_checkpoint(out / "checkpoints"), allow_changes=allow_changes,
                   write=jax.process_index() == 0)
    run = build(exp)
    checkpointer = Checkpointer(out / "checkpoints", keep=exp.train.keep_checkpoints)
    restored = checkpointer.restore_newest(run.state)  # verified; falls back past damaged checkpoints
    start, tokens_seen = 0, 0
    if restored is not None:
        start, run.state, tokens_seen = restored.step, restored.state, restored.tokens_seen
        run.iterator.set_state(restored.data_state)
        if jax.process_index() == 0:
            print(f"resuming from step {start} ({checkpointer.directory / str(start)})", file=sys.stderr)
            if tokens_seen is None:
                print(f"checkpoint {start} predates the tokens_seen counter; rows will not log it",
                      file=sys.stderr)
    writer = MetricsWriter(out, resume_from=start if start else None,
                           tensorboard=jax.process_index() == 0)
    bar = Progress(exp.train.steps, start, disable=not progress or jax.process_index() != 0)
    last: dict = {}
    end = exp.train.steps if stop_at is None else min(stop_at, exp.train.steps)
    done = start
    peak = device_peak(jax.devices()[0].device_kind)
    peak_flops = None if peak is None else peak * run.mesh.size
    window = MetricWindow(exp, peak_flops=peak_flops, tokens_seen=tokens_seen)
    say = _say if jax.process_index() == 0 else (lambda text: None)
    say(startup_summary(run))

    def finish(step: int, metrics: dict) -> int:
        """Checks ``step``'s finite flag (waiting for the step), then logs and evaluates what is due."""
        row = _finished_row(run, exp, checkpointer, step, metrics, end=end, evaluate=evaluate, window=window,
                            writer=writer)
        if row:
            last.update(row)
            writer.write(step, row)
            bar.advance_to(step, row)
        return step

    pending = None  # the newest step dispatched but not yet checked
    try:
        for step in range(start + 1, end + 1):
            if step == start + 1:
                say("compiling the train step" + (" and generation" if run.rollout else "") + " ...")
                compiling = time.perf_counter()
            if run.rollout is None:
                batch = device_batch(next(run.iterator), run.mesh)
            else:
                run.state, batch = run.rollout(run.state, run.frozen, step, exp.objective)
            updating = time.perf_counter()
            run.state, metrics = run.step_fn(run.state, run.frozen, batch, exp.objective)
            per_token = None if peak_flops is None else run.flops_per_token(batch)
            if per_token is not None:  # only where MFU is logged: CPU runs keep their metrics
                metrics = {**metrics, "model_flops": metrics["tokens"] * jnp.float32(per_token)}
            if run.rollout is not None:  # the next generation needs this update anyway: time it
                jax.block_until_ready(metrics)
                run.rollout.add_update_time(time.perf_counter() - updating)
            if step == start + 1:
                say(f"compiled in {time.perf_counter() - compiling:.1f} s")
                window.restart_clock()
                if run.rollout is not None:
                    run.rollout.restart()
            # Checked one step behind: the device already holds the next step when the host waits on this flag.
            if pending is not None:
                done = finish(*pending)
            pending = (step, metrics)
            checkpoint_due = (exp.train.checkpoint_every and step % exp.train.checkpoint_every == 0
                              or step == exp.train.steps)
            # These need this very state, checked (an online step was already waited for).
            if checkpoint_due or any(_evaluations(run, exp, step, evaluate)) or run.rollout is not None:
                done, pending = finish(step, metrics), None
            if checkpoint_due:
                with _ctrl_c_after():
                    checkpointer.save(step, run.state, run.iterator.get_state(),
                                      tokens_seen=window.tokens_seen_now())
        if pending is not None:
            done = finish(*pending)
    except KeyboardInterrupt:
        checkpointer.wait()  # asynchronous saves already started finish, so the message names a real one
        raise TrainingInterrupted(done, checkpointer.latest_step())
    finally:
        bar.close()
        writer.close()
        checkpointer.close()
    return {"metrics": last, "data": run.data_report, "steps": end, "resumed_from": start}


def _evaluations(run: Run, exp: Experiment, step: int, evaluate: Evaluate | None) -> tuple[bool, bool]:
    """Whether ``step`` runs the held-out evaluation, and whether it calls the ``evaluate`` hook."""
    due = bool(exp.train.eval_every) and step % exp.train.eval_every == 0
    return (run.eval_data is not None and (due or step == exp.train.steps),
            evaluate is not None and (due or bool(exp.train.eval_every) and step == exp.train.steps))


def _finished_row(run: Run, exp: Experiment, checkpointer: Checkpointer, step: int, metrics: dict, *, end: int,
                  evaluate: Evaluate | None, window: MetricWindow, writer: MetricsWriter) -> dict:
    """The metrics row of ``step`` (empty when nothing is due), after checking its finite flag.

    Reading the flag waits for the step; the step's metrics join the window
    on device, which is fetched only on log steps. Evaluation, when due, uses
    ``run.state``, which is then ``step``'s; its generations go to ``writer`` at once.

    Raises:
      NonFiniteLossError: the step's loss, gradient norm or updated state was not finite.
    """
    if not bool(metrics["finite"]):
        like = abstract_state(run.state)
        run.state = None  # free the device copy before a checkpoint is read back to verify it
        raise NonFiniteLossError(f"{nonfinite_reason(metrics)} at step {step}; the state was not "
                                 f"updated; {checkpointer.describe_last_good(like)}")
    window.add(metrics)
    row = window.row(step) if step % exp.train.log_every == 0 or step == end else {}
    if row and run.rollout is not None:
        row.update(run.rollout.window_row())
    held_out, hook = _evaluations(run, exp, step, evaluate)
    if run.rollout is not None and (step == exp.train.steps or bool(exp.train.eval_every)
                                    and step % exp.train.eval_every == 0):
        row.update(run.rollout.measure(run.state, run.frozen, exp.objective, step))
    if held_out:
        row.update(evaluate_held_out(run, exp))
        if run.generations is not None:
            writer.write_generations(step, run.generations(run.state.params, run.frozen.rest, step))
    if hook:
        row.update(evaluate(step, *policy_and_reference(run)))
    return row


def startup_summary(run: Run) -> str:
    """Parameters (total, trainable), reference, data counts, mesh: what a run is about to train."""
    def count(tree) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))

    trainable = count(run.state.params)
    total = trainable + count(run.frozen.rest)
    report = run.data_report
    skipped = sum(report["skipped"].values())
    held_out = "none" if run.eval_data is None else f"{len(run.eval_data.examples)} records"
    mesh = " x ".join(f"{name}={size}" for name, size in run.mesh.shape.items())
    data = f"data: {report['kept']} records kept, {skipped} skipped; held out: {held_out}\n"
    if run.rollout is not None:
        data = (f"prompts: {report['kept']} kept, {skipped} skipped; online: {run.plan.sampling.describe()}; "
                f"judge: {run.rollout.judge.describe() if hasattr(run.rollout.judge, 'describe') else run.rollout.judge}\n")
    return (f"model: {total:,} parameters, {trainable:,} trained; reference: {run.plan.reference}\n" + data
            + f"mesh: {mesh} over {run.mesh.size} device(s) ({jax.devices()[0].platform}), "
            f"{jax.process_count()} process(es)")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _has_checkpoint(directory: pathlib.Path) -> bool:
    """Whether a run in ``directory`` would resume: orbax names finished checkpoints by their step."""
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


@contextlib.contextmanager
def _ctrl_c_after():
    """Holds a Ctrl-C until the block ends, so a checkpoint being written is finished first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda *received: held.append(received))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(*held[0])


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
