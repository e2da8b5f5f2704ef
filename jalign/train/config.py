"""The experiment schema: every default in one commented place, every range checked.

An experiment file defines ``experiment() -> Experiment``; ``jalign train FILE
--set a.b=value`` applies typed overrides (``jalign.train.overrides``). Each
section is a frozen dataclass, so an unknown field is an error that lists the
valid ones. Building an ``Experiment`` (and so every override) checks every
numeric field against its range in :data:`RANGES`, every ``Literal`` field
against its choices, and the objective's hyperparameters (all finite, the
strength > 0); a bad value raises :class:`ConfigError` naming the field and
what it allows.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Callable, Iterator, Literal

import jax
import numpy as np

from jalign.data import Tokenization, Truncation, open_source
from jalign.data.reward_augmented import RewardAugmented
from jalign.data.semantic_weights import SemanticWeighted
from jalign.data.source_base import Source
from jalign.kernels import LogprobImpl
from jalign.models import ModelConfig, RematPolicy
from jalign.objectives import Objective, Scaled, dpo
from jalign.sharding import MeshConfig
from jalign.train.optim import OptimizerConfig
from jalign.train.teacher_inputs import Teacher


class ConfigError(ValueError):
    """A config value outside its allowed range; the message names the field and the range (one line)."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field allows: ``[low, high)`` by default, finite, optionally integer or None.

    A tuple field's value is accepted when each of its elements is.
    """

    low: float
    high: float = math.inf
    integer: bool = False
    low_open: bool = False
    high_open: bool = True
    optional: bool = False

    def accepts(self, value: Any) -> bool:
        if isinstance(value, tuple):
            return all(self.accepts(v) for v in value)
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.integer else numbers.Real):
            return False
        value = float(value)
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.high == math.inf:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        else:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        return f"None or {text}" if self.optional else text


RANGES: dict[str, Range] = {
    "model.init_seed": Range(0, integer=True),
    "model.lora_rank": Range(0, integer=True),
    "model.lora_alpha": Range(0, low_open=True),
    "model.score_dim": Range(1, integer=True),
    "model.reference_soup_weights": Range(0, 1, high_open=False),  # each weight; they sum to 1 (train.soup)
    "model.teacher_scale": Range(0),
    "model.teacher_temperature": Range(0, low_open=True),
    "data.max_length": Range(2, integer=True),  # a prompt token and a response token
    "data.max_prompt_length": Range(1, integer=True, optional=True),
    "data.eval_fraction": Range(0, 1),
    "data.shards": Range(1, integer=True, optional=True),
    # > 0: a zero learning rate trains nothing while looking like a run; evaluate a model instead.
    "optimizer.learning_rate": Range(0, low_open=True),
    "optimizer.warmup_steps": Range(0, integer=True),
    "optimizer.final_fraction": Range(0, 1, high_open=False),
    "optimizer.weight_decay": Range(0),
    "optimizer.max_grad_norm": Range(0, low_open=True, optional=True),
    "optimizer.b1": Range(0, 1),
    "optimizer.b2": Range(0, 1),
    "optimizer.accumulation_steps": Range(1, integer=True),
    "train.steps": Range(1, integer=True),
    "train.batch_size": Range(1, integer=True),
    "train.seed": Range(0, integer=True),
    "train.log_every": Range(1, integer=True),
    "train.checkpoint_every": Range(0, integer=True),  # 0: only at the end
    "train.keep_checkpoints": Range(1, integer=True),
    "train.eval_every": Range(0, integer=True),  # 0: only at the end
    "train.eval_generations": Range(0, integer=True),
    "train.eval_max_new_tokens": Range(1, integer=True),
    "train.eval_temperature": Range(0),  # 0: greedy
    "online.max_new_tokens": Range(1, integer=True),
    "online.max_prompt_length": Range(1, integer=True),
    "online.temperature": Range(0, low_open=True),
    "online.top_k": Range(1, integer=True, optional=True),
    "online.top_p": Range(0, 1, low_open=True, high_open=False, optional=True),
    "online.win_samples": Range(1, integer=True),
    "online.iteration_steps": Range(0, integer=True),  # 0: one pass over the prompts
}


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which model to train and how.

    Attributes:
      hf_dir: a local Hugging Face checkpoint directory (config.json +
        safetensors); its tokenizer is used unless ``tokenizer`` is set.
      arch: the architecture for a randomly initialised model when ``hf_dir``
        is None (tiny models, demos, tests).
      tokenizer: a local tokenizer directory (``AutoTokenizer``).
      init_seed: seed of the random initialisation.
      lora_rank: >0 trains LoRA adapters only; the frozen base is the reference.
      lora_alpha: LoRA scale numerator (scale = alpha / rank).
      lora_targets: projection names (fnmatch patterns) that get adapters.
      guide: a local Hugging Face checkpoint of a guide policy, for objectives
        whose labels it computes (TGDPO's token rewards: the guide's per-token
        log-ratio against the reference).
      reference_soup: SALSA's reference: local Hugging Face checkpoints (two or
        more SFT models of the policy's architecture) whose weight average is
        the frozen reference of every objective that reads one
        (``jalign.train.soup``); empty: the reference is the policy's start.
      reference_soup_weights: their mixing weights, non-negative and summing
        to 1; empty: uniform (SALSA's soup is the midpoint of two SFT models,
        the mixing its ICLR 2025 discussion, OpenReview AN6PIiObp0, reports best).
      teacher: AlignDistil's DPO model, a local Hugging Face checkpoint of
        the policy's vocabulary; with ``teacher_contrast`` it builds the
        ``teacher_kl`` / ``teacher_weight`` extras (``jalign.train.teacher_inputs``).
      teacher_contrast: AlignDistil's reverse-DPO model (trained with chosen
        and rejected swapped), likewise.
      teacher_scale: the teacher's token-adaptive extrapolation scale (the
        authors' ``beta2``; 10 in their UltraFeedback script).
      teacher_temperature: the teacher's temperature (the authors'
        ``kd_temperature``, default 1).
      score_dim: the preference-embedding dimension of a general preference
        model's head (``gpm``; even), or the number of attributes of a
        multi-objective reward head (``multi_reward``). Reward and pairwise
        heads have one output.
      dtype: compute dtype of activations ("bfloat16" for mixed precision);
        None keeps the architecture's (``arch.dtype``, float32 for HF loads).
      param_dtype: storage dtype of the parameters; None keeps the
        architecture's or the checkpoint's. fp32 parameters with bf16 compute
        is classic mixed precision; bf16 parameters keep fp32 optimizer moments.
      remat: what each decoder block keeps for the backward pass (a
        ``jalign.models.REMAT_POLICIES`` name: "full" recomputes the block,
        "dots" keeps the weight matmuls' outputs); None keeps the
        architecture's (``arch.remat``, "none" for HF loads).
    """

    hf_dir: str | None = None
    arch: ModelConfig | None = None
    tokenizer: str | None = None
    init_seed: int = 0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    guide: str | None = None
    reference_soup: tuple[str, ...] = ()
    reference_soup_weights: tuple[float, ...] = ()
    teacher: str | None = None
    teacher_contrast: str | None = None
    teacher_scale: float = 10.0
    teacher_temperature: float = 1.0
    score_dim: int = 2
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    param_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    remat: RematPolicy | None = None

    def teacher_spec(self) -> Teacher | None:
        """AlignDistil's teacher when both of its models are set, else None."""
        if self.teacher is None or self.teacher_contrast is None:
            return None
        return Teacher(scale=self.teacher_scale, temperature=self.teacher_temperature)

    def precision(self) -> dict[str, str]:
        """The `ModelConfig` fields this section sets for precision and memory (those that are not None)."""
        fields = (("dtype", self.dtype), ("param_dtype", self.param_dtype), ("remat", self.remat))
        return {k: v for k, v in fields if v is not None}


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where preference data comes from and how it is tokenised.

    The length budget's defaults (``max_length``, ``truncation``) are
    `jalign.data.Tokenization`'s, which owns them (its docstring says why).

    Attributes:
      train: a JSONL, JSON (an array of records, or JSON lines) or Parquet
        file, a ``datasets`` directory (``save_to_disk``), or
        ``tfds:NAME/SPLIT`` for a prepared TFDS dataset (its data directory
        from ``TFDS_DATA_DIR``).
      kind: "paired", "ranked", "unpaired" or "joint"; None detects it from the columns.
      preference_field: a paired record's soft P(chosen > rejected) field.
      max_length: most tokens of prompt plus the longest response.
      max_prompt_length: most prompt tokens (None: only ``max_length``).
      truncation: "drop", "keep_end" or "keep_start" (``jalign.data``).
      on_error: "raise" at the first malformed record, or "skip" and count.
      shuffle: reshuffle every epoch from ``train.seed``.
      eval: a held-out file or ``datasets`` directory of the same kind,
        evaluated every ``train.eval_every`` steps and at the end.
      eval_fraction: without ``eval``, the share of the training records held
        out for evaluation instead (a fixed, seeded choice).
      shards: the training records are cut into this many shards (record
        ``i`` in shard ``i % shards``), shuffled each on its own; every process
        reads and tokenises only its shards. The data order depends on the
        seed and ``shards``, not on the number of processes, which it must be
        a multiple of. None: one per process.
      split: the split of ``train`` when it is a ``datasets`` directory
        holding a ``DatasetDict`` (None for a saved ``Dataset``).
      eval_split: the split of ``eval`` when it is such a directory; with
        ``eval`` empty, that split of ``train``'s directory is the eval set.
      reward_augmented: None, or "system" / "prompt": train on the
        reward-augmented data of Zhang et al. 2024 (each paired record twice,
        conditioned on its ``score_chosen`` and, reversed, on its
        ``score_rejected``; ``jalign.data.reward_augmented``), the target score
        as a system message or prepended to the prompt. A separate
        ``eval`` file is read as it is; ``eval_fraction`` holds out
        augmented records.
      semantic_weight: None, or Sem-DPO's weight function
        ``fn(prompt, chosen) -> w >= 0``, added to every training and eval
        record as its ``semantic_weight`` field (``jalign.data.semantic_weights``).
    """

    train: str = ""
    kind: Literal["paired", "ranked", "unpaired", "joint"] | None = None
    preference_field: str | None = None
    max_length: int = Tokenization.max_length
    max_prompt_length: int | None = None
    truncation: Truncation = Tokenization.truncation
    on_error: Literal["raise", "skip"] = "raise"
    shuffle: bool = True
    eval: str = ""
    eval_fraction: float = 0.0
    shards: int | None = None
    split: str | None = None
    eval_split: str | None = None
    reward_augmented: Literal["system", "prompt"] | None = None
    semantic_weight: Callable[[Any, Any], float] | None = None

    def open_train(self) -> Source:
        """The training records' source (``open_source`` of ``train`` and ``split``), reward-augmented and
        semantically weighted if asked."""
        source = open_source(self.train, split=self.split)
        source = source if self.reward_augmented is None else RewardAugmented(source, self.reward_augmented)
        return self._weighted(source)

    def open_eval(self) -> Source | None:
        """The held-out records' source, or None without a separate eval set (``eval_fraction`` may hold one out)."""
        if not self.eval and self.eval_split is None:
            return None
        return self._weighted(open_source(self.eval or self.train, split=self.eval_split))

    def _weighted(self, source: Source) -> Source:
        return source if self.semantic_weight is None else SemanticWeighted(source, self.semantic_weight)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """The run itself.

    Attributes:
      steps: optimizer micro-steps.
      batch_size: global batch (split over the data and fsdp mesh axes).
      seed: data order and RNG seed.
      out_dir: metrics, TensorBoard events and checkpoints go here.
      log_every: steps between metric rows.
      checkpoint_every: steps between checkpoints (0: only at the end).
      keep_checkpoints: recent checkpoints kept.
      logprob_impl: "auto", "chunked", "pallas_tpu", "pallas_gpu" or "naive".
      extras: per-token kernel extras to compute for metrics, beyond what the
        objective needs ("entropy", "ref_kl", "policy_kl", ...); "ref_kl" is
        logged as ``kl/ref_kl``, KL(ref || pi), and "policy_kl" as
        ``kl/policy_kl``, KL(pi || ref), each summed over a response's tokens.
      eval_every: steps between evaluations of the held-out data
        (``data.eval`` / ``data.eval_fraction``, which is also evaluated at the
        last step), of an online run's win rate and KL against the reference
        (also at the last step), and calls of the run's ``evaluate`` hook (0:
        the hook never runs, the others only at the end).
      eval_generations: held-out prompts the policy answers at every
        held-out evaluation, written with the data's chosen response to
        ``out_dir/generations.jsonl`` and TensorBoard text
        (``jalign.train.generations``); 0: none.
      eval_max_new_tokens: most tokens of each such response.
      eval_temperature: their sampling temperature; 0 (greedy) makes two
        evaluations differ only where the policy changed.
      reference: "model" runs the reference forward every step (a frozen copy,
        or the LoRA base); "precomputed" scores the data once before training
        and keeps the log-probs with it (no reference weights on device;
        extras needing the reference model, such as "ref_kl" and "policy_kl",
        are unavailable).
    """

    steps: int = 100
    batch_size: int = 8
    seed: int = 0
    out_dir: str = "runs/experiment"
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    logprob_impl: LogprobImpl = "auto"
    extras: tuple[str, ...] = ("entropy",)
    eval_every: int = 0
    eval_generations: int = 0
    eval_max_new_tokens: int = 64
    eval_temperature: float = 0.0
    reference: Literal["model", "precomputed"] = "model"


@dataclasses.dataclass(frozen=True)
class OnlineSection:
    """Generation in the loop, for objectives whose responses are sampled (``jalign.train.online``).

    Attributes:
      prompts: a prompt-only file or ``datasets`` directory (TRL's format:
        ``prompt`` as a string or a list of messages); "" for an offline run.
      judge: what labels the sampled responses: a
        ``jalign.train.judges.Judge`` (``FunctionJudge`` over a Python
        function of texts, ``ModelJudge`` over a preference model), or a local
        checkpoint directory of a preference model (a reward, pairwise or
        general preference head; see ``jalign.models.preference_heads``).
      max_new_tokens: most tokens generated per response (a static shape).
      max_prompt_length: most prompt tokens; longer prompts keep their end.
      temperature, top_k, top_p: the sampling distribution. The online
        objectives' analyses assume samples from the declared policies
        themselves: temperature 1, no top-k or top-p (the defaults).
      stop_tokens: strings whose token ends a response (the token is kept
        and trained on); None: the tokenizer's EOS; (): none, every response
        is ``max_new_tokens`` long.
      win_samples: K, the opponent samples per prompt that estimate a win
        rate P(y ≻ opponent) (SPPO's K = 5, Wu et al. 2024, Sec. 5).
      iteration_steps: steps between refreshes of the previous iterate
        (SPPO, INPO); 0: one pass over the prompts, as their papers iterate.
      on_error: "raise" at the first malformed prompt, or "skip" and count.
    """

    prompts: str = ""
    judge: Any = None
    max_new_tokens: int = 64
    max_prompt_length: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_tokens: tuple[str, ...] | None = None
    win_samples: int = 5
    iteration_steps: int = 0
    on_error: Literal["raise", "skip"] = "raise"

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A complete, declarative training run; building one validates it (:func:`validate`)."""

    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    objective: Objective = dpo()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    train: TrainSection = TrainSection()
    online: OnlineSection = OnlineSection()

    def __post_init__(self):
        validate(self)


SECTIONS = ("model", "data", "optimizer", "train", "online")  # the sections this module's schema owns


def validate(exp: Experiment) -> None:
    """Raises :class:`ConfigError` for the first field outside its range, its choices, or finite values."""
    for section in SECTIONS:
        values = getattr(exp, section)
        hints = typing.get_type_hints(type(values))
        for field in dataclasses.fields(values):
            where, value = f"{section}.{field.name}", getattr(values, field.name)
            if where in RANGES and not RANGES[where].accepts(value):
                raise ConfigError(f"{where} must be {RANGES[where].describe()}; got {value!r}")
            choices = _literal_choices(hints[field.name])
            if choices is not None and value not in choices:
                raise ConfigError(f"{where} must be one of {list(choices)}; got {value!r}")
    _validate_objective(exp.objective)


def _literal_choices(annotation: Any) -> tuple | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation, else None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return args
    inner = [a for a in args if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(inner) == 1 and typing.get_origin(inner[0]) is Literal:
        return typing.get_args(inner[0]) + (None,)
    return None


def _objective_fields(objective: Objective, where: str) -> Iterator[tuple[str, Any, Any]]:
    """``(path, value, default)`` of every hyperparameter, addressed as ``--set`` addresses them."""
    for field in dataclasses.fields(objective):
        value = getattr(objective, field.name)
        if isinstance(value, Objective):  # a scaled term's inner objective is addressed through the term
            yield from _objective_fields(value, where if isinstance(objective, Scaled) else f"{where}.{field.name}")
        else:
            yield f"{where}.{field.name}", value, field.default


def _numbers(value: Any) -> np.ndarray | None:
    """The numbers in a hyperparameter (a scalar, array or tuple of them) as float64, or None if it has none."""
    leaves = [leaf for leaf in jax.tree.leaves(value) if not isinstance(leaf, (str, bool, np.bool_))]
    try:
        return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves]) if leaves else None
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        return None  # a traced or non-numeric value: nothing to check here


def _validate_objective(objective: Objective) -> None:
    """Every hyperparameter finite (inf only where the default is inf: "no limit"); every strength > 0."""
    terms = objective.named_terms()
    for name, term in terms:
        where = "objective" if len(terms) == 1 else f"objective.{name}"
        strength = _numbers(term.strength)  # None when the term has no strength
        if strength is not None and not np.all(np.isfinite(strength) & (strength > 0)):
            raise ConfigError(f"{where}.{term.strength_path} (the objective's strength) must be a finite "
                              f"number > 0; got {term.strength!r}")
        for path, value, default in _objective_fields(term, where):
            found = _numbers(value)
            if found is None:
                continue
            unlimited = isinstance(default, float) and math.isinf(default) and np.all(found == default)
            if not unlimited and not np.all(np.isfinite(found)):
                raise ConfigError(f"{path} must be finite; got {value!r}")
