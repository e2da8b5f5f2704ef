"""Sem-DPO through `jalign train` with the weight computed by the experiment's function.

Independent source: at step 1 the policy equals its frozen reference, so
every pair's DPO loss is log 2 and the logged loss must be
``log 2 * mean(w)`` over the first batch, with ``w`` computed here from the
file's records as written (no shuffling: the first batch is the first four
records, none of which is too long for the length budget).
"""

import json
import math
import pathlib

import numpy as np
import pytest

from jalign import cli
from jalign.models.tokenizer import train_tiny_tokenizer

from registry_experiment import ARCH

DATA = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "data" / "tiny_pref.jsonl"
HERE = pathlib.Path(__file__).resolve().parent

EXPERIMENT = f'''
import dataclasses, math, sys
sys.path.insert(0, {str(HERE)!r})
from registry_experiment import experiment as base

def word_overlap_weight(prompt, chosen):
    a, b = set(prompt.lower().split()), set(chosen.lower().split())
    return math.exp(-2.0 * (1.0 - len(a & b) / max(len(a | b), 1)))

def experiment():
    exp = base()
    return dataclasses.replace(exp, data=dataclasses.replace(exp.data, semantic_weight=word_overlap_weight,
                                                             shuffle=False, max_length=256))
'''


@pytest.mark.slow
def test_sem_dpo_trains_on_the_experiments_weights(tmp_path, capsys):
    records = [json.loads(line) for line in DATA.read_text().splitlines()]
    train_tiny_tokenizer([line for line in DATA.read_text().splitlines()], ARCH.vocab_size, tmp_path / "tok")
    experiment = tmp_path / "sem_dpo_experiment.py"
    experiment.write_text(EXPERIMENT)
    argv = ["train", str(experiment), "--set", "objective=sem_dpo", "--set", f"data.train={DATA}",
            "--set", f"model.tokenizer={tmp_path / 'tok'}", "--set", f"train.out_dir={tmp_path / 'run'}"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3] and all(row["update_norm"] > 0 for row in rows)

    def weight(r):
        a, b = set(r["prompt"].lower().split()), set(r["chosen"].lower().split())
        return math.exp(-2.0 * (1.0 - len(a & b) / max(len(a | b), 1)))

    expected = math.log(2.0) * np.mean([weight(r) for r in records[:4]])
    np.testing.assert_allclose(rows[0]["loss"], expected, rtol=1e-5)
