"""A multi-objective reward model (DPA's) for the quickstart task, trained by `jalign train`.

The quickstart's prompts ``"favour: c"`` ask for strings of the letters a-d.
Each response gets two attribute ratings, both programmatic: ``favoured``,
the share of the prompt's favoured letter (the quickstart's true reward), and
``a_share``, the share of the letter ``a`` (a second, prompt-independent
property). The decoder gets a two-output ``multi_reward`` head and regresses
both (``multi_reward``: Wang et al. 2024's mean squared error); a fifth of
the pairs is held out, and ``eval/mse`` is the held-out squared error per
rating. A user's reward is then ``v . r`` for a direction ``v``
(``ShapedRewardJudge(transform="directional")`` with the checkpoint's
``HeadRewards``).

    jalign train experiments/multi_reward_model.py
"""

import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from quickstart import LETTERS, RESPONSE_LENGTH, true_reward  # noqa: E402

from jalign.models import ModelConfig  # noqa: E402
from jalign.models.tokenizer import train_tiny_tokenizer  # noqa: E402
from jalign.objectives import multi_reward  # noqa: E402
from jalign.train.config import DataSection, Experiment, ModelSection, TrainSection  # noqa: E402
from jalign.train.optim import OptimizerConfig  # noqa: E402

OUT = pathlib.Path("runs/multi_reward_model")
NUM_PAIRS = 3000
ATTRIBUTES = ("favoured", "a_share")


def attributes(prompt: str, response: str) -> list[float]:
    """The two ratings of a response: the favoured letter's share and the letter a's share."""
    letters = [c for c in response if c in LETTERS]
    return [true_reward(prompt, response), letters.count("a") / max(len(letters), 1)]


def rated_pairs(rng: np.random.Generator, n: int) -> list[dict]:
    """Pairs of random responses in TRL's format, each response with its attribute ratings."""
    rows = []
    while len(rows) < n:
        prompt = f"favour: {LETTERS[rng.integers(len(LETTERS))]}"
        a, b = (" " + "".join(rng.choice(list(LETTERS), RESPONSE_LENGTH)) for _ in range(2))
        if a != b:
            rows.append({"prompt": prompt, "chosen": a, "rejected": b,
                         "attributes_chosen": attributes(prompt, a), "attributes_rejected": attributes(prompt, b)})
    return rows


def experiment() -> Experiment:
    data = OUT / "pairs.jsonl"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        rows = rated_pairs(np.random.default_rng(0), NUM_PAIRS)
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        train_tiny_tokenizer([r["prompt"] + r["chosen"] for r in rows], 300, OUT / "tokenizer")
    arch = ModelConfig("llama", vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=16, mlp_dim=128)
    return Experiment(
        model=ModelSection(arch=arch, tokenizer=str(OUT / "tokenizer"), score_dim=len(ATTRIBUTES)),
        data=DataSection(train=str(data), max_length=48, eval_fraction=0.2),
        objective=multi_reward(),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=20, schedule="cosine"),
        train=TrainSection(steps=400, batch_size=32, out_dir=str(OUT), log_every=50, eval_every=100,
                           extras=()))
