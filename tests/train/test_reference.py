"""Reference log-probs precomputed once give the same training as the reference run every step.

The independent computation is the on-the-fly path: the frozen reference
model's forward inside each train step.
"""

import dataclasses
import pathlib
import sys

import numpy as np

from jalign.train.loop import train
from jalign.train.metrics_log import read_metrics

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_experiment import experiment  # noqa: E402


def _rows(exp, out):
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, out_dir=str(out), extras=()))
    train(exp, progress=False)
    return read_metrics(out / "metrics.jsonl")


def test_precomputed_reference_trains_like_the_on_the_fly_reference(tmp_path):
    exp = experiment(tmp_path, 3, checkpoint_every=0)
    on_the_fly = _rows(exp, tmp_path / "model")
    precomputed_exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, reference="precomputed"))
    precomputed = _rows(precomputed_exp, tmp_path / "precomputed")
    assert (tmp_path / "precomputed" / "reference_logprobs.npz").exists()
    for a, b in zip(on_the_fly, precomputed):
        for key in ("loss", "dpo/loss", "dpo/rewards/margin", "kl/logratio"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=f"step {a['step']} {key}")


def test_lora_training_uses_the_frozen_base_as_reference(tmp_path):
    """Zero-initialised adapters: at step 1 policy == reference, so the log-ratio is 0 (up to float
    rounding between the two compiled forwards, on sequence log-probs of about -80); afterwards the
    adapters move the policy away from its base."""
    exp = experiment(tmp_path, 3, checkpoint_every=0)
    exp = dataclasses.replace(exp, model=dataclasses.replace(exp.model, lora_rank=4, lora_alpha=8.0))
    rows = _rows(exp, tmp_path / "lora")
    assert abs(rows[0]["kl/logratio"]) < 1e-5 and abs(rows[0]["dpo/rewards/margin"]) < 1e-6
    assert abs(rows[-1]["kl/logratio"]) > 1e-3
