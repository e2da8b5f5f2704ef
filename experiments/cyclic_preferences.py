"""Cyclic preferences on a tiny decoder: Bradley-Terry cannot fit them, a rank-2 GPM can.

Each of four rounds has three moves that beat one another in a cycle (as in
rock-paper-scissors), with a different trio and direction per round. The
script writes a training file of labelled pairs (both presentation orders)
and a balanced held-out file (every pair of every round equally often), then
``jalign train`` fits a preference model with a reward head (``bt_reward``) or
a preference-embedding head (``gpm``). On a 3-cycle any reward ordering gets
at most 2 of the 3 pairs right, so BT's held-out accuracy stays at or below
2/3; a skew-symmetric rank-2 GPM can reach 1 (Zhang et al. 2024).

    jalign train experiments/cyclic_preferences.py                      # gpm
    jalign train experiments/cyclic_preferences.py --set objective=bt_reward
"""

import itertools
import json
import pathlib

import numpy as np

from jalign.models import ModelConfig
from jalign.models.tokenizer import train_tiny_tokenizer
from jalign.objectives import gpm
from jalign.train.config import DataSection, Experiment, ModelSection, TrainSection
from jalign.train.optim import OptimizerConfig

OUT = pathlib.Path("runs/cyclic_preferences")
MOVES = ["rock", "paper", "scissors", "lizard", "spock", "water", "fire"]
ROUNDS = 4


def rounds(seed: int = 0) -> list[tuple[str, list[str]]]:
    """(prompt, [m0, m1, m2]) per round: m0 beats m1, m1 beats m2, m2 beats m0."""
    rng = np.random.default_rng(seed)
    return [(f"round {r}:", [f" {m}" for m in rng.choice(MOVES, 3, replace=False)]) for r in range(ROUNDS)]


def cycle_pairs(games) -> list[dict]:
    """Every ordered pair of every round once, labelled by the cycle: one balanced pass."""
    rows = []
    for prompt, moves in games:
        for i, j in itertools.permutations(range(3), 2):
            winner, loser = (i, j) if (j - i) % 3 == 1 else (j, i)
            rows.append({"prompt": prompt, "chosen": moves[winner], "rejected": moves[loser]})
    return rows


def write_data(out: pathlib.Path, *, repeats: int = 20, seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """``train.jsonl`` (``repeats`` shuffled passes) and the balanced ``eval.jsonl`` (one pass)."""
    out.mkdir(parents=True, exist_ok=True)
    games = rounds(seed)
    rng = np.random.default_rng(seed + 1)
    train_rows = [row for _ in range(repeats) for row in cycle_pairs(games)]
    rng.shuffle(train_rows)
    paths = out / "train.jsonl", out / "eval.jsonl"
    for path, rows in zip(paths, (train_rows, cycle_pairs(games))):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if not (out / "tokenizer").exists():
        train_tiny_tokenizer([r["prompt"] + r["chosen"] for r in train_rows], 300, out / "tokenizer")
    return paths


def experiment(out: pathlib.Path = OUT) -> Experiment:
    train_file, eval_file = write_data(out)
    arch = ModelConfig("llama", vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, mlp_dim=64)
    return Experiment(
        model=ModelSection(arch=arch, tokenizer=str(out / "tokenizer"), score_dim=2),
        data=DataSection(train=str(train_file), eval=str(eval_file), max_length=32),
        objective=gpm(tau=0.1),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=10, schedule="cosine"),
        train=TrainSection(steps=150, batch_size=16, out_dir=str(out / "run"), log_every=50, extras=()))
