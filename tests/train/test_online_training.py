"""Online training: responses generated in the loop, judged, and served to the objective as declared.

Independent references: the judge's function recomputed here on the batch's
own decoded response tokens (the labels the objective sees), the objectives'
sampling declarations (which slot comes from which source: responses drawn
from the reference alone are the reference's greedy continuations at
temperature -> 0), and an uninterrupted run (resumption).
"""

import dataclasses
import math
import os
import pathlib
import random
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jalign.objectives.core import register_pytree
from jalign.objectives.online import OnlineDPO
from jalign.train import loop
from jalign.train.metrics_log import read_metrics, without_wall_clock
from jalign.train.provider import RefusedObjective

from online_cli import train_online

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
from online_experiment import experiment, vowel_reward  # noqa: E402

ONLINE = ("online_dpo", "online_ipo", "ipo_md", "nash_md", "nash_md_pg", "sppo", "inpo", "egpo")
# By default: judged policy pairs (online_dpo, in the batch test below), the previous iterate as source and reference
# slot (sppo, in the kill-and-resume test), and here win rates against the mixture with the policy standing in for
# "uniform" (nash_md). --runslow trains all eight through the CLI, EGPO's extragradient half-step among them.
DEFAULT = ("nash_md",)


def _decoded(tokenizer, tokens: np.ndarray, mask: np.ndarray, stops: np.ndarray) -> str:
    ids = tokens[mask.astype(bool)].tolist()
    if ids and ids[-1] in stops.tolist():
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True)


@register_pytree
class RecordingDPO(OnlineDPO):
    """Online DPO that hands the labels and masks it is given to the host (the batch the objective sees)."""

    def compute(self, lp):
        jax.debug.callback(lambda p, m: SEEN.append((np.asarray(p), np.asarray(m))), lp.labels["preference"], lp.mask)
        return super().compute(lp)


SEEN: list = []


@pytest.fixture(scope="module")
def online_dpo_run(tmp_path_factory):
    exp = dataclasses.replace(experiment(tmp_path_factory.mktemp("online"), 2, "online_dpo"), objective=RecordingDPO())
    return exp, loop.build(exp)


def test_the_objective_sees_the_generated_responses_and_the_judges_labels(online_dpo_run):
    exp, run = online_dpo_run
    state, batch = run.rollout(run.state, run.frozen, 1, exp.objective)
    tokens, mask = np.asarray(batch["response_tokens"]), np.asarray(batch["response_mask"])
    assert tokens.shape == (4, 2, exp.online.max_new_tokens) and mask.any(-1).all()
    texts = [[_decoded(run.tokenizer, tokens[b, g], mask[b, g], run.rollout.stops) for g in range(2)]
             for b in range(4)]
    expected = [1 / (1 + math.exp(-(vowel_reward("", a) - vowel_reward("", b)) / 0.1)) for a, b in texts]
    np.testing.assert_allclose(np.asarray(batch["labels"]["preference"]), expected, rtol=1e-6)
    assert not np.array_equal(tokens[:, 0], tokens[:, 1]), "two policy samples per prompt, drawn independently"
    SEEN.clear()
    copy = jax.tree.map(jnp.copy, state)  # the step donates its state; the fixture's stays for the next test
    run.step_fn(copy, run.frozen, batch, exp.objective)[1]["loss"].block_until_ready()
    (labels, seen_mask), = SEEN
    np.testing.assert_array_equal(labels, np.asarray(batch["labels"]["preference"]))
    # The objective's mask is the responses' (every generated token has a predicting position).
    np.testing.assert_array_equal(seen_mask, mask.astype(np.float32))


def test_draws_are_keyed_by_the_train_state(online_dpo_run):
    """The same state draws the same responses (what bitwise resumption needs); the next step's state others."""
    exp, run = online_dpo_run
    first = run.rollout.draw(run.state, run.frozen, _prompts(run), exp.objective, "policy", 2, 1)
    again = run.rollout.draw(run.state, run.frozen, _prompts(run), exp.objective, "policy", 2, 1)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    later = dataclasses.replace(run.state, rng=jax.random.split(run.state.rng)[0])
    other = run.rollout.draw(later, run.frozen, _prompts(run), exp.objective, "policy", 2, 1)
    assert not np.array_equal(first.tokens, other.tokens)


def _prompts(run) -> dict:
    batch = run.rollout._measure_prompts[0]
    return {k: v for k, v in batch.items() if k != "record_index"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow) for n in ONLINE])
def test_every_online_objective_trains_with_generation_through_the_cli(name, tmp_path, monkeypatch, capsys):
    metrics, _ = train_online(name, tmp_path, monkeypatch, capsys)
    assert 0.0 <= metrics["online/win_rate"] <= 1.0 and math.isfinite(metrics["online/kl"])
    assert metrics["gen/length"] > 0 and 0.0 <= metrics["gen/eos_rate"] <= 1.0
    shares = [metrics[f"time/{part}_share"] for part in ("generate", "judge", "update")]
    assert abs(sum(shares) - 1.0) < 1e-9 and min(shares) >= 0.0


def test_an_online_objective_without_prompts_is_refused_before_anything_is_built(tmp_path):
    exp = experiment(tmp_path, 1, "nash_md")
    offline = dataclasses.replace(exp, online=dataclasses.replace(exp.online, prompts=""),
                                  data=dataclasses.replace(exp.data, train=str(HERE.parents[1] / "experiments" /
                                                                               "data" / "tiny_pref.jsonl")))
    with pytest.raises(RefusedObjective, match="nash_md: its responses are sampled during training.*online.prompts"):
        loop.plan_for(offline)


def test_an_offline_objective_with_prompts_is_refused(tmp_path):
    with pytest.raises(RefusedObjective, match="dpo is an offline objective, but online.prompts is set"):
        loop.plan_for(experiment(tmp_path, 1, "dpo"))


def test_a_killed_online_run_resumes_to_identical_metrics(tmp_path):
    """SPPO refreshes its previous iterate every 2 steps; a run SIGKILLed after checkpoint 1 or 2 restores it and the
    sampling RNG, and matches the uninterrupted run (the independent reference) bitwise in every logged metric."""
    from test_resume import kill_after

    steps = 4
    straight = loop.train(experiment(tmp_path / "straight", steps, "sppo"), progress=False)
    killed = tmp_path / "killed"
    exp = experiment(killed, steps, "sppo")  # the tokenizer first, so the subprocess starts straight into training
    rng = random.Random(os.getpid())
    after = rng.randint(1, 2)
    kill_after(killed, after, rng, [sys.executable, str(HERE / "online_experiment.py"), str(killed), str(steps), "sppo"])
    resumed = loop.train(exp, progress=False)
    assert after <= resumed["resumed_from"] < steps
    rows = [without_wall_clock(r) for r in read_metrics(killed / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert rows == [without_wall_clock(r) for r in read_metrics(tmp_path / "straight" / "run" / "metrics.jsonl")]
    assert without_wall_clock(resumed["metrics"]) == without_wall_clock(straight["metrics"])
