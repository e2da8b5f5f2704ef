"""D2O's anchors: K responses per prompt sampled from the initial model, before training.

Duan et al. 2024 (*Negating Negatives*, Eq. 3) train on human negatives only;
each negative ``y_l`` is set against ``K`` self-generated responses
``y_i ~ pi_r(.|x)`` of the initial (SFT) model, sampled once per prompt before
training (``K = 11`` in the paper). This recipe turns negative-only records
``{"prompt", "rejected"}`` into the ranked records `jalign train` feeds
``d2o``: ``{"prompt", "responses": [y_1, ..., y_K, y_l], "scores": [1, ..., 1, 0]}``
(the reader sorts by score, so the negative is the last response).

    python experiments/d2o_anchors.py negatives.jsonl --model sft_dir --out d2o.jsonl --k 11
    jalign train my_experiment.py --set objective=d2o --set data.train=d2o.jsonl

``--model`` is a local Hugging Face checkpoint (the reference the run will
use) with its tokenizer beside it, or ``--tokenizer``; prompts are encoded as
training encodes them (chat template for conversational records).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from jalign.data import Example, JsonlSource, Tokenization, tokenize
from jalign.models import load_hf
from jalign.models.sampling import SamplingConfig, generate


def sample_anchors(model, tokenizer, prompts: list, *, k: int, max_new_tokens: int, temperature: float = 1.0,
                   seed: int = 0) -> list[list[str]]:
    """``k`` sampled responses (text, special tokens left out) to each prompt (a string or messages)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    encoded = [tokenize(_prompt_only(prompt), i, tokenizer, Tokenization(max_length=10**6)).prompt
               for i, prompt in enumerate(prompts)]
    width = max(len(e) for e in encoded)
    tokens = np.full((len(encoded) * k, width), pad, np.int32)
    mask = np.zeros((len(encoded) * k, width), bool)
    for row in range(len(encoded) * k):
        prompt = encoded[row // k]
        tokens[row, :len(prompt)], mask[row, :len(prompt)] = prompt, True
    stops = jnp.asarray([tokenizer.eos_token_id if tokenizer.eos_token_id is not None else -1], jnp.int32)
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, pad_token=pad)
    out = generate(model, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(seed), cfg, stops)
    drawn, lengths = np.asarray(out.tokens), np.asarray(out.mask).sum(-1)
    texts = [tokenizer.decode(drawn[row, :lengths[row]].tolist(), skip_special_tokens=True)
             for row in range(len(encoded) * k)]
    return [texts[i * k:(i + 1) * k] for i in range(len(encoded))]


def _prompt_only(prompt) -> Example:
    """An example whose prompt encodes as in training; its placeholder response is not used."""
    response = "x" if isinstance(prompt, str) else [{"role": "assistant", "content": "x"}]
    return Example("unpaired", prompt, (response,), ("completion",), {})


def ranked_records(negatives: list[dict], anchors: list[list[str]]) -> list[dict]:
    """D2O's ranked records: the anchors scored 1, the human negative scored 0 (last after sorting)."""
    return [{"prompt": record["prompt"], "responses": [*drawn, record["rejected"]],
             "scores": [1.0] * len(drawn) + [0.0]} for record, drawn in zip(negatives, anchors)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("negatives", help="JSONL of {prompt, rejected} records")
    parser.add_argument("--model", required=True, help="local HF checkpoint of the initial (reference) model")
    parser.add_argument("--tokenizer", help="its tokenizer (default: --model)")
    parser.add_argument("--out", required=True, help="where to write the ranked JSONL")
    parser.add_argument("--k", type=int, default=11, help="anchors per prompt (the paper's K = 11)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    source = JsonlSource(args.negatives)
    negatives = [source[i] for i in range(len(source))]
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    anchors = sample_anchors(load_hf(args.model), tokenizer, [r["prompt"] for r in negatives], k=args.k,
                             max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    lines = [json.dumps(record) for record in ranked_records(negatives, anchors)]
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
