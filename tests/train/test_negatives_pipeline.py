"""D2O end to end, as the paper runs it: anchors sampled from the initial model, then `jalign train`.

``experiments/d2o_anchors.py`` samples ``K`` responses per prompt from a
saved reference checkpoint and writes ranked records with the human negative
last; `jalign train` then trains ``d2o`` on them against the same checkpoint
as reference. Slow: it generates and trains.
"""

import json
import pathlib
import sys

import numpy as np
import pytest
from flax import nnx

from jalign import cli
from jalign.models import Decoder, save_hf
from jalign.models.tokenizer import train_tiny_tokenizer

from registry_experiment import ARCH

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))

import d2o_anchors  # noqa: E402


@pytest.mark.slow
def test_negatives_become_anchored_lists_and_train_d2o(tmp_path, capsys):
    pairs = [json.loads(line) for line in (REPO / "experiments" / "data" / "tiny_pref.jsonl").read_text().splitlines()]
    negatives = tmp_path / "negatives.jsonl"
    negatives.write_text("".join(json.dumps({"prompt": p["prompt"], "rejected": p["rejected"]}) + "\n"
                                 for p in pairs[:8]))
    train_tiny_tokenizer([json.dumps(p) for p in pairs], ARCH.vocab_size, tmp_path / "tokenizer")
    save_hf(Decoder(ARCH, rngs=nnx.Rngs(3)), str(tmp_path / "sft"))
    out = tmp_path / "d2o.jsonl"
    d2o_anchors.main([str(negatives), "--model", str(tmp_path / "sft"), "--tokenizer", str(tmp_path / "tokenizer"),
                      "--out", str(out), "--k", "3", "--max-new-tokens", "6"])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 8
    for record, pair in zip(records, pairs):
        assert record["responses"][-1] == pair["rejected"] and record["scores"] == [1.0, 1.0, 1.0, 0.0]
    argv = ["train", str(pathlib.Path(__file__).with_name("registry_experiment.py"))]
    for assignment in ("objective=d2o", f"data.train={out}", f"model.hf_dir={tmp_path / 'sft'}",
                       f"model.tokenizer={tmp_path / 'tokenizer'}", "data.on_error=skip",
                       f"train.out_dir={tmp_path / 'run'}"):
        argv += ["--set", assignment]
    assert cli.main(argv) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) and row["update_norm"] > 0 for row in rows)
