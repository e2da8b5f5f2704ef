"""Joint instruction-response records (JPO): reading, tokenisation, and what the provider serves them to.

Expected ids are the tokenizer's own encodings of each instruction and
response, spliced by hand; nothing here is produced by the code under test.
"""

import pytest

from jalign.data import Malformed, RecordFormat, Tokenization, read_preferences
from jalign.data.formats import detect_kind
from jalign.data.tokenization import tokenize
from jalign.objectives import dpo, jpo, sem_dpo
from jalign.train.provider import RefusedObjective, plan_inputs

from conftest import DATA_DIR

JOINT = ["prompt_chosen", "chosen", "prompt_rejected", "rejected"]
RECORD = {"prompt_chosen": "What is 2 + 3?", "chosen": " 2 + 3 = 5.",
          "prompt_rejected": "Name a colour of the sky.", "rejected": " Green."}


def _ids(tokenizer, text, special):
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def test_each_slot_holds_its_own_instruction_rest_then_its_response(tokenizer):
    assert detect_kind(JOINT) == "joint"
    example = RecordFormat.for_columns(JOINT).read(RECORD)
    out = tokenize(example, 0, tokenizer, Tokenization())
    prompts = [_ids(tokenizer, RECORD[f], True) for f in ("prompt_chosen", "prompt_rejected")]
    responses = [_ids(tokenizer, RECORD[f], False) + [tokenizer.eos_token_id] for f in ("chosen", "rejected")]
    shared = 0
    while prompts[0][shared] == prompts[1][shared]:
        shared += 1
    assert out.prompt.tolist() == prompts[0][:shared]
    for g in range(2):
        assert out.responses[g].tolist() == prompts[g][shared:] + responses[g]
        assert out.labels["instruction_length"][g] == len(prompts[g]) - shared > 0


def test_identical_instructions_are_an_ordinary_pair(tokenizer):
    record = dict(RECORD, prompt_rejected=RECORD["prompt_chosen"], rejected=" 2 + 3 = 6.")
    out = tokenize(RecordFormat.for_columns(JOINT).read(record), 0, tokenizer, Tokenization())
    assert out.prompt.tolist() == _ids(tokenizer, RECORD["prompt_chosen"], True)
    assert out.labels["instruction_length"].tolist() == [0.0, 0.0]


def test_conversational_and_truncated_away_responses_are_malformed(tokenizer):
    chat = dict(RECORD, chosen=[{"role": "assistant", "content": "5"}])
    with pytest.raises(Malformed, match="expected a string") as error:
        RecordFormat.for_columns(JOINT).read(chat)
    assert error.value.field == "chosen"
    example = RecordFormat.for_columns(JOINT).read(dict(RECORD, prompt_rejected="Name " * 30 + "a colour."))
    with pytest.raises(Malformed, match="instruction tokens"):
        tokenize(example, 0, tokenizer, Tokenization(max_length=12, truncation="keep_start"))


def test_the_shipped_joint_file_batches_with_instruction_lengths(tokenizer):
    data = read_preferences(DATA_DIR / "tiny_joint_pref.jsonl", tokenizer)
    assert data.format.kind == "joint" and len(data.examples) == 40
    assert all(e.labels["instruction_length"].shape == (2,) for e in data.examples)


def test_joint_data_is_served_only_to_objectives_that_read_instruction_lengths():
    assert plan_inputs(jpo(), data_kind="joint", columns=JOINT).reference == "frozen"
    with pytest.raises(RefusedObjective, match=r"dpo:\n  - joint data .*instruction_length"):
        plan_inputs(dpo(), data_kind="joint", columns=JOINT)
    with pytest.raises(RefusedObjective, match=r"labels\['instruction_length'\]: not in paired data; provide joint"):
        plan_inputs(jpo(), data_kind="paired", columns=["prompt", "chosen", "rejected"])


def test_sem_dpo_reads_its_weight_from_a_record_field():
    columns = ["prompt", "chosen", "rejected", "semantic_weight"]
    assert plan_inputs(sem_dpo(), data_kind="paired", columns=columns).data_labels == ("semantic_weight",)
    with pytest.raises(RefusedObjective, match=r"add the fields \['semantic_weight'\]"):
        plan_inputs(sem_dpo(), data_kind="paired", columns=columns[:3])
