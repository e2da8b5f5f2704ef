"""MPO, Mixed Preference Optimization: a two-stage recipe over `jalign train`.

1. **Data selection.** A reward model scores every preference pair; the
   pair's reward gap ``r(x, y_w) - r(x, y_l)`` sends it to the *easy* set
   when it exceeds a threshold and to the *difficult* set otherwise
   (:func:`split_by_reward_gap`).
2. **Stage 1.** An offline objective (DPO in the paper) trains on the easy
   pairs.
3. **Stage 2.** Online RLHF on the difficult set's prompts, judged by the
   same reward model, starts from the stage-1 model, which is also its
   reference: the stage-1 run is exported as a Hugging Face directory and
   becomes stage 2's ``model.hf_dir``, and the trainer's reference is a
   frozen copy of the policy's start (the provider's ``"frozen"`` decision).

:func:`run_mpo` chains them; ``experiments/mpo.py`` is the documented command
(and lists the equivalent ``jalign train`` / ``jalign export`` sequence).

The gap is read through the judge: ``log(P / (1 - P))`` of the judge's
``P(y_w ≻ y_l)``, which for a Bradley-Terry reward model (``bt_reward``
checkpoints) is exactly ``r(x, y_w) - r(x, y_l)``, and for a
``FunctionJudge(kind="reward")`` is the reward difference over its
temperature.

Stage 2 is PPO, as in the paper: ``ppo`` (a learned per-token critic, GAE
and the clipped surrogate; ``jalign.objectives.ppo``) by default in
``experiments/mpo.py``, on the judge's rewards; any other sampled objective
of the online loop can take its place. The paper's threshold value was not
found in the material available to us (its abstract and the arXiv page's
opening); the threshold has no default and must be given.

References:
  Gou & Nguyen, *Mixed Preference Optimization: Reinforcement Learning with
  Data Selection and Better Reference Model*, 2024 (arXiv:2403.19443),
  abstract (the two-stage procedure, the easy/difficult split by reward gap).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import numpy as np

from jalign.train.config import Experiment

EASY, DIFFICULT, DIFFICULT_PROMPTS = "easy.jsonl", "difficult.jsonl", "difficult_prompts.jsonl"
STAGE1_MODEL = "stage1_model"


def split_by_reward_gap(gaps: Sequence[float], threshold: float) -> np.ndarray:
    """``[N]`` bool: True for an easy pair (``gap > threshold``), False for a difficult one.

    A pair the reward model ranks against its label (a negative gap) is
    difficult for every non-negative threshold.
    """
    gaps = np.asarray(gaps, np.float64)
    if not np.all(np.isfinite(gaps)):
        raise ValueError("MPO: the reward model gave a non-finite reward gap")
    return gaps > threshold


def reward_gaps(records: Sequence[dict], judge: Any) -> np.ndarray:
    """``[N]`` reward gaps ``r(x, y_w) - r(x, y_l)``: the logit of the judge's ``P(chosen ≻ rejected)``."""
    p = np.asarray(judge.preference([r["prompt"] for r in records], [r["chosen"] for r in records],
                                    [r["rejected"] for r in records]), np.float64)
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _read_pairs(path: pathlib.Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, record in enumerate(records):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
        if missing:
            raise ValueError(f"{path}:{i + 1}: MPO needs prompt/chosen/rejected records; missing {missing}")
    return records


def _write(path: pathlib.Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def select(data: str | pathlib.Path, judge: Any, threshold: float, out: str | pathlib.Path) -> dict:
    """Splits a JSONL preference file into ``out/easy.jsonl``, ``out/difficult.jsonl`` and the difficult prompts.

    ``judge`` is a judge or a preference-model checkpoint directory (as ``online.judge``).

    Returns:
      ``{"easy": n, "difficult": n, "threshold": t}``; raises when either set is empty.
    """
    from jalign.train.online import resolve_judge

    records, out = _read_pairs(pathlib.Path(data)), pathlib.Path(out)
    easy = split_by_reward_gap(reward_gaps(records, resolve_judge(judge)), threshold)
    if easy.all() or not easy.any():
        raise ValueError(f"MPO: threshold {threshold} puts all {len(records)} pairs in one set "
                         f"({int(easy.sum())} easy); choose one between the pairs' reward gaps")
    out.mkdir(parents=True, exist_ok=True)
    _write(out / EASY, [r for r, e in zip(records, easy) if e])
    _write(out / DIFFICULT, [r for r, e in zip(records, easy) if not e])
    _write(out / DIFFICULT_PROMPTS, [{"prompt": r["prompt"]} for r, e in zip(records, easy) if not e])
    return {"easy": int(easy.sum()), "difficult": int((~easy).sum()), "threshold": float(threshold)}


def stage_experiments(stage1: Experiment, stage2: Experiment, *, judge: Any,
                      out: str | pathlib.Path) -> tuple[Experiment, Experiment]:
    """The two stages as :func:`run_mpo` trains them.

    Stage 1 reads ``out/easy.jsonl`` and writes ``out/stage1``; stage 2 starts
    from ``out/stage1_model`` (the exported stage-1 policy, so its frozen
    reference is the stage-1 model too), generates for
    ``out/difficult_prompts.jsonl``, is judged by ``judge`` and writes
    ``out/stage2``; its tokenizer setting is kept.
    """
    out = pathlib.Path(out)
    first = dataclasses.replace(stage1, data=dataclasses.replace(stage1.data, train=str(out / EASY)),
                                train=dataclasses.replace(stage1.train, out_dir=str(out / "stage1")))
    second = dataclasses.replace(
        stage2, model=dataclasses.replace(stage2.model, hf_dir=str(out / STAGE1_MODEL), arch=None),
        online=dataclasses.replace(stage2.online, prompts=str(out / DIFFICULT_PROMPTS), judge=judge),
        train=dataclasses.replace(stage2.train, out_dir=str(out / "stage2")))
    return first, second


def run_mpo(stage1: Experiment, stage2: Experiment, *, data: str, judge: Any, threshold: float,
            out: str | pathlib.Path, progress: bool = False) -> dict:
    """Selection, stage 1 on the easy pairs, export, stage 2 online on the difficult prompts from the stage-1 model.

    Args:
      stage1: an offline experiment (see :func:`stage_experiments` for what is replaced).
      stage2: an online experiment (likewise).
      data: a JSONL file of prompt/chosen/rejected pairs.
      judge: the reward model: a judge, or a preference-model checkpoint directory.
      threshold: the reward-gap threshold between easy and difficult pairs.
      out: the recipe's folder.

    Returns:
      ``{"selection", "stage1", "stage2", "stage1_model"}``: the split's counts, each stage's last metrics and
      the exported stage-1 directory.
    """
    from jalign.train.export import export
    from jalign.train.loop import train

    out = pathlib.Path(out)
    counts = select(data, judge, threshold, out)
    first, second = stage_experiments(stage1, stage2, judge=judge, out=out)
    first_metrics = train(first, progress=progress)
    export(first.train.out_dir, out / STAGE1_MODEL)
    second_metrics = train(second, progress=progress)
    return {"selection": counts, "stage1": first_metrics, "stage2": second_metrics,
            "stage1_model": str(out / STAGE1_MODEL)}
