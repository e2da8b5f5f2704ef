"""Reward judges and DPA's prompts against independent computations (no model; plain functions of texts).

- ``ShapedRewardJudge``: each transform recomputed in float64 NumPy from its
  definition (LSC with the normal-fit 0.85 quantile via ``statistics``; PAR's
  loop; the minimum over groups; ``v . r``), and ``preference`` is
  ``sigma((u_a - u_b) / temperature)`` of those rewards.
- DPA prompts: the system prompt of the authors' README example
  (``degree = -15`` -> helpfulness 97, verbosity -26) word for word, and the
  direction read back from it.
- ``rsf``: the NLL of the judged winner, by hand; in the tabular engine, best-of-2
  fine-tuning concentrates the policy on the best action of a Bradley-Terry game.
"""

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jalign import tabular as tb
from jalign.data.directions import conditioned, direction_at, direction_of, system_prompt
from jalign.objectives import from_sequences, make, rsf
from jalign.train.reward_judges import ShapedRewardJudge

PROMPTS = ["p0", "p1", "p0"]
RESPONSES = ["a", "bbbb", "cc"]


def length(prompts, responses):
    return np.array([len(r) for r in responses], float)


def vowels(prompts, responses):
    return np.array([sum(c in "aeiou" for c in r) - 0.5 for r in responses], float)


REFERENCES = {"p0": [[0.5, 1.0], [2.0, -1.0], [3.0, 0.0]], "p1": [[1.0, 0.5], [1.5, 0.0], [4.0, 2.0]]}


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_lsc_of_two_reward_models_is_the_sum_of_log_sigmoids_around_each_models_reference_quantile():
    judge = ShapedRewardJudge([length, vowels], "lsc", reference_rewards=REFERENCES)
    raw = np.stack([length(PROMPTS, RESPONSES), vowels(PROMPTS, RESPONSES)], 1)
    z = statistics.NormalDist().inv_cdf(0.85)
    expected = []
    for prompt, row in zip(PROMPTS, raw):
        columns = np.asarray(REFERENCES[prompt]).T.tolist()
        ref = [statistics.fmean(c) + (statistics.stdev(c) + 1e-5) * z for c in columns]
        expected.append(sum(math.log(_sigmoid(r - q)) for r, q in zip(row, ref)))
    np.testing.assert_allclose(judge.reward(PROMPTS, RESPONSES), expected, rtol=1e-5)


def test_par_maxmin_and_fixed_direction():
    references = {"p0": [0.0, 2.0, 5.0], "p1": [1.0, 1.0, 3.0]}
    par = ShapedRewardJudge([length], "par", reference_rewards=references)
    expected = [np.mean([_sigmoid(len(r) - m) for m in references[p]]) for p, r in zip(PROMPTS, RESPONSES)]
    np.testing.assert_allclose(par.reward(PROMPTS, RESPONSES), expected, rtol=1e-5)
    raw = np.stack([length(PROMPTS, RESPONSES), vowels(PROMPTS, RESPONSES)], 1)
    np.testing.assert_allclose(ShapedRewardJudge([length, vowels], "maxmin").reward(PROMPTS, RESPONSES),
                               raw.min(1), rtol=1e-6)
    v = direction_at(-15)
    np.testing.assert_allclose(ShapedRewardJudge([length, vowels], "directional", direction=v)
                               .reward(PROMPTS, RESPONSES), raw @ np.asarray(v), rtol=1e-5)


def test_preference_is_the_sigmoid_of_the_shaped_reward_difference():
    judge = ShapedRewardJudge([length, vowels], "maxmin", temperature=0.5)
    a, b = ["aaaa", "x", "eeeeeeee"], ["b", "yyyy", "i"]
    u_a = np.minimum(length(PROMPTS, a), vowels(PROMPTS, a))
    u_b = np.minimum(length(PROMPTS, b), vowels(PROMPTS, b))
    np.testing.assert_allclose(judge.preference(PROMPTS, a, b), _sigmoid((u_a - u_b) / 0.5), rtol=1e-9)


def test_dpa_system_prompt_is_the_authors_and_each_prompt_carries_its_own_direction():
    assert system_prompt(direction_at(-15)) == (
        "You are a helpful, respectful, and honest assistant who always responds to the user in a harmless way. "
        "Your response should maximize weighted rating = helpfulness*97 + verbosity*-26")
    prompts = [conditioned("Sum 2 and 3.", direction_at(d)) for d in (0, -15, 30)]
    assert prompts[1][1] == {"role": "user", "content": "Sum 2 and 3."}
    for prompt, d in zip(prompts, (0, -15, 30)):
        np.testing.assert_allclose(direction_of(prompt), direction_at(d), atol=6e-3)  # weights rounded to 1/100
    judge = ShapedRewardJudge([length, vowels], "directional")
    responses = ["aaa", "bb", "e"]
    raw = np.stack([length(prompts, responses), vowels(prompts, responses)], 1)
    expected = [row @ direction_of(p) for row, p in zip(raw, prompts)]
    np.testing.assert_allclose(judge.reward(prompts, responses), expected, rtol=1e-6)


def test_judge_settings_that_cannot_work_are_refused_by_name():
    with pytest.raises(ValueError, match="reference_rewards"):
        ShapedRewardJudge([length], "par")
    with pytest.raises(ValueError, match="unit vector"):
        ShapedRewardJudge([length, vowels], "directional", direction=(1.0, 1.0))
    with pytest.raises(ValueError, match="no entry for the prompt 'p9'"):
        ShapedRewardJudge([length], "par", reference_rewards={"p0": [1.0]}).reward(["p9"], ["a"])
    with pytest.raises(ValueError, match="one reward per response"):
        ShapedRewardJudge([length, vowels], "par", reference_rewards=REFERENCES).reward(PROMPTS, RESPONSES)


def test_rsf_is_the_nll_of_the_judged_winner():
    policy = np.array([[-1.0, -3.0], [-2.0, -0.5], [-4.0, -1.5]])
    preference = np.array([0.8, 0.3, 0.5])
    losses, metrics = rsf(average=False).per_example(from_sequences(policy, labels={"preference": preference}))
    np.testing.assert_allclose(losses, [1.0, 0.5, 4.0])  # a tie keeps the first, as argmax does
    np.testing.assert_allclose(metrics["first_kept"], [1.0, 0.0, 1.0])


def test_tabular_rsf_concentrates_on_the_best_action():
    rewards = np.array([0.2, 1.0, -0.5, 0.6])
    game = tb.make_game(tb.bradley_terry(jnp.asarray(rewards)), jnp.zeros(4))
    final, history = jax.jit(lambda: tb.train(make("rsf"), game, game.log_ref, optax.adam(0.1), steps=300))()
    policy = np.exp(np.asarray(final[0], np.float64))
    assert policy[1] > 0.95, policy


def test_a_multi_reward_head_is_not_a_pairwise_judge_without_a_direction():
    from jalign.train.judges import _pair_logit

    with pytest.raises(ValueError, match="ShapedRewardJudge"):
        _pair_logit("multi_reward", 0.1)
