"""D2O, PoFT and reward-augmented data through the provider and `jalign train`.

By default: the provider's plans and refusals for D2O's lists and PoFT's
``aligned_logps`` fields (what each paper's formula reads), and the
``data.reward_augmented`` option parsed from ``--set`` and doubling the
training source. With ``--runslow``: DPO trained through ``jalign train`` on
reward-augmented data (D2O and PoFT train in
``tests/train/test_every_objective_trains.py`` under ``--runslow``).
"""

import json
import pathlib

import numpy as np
import pytest

from jalign import cli
from jalign.models.tokenizer import train_tiny_tokenizer
from jalign.objectives import d2o, poft
from jalign.train.overrides import apply_overrides
from jalign.train.provider import RefusedObjective, plan_inputs

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO / "experiments" / "data"
EXPERIMENT = pathlib.Path(__file__).with_name("registry_experiment.py")
PAIRED = ("prompt", "chosen", "rejected")


def test_poft_reads_the_aligned_models_likelihoods_from_record_fields():
    fields = ("aligned_logps_chosen", "aligned_logps_rejected")
    paired = plan_inputs(poft(), data_kind="paired", columns=PAIRED + fields)
    assert paired.data_labels == ("aligned_logps",) and paired.reference == "none"
    unpaired = plan_inputs(poft(), data_kind="unpaired", columns=("prompt", "completion", "label", "aligned_logps"))
    assert unpaired.data_labels == ("aligned_logps",)
    with pytest.raises(RefusedObjective, match=r"(?s)poft.*\['aligned_logps_chosen', 'aligned_logps_rejected'\]"):
        plan_inputs(poft(), data_kind="paired", columns=PAIRED)


def test_d2o_needs_lists_and_the_reference():
    assert plan_inputs(d2o(), data_kind="ranked", columns=("prompt", "responses", "scores")).reference == "frozen"
    with pytest.raises(RefusedObjective, match="(?s)d2o.*list responses: the data is unpaired"):
        plan_inputs(d2o(), data_kind="unpaired", columns=("prompt", "completion", "label"))


def test_reward_augmented_option_is_set_from_the_command_line_and_doubles_the_source():
    module = cli.load_module(EXPERIMENT)
    exp = apply_overrides(module.experiment(), [f"data.train={DATA / 'tiny_pref_scored.jsonl'}",
                                                "data.reward_augmented=prompt"])
    source = exp.data.open_train()
    assert len(source) == 80
    assert source[40]["chosen"] == " 2 + 3 = 6."
    assert source[40]["prompt"].endswith("Overall score: 3.\n\nWhat is 2 + 3?")
    with pytest.raises(ValueError, match="reward_augmented"):
        apply_overrides(module.experiment(), ["data.reward_augmented=both"])


@pytest.mark.slow
def test_dpo_trains_on_reward_augmented_data_through_the_cli(tmp_path, capsys):
    data = DATA / "tiny_pref_scored.jsonl"
    train_tiny_tokenizer(data.read_text().splitlines(), 300, tmp_path / "tokenizer")
    argv = ["train", str(EXPERIMENT)]
    # The goal sentence is about 40 words: a budget that keeps it whole.
    for assignment in ("objective=dpo", f"data.train={data}", "data.reward_augmented=prompt", "data.max_length=256",
                       f"model.tokenizer={tmp_path / 'tokenizer'}", f"train.out_dir={tmp_path / 'run'}"):
        argv += ["--set", assignment]
    assert cli.main(argv) == 0
    summary, _ = json.JSONDecoder().raw_decode(capsys.readouterr().out)
    assert summary["data"]["kept"] == 80 and not summary["data"]["truncated"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert np.isfinite(row["loss"]) and row["update_norm"] > 0
