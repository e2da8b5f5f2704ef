"""The objective gallery writes its picture and table, with DPO's closed-form landmarks."""

import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import objective_gallery  # noqa: E402


def test_gallery_writes_png_and_table_with_dpo_closed_form(tmp_path):
    """At h = 0, DPO's loss is log 2 and its weight beta * sigmoid(0) = beta / 2 (beta = 0.1)."""
    rows = objective_gallery.main(tmp_path)
    assert (tmp_path / "gallery.png").stat().st_size > 10_000
    table = (tmp_path / "gallery.md").read_text()
    assert "| dpo |" in table and "| ipo |" in table
    loss0, weight0, _ = rows["dpo"]
    assert loss0 == pytest.approx(math.log(2), rel=1e-5)
    assert weight0 == pytest.approx(0.05, rel=1e-5)
    # IPO (tau = 0.1): loss (0 - 5)^2 and weight 2 * 5 at h = 0.
    assert rows["ipo"][:2] == pytest.approx((25.0, 10.0), rel=1e-5)


def test_objectives_that_read_more_than_the_margin_are_named_not_plotted():
    """AlignDistil reads a teacher's distribution and PPO a critic's values: listed, never fed made-up inputs."""
    left_out = objective_gallery.not_plotted()
    assert {"aligndistil", "ppo"} <= set(left_out)
    assert not set(left_out) & set(objective_gallery.plottable())
    assert {"sem_dpo", "jpo", "mapo", "dpo"} <= set(objective_gallery.plottable())
