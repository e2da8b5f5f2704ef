"""The smallest complete run for fault tests: a one-layer Llama, DPO, a checkpoint every step.

``registry_experiment.ARCH`` on the shipped preference file, with a tokenizer
trained once per output folder (as ``tiny_experiment`` does).
"""

import dataclasses
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from registry_experiment import ARCH  # noqa: E402
from tiny_experiment import DATA  # noqa: E402

from jalign.models.tokenizer import train_tiny_tokenizer  # noqa: E402
from jalign.objectives import dpo  # noqa: E402
from jalign.train.config import DataSection, Experiment, ModelSection, TrainSection  # noqa: E402
from jalign.train.optim import OptimizerConfig  # noqa: E402


def tokenizer(folder: pathlib.Path) -> pathlib.Path:
    """A byte-level tokenizer of ARCH's vocabulary trained on the shipped records (once per folder)."""
    if not folder.exists():
        texts = [json.dumps(json.loads(line)) for line in DATA.read_text().splitlines()]
        train_tiny_tokenizer(texts, ARCH.vocab_size, folder)
    return folder


def experiment(out: pathlib.Path, tokenizer_dir: pathlib.Path, *, steps: int = 4, beta: float = 0.1,
               learning_rate: float = 1e-3) -> Experiment:
    """Trains into ``out``: checkpoints every step, the last three kept, metrics every step."""
    return Experiment(
        model=ModelSection(arch=ARCH, tokenizer=str(tokenizer_dir)),
        data=DataSection(train=str(DATA), max_length=64),
        objective=dpo(beta=beta),
        optimizer=OptimizerConfig(learning_rate=learning_rate, warmup_steps=0, schedule="constant"),
        train=TrainSection(steps=steps, batch_size=4, out_dir=str(out), log_every=1, checkpoint_every=1,
                           keep_checkpoints=3, extras=()))


def with_train(exp: Experiment, **changes) -> Experiment:
    return dataclasses.replace(exp, train=dataclasses.replace(exp.train, **changes))
