"""DPA's multi-objective reward model: its plan, its training by `jalign train`, its head as a reward source.

- The provider reads ``attributes`` from paired records' ``attributes_chosen`` /
  ``attributes_rejected`` and refuses data without them, by field (default).

- (slow) Trained on programmatic attribute ratings (``experiments/multi_reward_model.py``),
  the held-out squared error per rating falls well below that of the best
  constant prediction (the ratings' variance, computed here from the data).
- (slow) ``HeadRewards`` reads ``[N, K]`` attribute rewards from a ``multi_reward``
  head saved and loaded as a Hugging Face directory: the same numbers in
  batches of 1 and of 8 (padding changes nothing), and a directional judge
  over them is ``v . r``.
"""

import json
import pathlib
import sys

import numpy as np
import pytest

from flax import nnx

from jalign import cli
from jalign.models import Decoder, ModelConfig, load_hf, save_hf
from jalign.models.preference_heads import add_score_head
from jalign.models.tokenizer import train_tiny_tokenizer
from jalign.objectives import multi_reward
from jalign.train.provider import RefusedObjective, plan_inputs
from jalign.train.reward_judges import HeadRewards, ShapedRewardJudge

ARCH = ModelConfig("llama", vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                   mlp_dim=32)
EXPERIMENT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "multi_reward_model.py"
sys.path.insert(0, str(EXPERIMENT.parent))
from multi_reward_model import rated_pairs  # noqa: E402


def test_the_plan_reads_attributes_from_record_fields_and_gives_the_decoder_a_multi_reward_head():
    paired = ("prompt", "chosen", "rejected")
    columns = paired + ("attributes_chosen", "attributes_rejected")
    plan = plan_inputs(multi_reward(), data_kind="paired", columns=columns)
    assert plan.scores == "multi_reward" and plan.data_labels == ("attributes",) and plan.reference == "none"
    with pytest.raises(RefusedObjective, match=r"attributes_chosen"):
        plan_inputs(multi_reward(), data_kind="paired", columns=paired)


@pytest.mark.slow
def test_multi_reward_model_learns_its_attributes_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "multi_reward_model"
    assert cli.main(["train", str(EXPERIMENT), "--set", "train.steps=300", "--set", "train.log_every=300",
                     "--set", "train.eval_every=300"]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    ratings = np.array([r[f"attributes_{side}"] for r in records for side in ("chosen", "rejected")])
    constant_mse = ratings.var(axis=0).mean()
    assert rows[-1]["eval/mse"] < 0.3 * constant_mse, (rows[-1], constant_mse)


@pytest.mark.slow
def test_a_saved_multi_reward_head_serves_attribute_rewards_and_directional_ones(tmp_path):
    rng = np.random.default_rng(0)
    records = rated_pairs(rng, 8)
    tokenizer = train_tiny_tokenizer([r["prompt"] + r["chosen"] for r in rated_pairs(rng, 200)], 300,
                                     tmp_path / "tokenizer")
    saved = Decoder(ARCH, rngs=nnx.Rngs(0))
    add_score_head(saved, "multi_reward", outputs=2, rngs=nnx.Rngs(1))
    save_hf(saved, str(tmp_path / "hf"), pad_token_id=tokenizer.pad_token_id)
    model = load_hf(str(tmp_path / "hf"))
    assert model.score_head.kind == "multi_reward"
    prompts = [r["prompt"] for r in records]
    responses = [r["chosen"] for r in records]
    one, eight = HeadRewards(model, tokenizer, batch_size=1)(prompts, responses), \
        HeadRewards(model, tokenizer, batch_size=8)(prompts, responses)
    assert one.shape == (8, 2) and np.std(one[:, 0]) > 0
    np.testing.assert_allclose(one, eight, atol=1e-4)
    judge = ShapedRewardJudge([HeadRewards(model, tokenizer)], "directional", direction=(0.6, 0.8))
    np.testing.assert_allclose(judge.reward(prompts, responses), eight @ np.array([0.6, 0.8]), atol=1e-4)
