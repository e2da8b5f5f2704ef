"""MPO's recipe (``jalign.train.mpo``, ``experiments/mpo.py``).

Independent references: the selection against the paper's rule written
directly in NumPy (easy iff ``r(x, y_w) - r(x, y_l) > threshold``, with the
rewards of a Python function); stage 2's reference against the stage-1
run's final policy as ``final_policy`` rebuilds it from its checkpoint.
"""

import json
import pathlib
import sys

import numpy as np
import pytest

from jalign.train.judges import FunctionJudge
from jalign.train.mpo import DIFFICULT, DIFFICULT_PROMPTS, EASY, select, split_by_reward_gap

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO / "experiments" / "data" / "tiny_pref.jsonl"
TEMPERATURE = 0.5


def digit_reward(prompt: str, response: str) -> float:
    return float(sum(int(c) for c in response if c.isdigit()))


def test_selection_follows_the_reward_gap_rule(tmp_path):
    records = [json.loads(line) for line in DATA.read_text().splitlines()]
    gaps = np.array([digit_reward(r["prompt"], r["chosen"]) - digit_reward(r["prompt"], r["rejected"])
                     for r in records]) / TEMPERATURE
    threshold = float(np.median(gaps))
    counts = select(DATA, FunctionJudge(digit_reward, temperature=TEMPERATURE), threshold, tmp_path)
    easy = gaps > threshold
    read = lambda name: [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
    assert read(EASY) == [r for r, e in zip(records, easy) if e]
    assert read(DIFFICULT) == [r for r, e in zip(records, easy) if not e]
    assert read(DIFFICULT_PROMPTS) == [{"prompt": r["prompt"]} for r, e in zip(records, easy) if not e]
    assert counts == {"easy": int(easy.sum()), "difficult": int((~easy).sum()), "threshold": threshold}
    assert 0 < easy.sum() < len(records)


def test_a_pair_ranked_against_its_label_is_difficult_and_a_one_sided_split_is_refused(tmp_path):
    assert split_by_reward_gap([-3.0, 0.0, 0.5, 2.0], 0.5).tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="puts all"):
        select(DATA, FunctionJudge(digit_reward), 1e9, tmp_path)


@pytest.mark.slow
def test_stage_two_starts_from_and_refers_to_the_stage_one_model(tmp_path):
    import jax
    from flax import nnx

    from jalign.models import Decoder
    from jalign.models.tokenizer import train_tiny_tokenizer
    from jalign.train.loop import build, final_policy
    from jalign.train.mpo import run_mpo, stage_experiments

    sys.path.insert(0, str(REPO / "experiments"))
    sys.path.insert(0, str(REPO / "tests" / "train"))
    import mpo as recipe
    from registry_experiment import ARCH

    train_tiny_tokenizer(DATA.read_text().splitlines(), ARCH.vocab_size, tmp_path / "tokenizer")
    base = recipe.experiment()
    base = base.__class__(**{**base.__dict__,
                             "model": base.model.__class__(arch=ARCH, tokenizer=str(tmp_path / "tokenizer")),
                             "data": base.data.__class__(max_length=64),
                             "optimizer": base.optimizer.__class__(learning_rate=1e-2, warmup_steps=0),
                             "train": base.train.__class__(steps=2, batch_size=4, log_every=1, extras=())})
    first, second = recipe.stages(base, max_new_tokens=4)
    second = second.__class__(**{**second.__dict__, "online": second.online.__class__(
        max_new_tokens=4, win_samples=1, stop_tokens=())})
    judge = FunctionJudge(digit_reward, temperature=TEMPERATURE)
    result = run_mpo(first, second, data=str(DATA), judge=judge, threshold=-2.0, out=tmp_path / "mpo")
    assert result["selection"]["easy"] > 0 and result["selection"]["difficult"] > 0
    assert result["stage2"]["steps"] == 2 and np.isfinite(result["stage2"]["metrics"]["loss"])

    first, second = stage_experiments(first, second, judge=judge, out=tmp_path / "mpo")
    stage1 = nnx.state(final_policy(first), nnx.Param)
    run = build(second)
    assert run.plan.reference == "frozen"
    for want, got in zip(jax.tree.leaves(stage1), jax.tree.leaves(run.frozen.reference)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
    # The stage-1 model moved away from its random start, so the check above could fail.
    start = nnx.state(Decoder(ARCH, rngs=nnx.Rngs(first.model.init_seed)), nnx.Param)
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max()
               for a, b in zip(jax.tree.leaves(stage1), jax.tree.leaves(start))) > 1e-4
