"""The experiment schema: every default in one commented place.

An experiment file defines ``experiment() -> Experiment``; ``jalign train FILE
--set a.b=value`` applies typed overrides (``jalign.train.overrides``). Each
section is a frozen dataclass, so an unknown field is an error that lists the
valid ones.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jalign.models import ModelConfig
from jalign.objectives import Objective, dpo
from jalign.sharding import MeshConfig
from jalign.train.optim import OptimizerConfig


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
      score_dim: the preference-embedding dimension of a general preference
        model's head (``gpm``; even). Reward and pairwise heads have one output.
    """

    hf_dir: str | None = None
    arch: ModelConfig | None = None
    tokenizer: str | None = None
    init_seed: int = 0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    guide: str | None = None
    score_dim: int = 2


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where preference data comes from and how it is tokenised.

    Attributes:
      train: a JSONL/Parquet file or a ``datasets`` directory.
      kind: "paired", "ranked" or "unpaired"; None detects it from the columns.
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
    """

    train: str = ""
    kind: Literal["paired", "ranked", "unpaired"] | None = None
    preference_field: str | None = None
    max_length: int = 512
    max_prompt_length: int | None = None
    truncation: Literal["drop", "keep_end", "keep_start"] = "keep_end"
    on_error: Literal["raise", "skip"] = "raise"
    shuffle: bool = True
    eval: str = ""
    eval_fraction: float = 0.0


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
        objective needs ("entropy", "ref_kl", ...).
      eval_every: steps between evaluations of the held-out data
        (``data.eval`` / ``data.eval_fraction``, which is also evaluated at the
        last step) and calls of the run's ``evaluate`` hook (0: the hook never
        runs, held-out data only at the end).
      reference: "model" runs the reference forward every step (a frozen copy,
        or the LoRA base); "precomputed" scores the data once before training
        and keeps the log-probs with it (no reference weights on device;
        extras needing the reference model, such as "ref_kl", are unavailable).
    """

    steps: int = 100
    batch_size: int = 8
    seed: int = 0
    out_dir: str = "runs/experiment"
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    logprob_impl: str = "auto"
    extras: tuple[str, ...] = ("entropy",)
    eval_every: int = 0
    reference: Literal["model", "precomputed"] = "model"


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A complete, declarative training run."""

    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    objective: Objective = dpo()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    train: TrainSection = TrainSection()
