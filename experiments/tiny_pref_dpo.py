"""DPO on the shipped tiny preference file with a randomly initialised tiny Llama.

    jalign train experiments/tiny_pref_dpo.py --set objective.beta=0.2
    jalign sweep experiments/tiny_pref_dpo.py --grid objective=dpo,ipo,dpo+0.2*sft beta=0.05,0.2

A fifth of the records (a fixed, seeded choice) is held out and evaluated
every 10 steps and at the end.
"""

import pathlib

from jalign.models import ModelConfig
from jalign.models.tokenizer import tiny_tokenizer_for
from jalign.objectives import dpo
from jalign.train.config import DataSection, Experiment, ModelSection, TrainSection
from jalign.train.optim import OptimizerConfig

DATA = pathlib.Path(__file__).parent / "data" / "tiny_pref.jsonl"
TOKENIZER = pathlib.Path("runs/tiny_pref/tokenizer")


def experiment() -> Experiment:
    return Experiment(
        model=ModelSection(arch=ModelConfig("llama", vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
                                            num_kv_heads=2, head_dim=8, mlp_dim=64),
                           tokenizer=tiny_tokenizer_for(DATA, 300, TOKENIZER)),  # a BPE of the data, once
        data=DataSection(train=str(DATA), max_length=128, eval_fraction=0.2),
        objective=dpo(beta=0.1),
        optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=5),
        train=TrainSection(steps=40, batch_size=8, out_dir="runs/tiny_pref", log_every=5, eval_every=10))
