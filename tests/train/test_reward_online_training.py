"""Reward-labelled online objectives through `jalign train`: groups, the judge's rewards, RSO's rejection sampling.

Independent references: the judge's reward function recomputed here on the
batch's own decoded responses (the labels the objective sees), and the
declarations (a group of ``k`` policy samples per prompt; RSO's pair is two
of the reference's candidates, the higher reward first).
"""

import dataclasses
import pathlib
import sys

import numpy as np
import pytest

from jalign.objectives import grao, grpo, rso
from jalign.train import loop
from jalign.train.judges import FunctionJudge, gives_rewards
from jalign.train.online import OnlineConfigError, require_reward_judge

from online_cli import train_online

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
from online_experiment import experiment, vowel_reward  # noqa: E402

# Small groups and candidate counts keep generation short; the defaults (GRPO's 64, RSO's 64) are the papers'.
PROMPT_COMPLETIONS = HERE.parents[1] / "experiments" / "data" / "tiny_prompt_completions.jsonl"
RUNS = ("reinforce", "rloo(k=3)", "grpo(group_size=3)", "ppo_clip(k=2)", "online_copg(k=3)", "rso(candidates=6)")


def test_a_preference_only_judge_is_refused_for_a_reward_label():
    preference_only = FunctionJudge(lambda p, a, b: 0.5, kind="preference")
    assert not gives_rewards(preference_only) and gives_rewards(FunctionJudge(vowel_reward))
    with pytest.raises(OnlineConfigError, match=r"grpo: needs labels\['reward'\].*FunctionJudge"):
        require_reward_judge(preference_only, grpo().sampling, "grpo")


@pytest.mark.slow
def test_a_reward_head_judge_gives_each_responses_own_reward(tmp_path):
    """ModelJudge.reward equals the head's score of the response alone (scored here one at a time)."""
    from jalign.models.tokenizer import train_tiny_tokenizer
    from jalign.train.judges import ModelJudge
    from test_preference_evaluation import A, PROMPTS, _model, _reward_alone

    tokenizer = train_tiny_tokenizer(["favour: a abcd dcba " * 3], 270, tmp_path / "tok")
    model = _model("reward")
    judge = ModelJudge(model, tokenizer, batch_size=2, max_length=32)
    expected = [_reward_alone(model, tokenizer, prompt, response) for prompt, response in zip(PROMPTS, A)]
    np.testing.assert_allclose(judge.reward(PROMPTS, A), expected, atol=1e-5)
    assert gives_rewards(judge) and not gives_rewards(ModelJudge(_model("pairwise"), tokenizer))


@pytest.mark.slow
def test_the_loop_refuses_a_preference_judge_before_the_first_step(tmp_path):
    exp = experiment(tmp_path, 1, "rloo", judge=FunctionJudge(lambda p, a, b: 0.5, kind="preference"))
    with pytest.raises(OnlineConfigError, match=r"rloo: needs labels\['reward'\]"):
        loop.build(exp)


def _texts(run, batch):
    tokens, mask = np.asarray(batch["response_tokens"]), np.asarray(batch["response_mask"]).astype(bool)
    stops = run.rollout.stops.tolist()

    def decode(ids):
        ids = ids.tolist()
        return run.tokenizer.decode(ids[:-1] if ids and ids[-1] in stops else ids, skip_special_tokens=True)
    return [[decode(tokens[b, g][mask[b, g]]) for g in range(tokens.shape[1])] for b in range(tokens.shape[0])]


@pytest.mark.slow
@pytest.mark.parametrize("objective", [grpo(group_size=3), rso(candidates=5), grao(group_size=2)],
                         ids=["grpo", "rso", "grao"])
def test_the_objective_sees_its_group_and_the_judges_rewards(objective, tmp_path):
    prompts = {"prompts": str(PROMPT_COMPLETIONS)} if objective.name == "grao" else {}
    exp = dataclasses.replace(experiment(tmp_path, 1, "rloo", **prompts), objective=objective)
    run = loop.build(exp)
    _, batch = run.rollout(run.state, run.frozen, 1, objective)
    g = len(objective.sampling.responses)
    assert np.asarray(batch["response_tokens"]).shape[:2] == (exp.train.batch_size, g)
    rewards = np.asarray(batch["labels"]["reward"])
    expected = [[vowel_reward("", text) for text in row] for row in _texts(run, batch)]
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)
    if objective.name == "rso":
        assert np.all(rewards[:, 0] >= rewards[:, 1]), "the kept pair is ordered winner first"
    if objective.name == "grao":  # the last slot is a record's completion (its start, up to max_new_tokens)
        n = exp.online.max_new_tokens
        completions = {tuple(run.rollout.prompts.completion(i)[:n]) for i in range(len(run.rollout.prompts.prompts))}
        tokens, mask = np.asarray(batch["response_tokens"]), np.asarray(batch["response_mask"]).astype(bool)
        assert all(tuple(tokens[b, -1][mask[b, -1]].tolist()) in completions for b in range(tokens.shape[0]))


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS + ("grao(group_size=3)",))
def test_reward_objective_trains_with_generation_through_the_cli(name, tmp_path, monkeypatch, capsys):
    """GRAO's reference answer is the prompt record's completion, so it reads the prompt-completion file."""
    sets = [f"online.prompts={PROMPT_COMPLETIONS}"] if name.startswith("grao") else []
    metrics, _ = train_online(name, tmp_path, monkeypatch, capsys, *sets)
    assert 0.0 <= metrics["online/win_rate"] <= 1.0 and metrics["gen/length"] > 0
