"""What the sweep plots read from metrics rows: held-out values, composed names, the margin."""

import math

from jalign.train.sweep import MARGIN, _metric


def test_held_out_values_come_first_and_training_ones_never_stand_in_for_them():
    row = {"step": 10, "rewards/accuracy": 0.25, "eval/dpo/rewards/accuracy": 0.75,
           "eval/dpo/logratio/chosen": 1.5, "eval/dpo/logratio/rejected": -0.5}
    assert _metric(row, "rewards/accuracy") == 0.75
    assert _metric(row, "rewards/accuracy", "train") == 0.25
    assert _metric(row, MARGIN, "eval") == 2.0
    training_only = {"step": 5, "rewards/accuracy": 0.25}
    assert math.isnan(_metric(training_only, "rewards/accuracy", "eval"))
    assert math.isnan(_metric({"step": 1, "eval/loss": "nan"}, "loss"))
