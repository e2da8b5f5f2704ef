"""Reward-augmented data (Zhang et al. 2024) against records built by hand from the authors' recipe.

The expected records are written out here from the authors'
``scripts/reward_augmentation.py`` (``shenao-zhang/reward-augmented-preference``):
``add_pos_goal`` / ``add_pos_goal_nosys`` condition the pair on the chosen
score, ``add_neg_goal`` / ``add_neg_goal_nosys`` swap the responses and
condition on the rejected score, and the positive copies come first.
"""

import json

import pytest

from jalign.data import DataFileError, JsonlSource, Malformed, read_preferences
from jalign.data.reward_augmented import RewardAugmented

GOAL = ("You are an assistant that generates responses for the instruction while implicitly achieving the "
        "following target scores (on a scale of 1-10, where 1 is lowest and 10 is highest):\nOverall score: {}.")


def _source(tmp_path, records):
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return JsonlSource(path)


def test_prompt_style_doubles_string_pairs_as_the_authors_nosys_variant(tmp_path):
    record = {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6", "score_chosen": 9.0, "score_rejected": 6.5}
    data = RewardAugmented(_source(tmp_path, [record]), "prompt")
    assert len(data) == 2
    assert data[0] == {"prompt": GOAL.format(9) + "\n\nAdd 2 and 3.", "chosen": "5", "rejected": "6",
                       "score_chosen": 9.0, "score_rejected": 6.5}
    assert data[1] == {"prompt": GOAL.format(6.5) + "\n\nAdd 2 and 3.", "chosen": "6", "rejected": "5",
                       "score_chosen": 6.5, "score_rejected": 9.0}


def test_system_style_inserts_a_system_message_before_conversational_prompts(tmp_path):
    user = [{"role": "user", "content": "Hi"}]
    records = [{"prompt": user, "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "Go away."}], "score_chosen": 8, "score_rejected": 2},
               {"prompt": user, "chosen": [{"role": "assistant", "content": "Hey."}],
                "rejected": [{"role": "assistant", "content": "No."}], "score_chosen": 7, "score_rejected": 1}]
    data = RewardAugmented(_source(tmp_path, records), "system")
    # All positive-goal copies, then all negative-goal ones (the authors' concatenate_datasets order).
    assert [d["chosen"][0]["content"] for d in (data[i] for i in range(4))] == ["Hello!", "Hey.", "Go away.", "No."]
    assert data[2]["prompt"] == [{"role": "system", "content": GOAL.format(2)}] + user
    assert data[0]["prompt"][0] == {"role": "system", "content": GOAL.format(8)}
    assert "conditioned on its rejected score" in data.locate(3)


def test_implicit_prompt_conditions_both_full_conversations(tmp_path):
    chosen = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}]
    rejected = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]
    data = RewardAugmented(_source(tmp_path, [{"chosen": chosen, "rejected": rejected, "score_chosen": 5,
                                               "score_rejected": 4}]), "prompt")
    flipped = data[1]
    assert flipped["chosen"] == [{"role": "user", "content": GOAL.format(4) + "\n\nQ"},
                                 {"role": "assistant", "content": "bad"}]
    assert flipped["rejected"][0] == {"role": "user", "content": GOAL.format(4) + "\n\nQ"}


def test_refusals_name_the_field(tmp_path):
    with pytest.raises(DataFileError, match=r"\['score_rejected'\]"):
        RewardAugmented(_source(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 1}]),
                        "prompt")
    data = RewardAugmented(_source(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 1,
                                               "score_rejected": 0}]), "system")
    with pytest.raises(Malformed, match="conversational"):
        data[0]


def test_the_pipeline_reads_twice_the_records_with_swapped_scores(tmp_path, tokenizer):
    records = [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "score_chosen": 8.0,
                "score_rejected": 3.0} for i in range(3)]
    data = read_preferences(RewardAugmented(_source(tmp_path, records), "prompt"), tokenizer, labels=("score",))
    assert data.report.kept == 6
    assert [list(e.labels["score"]) for e in data.examples] == [[8.0, 3.0]] * 3 + [[3.0, 8.0]] * 3
