"""The main job, shortened: preference training raises the true reward above the reference's.

The true reward is the task's programmatic ground truth (the fraction of the
favoured letter), computed from decoded samples, independent of the trainer.
"""

import dataclasses
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import quickstart  # noqa: E402


def test_true_reward_rises_over_the_reference_policy(tmp_path):
    config = quickstart.experiment()
    out = tmp_path / "quickstart"
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, tokenizer=str(out / "tokenizer")),
        data=dataclasses.replace(config.data, train=str(out / "preferences.jsonl")),
        train=dataclasses.replace(config.train, steps=40, eval_every=20, log_every=10, out_dir=str(out)))
    summary = quickstart.run(config, quick=True)
    reference, final = summary["curve"][0], summary["curve"][-1]
    assert reference["step"] == 0 and final["step"] == 40
    assert 0.15 < reference["true_reward"] < 0.35  # the SFT reference writes letters about uniformly
    assert final["true_reward"] > reference["true_reward"] + 0.03
    assert final["kl_to_reference"] > 0
    assert (out / "quickstart.png").stat().st_size > 10_000
    assert summary["data"]["skipped"] == {}
