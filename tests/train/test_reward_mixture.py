"""MaxMin-RLHF's EM over reward heads trained by `jalign train` splits annotators into their groups (slow).

Six annotators label quickstart pairs; four prefer the response with more of
the favoured letter (the quickstart's true reward), two the one with less.
All label the same pairs. The authors' initial assignment ``user % 2`` mixes
them (group 1 holds one majority user and both minority users); after EM
each user sits with the others of its kind, which the labels' construction,
not the models, decides.
"""

import dataclasses
import json
import pathlib
import sys

import numpy as np
import pytest

from jalign import cli
from jalign.train.reward_mixture import em_reward_models

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
from quickstart import LETTERS, RESPONSE_LENGTH, true_reward  # noqa: E402

KINDS = ["more", "more", "more", "less", "more", "less"]


def _records(rng, num_pairs):
    """Every user labels the same pairs (as annotators of a shared pool do), so no model can fit a user's
    labels by memorising that user's pairs: only by agreeing with them."""
    pairs = []
    while len(pairs) < num_pairs:
        prompt = f"favour: {LETTERS[rng.integers(len(LETTERS))]}"
        a, b = (" " + "".join(rng.choice(list(LETTERS), RESPONSE_LENGTH)) for _ in range(2))
        ra, rb = true_reward(prompt, a), true_reward(prompt, b)
        if ra != rb:
            pairs.append((prompt, a, b) if ra > rb else (prompt, b, a))
    return [{"prompt": prompt, "chosen": better if kind == "more" else worse,
             "rejected": worse if kind == "more" else better, "user": f"u{user}"}
            for user, kind in enumerate(KINDS) for prompt, better, worse in pairs]


@pytest.mark.slow
def test_em_over_reward_heads_recovers_the_annotator_groups(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = cli.load_module(EXPERIMENTS / "reward_model.py").experiment()
    base = dataclasses.replace(base, data=dataclasses.replace(base.data, eval_fraction=0.0),
                               train=dataclasses.replace(base.train, steps=120, log_every=120, eval_every=0))
    data = tmp_path / "pairs_with_users.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records(np.random.default_rng(0), 300)))
    result = em_reward_models(base, data, 2, out_dir=tmp_path / "em", iterations=2)
    assert result.users == [f"u{i}" for i in range(6)]
    groups = result.assignment
    kinds = np.array([k == "more" for k in KINDS])
    assert len(set(groups[kinds])) == 1 and len(set(groups[~kinds])) == 1 and groups[kinds][0] != groups[~kinds][0], \
        (groups, result.log_likelihood)
