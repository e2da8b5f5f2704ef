"""The provider's plan: where each declared input comes from, and one refusal naming every gap.

Expected sources are written from each objective's paper (which inputs its
formula reads) and the data kinds' documented fields.
"""

import json

import numpy as np
import pytest

from jalign.data import read_preferences
from jalign.data.validation import MalformedRecordError
from jalign.models.tokenizer import train_tiny_tokenizer
from jalign.objectives import dpo, kto, madpo, modpo, online_dpo, sft, simpo, sparsepo, tdpo1, tgdpo, wpo
from jalign.train.provider import RefusedObjective, plan_inputs

PAIRED = ("prompt", "chosen", "rejected")
SCORED = PAIRED + ("score_chosen", "score_rejected", "other_rewards_chosen", "other_rewards_rejected")
UNPAIRED = ("prompt", "completion", "label")


def test_reference_is_decided_once_from_the_declaration_and_the_run():
    assert plan_inputs(dpo(), data_kind="paired", columns=PAIRED).reference == "frozen"
    assert plan_inputs(dpo(), data_kind="paired", columns=PAIRED, lora=True).reference == "lora_base"
    assert plan_inputs(dpo(), data_kind="paired", columns=PAIRED, reference_mode="precomputed").reference \
        == "precomputed"
    assert plan_inputs(simpo() + 0.1 * sft(), data_kind="paired", columns=PAIRED).reference == "none"
    assert plan_inputs(sft(), data_kind="paired", columns=PAIRED, metric_extras=("ref_kl",)).reference == "frozen"
    assert plan_inputs(sft(), data_kind="paired", columns=PAIRED, metric_extras=("policy_kl",)).reference == "frozen"


def test_kernel_extras_are_the_objectives_and_the_metrics():
    plan = plan_inputs(wpo() + 0.1 * tdpo1(), data_kind="paired", columns=PAIRED, metric_extras=("entropy",))
    assert plan.kernel_extras == ("entropy", "log_prob_sq_sum", "ref_kl")


def test_labels_come_from_fields_or_are_computed():
    assert plan_inputs(modpo(), data_kind="paired", columns=SCORED).data_labels == ("other_rewards",)
    assert plan_inputs(madpo(), data_kind="paired", columns=SCORED).data_labels == ("score",)
    assert plan_inputs(kto(), data_kind="unpaired", columns=UNPAIRED).computed_labels == ("kl_estimate",)
    plan = plan_inputs(tgdpo(), data_kind="paired", columns=PAIRED, guide=True)
    assert plan.computed_labels == ("guide_log_ratio",) and plan.needs_guide


def test_sparsepo_masks_are_exactly_what_its_mask_needs():
    assert plan_inputs(sparsepo(), data_kind="paired", columns=PAIRED).mask_extras == ("token_mask_logits",)
    reference = plan_inputs(sparsepo(mask="reference"), data_kind="paired", columns=PAIRED)
    assert reference.mask_extras == ("reference_token_mask",) and not reference.needs_mask_head


@pytest.mark.parametrize("objective, kwargs, messages", [
    (kto(), dict(data_kind="paired", columns=PAIRED), ["single responses: the data is paired; give unpaired"]),
    (madpo(), dict(data_kind="paired", columns=PAIRED),
     ["labels['score']: add the fields ['score_chosen', 'score_rejected'] to every paired record"]),
    (tgdpo(), dict(data_kind="paired", columns=PAIRED), ["labels['guide_log_ratio']: set model.guide"]),
    (kto(), dict(data_kind="unpaired", columns=UNPAIRED, reference_mode="precomputed"),
     ["kl_estimate: needs the reference model on device"]),
    (dpo(), dict(data_kind="paired", columns=PAIRED, reference_mode="precomputed", metric_extras=("policy_kl",)),
     ["policy_kl: needs the reference model on device"]),
    (dpo(), dict(data_kind="paired", columns=PAIRED, metric_extras=("entropi",)),
     ["train.extras 'entropi': not a kernel extra"]),
    # Every gap is listed in the one message, not only the first.
    (madpo() + tgdpo(), dict(data_kind="paired", columns=PAIRED),
     ["labels['score']", "labels['guide_log_ratio']"]),
])
def test_refusals_name_the_objective_each_missing_input_and_the_remedy(objective, kwargs, messages):
    with pytest.raises(RefusedObjective) as error:
        plan_inputs(objective, **kwargs)
    text = str(error.value)
    assert text.startswith(f"`jalign train` cannot serve {objective.name}:")
    for message in messages:
        assert message in text


def test_online_objectives_are_refused_even_inside_a_sum():
    with pytest.raises(RefusedObjective, match=r"online_dpo\+sft: its responses are sampled during training"):
        plan_inputs(online_dpo() + 0.1 * sft(), data_kind="paired", columns=PAIRED)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tiny_tokenizer(["What is 2 + 3? 5 6 score"], 270, tmp_path_factory.mktemp("tok"))


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_label_fields_are_read_per_response(tmp_path, tokenizer):
    row = {"prompt": "What is 2 + 3?", "chosen": " 5", "rejected": " 6", "score_chosen": 8, "score_rejected": 2.5,
           "other_rewards_chosen": [1, -0.5], "other_rewards_rejected": [0, -0.7]}
    data = read_preferences(_write(tmp_path / "d.jsonl", [row]), tokenizer, labels=("score", "other_rewards"))
    labels = data.examples[0].labels
    np.testing.assert_array_equal(labels["score"], [8.0, 2.5])
    np.testing.assert_array_equal(labels["other_rewards"], np.float32([[1.0, -0.5], [0.0, -0.7]]))


GOOD = {"prompt": "What is 2 + 3?", "chosen": " 5", "rejected": " 6", "score_chosen": 8, "score_rejected": 2,
        "other_rewards_chosen": [1, 0], "other_rewards_rejected": [0, 1]}


@pytest.mark.parametrize("change, field", [({"score_rejected": None}, "score_rejected"),
                                           ({"score_chosen": "high"}, "score_chosen"),
                                           ({"other_rewards_rejected": [0.0]}, "other_rewards_rejected")])
def test_a_bad_label_field_is_a_record_error_naming_the_field_or_a_counted_skip(tmp_path, tokenizer, change,
                                                                                field):
    path = _write(tmp_path / "d.jsonl", [GOOD, {**GOOD, **change}])
    with pytest.raises(MalformedRecordError, match=rf"d.jsonl: record 1.*field '{field}'"):
        read_preferences(path, tokenizer, labels=("score", "other_rewards"))
    kept = read_preferences(path, tokenizer, labels=("score", "other_rewards"), on_error="skip")
    assert len(kept.examples) == 1 and sum(kept.report.as_dict()["skipped"].values()) == 1
