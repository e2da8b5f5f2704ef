"""The data section picks what the trainer reads: a split of a saved ``DatasetDict``, a ``.json`` file.

The reference is the records written: the trainer's plan and held-out set are
built from the sources ``DataSection`` opens, compared with those records.
"""

import json

import datasets
import pytest

from jalign.data import DataFileError
from jalign.train.config import DataSection, Experiment
from jalign.train.loop import _held_out, plan_for
from jalign.train.overrides import apply_overrides

TRAIN = [{"prompt": f"Q{i}?", "chosen": " yes.", "rejected": " no."} for i in range(3)]
TEST = [{"prompt": "Held?", "chosen": [{"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": "no"}]}]


def _records(source):
    return [source[i] for i in range(len(source))]


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "prefs"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN),
                          "test": datasets.Dataset.from_list(TRAIN[:1])}).save_to_disk(path)
    return str(path)


def test_split_and_eval_split_of_a_saved_dataset_dict(saved):
    """``--set data.split=train data.eval_split=test``: training reads the train split, the held-out set the
    test split of the same directory (no ``data.eval`` needed)."""
    exp = apply_overrides(Experiment(data=DataSection(train=saved)), ["data.split=train", "data.eval_split=test"])
    assert _records(exp.data.open_train()) == TRAIN
    assert plan_for(exp) is not None
    train, held_out = _held_out(exp, "train data", read=lambda source: source)
    assert train == "train data" and _records(held_out) == TRAIN[:1]
    assert _held_out(Experiment(data=DataSection(train=saved, split="train")), "train data", read=None) == (
        "train data", None)


def test_a_dataset_dict_without_split_names_the_field(saved):
    """The error lists the splits and names the field to set, in one line."""
    with pytest.raises(DataFileError, match=r"prefs: holds splits \['test', 'train'\]; pass split= "
                                            r"\(an experiment's data.split or data.eval_split\)") as error:
        plan_for(Experiment(data=DataSection(train=saved)))
    assert "\n" not in str(error.value)


def test_eval_split_of_another_file(tmp_path, saved):
    """``data.eval`` with ``data.eval_split`` reads that split of the eval directory; a .json train file."""
    train = tmp_path / "train.json"
    train.write_text(json.dumps(TEST, indent=1))
    exp = Experiment(data=DataSection(train=str(train), eval=saved, eval_split="test"))
    assert _records(exp.data.open_train()) == TEST
    assert _records(_held_out(exp, None, read=lambda source: source)[1]) == TRAIN[:1]
