"""Sem-DPO's weights from an experiment's function: added per record, read as labels, bad values named.

Independent source: the expected weights are the function applied here to
the records as written in the file (read back with ``json``), not through the
source under test.
"""

import dataclasses
import json
import math
import pathlib

import numpy as np
import pytest

from jalign.data import DataFileError, JsonlSource, MalformedRecordError, read_preferences
from jalign.data.semantic_weights import SemanticWeighted
from jalign.train.config import DataSection

DATA = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "data" / "tiny_pref.jsonl"


def overlap_weight(prompt, chosen, alpha=2.0):
    """exp(-alpha * (1 - Jaccard overlap of words)): a stand-in for an embedding's cosine similarity."""
    a, b = set(prompt.lower().split()), set(chosen.lower().split())
    return math.exp(-alpha * (1.0 - len(a & b) / max(len(a | b), 1)))


def test_every_record_gains_the_functions_weight_and_the_pipeline_reads_it_as_a_label(tokenizer):
    records = [json.loads(line) for line in DATA.read_text().splitlines()]
    source = DataSection(train=str(DATA), semantic_weight=overlap_weight).open_train()
    assert isinstance(source, SemanticWeighted) and len(source) == len(records)
    expected = [overlap_weight(r["prompt"], r["chosen"]) for r in records]
    assert [source[i]["semantic_weight"] for i in range(len(records))] == expected
    assert len(set(expected)) > 1  # the weights differ from record to record
    data = read_preferences(source, tokenizer, labels=("semantic_weight",))
    read = {e.index: float(np.asarray(e.labels["semantic_weight"]).reshape(())) for e in data.examples}
    assert read and all(np.isclose(w, expected[i]) for i, w in read.items())


@pytest.mark.parametrize("bad", [-0.5, float("nan"), "high"])
def test_a_bad_weight_is_an_error_naming_file_record_and_field(tmp_path, tokenizer, bad):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    source = SemanticWeighted(JsonlSource(path), lambda prompt, chosen: bad)
    with pytest.raises(MalformedRecordError, match=r"pairs\.jsonl.*record 0.*semantic_weight"):
        read_preferences(source, tokenizer, labels=("semantic_weight",))


def test_a_field_already_in_the_records_or_a_non_function_is_refused(tmp_path):
    path = tmp_path / "weighted.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "semantic_weight": 1.0}) + "\n")
    with pytest.raises(DataFileError, match="already carry a 'semantic_weight' field"):
        SemanticWeighted(JsonlSource(path), overlap_weight)
    with pytest.raises(DataFileError, match="must be a function"):
        dataclasses.replace(DataSection(train=str(DATA)), semantic_weight=0.5).open_train()
