"""What the sweep plots read from metrics rows (held-out values, composed names, the margin) and how lines look."""

import math

from jalign.train.sweep import MARGIN, _label, _metric, _styles


def test_held_out_values_come_first_and_training_ones_never_stand_in_for_them():
    row = {"step": 10, "rewards/accuracy": 0.25, "eval/dpo/rewards/accuracy": 0.75,
           "eval/dpo/logratio/chosen": 1.5, "eval/dpo/logratio/rejected": -0.5}
    assert _metric(row, "rewards/accuracy") == 0.75
    assert _metric(row, "rewards/accuracy", "train") == 0.25
    assert _metric(row, MARGIN, "eval") == 2.0
    training_only = {"step": 5, "rewards/accuracy": 0.25}
    assert math.isnan(_metric(training_only, "rewards/accuracy", "eval"))
    assert math.isnan(_metric({"step": 1, "eval/loss": "nan"}, "loss"))


def test_curve_lines_share_a_colour_per_objective_and_a_style_per_strength():
    """objective x beta: the colour names the objective, the line style the strength, the label both."""
    rows = [{"objective": o, "beta": b} for o in ("dpo", "dpo+0.2*sft") for b in ("0.05", "0.2")]
    styles = _styles(rows, ["objective", "beta"])
    assert styles[0]["color"] == styles[1]["color"] != styles[2]["color"] == styles[3]["color"]
    assert styles[0]["linestyle"] == styles[2]["linestyle"] != styles[1]["linestyle"] == styles[3]["linestyle"]
    assert _label(rows[3], ["objective", "beta"]) == "dpo+0.2*sft, beta=0.2"
