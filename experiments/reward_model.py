"""A Bradley-Terry reward model for the quickstart task, trained by `jalign train`.

The quickstart's task: a prompt ``"favour: c"`` asks for a string of the
letters a-d, and the true reward is the share of the favoured letter. Pairs of
random eight-letter responses (what the quickstart's SFT reference samples)
are labelled by that reward, the truly better one chosen; ties are dropped.
The decoder gets a reward head and learns ``bt_reward``; a fifth of the pairs
is held out, and ``eval/pair_accuracy`` is how often the model ranks a
held-out pair as the true reward does.

    jalign train experiments/reward_model.py
    jalign train experiments/reward_model.py --set train.steps=100
"""

import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from quickstart import LETTERS, RESPONSE_LENGTH, true_reward  # noqa: E402

from jalign.models import ModelConfig  # noqa: E402
from jalign.models.tokenizer import train_tiny_tokenizer  # noqa: E402
from jalign.objectives import bt_reward  # noqa: E402
from jalign.train.config import DataSection, Experiment, ModelSection, TrainSection  # noqa: E402
from jalign.train.optim import OptimizerConfig  # noqa: E402

OUT = pathlib.Path("runs/reward_model")
NUM_PAIRS = 3000


def preference_pairs(rng: np.random.Generator, n: int) -> list[dict]:
    """Quickstart-task pairs in TRL's standard format, chosen by the true reward; ties dropped."""
    rows = []
    while len(rows) < n:
        prompt = f"favour: {LETTERS[rng.integers(len(LETTERS))]}"
        a, b = (" " + "".join(rng.choice(list(LETTERS), RESPONSE_LENGTH)) for _ in range(2))
        ra, rb = true_reward(prompt, a), true_reward(prompt, b)
        if ra != rb:
            rows.append({"prompt": prompt, "chosen": a if ra > rb else b, "rejected": b if ra > rb else a})
    return rows


def experiment() -> Experiment:
    data = OUT / "pairs.jsonl"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        rows = preference_pairs(np.random.default_rng(0), NUM_PAIRS)
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        train_tiny_tokenizer([r["prompt"] + r["chosen"] for r in rows], 300, OUT / "tokenizer")
    arch = ModelConfig("llama", vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=16, mlp_dim=128)
    return Experiment(
        model=ModelSection(arch=arch, tokenizer=str(OUT / "tokenizer")),
        data=DataSection(train=str(data), max_length=48, eval_fraction=0.2),
        objective=bt_reward(),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=20, schedule="cosine"),
        train=TrainSection(steps=400, batch_size=32, out_dir=str(OUT), log_every=50, eval_every=100,
                           extras=()))
