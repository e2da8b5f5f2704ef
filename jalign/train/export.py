"""`jalign export RUN_DIR OUT_DIR`: a run's checkpoint as a Hugging Face directory, without its data.

What a run needs to rebuild its policy is in ``RUN_DIR/config.json`` (the
resolved experiment `jalign.train.run_config` saves): the ``model.*`` fields
give the architecture (``model.arch``) or base checkpoint (``model.hf_dir``),
the tokenizer, the LoRA settings and the precision. Only the model is built,
and only the checkpoint's parameters are read (`Checkpointer.restore_params`,
verified against the checkpoint's digest); no data is opened, no optimizer
state is read.

A fully fine-tuned model is built abstractly (``nnx.eval_shape``), so
nothing but the restored weights occupies memory. A LoRA run's base weights
are not in its checkpoints: they are loaded from ``model.hf_dir`` or
recreated from ``model.arch`` and ``model.init_seed`` as training created
them, and the adapters are restored onto them. Such a run is either merged
(``merge_lora``) or written as a PEFT adapter (``peft``) over its base: the
base checkpoint directory, or, for a randomly initialised base, the base
written beside the adapter in ``OUT_DIR/base``.

The output holds weights and config (`jalign.models.save_hf`), the tokenizer
with its chat template (``save_pretrained``), ``generation_config.json``
(bos, eos and pad ids) and a README.md model card: objective and
hyperparameters, data files, steps, base model, jalign version.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import pathlib
import typing
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jalign.models import Decoder, config_from_hf, lora, save_hf
from jalign.models.config import ModelConfig, num_labels, read_hf_config
from jalign.models.tokenizer import load_tokenizer
from jalign.sharding import MeshConfig, make_mesh, state_shardings
from jalign.train.checkpoint import Checkpointer
from jalign.train.config import Experiment, ModelSection
from jalign.train.loop import build_model
from jalign.train.run_config import CONFIG_FILE

DTYPES = ("float32", "bfloat16", "float16")
PEFT_CONFIG, PEFT_WEIGHTS, BASE_DIR = "adapter_config.json", "adapter_model.safetensors", "base"


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """A run folder as its ``config.json`` describes it.

    Attributes:
      directory: the run's ``train.out_dir``.
      model: its model section, rebuilt from the ``model.*`` fields.
      mesh: its mesh section (``mesh.*``).
      config: the flattened config as saved (``{dotted.path: value}``).
    """

    directory: pathlib.Path
    model: ModelSection
    mesh: MeshConfig
    config: dict[str, Any]


def read_run(run_dir: str | os.PathLike) -> SavedRun:
    """The run in ``run_dir``; raises FileNotFoundError when it has no ``config.json``."""
    directory = pathlib.Path(run_dir)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a jalign run folder (train.out_dir)")
    flat = json.loads(path.read_text())
    model = _unflatten(ModelSection, flat, "model")
    if model.arch is None and model.hf_dir is None:
        raise ValueError(f"{path}: neither model.arch nor model.hf_dir is saved; cannot rebuild the model")
    mesh = _unflatten(MeshConfig, flat, "mesh")
    return SavedRun(directory, model, mesh, flat)


def _unflatten(cls: type, flat: dict[str, Any], prefix: str) -> Any:
    """An instance of the dataclass ``cls`` from the dotted fields under ``prefix`` (lists back to tuples).

    A field saved as nested dotted fields (``model.arch.vocab_size``) is the
    one dataclass its annotation names (``ModelConfig | None``).
    """
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        key = f"{prefix}.{field.name}"
        if key in flat:
            values[field.name] = _tuples(flat[key])
        elif any(k.startswith(key + ".") for k in flat):
            nested = [a for a in (*typing.get_args(hints[field.name]), hints[field.name])
                      if dataclasses.is_dataclass(a)]
            values[field.name] = _unflatten(nested[0], flat, key)
    return cls(**values)


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the config held (also inside mappings, e.g. ``mesh.rules``)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _existing(path: str, field: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{field} = {path!r} (from the run's config.json) is not a directory here")
    return path


def _select_step(checkpointer: Checkpointer, step: int | None) -> int:
    """The newest finished checkpoint's step, or ``step`` if there is a checkpoint of it."""
    steps = checkpointer.steps()
    if not steps:
        raise FileNotFoundError(f"no finished checkpoint in {checkpointer.directory}")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ValueError(f"--step {step}: no checkpoint of that step in {checkpointer.directory}; steps: {steps}")
    return step


def _decoder_config(section: ModelSection) -> ModelConfig:
    """The policy's `ModelConfig` as training built it (precision overrides applied)."""
    if section.arch is not None and section.hf_dir is None:
        return section.arch.replace(**section.precision())
    hf = read_hf_config(_existing(section.hf_dir, "model.hf_dir"))
    if num_labels(hf) is not None:
        raise ValueError(f"model.hf_dir = {section.hf_dir!r} is a sequence classifier; export writes causal LMs")
    return config_from_hf(hf, **section.precision())


def _policy_parts(section: ModelSection, mesh, rules) -> tuple[Any, Any, Any]:
    """``(graphdef, trained, rest)``: the policy split into what its checkpoints hold (abstract, with the
    shardings to restore into) and the rest (the LoRA base; nothing for full fine-tuning)."""
    if section.lora_rank > 0:
        # The frozen base is not checkpointed: build it (and fresh adapters) as training did.
        model, _ = build_model(Experiment(model=section), None, mesh, rules)
        graphdef, trained, rest = nnx.split(model, nnx.LoRAParam, ...)
    else:
        cfg = _decoder_config(section)
        graphdef, trained, rest = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ValueError(f"a {cfg.model_type} decoder holds state besides its parameters, which a full "
                             "fine-tune's checkpoint does not")
    trained = jax.tree.map(lambda s, v: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)),
                           state_shardings(trained, mesh, rules), trained)
    return graphdef, trained, rest


def _mesh(saved: MeshConfig) -> MeshConfig:
    """The run's mesh where this host has its devices; elsewhere every device on the data axis."""
    try:
        saved.sizes(jax.device_count())
    except ValueError:
        return MeshConfig(rules=saved.rules)
    return saved


def restore_policy(run: SavedRun, step: int | None = None) -> tuple[nnx.Module, int]:
    """``(policy, step)`` of checkpoint ``step`` (None: the newest).

    The policy is the decoder with the restored weights (full fine-tuning) or
    the base with its restored adapters (LoRA). Heads a run trained beside
    the policy are left out (SparsePO's token-mask head); a score head, which
    makes the model a reward or preference model, is refused.
    """
    checkpoints = run.directory / "checkpoints"
    if not checkpoints.is_dir() or not any(p.name.isdigit() for p in checkpoints.iterdir()):
        raise FileNotFoundError(f"no checkpoint in {checkpoints}: train the run first")
    mesh_config = _mesh(run.mesh)
    mesh, rules = make_mesh(mesh_config), mesh_config.rule_table()
    checkpointer = Checkpointer(checkpoints)
    try:
        step = _select_step(checkpointer, step)
        graphdef, like, rest = _policy_parts(run.model, mesh, rules)
        params, left_out = checkpointer.restore_params(step, like)
    finally:
        checkpointer.close()
    if any(p.startswith(".params['score_head']") for p in left_out):
        raise ValueError(f"{run.directory} trained a score head (a reward or preference model); "
                         "export writes causal LM policies only")
    return nnx.merge(graphdef, params, rest), step


def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, step: int | None = None,
           merge_lora: bool = False, peft: bool = False, dtype: str | None = None) -> dict[str, Any]:
    """Writes the policy of ``run_dir``'s newest (or ``step``'s) checkpoint to ``out_dir`` (see the module doc).

    Args:
      run_dir: a run's ``train.out_dir``.
      out_dir: the Hugging Face directory to write.
      step: the checkpoint; None: the newest.
      merge_lora: fold a LoRA run's adapters into the weights.
      peft: write a LoRA run's adapters as a PEFT adapter over its base.
      dtype: the saved precision ("float32", "bfloat16", "float16"); None: the run's parameter dtype.

    Returns:
      ``{"step", "out_dir", "format", "base"}``: what was written (base: the PEFT base, else None).
    """
    run = read_run(run_dir)
    section = run.model
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {list(DTYPES)}; got {dtype!r}")
    if merge_lora and peft:
        raise ValueError("--merge-lora and --peft exclude each other: merge the adapters, or write them for peft")
    if section.lora_rank > 0 and not (merge_lora or peft):
        raise ValueError(f"{run_dir} trained LoRA adapters (model.lora_rank={section.lora_rank}): pass --merge-lora "
                         "to fold them into the weights or --peft to write a PEFT adapter")
    if section.lora_rank == 0 and (merge_lora or peft):
        raise ValueError(f"{run_dir} fine-tuned every weight (model.lora_rank=0): it has no adapters for "
                         f"{'--merge-lora' if merge_lora else '--peft'}")
    tokenizer = load_tokenizer(_existing(section.tokenizer or section.hf_dir,
                                         "model.tokenizer" if section.tokenizer else "model.hf_dir"))
    model, step = restore_policy(run, step)
    model.cfg = _with_token_ids(model.cfg, tokenizer).replace(param_dtype=dtype or model.cfg.param_dtype)
    out = pathlib.Path(out_dir)
    base = None
    if peft:
        base = _write_peft(model, out, alpha=section.lora_alpha, hf_dir=section.hf_dir, dtype=model.cfg.param_dtype)
    else:
        save_hf(lora.merge(model) if merge_lora else model, str(out))
    tokenizer.save_pretrained(str(out))
    _generation_config(model.cfg, tokenizer).save_pretrained(str(out))
    kind = "peft" if peft else "merged" if merge_lora else "full"
    (out / "README.md").write_text(model_card(run, step, kind=kind, dtype=model.cfg.param_dtype, base=base))
    return {"step": step, "out_dir": str(out), "format": kind, "base": base}


def _with_token_ids(cfg: ModelConfig, tokenizer) -> ModelConfig:
    """``cfg`` with the tokenizer's bos/eos/pad ids where the config has none (random-init architectures)."""
    ids = {f"{name}_token_id": getattr(cfg, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    return cfg.replace(**{k: getattr(tokenizer, k) if v is None else v for k, v in ids.items()})


def _generation_config(cfg: ModelConfig, tokenizer):
    """bos, eos and pad ids; generation stops at the model's eos and at the tokenizer's (a chat turn's end)."""
    from transformers import GenerationConfig

    eos = list(dict.fromkeys(i for i in (cfg.eos_token_id, tokenizer.eos_token_id) if i is not None))
    return GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=eos[0] if len(eos) == 1 else eos or None,
                            pad_token_id=cfg.pad_token_id)


def _write_peft(model: nnx.Module, out: pathlib.Path, *, alpha: float, hf_dir: str | None, dtype: str) -> str:
    """adapter_config.json + adapter_model.safetensors; returns the base's directory.

    The base is the run's ``model.hf_dir``; a randomly initialised base (no
    ``hf_dir``) is written to ``out/base`` with the adapters disabled and
    merged away (scale 0), i.e. the base weights exactly.
    """
    tensors, config = lora.peft_adapter(model, alpha=alpha)
    if hf_dir is None:
        base = str((out / BASE_DIR).absolute())
        save_hf(lora.merge(lora.reference_view(model)), base)
    else:
        base = str(pathlib.Path(hf_dir).absolute())
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.asarray(v, dtype) for k, v in tensors.items()}, str(out / PEFT_WEIGHTS),
              metadata={"format": "pt"})
    config.update(task_type="CAUSAL_LM", base_model_name_or_path=base, inference_mode=True)
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return base


def model_card(run: SavedRun, step: int, *, kind: str, dtype: str, base: str | None) -> str:
    """README.md: objective and hyperparameters, data, steps, model, jalign version."""
    flat, section = run.config, run.model
    objective = flat.get("objective", "?")
    hypers = ", ".join(f"{k.removeprefix('objective.')}={v}" for k, v in flat.items() if k.startswith("objective."))
    data = ", ".join(f"`{flat[k]}` ({k})" for k in ("data.train", "data.eval") if flat.get(k))
    model = (f"`{section.hf_dir}`" if section.hf_dir else
             f"random initialisation ({section.arch.model_type}, {section.arch.num_layers} layers, "
             f"hidden size {section.arch.hidden_size}, seed {section.init_seed})")
    tuning = "every weight" if section.lora_rank == 0 else (
        f"LoRA r={section.lora_rank}, alpha={section.lora_alpha:g} on {', '.join(section.lora_targets)}; "
        + ("merged into the weights" if kind == "merged" else f"a PEFT adapter over `{base}`"))
    try:
        version = importlib.metadata.version("jalign")
    except importlib.metadata.PackageNotFoundError:
        version = "(not installed)"
    library = "peft" if kind == "peft" else "transformers"
    return (f"---\nlibrary_name: {library}\ntags:\n- jalign\n- {objective}\n---\n\n"
            f"# {run.directory.name}\n\n"
            f"Trained with jalign {version}, exported from `{run.directory}` checkpoint step {step}.\n\n"
            f"- Objective: `{objective}` ({hypers or 'no hyperparameters'})\n"
            f"- Data: {data or 'not recorded'}\n"
            f"- Steps trained: {step} of {flat.get('train.steps', '?')} "
            f"(batch size {flat.get('train.batch_size', '?')})\n"
            f"- Base model: {model}\n"
            f"- Fine-tuned: {tuning}\n"
            f"- Saved precision: {dtype}\n")
