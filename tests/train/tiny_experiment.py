"""A tiny DPO experiment on the shipped preference file, for loop and resume tests.

Run as a script, ``python tiny_experiment.py OUT STEPS`` trains it (what the
kill-and-resume test starts and kills).
"""

import pathlib
import sys

from jalign.models import ModelConfig
from jalign.models.tokenizer import tiny_tokenizer_for
from jalign.objectives import dpo, sft
from jalign.train.config import DataSection, Experiment, ModelSection, TrainSection
from jalign.train.optim import OptimizerConfig

DATA = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "data" / "tiny_pref.jsonl"


def experiment(out: pathlib.Path, steps: int, *, checkpoint_every: int = 1) -> Experiment:
    arch = ModelConfig("llama", vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8, mlp_dim=64)
    return Experiment(
        model=ModelSection(arch=arch, tokenizer=tiny_tokenizer_for(DATA, 300, out / "tokenizer")),
        data=DataSection(train=str(DATA), max_length=128),
        objective=dpo(beta=0.1) + 0.1 * sft(),
        optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=2),
        train=TrainSection(steps=steps, batch_size=4, out_dir=str(out / "run"), log_every=1,
                           checkpoint_every=checkpoint_every))


if __name__ == "__main__":
    from jalign.train.loop import train

    train(experiment(pathlib.Path(sys.argv[1]), int(sys.argv[2])), progress=False)
