"""Every registered objective through `jalign train`: it trains, or it is refused by name.

Each objective goes through the CLI code path (``jalign.cli.main`` with an
experiment file and ``--set`` overrides) on a one-layer model for three steps,
on shipped data that carries the labels its declaration names. Offline
objectives must give a finite loss and a non-zero parameter update at every
step; objectives whose responses are sampled during training must be refused
before anything is built, with the reason, when the run has no prompts and
judge to generate them with (``tests/train/test_online_training.py`` trains them). By default one objective per
distinct input declaration runs (18 of 49: each way the provider serves
inputs); ``--runslow`` runs every one.
"""

import json
import pathlib

import numpy as np
import pytest
from flax import nnx

from jalign import cli
from jalign.models import Decoder, save_hf
from jalign.models.tokenizer import train_tiny_tokenizer
from jalign.objectives import make, registered
from jalign.train.provider import RefusedObjective

from registry_experiment import ARCH

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO / "experiments" / "data"
EXPERIMENT = str(pathlib.Path(__file__).with_name("registry_experiment.py"))
SAMPLED = sorted(name for name in registered() if make(name).sampling is not None)
OFFLINE = sorted(name for name in registered() if make(name).sampling is None)
DATA_FOR = {"pair": "tiny_pref_scored.jsonl", "any": "tiny_pref_scored.jsonl", "single": "tiny_unpaired.jsonl",
            "list": "tiny_ranked.jsonl", "triple": "tiny_ranked.jsonl"}
DATA_FOR_NAME = {"jpo": "tiny_joint_pref.jsonl",  # pairs whose responses answer different instructions
                 "poft": "tiny_pref_aligned.jsonl",  # the aligned models' likelihoods only this file carries
                 "multi_reward": "tiny_pref_attributes.jsonl"}  # per-response attribute ratings
# Issue 15's objectives, past the default run's budget: --runslow (their plans are checked by default).
SLOW_ONLY = {"d2o", "ift", "jpo", "mapo", "poft", "sem_dpo", "multi_reward",
             "aligndistil"}  # builds two more models (its DPO and reverse-DPO teachers)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tokenizer trained on the shipped data and random guide (TGDPO) and teacher (AlignDistil) checkpoints."""
    root = tmp_path_factory.mktemp("registry")
    texts = [line for name in sorted(set(DATA_FOR.values())) for line in (DATA / name).read_text().splitlines()]
    train_tiny_tokenizer(texts, ARCH.vocab_size, root / "tokenizer")
    save_hf(Decoder(ARCH, rngs=nnx.Rngs(7)), str(root / "guide"))
    save_hf(Decoder(ARCH, rngs=nnx.Rngs(8)), str(root / "teacher"))
    save_hf(Decoder(ARCH, rngs=nnx.Rngs(9)), str(root / "teacher_contrast"))
    return root


def _train(assets, tmp_path, name, *extra_sets, capsys):
    data = DATA / DATA_FOR_NAME.get(name, DATA_FOR[make(name).requires.responses])
    sets = [f"objective={name}", f"data.train={data}", f"model.tokenizer={assets / 'tokenizer'}",
            f"model.guide={assets / 'guide'}", f"model.teacher={assets / 'teacher'}",
            f"model.teacher_contrast={assets / 'teacher_contrast'}", f"train.out_dir={tmp_path / 'run'}", *extra_sets]
    if data.name == "tiny_pref_scored.jsonl":
        sets.append("data.preference_field=preference")
    argv = ["train", EXPERIMENT]
    for assignment in sets:
        argv += ["--set", assignment]
    assert cli.main(argv) == 0
    capsys.readouterr()
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def _check_trained(rows):
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert np.isfinite(row["loss"]) and row["finite"] == 1.0
        assert row["update_norm"] > 0, row


def _one_per_declaration(names):
    """The first objective of each distinct ``requires`` runs by default, the others with --runslow."""
    seen, params = set(), []
    for name in names:
        key = repr(make(name).requires)
        if key in seen or name in SLOW_ONLY:
            params.append(pytest.param(name, marks=pytest.mark.slow))
        else:
            params.append(name)
            seen.add(key)
    return params


@pytest.mark.parametrize("name", _one_per_declaration(OFFLINE))
def test_offline_objective_trains_through_the_cli(name, assets, tmp_path, capsys):
    _check_trained(_train(assets, tmp_path, name, capsys=capsys))


def test_sparsepo_with_the_reference_activation_mask_trains(assets, tmp_path, capsys):
    _check_trained(_train(assets, tmp_path, "sparsepo", "objective.mask=reference", capsys=capsys))


@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_objective_is_refused_before_building(name, assets, tmp_path, monkeypatch, capsys):
    """The CLI prints the provider's refusal as one user error (exit 2); no model is built."""
    import jalign.train.loop as loop

    monkeypatch.setattr(loop, "build_model", lambda *a, **k: pytest.fail("built a model for a refused objective"))
    with pytest.raises(RefusedObjective, match=rf"{name}: its responses are sampled during training"):
        loop.plan_for(_experiment(assets, tmp_path, name))
    argv = ["train", EXPERIMENT, "--set", f"objective={name}", "--set", f"data.train={DATA / DATA_FOR['pair']}",
            "--set", f"model.tokenizer={assets / 'tokenizer'}", "--set", f"train.out_dir={tmp_path / 'run'}"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert f"{name}: its responses are sampled during training" in error and "online.prompts" in error


def _experiment(assets, tmp_path, name):
    from jalign.train.overrides import apply_overrides

    module = cli.load_module(pathlib.Path(EXPERIMENT))
    return apply_overrides(module.experiment(), [
        f"objective={name}", f"data.train={DATA / DATA_FOR[make(name).requires.responses]}",
        f"model.tokenizer={assets / 'tokenizer'}", f"train.out_dir={tmp_path / 'run'}"])


def test_the_registry_splits_into_these_two_groups():
    assert set(SAMPLED) == {"online_ipo", "ipo_md", "nash_md", "nash_md_pg", "sppo", "inpo", "egpo", "online_dpo",
                            "reinforce", "rloo", "grpo", "ppo_clip", "online_copg", "rso", "grao",
                            "spin", "selm", "xpo", "cream", "dataset_reset", "rsf", "ppo"}
    assert len(OFFLINE) + len(SAMPLED) == len(registered())
