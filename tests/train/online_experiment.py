"""A tiny online experiment: a random tiny Llama generates answers to the shipped prompts, judged by a rule.

``jalign train tests/train/online_experiment.py --set objective=nash_md`` trains it
in ``runs/online_tiny`` under the working directory. Run as a script, ``python online_experiment.py OUT STEPS OBJECTIVE`` trains it
(what the kill-and-resume and two-process tests start).
"""

import json
import pathlib
import sys

from jalign.models import ModelConfig
from jalign.models.tokenizer import train_tiny_tokenizer
from jalign.objectives.registry import parse
from jalign.train.config import Experiment, ModelSection, OnlineSection, TrainSection
from jalign.train.judges import FunctionJudge
from jalign.train.optim import OptimizerConfig

DATA = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "data"
PROMPTS = DATA / "tiny_prompts.jsonl"


def vowel_reward(prompt: str, response: str) -> float:
    """A programmatic reward: the share of vowels among the response's letters (0 for none)."""
    letters = [c for c in response.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


def tokenizer_dir(out: pathlib.Path) -> pathlib.Path:
    path = out / "tokenizer"
    if not path.exists():
        texts = [json.dumps(json.loads(line)) for line in (DATA / "tiny_pref.jsonl").read_text().splitlines()]
        train_tiny_tokenizer(texts, 300, path)
    return path


def experiment(out: pathlib.Path = pathlib.Path("runs/online_tiny"), steps: int = 2, objective: str = "online_dpo", *,
               checkpoint_every: int = 1, batch_size: int = 4, **online) -> Experiment:
    arch = ModelConfig("llama", vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, mlp_dim=64)
    settings = dict(prompts=str(PROMPTS), judge=FunctionJudge(vowel_reward, kind="reward", temperature=0.1),
                    max_new_tokens=6, win_samples=2, iteration_steps=2)
    settings.update(online)
    return Experiment(
        model=ModelSection(arch=arch, tokenizer=str(tokenizer_dir(out))),
        objective=parse(objective),
        online=OnlineSection(**settings),
        optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=0),
        train=TrainSection(steps=steps, batch_size=batch_size, out_dir=str(out / "run"), log_every=1,
                           checkpoint_every=checkpoint_every))


if __name__ == "__main__":
    from jalign.train.loop import train

    train(experiment(pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]), progress=False)
