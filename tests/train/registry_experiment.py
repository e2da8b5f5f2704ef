"""The smallest experiment `jalign train` runs: a one-layer Llama, three steps.

The registry test points it at a tokenizer, a data file and an objective with
``--set``; nothing here chooses them.
"""

from jalign.models import ModelConfig
from jalign.train.config import DataSection, Experiment, ModelSection, TrainSection
from jalign.train.optim import OptimizerConfig

ARCH = ModelConfig("llama", vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                   head_dim=8, mlp_dim=32)


def experiment() -> Experiment:
    return Experiment(
        model=ModelSection(arch=ARCH),
        data=DataSection(max_length=64),
        optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=0, schedule="constant"),
        train=TrainSection(steps=3, batch_size=4, log_every=1, extras=()))
