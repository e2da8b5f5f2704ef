"""PoFT's preference scores: aligned models' per-token mean log-likelihood of each response, computed once.

Fan et al. 2024 (*Preference-Oriented Supervised Fine-Tuning*, Eq. 6) score an
SFT example under each aligned LLM ``j`` by ``log p_j(y|x) / T_j(y)``, with
``T_j`` counted by that model's own tokenizer; the authors compute it once
before training (``generate_preference_scores.py``, one pass per aligned model)
and train on the stored scores. This recipe does the same: it reads a paired
or unpaired JSONL file, scores every response under each ``--aligned``
checkpoint (tokenised with the tokenizer saved beside it, chat template for
conversational records) and writes the records with ``aligned_logps_chosen``
/ ``aligned_logps_rejected`` (paired) or ``aligned_logps`` (unpaired): one
number per aligned model. Records some model cannot read are left out.

    python experiments/poft_scores.py sft.jsonl --aligned zephyr_dir llama_dir --out sft_scored.jsonl
    jalign train my_experiment.py --set objective=poft --set data.train=sft_scored.jsonl
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import transformers

from jalign.data import JsonlSource, Tokenization, read_preferences
from jalign.models import load_hf
from jalign.sharding import DEFAULT_RULES
from jalign.sharding.mesh import make_mesh
from jalign.train.reference import precompute_reference

FIELDS = {"paired": ("aligned_logps_chosen", "aligned_logps_rejected"), "unpaired": ("aligned_logps",)}


def mean_logps(path: str, checkpoint: str, *, tokenizer: str | None = None, max_length: int = 4096,
               batch_size: int = 8) -> dict[int, list[float]]:
    """record index -> each response's mean per-token log-likelihood under ``checkpoint``."""
    data = read_preferences(path, transformers.AutoTokenizer.from_pretrained(tokenizer or checkpoint),
                            tokenization=Tokenization(max_length=max_length, truncation="drop"), on_error="skip")
    if data.format.kind not in FIELDS:
        raise ValueError(f"{path}: PoFT scores paired or unpaired records; this file is {data.format.kind}")
    scored = precompute_reference(data, load_hf(checkpoint), mesh=make_mesh(), rules=DEFAULT_RULES,
                                  batch_size=batch_size)
    return {e.index: [float(np.mean(lp)) for lp in e.reference_logprobs] for e in scored.examples}


def scored_records(records: list[dict], kind: str, per_model: list[dict[int, list[float]]]) -> list[dict]:
    """``records`` kept by every model, each response's field holding one score per aligned model."""
    out = []
    for index, record in enumerate(records):
        if all(index in scores for scores in per_model):
            fields = {name: [scores[index][g] for scores in per_model] for g, name in enumerate(FIELDS[kind])}
            out.append({**record, **fields})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="JSONL of paired or unpaired records")
    parser.add_argument("--aligned", nargs="+", required=True, help="local HF checkpoints of the aligned models")
    parser.add_argument("--tokenizers", nargs="+", help="their tokenizers, in the same order (default: beside each)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-length", type=int, default=4096, help="longer records are left out")
    args = parser.parse_args(argv)
    tokenizers = args.tokenizers or [None] * len(args.aligned)
    if len(tokenizers) != len(args.aligned):
        parser.error(f"--tokenizers lists {len(tokenizers)} for {len(args.aligned)} --aligned checkpoints")
    source = JsonlSource(args.data)
    kind = "paired" if "chosen" in source.columns else "unpaired"
    per_model = [mean_logps(args.data, checkpoint, tokenizer=tok, max_length=args.max_length)
                 for checkpoint, tok in zip(args.aligned, tokenizers)]
    records = scored_records([source[i] for i in range(len(source))], kind, per_model)
    pathlib.Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    main()
