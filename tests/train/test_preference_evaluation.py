"""Held-out evaluation and judges, against NumPy recomputations and independent scoring paths."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jalign.models import Decoder, ModelConfig
from jalign.models.preference_heads import add_score_head
from jalign.models.tokenizer import train_tiny_tokenizer
from jalign.train.evaluation import aggregate, cyclic_triple_fraction, expected_calibration_error
from jalign.train.judges import FunctionJudge, ModelJudge

RNG = np.random.default_rng(0)


def test_aggregate_is_the_example_weighted_mean_over_every_batch():
    batches, values, weights = [], [], []
    for _ in range(3):
        loss, accuracy, weight = RNG.normal(size=4), RNG.uniform(size=4), np.array([1, 1, 1, 0.0])
        batches.append(({"loss": loss, "accuracy": accuracy}, weight, None))
        values.append(np.stack([loss, accuracy])), weights.append(weight)
    result = aggregate(batches, num_responses=2)
    stacked, w = np.concatenate(values, axis=1), np.concatenate(weights)
    np.testing.assert_allclose([result["loss"], result["accuracy"]], (stacked * w).sum(1) / w.sum(), rtol=1e-12)


def test_pair_metrics_accuracy_logloss_and_calibration():
    p = np.array([[0.9], [0.8], [0.3], [0.6]])
    t = np.array([[1.0], [1.0], [1.0], [0.5]])
    w = np.array([[1.0], [1.0], [1.0], [1.0]])
    pairs = {"probability": p, "target": t, "weight": w, "first": np.zeros_like(p, int),
             "second": np.ones_like(p, int)}
    result = aggregate([({"loss": np.zeros(4)}, np.ones(4), pairs)], num_responses=2)
    assert result["pair_accuracy"] == pytest.approx(2 / 3)  # the 0.5 label is undecided
    logloss = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    assert result["logloss"] == pytest.approx(logloss, rel=1e-9)
    # bins: 0.3 -> 3 (target 1), 0.6 -> 6 (0.5), 0.8 -> 8 (1), 0.9 -> 9 (1)
    expected = (abs(0.3 - 1) + abs(0.6 - 0.5) + abs(0.8 - 1) + abs(0.9 - 1)) / 4
    assert result["calibration_error"] == pytest.approx(expected)
    assert expected_calibration_error(np.array([0.7, 0.7]), np.array([1.0, 0.0]), np.ones(2)) \
        == pytest.approx(0.2)


def test_cyclic_triples_of_a_cycle_and_of_an_order():
    cycle = np.array([[0.5, 0.9, 0.1], [0.1, 0.5, 0.9], [0.9, 0.1, 0.5]])
    order = np.array([[0.5, 0.9, 0.9], [0.1, 0.5, 0.9], [0.1, 0.1, 0.5]])
    assert cyclic_triple_fraction(cycle) == 1.0 and cyclic_triple_fraction(order) == 0.0
    assert cyclic_triple_fraction(np.stack([cycle, order])) == 0.5


def test_function_judge_turns_rewards_into_a_bradley_terry_probability():
    judge = FunctionJudge(lambda prompt, response: len(response), temperature=2.0)
    p = judge.preference(["x", "x"], ["aaaa", "a"], ["a", "aaaa"])
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-np.array([3.0, -3.0]) / 2.0)))
    with pytest.raises(ValueError, match="probabilities"):
        FunctionJudge(lambda *_: 2.0, kind="preference").preference(["x"], ["a"], ["b"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tiny_tokenizer(["favour: a abcd dcba " * 3], 270, tmp_path_factory.mktemp("tok"))


def _model(kind, outputs=1, seed=0):
    cfg = ModelConfig("llama", vocab_size=270, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=8, mlp_dim=32)
    model = Decoder(cfg, rngs=nnx.Rngs(seed))
    add_score_head(model, kind, outputs=outputs, rngs=nnx.Rngs(seed + 1))
    model.score_head.kernel[...] = model.score_head.kernel[...] * 50  # scores far from 0: a sharp test
    return model


PROMPTS, A, B = ["favour: a", "favour: b", "favour: c"], [" ab", " abcd", " d"], [" ba", " c", " dd"]


def test_reward_judge_equals_sigmoid_of_rewards_scored_one_response_at_a_time(tokenizer):
    model = _model("reward")
    p = ModelJudge(model, tokenizer, batch_size=2, max_length=32).preference(PROMPTS, A, B)
    single = FunctionJudge(lambda prompt, r: _reward_alone(model, tokenizer, prompt, r))
    np.testing.assert_allclose(p, single.preference(PROMPTS, A, B), atol=1e-5)


def _reward_alone(model, tokenizer, prompt, response):
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    batch = {"prompt_tokens": jnp.asarray([prompt_ids]), "prompt_mask": jnp.ones((1, len(prompt_ids)), jnp.int32),
             "response_tokens": jnp.asarray([[response_ids]]),
             "response_mask": jnp.ones((1, 1, len(response_ids)), jnp.int32)}
    return float(_scores(model, batch)[0, 0])


@nnx.jit
def _scores(model, batch):
    from jalign.models.preference_heads import preference_scores

    return preference_scores(model, batch)


@pytest.mark.parametrize("kind, outputs", [("pairwise", 1), ("embedding", 4)])
def test_pairwise_and_gpm_judges_are_antisymmetric(tokenizer, kind, outputs):
    judge = ModelJudge(_model(kind, outputs), tokenizer, batch_size=4, max_length=32)
    forward, backward = judge.preference(PROMPTS, A, B), judge.preference(PROMPTS, B, A)
    np.testing.assert_allclose(forward + backward, 1.0, atol=1e-6)
    assert np.any(np.abs(forward - 0.5) > 0.01)


def test_a_preference_model_directory_is_a_judge_for_online_training(tokenizer, tmp_path):
    """``online.judge`` may name a saved reward model: it judges as the model it was saved from."""
    from jalign.models import save_hf
    from jalign.train.online import resolve_judge

    model = _model("reward")
    save_hf(model, str(tmp_path / "rm"), pad_token_id=tokenizer.pad_token_id)
    tokenizer.save_pretrained(str(tmp_path / "rm"))
    judge = resolve_judge(str(tmp_path / "rm"))
    assert isinstance(judge, ModelJudge) and judge.model.score_head.kind == "reward"
    expected = ModelJudge(model, tokenizer).preference(PROMPTS, A, B)
    np.testing.assert_allclose(judge.preference(PROMPTS, A, B), expected, atol=1e-5)
