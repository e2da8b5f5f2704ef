"""The LLM trainer's provider: serves exactly what an objective declares, or refuses by name.

The counterpart of ``jalign.tabular.batch_for`` for transformers. When a run
is built, :func:`plan_inputs` reads the composed objective's declaration
(``requires`` and ``sampling``) once and decides where each input comes from:

- the reference, one value: none, a frozen copy, the LoRA base view,
  log-probs precomputed with the data, or a frozen weight-space soup of
  several checkpoints (SALSA, ``model.reference_soup``; ``jalign.train.soup``);
- per-token extras, from the fused log-prob kernels (``entropy``,
  ``ref_kl``, ``log_prob_sq_sum``, ...) or from the run's models
  (SparsePO's masks; PPO's critic values, ``jalign.train.value_head``);
- a preference model's scores (``bt_reward``, ``pairwise_preference``,
  ``gpm``), from a head on the trained decoder (``jalign.models.preference_heads``);
- labels, from the data's own fields (``preference``, ``score``,
  ``desirable``, ``other_rewards``) or computed in the step: KTO's
  ``kl_estimate`` from mismatched prompt/completion pairs of the batch and
  TGDPO's ``guide_log_ratio`` from a guide model;
- AlignDistil's ``teacher_kl`` and ``teacher_weight``, from a DPO and a
  reverse-DPO model (``jalign.train.teacher_inputs``);
- the policy's log-probs themselves through IFT's temporal residual
  connection (``requires.residual``; ``jalign.models.scoring.residual_responses``),
  offline only.

Whatever it cannot supply is refused before anything is compiled, in one
:class:`RefusedObjective` message naming the objective, each missing input
and how to provide it. Online objectives, whose responses must be generated
during training, are served only by a run with prompts and a judge
(``online``; :mod:`jalign.train.online` generates and judges); without them
they are refused: a fixed dataset never stands in for them.
:func:`batch_logprobs` then assembles the objective's ``LogProbs`` inside the
jitted step, following the plan and nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jalign.data.formats import LABEL_FIELDS, intrinsic_labels
from jalign.models.preference_heads import preference_scores
from jalign.models.scoring import Responses, encode_responses, frozen, token_logprobs
from jalign.objectives import LogProbs, Objective
from jalign.objectives.declaration import (
    ANY, DATA, EXTRAPOLATED, LIST, PAIR, PREVIOUS, REFERENCE, SINGLE, TRIPLE, Sampling,
)
from jalign.objectives.distillation import TEACHER_EXTRAS
from jalign.train.teacher_inputs import Teacher, distillation_extras
from jalign.train.token_inputs import (
    GUIDE_LABEL, MASK_EXTRAS, guide_log_ratio, learned_token_mask, mismatched_kl_estimate, reference_token_mask,
)
from jalign.train.value_head import VALUE_EXTRAS, token_values

NONE, FROZEN, LORA_BASE, PRECOMPUTED, SOUP = "none", "frozen", "lora_base", "precomputed", "soup"
# Plans whose reference is a frozen model held as a step argument (``FrozenModels.reference``).
FROZEN_MODELS = (FROZEN, SOUP)
JUDGED_LABELS = ("preference", "win_prob", "reward")  # what the online loop's judge provides
PREVIOUS_LABEL = "previous_logps"  # computed in the step from the previous iterate
KERNEL_EXTRAS = ("entropy", "ref_kl", "policy_kl", "log_prob_sq_sum", "topk_mass", "topk_entropy")
# Kernel extras computed against the reference model's next-token distribution.
REFERENCE_KERNEL_EXTRAS = ("ref_kl", "policy_kl")
_DATA_KINDS = {PAIR: ("paired", "joint"), SINGLE: ("unpaired",), TRIPLE: ("ranked",), LIST: ("ranked", "paired"),
               ANY: ("paired", "ranked", "unpaired")}


class RefusedObjective(ValueError):
    """The run cannot serve the objective's declaration (a user error, raised before compiling)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where every input of the objective comes from; static for the compiled step.

    Attributes:
      reference: ``"none"``, ``"frozen"`` (a frozen copy's parameters are a
        step argument), ``"soup"`` (likewise, the parameters being a weight
        average of ``model.reference_soup``), ``"lora_base"`` (the policy
        with adapters off) or ``"precomputed"`` (``batch["reference_logprobs"]``).
      kernel_extras: extras the policy's log-prob kernel computes (the
        objective's and the metrics').
      data_labels: labels read from record fields beyond the data kind's own.
      computed_labels: labels computed in the step (``kl_estimate``, ``guide_log_ratio``).
      mask_extras: SparsePO masks computed in the step (``token_mask_logits``,
        ``reference_token_mask``).
      logprobs: whether the policy's per-token log-probs are computed.
      scores: the preference-model head the trained decoder carries
        (``"reward"``, ``"pairwise"``, ``"embedding"``), or None.
      sampling: an online objective's declaration (its mixture coefficient
        left out: it is read from the objective, a traced value), or None.
      reference_slot: the model whose log-probs fill ``LogProbs.reference``:
        ``"reference"``, or ``"previous"`` (SPPO's proximal target).
      teacher: how AlignDistil's teacher extras are built from
        ``model.teacher`` and ``model.teacher_contrast``, or None.
      value_extras: PPO's critic values from the policy's value head (``values``).
      residual: IFT's temporal residual connection weight for the policy's
        forward (``Requirements.residual``); 0 is teacher forcing.
    """

    reference: str = NONE
    kernel_extras: tuple[str, ...] = ()
    data_labels: tuple[str, ...] = ()
    computed_labels: tuple[str, ...] = ()
    mask_extras: tuple[str, ...] = ()
    logprobs: bool = True
    scores: str | None = None
    sampling: Sampling | None = None
    reference_slot: str = REFERENCE
    teacher: Teacher | None = None
    value_extras: tuple[str, ...] = ()
    residual: float = 0.0

    @property
    def needs_previous(self) -> bool:
        """Whether the step reads the frozen previous iterate (SPPO's reference slot, INPO's labels)."""
        drawn = () if self.sampling is None else self.sampling.sources()
        return self.reference_slot == PREVIOUS or PREVIOUS_LABEL in self.computed_labels or PREVIOUS in drawn

    @property
    def needs_guide(self) -> bool:
        return GUIDE_LABEL in self.computed_labels

    @property
    def needs_teacher(self) -> bool:
        return self.teacher is not None

    @property
    def needs_mask_head(self) -> bool:
        return "token_mask_logits" in self.mask_extras

    @property
    def needs_value_head(self) -> bool:
        return bool(self.value_extras)


def _reference_kind(needed: bool, mode: str, lora: bool, soup: bool = False) -> str:
    if not needed:
        return NONE
    if mode == PRECOMPUTED:
        return PRECOMPUTED
    if soup:
        return SOUP
    return LORA_BASE if lora else FROZEN


def _soup_conflicts(name: str, needed: bool, mode: str, lora: bool) -> list[str]:
    """Why ``model.reference_soup`` cannot be this run's reference (empty when it can)."""
    if not needed:
        return [f"model.reference_soup: {name} reads no reference; unset it"]
    if lora:
        return ["model.reference_soup: a LoRA policy's reference is its frozen base; set model.lora_rank=0"]
    if mode == PRECOMPUTED:
        return ["model.reference_soup: train.reference='precomputed' scores with the policy's initial weights; "
                "set train.reference='model'"]
    return []


def plan_inputs(objective: Objective, *, data_kind: str = "", columns: Sequence[str] = (),
                reference_mode: str = "model", lora: bool = False, guide: bool = False,
                metric_extras: Sequence[str] = (), online: bool = False, soup: bool = False,
                teacher: Teacher | None = None) -> Plan:
    """Decides the source of every input ``objective`` declares, or refuses.

    Args:
      objective: the (possibly composed) objective.
      data_kind: the training data's kind (``"paired"``, ``"ranked"``, ``"unpaired"``).
      columns: the training data's record fields.
      reference_mode: ``train.reference``: ``"model"`` or ``"precomputed"``.
      lora: whether the policy trains LoRA adapters over a frozen base.
      guide: whether a guide model is configured (``model.guide``).
      metric_extras: kernel extras wanted for metrics only (``train.extras``).
      online: the run generates its responses (``online.prompts`` is set);
        ``data_kind`` is then unused and ``columns`` are the prompt file's.
      soup: the reference is a soup of checkpoints (``model.reference_soup``).
      teacher: AlignDistil's teacher, when ``model.teacher`` and
        ``model.teacher_contrast`` are both set; else None.

    Raises:
      RefusedObjective: one message listing every input that cannot be served.
    """
    name, needs, sampling = objective.name, objective.requires, objective.sampling
    if online:
        return _plan_online(objective, reference_mode=reference_mode, lora=lora, metric_extras=metric_extras,
                            columns=columns, soup=soup)
    if sampling is not None:
        raise RefusedObjective(
            f"{name}: its responses are sampled during training ({sampling.describe()}; from "
            f"{', '.join(sampling.model_sources())}); a fixed dataset never stands in for them. Set "
            "online.prompts (a prompt-only file) and online.judge to train it with generation in the loop, "
            "or choose an offline objective.")
    missing = []
    if data_kind not in _DATA_KINDS[needs.responses]:
        wanted = " or ".join(_DATA_KINDS[needs.responses])
        missing.append(f"{needs.responses} responses: the data is {data_kind}; give {wanted} data "
                       "(see the README's data formats)")
    if data_kind == "joint" and "instruction_length" not in needs.labels:
        missing.append("joint data (each response answers its own instruction): the objective would score "
                       "the instruction tokens as response; use one that reads labels['instruction_length'] "
                       "(jpo), or paired data")
    own_extras = set(needs.extras)
    # A pure preference-model objective computes no log-probs, so there are no kernel metrics to add.
    metric_only = [e for e in metric_extras if e not in own_extras] if needs.logprobs else []
    kernel_extras = sorted((own_extras | set(metric_only)) & set(KERNEL_EXTRAS))
    mask_extras = sorted(own_extras & set(MASK_EXTRAS))
    for extra in sorted(own_extras - set(KERNEL_EXTRAS) - set(MASK_EXTRAS) - set(TEACHER_EXTRAS)):
        missing.append(f"extras[{extra!r}]: no kernel or model of `jalign train` computes it")
    for extra in metric_only:
        if extra not in KERNEL_EXTRAS:
            missing.append(f"train.extras {extra!r}: not a kernel extra; valid: {list(KERNEL_EXTRAS)}")
    teacher_extras = sorted(own_extras & set(TEACHER_EXTRAS))
    if teacher_extras and teacher is None:
        missing.append(f"extras{teacher_extras}: set model.teacher (the DPO model) and model.teacher_contrast "
                       "(the reverse-DPO model), local Hugging Face checkpoints of the policy's vocabulary")
    data_labels, computed = [], []
    for key in needs.labels:
        if key in intrinsic_labels(data_kind):
            continue
        fields = LABEL_FIELDS.get((data_kind, key))
        if fields is not None:
            absent = [f for f in fields if f not in columns]
            if absent:
                missing.append(f"labels[{key!r}]: add the fields {absent} to every {data_kind} record")
            data_labels.append(key)
        elif key == "kl_estimate":
            computed.append(key)
        elif key == GUIDE_LABEL:
            computed.append(key)
            if not guide:
                missing.append(f"labels[{key!r}]: set model.guide to a local Hugging Face checkpoint of the "
                               "guide policy (TGDPO's DPO-trained model); its token log-ratios against the "
                               "reference are the token rewards")
        else:
            where = [f"{kind} records' {fields}" for (kind, label), fields in LABEL_FIELDS.items() if label == key]
            where += [f"{kind} data" for kind in ("paired", "ranked", "unpaired", "joint") if key in intrinsic_labels(kind)]
            missing.append(f"labels[{key!r}]: not in {data_kind} data" + (f"; provide {' or '.join(where)}"
                                                                           if where else ""))
    uses_reference_model = (bool(set(REFERENCE_KERNEL_EXTRAS) & set(kernel_extras)) or ("kl_estimate" in computed)
                            or bool(mask_extras))
    need_reference = needs.reference or uses_reference_model or bool(computed)
    if soup:
        missing += _soup_conflicts(name, need_reference, reference_mode, lora)
    reference = _reference_kind(need_reference, reference_mode, lora, soup)
    if reference == PRECOMPUTED and uses_reference_model:
        wanted = [x for x in (*REFERENCE_KERNEL_EXTRAS, "kl_estimate", *MASK_EXTRAS)
                  if x in kernel_extras + computed + mask_extras]
        missing.append(f"{', '.join(wanted)}: needs the reference model on device (KL to its next-token "
                       "distribution, mismatched pairs drawn per batch, or its activations); set "
                       "train.reference='model'")
    if missing:
        raise RefusedObjective(f"`jalign train` cannot serve {name}:\n  - " + "\n  - ".join(missing))
    return Plan(reference=reference, kernel_extras=tuple(kernel_extras), data_labels=tuple(data_labels),
                computed_labels=tuple(computed), mask_extras=tuple(mask_extras), logprobs=needs.logprobs,
                scores=needs.scores, teacher=teacher if teacher_extras else None, residual=needs.residual)


def _response_count_fits(responses: str, count: int) -> bool:
    return {PAIR: count == 2, SINGLE: count == 1, TRIPLE: count == 3, LIST: count >= 2, ANY: True}[responses]


def _plan_online(objective: Objective, *, reference_mode: str, lora: bool, metric_extras: Sequence[str],
                 columns: Sequence[str] = (), soup: bool = False) -> Plan:
    """The plan of a run that generates its responses (``online.prompts``), or a refusal naming what is missing.

    The judge labels what the declaration lists (``preference``,
    ``win_prob``); ``previous_logps`` is computed in the step from the
    previous iterate. The reference is always a model: besides the
    objective, the loop measures the policy's win rate against it and the
    KL between them.
    """
    name, needs, sampling = objective.name, objective.requires, objective.sampling
    if sampling is None:
        raise RefusedObjective(
            f"{name} is an offline objective, but online.prompts is set: its inputs come from a preference "
            "dataset. Unset online.prompts and set data.train, or choose an online objective "
            "(`jalign objectives` lists their sampling).")
    missing = []
    count = len(sampling.responses)
    if not _response_count_fits(needs.responses, count):
        missing.append(f"responses={needs.responses!r}: the sampling declaration draws {count} per prompt")
    if EXTRAPOLATED in sampling.responses:
        missing.append("responses drawn from the extrapolated policy: the loop draws only win-rate opponents from it")
    missing += _dataset_response_missing(sampling, columns)
    if "preference" in sampling.labels and count != 2:
        missing.append(f"labels['preference']: a judge compares two responses; the declaration draws {count}")
    computed = []
    for key in needs.labels:
        if key == PREVIOUS_LABEL:
            computed.append(key)
        elif key not in JUDGED_LABELS or key not in sampling.labels:
            missing.append(f"labels[{key!r}]: the online loop provides the judge's {list(JUDGED_LABELS)} "
                           f"as the declaration lists them ({list(sampling.labels)}) and {PREVIOUS_LABEL!r}")
    own_extras = set(needs.extras)
    metric_only = [e for e in metric_extras if e not in own_extras]
    for extra in sorted(own_extras - set(KERNEL_EXTRAS) - set(MASK_EXTRAS) - set(VALUE_EXTRAS)):
        missing.append(f"extras[{extra!r}]: no kernel or model of `jalign train` computes it")
    for extra in metric_only:
        if extra not in KERNEL_EXTRAS:
            missing.append(f"train.extras {extra!r}: not a kernel extra; valid: {list(KERNEL_EXTRAS)}")
    if needs.scores is not None:
        missing.append(f"{needs.scores} scores: preference models are trained on preference data, offline")
    if needs.residual:
        missing.append(f"residual inputs (lambda={needs.residual}): the temporal residual connection is "
                       "defined on a dataset's target responses (IFT's SFT data), not on generated ones; set "
                       "ift's lam=0 or train offline")
    if reference_mode == PRECOMPUTED:
        missing.append("train.reference='precomputed': responses are generated every step, so nothing can be "
                       "scored before training; set train.reference='model'")
    elif soup:
        missing += _soup_conflicts(name, True, reference_mode, lora)
    if missing:
        raise RefusedObjective(f"`jalign train` cannot serve {name} online:\n  - " + "\n  - ".join(missing))
    return Plan(reference=_reference_kind(True, reference_mode, lora, soup),
                kernel_extras=tuple(sorted((own_extras | set(metric_only)) & set(KERNEL_EXTRAS))),
                computed_labels=tuple(computed), mask_extras=tuple(sorted(own_extras & set(MASK_EXTRAS))),
                sampling=dataclasses.replace(sampling, mixture=None),
                reference_slot=PREVIOUS if sampling.reference == PREVIOUS else REFERENCE,
                value_extras=tuple(sorted(own_extras & set(VALUE_EXTRAS))))


def _dataset_response_missing(sampling: Sampling, columns: Sequence[str]) -> list[str]:
    """What a ``"data"`` response source or a dataset reset lacks: the prompt file's ``completion`` field."""
    wants = ([f"responses from the dataset ({DATA!r} source)"] if DATA in sampling.responses else []) + (
        ["generation reset to prefixes of the dataset's responses (dataset_reset)"] if sampling.reset else [])
    if DATA in sampling.responses and sampling.reset:
        return [f"a {DATA!r} response slot under a dataset reset: the dataset's response is the state reset to"]
    if not wants or "completion" in columns:
        return []
    return [f"{' and '.join(wants)}: online.prompts has no 'completion' field (its fields: {sorted(columns)}); "
            "give TRL's prompt-completion format, {prompt, completion} per record"]


def _reference_logprobs(plan: Plan, reference: Any, batch: dict, impl: str) -> tuple[jax.Array | None, Responses | None]:
    """Per-token reference log-probs ``[B, G, R]`` and, from a model, its frozen view."""
    if plan.reference == NONE:
        return None, None
    if plan.reference == PRECOMPUTED:
        return jnp.asarray(batch["reference_logprobs"], jnp.float32), None
    view = frozen(encode_responses(reference, batch, layers=bool(plan.mask_extras)))
    return token_logprobs(view, batch["response_tokens"], impl=impl).logprobs, view


def batch_logprobs(plan: Plan, policy: Any, reference: Any | None, batch: dict, *, impl: str = "auto",
                   guide: Any | None = None, previous: Any | None = None, top_k: int | None = None,
                   teacher: tuple[Any, Any] | None = None) -> LogProbs:
    """The objective's input for one batch, assembled as ``plan`` says.

    Args:
      plan: from :func:`plan_inputs`.
      policy: the trained decoder.
      reference: the decoder filling the reference slot: the reference
        (``"frozen"`` and ``"lora_base"`` plans) or the previous iterate
        (``reference_slot="previous"``); else ``None``.
      batch: a collated batch (``jalign.data.collate.Collator``), with
        ``reference_logprobs`` for a ``"precomputed"`` plan.
      impl: the kernel implementation.
      guide: the guide decoder when the plan computes ``guide_log_ratio``.
      previous: the previous iterate when the plan computes ``previous_logps``.
      top_k: k for the top-k extras.
      teacher: the (DPO, reverse-DPO) decoders when the plan builds AlignDistil's teacher.

    Returns:
      ``LogProbs`` with ``[B, G, R]`` fields.
    """
    labels = dict(batch.get("labels", {}))
    scores = None if plan.scores is None else preference_scores(policy, batch)
    if not plan.logprobs:
        return LogProbs(policy=None, mask=None, labels=labels, scores=scores)
    own = encode_responses(policy, batch, residual=plan.residual)
    ref_logprobs, ref_view = _reference_logprobs(plan, reference, batch, impl)
    out = token_logprobs(own, batch["response_tokens"], extras=plan.kernel_extras, impl=impl, top_k=top_k,
                         kl_to=ref_view if set(REFERENCE_KERNEL_EXTRAS) & set(plan.kernel_extras) else None)
    extras = {name: getattr(out, name) for name in plan.kernel_extras}
    extras.update(_mask_extras(plan, policy, ref_view))
    if plan.needs_value_head:
        extras["values"] = token_values(policy, own)
    if plan.needs_teacher:
        extras.update(distillation_extras(own, *teacher, batch, plan.teacher, impl=impl))
    if "kl_estimate" in plan.computed_labels:
        labels["kl_estimate"] = mismatched_kl_estimate(policy, reference, batch, impl=impl)
    if plan.needs_guide:
        labels[GUIDE_LABEL] = guide_log_ratio(guide, batch, ref_logprobs, impl=impl)
    if PREVIOUS_LABEL in plan.computed_labels:
        view = frozen(encode_responses(previous, batch))
        previous_tokens = token_logprobs(view, batch["response_tokens"], impl=impl).logprobs
        labels[PREVIOUS_LABEL] = jnp.sum(jnp.where(view.target_mask, previous_tokens, 0.0), axis=-1)
    return LogProbs(
        policy=out.logprobs, mask=own.target_mask.astype(jnp.float32),
        reference=None if ref_logprobs is None else jax.lax.stop_gradient(ref_logprobs),
        extras=extras, labels=labels, scores=scores)


def _mask_extras(plan: Plan, policy: Any, ref_view: Responses | None) -> dict:
    """SparsePO's masks, both read from the reference model's per-layer states."""
    out = {}
    if "token_mask_logits" in plan.mask_extras:
        out["token_mask_logits"] = learned_token_mask(policy, ref_view)
    if "reference_token_mask" in plan.mask_extras:
        out["reference_token_mask"] = reference_token_mask(ref_view)
    return out
