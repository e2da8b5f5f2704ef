"""SALSA's soup reference (``model.reference_soup``, ``jalign.train.soup``).

Independent references: the soup's parameters against a float64 NumPy
weighted average of the checkpoints' tensors; the trained run's reference
log-probs against a decoder whose weights were averaged by hand (NumPy) and
set with ``nnx.update``, scored by ``jalign.models.scoring.score``.
"""

import json
import pathlib

import numpy as np
import pytest
from flax import nnx

from jalign import cli
from jalign.models import Decoder, save_hf
from jalign.models.scoring import score
from jalign.objectives import dpo, online_dpo, simpo
from jalign.sharding import make_mesh
from jalign.sharding.mesh import MeshConfig
from jalign.train.provider import FROZEN, SOUP, RefusedObjective, plan_inputs
from jalign.train.soup import load_soup, soup_weights

from registry_experiment import ARCH

PAIRED = ("prompt", "chosen", "rejected")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    models = [Decoder(ARCH, rngs=nnx.Rngs(seed)) for seed in (11, 12)]
    dirs = []
    for i, model in enumerate(models):
        save_hf(model, str(root / f"sft{i}"))
        dirs.append(str(root / f"sft{i}"))
    return dirs, models


def _flat(state):
    return {path: np.asarray(var.get_value(), np.float64) for path, var in nnx.to_flat_state(state)}


def test_soup_parameters_are_the_weighted_average(checkpoints):
    dirs, models = checkpoints
    section = MeshConfig()
    mesh, rules = make_mesh(section), section.rule_table()
    like = nnx.state(Decoder(ARCH, rngs=nnx.Rngs(0)), nnx.Param)
    weights = (0.3, 0.7)
    soup = _flat(load_soup(dirs, weights, like, mesh=mesh, rules=rules))
    expected = [_flat(nnx.state(m, nnx.Param)) for m in models]
    assert sorted(soup) == sorted(expected[0])
    for path, value in soup.items():
        average = sum(w * e[path] for w, e in zip(weights, expected))
        np.testing.assert_allclose(value, average, rtol=1e-6, atol=1e-6, err_msg=str(path))


def test_soup_weights_default_uniform_and_checked():
    assert soup_weights(["a", "b"], ()) == (0.5, 0.5)
    for bad in [(0.5,), (0.7, 0.7), (1.5, -0.5)]:
        with pytest.raises(ValueError, match="model.reference_soup_weights"):
            soup_weights(["a", "b"], bad)
    with pytest.raises(ValueError, match="at least two"):
        soup_weights(["a"], ())


def test_the_provider_decides_the_soup_reference_once():
    assert plan_inputs(dpo(), data_kind="paired", columns=PAIRED).reference == FROZEN
    assert plan_inputs(dpo(), data_kind="paired", columns=PAIRED, soup=True).reference == SOUP
    assert plan_inputs(online_dpo(), online=True, soup=True).reference == SOUP
    refusals = [(dpo(), dict(lora=True), "LoRA"), (dpo(), dict(reference_mode="precomputed"), "precomputed"),
                (simpo(), {}, "reads no reference")]
    for objective, options, message in refusals:
        with pytest.raises(RefusedObjective, match=f"model.reference_soup.*{message}"):
            plan_inputs(objective, data_kind="paired", columns=PAIRED, soup=True, **options)


@pytest.mark.slow
def test_training_reads_the_soup_reference(checkpoints, tmp_path):
    """`jalign train` with a soup: it trains, and its reference log-probs are the hand-averaged model's."""
    from jalign.models.tokenizer import train_tiny_tokenizer
    from jalign.train.hosts import device_batch
    from jalign.train.loop import build

    dirs, models = checkpoints
    repo = pathlib.Path(__file__).resolve().parents[2]
    data = repo / "experiments" / "data" / "tiny_pref.jsonl"
    train_tiny_tokenizer(data.read_text().splitlines(), ARCH.vocab_size, tmp_path / "tokenizer")
    experiment = str(pathlib.Path(__file__).with_name("registry_experiment.py"))
    sets = ["objective=dpo", f"data.train={data}", f"model.tokenizer={tmp_path / 'tokenizer'}",
            f"model.reference_soup=[{dirs[0]},{dirs[1]}]", "model.reference_soup_weights=[0.25,0.75]",
            f"train.out_dir={tmp_path / 'run'}", "train.extras=[policy_kl]"]
    argv = ["train", experiment]
    for assignment in sets:
        argv += ["--set", assignment]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    # The policy starts from a random init, not the soup: the first step's KL to the soup is far from 0.
    assert rows[0]["kl/policy_kl"] > 1e-3

    exp = cli.load_experiment(experiment, sets)[1]
    run = build(exp)
    batch = device_batch(next(run.iterator), run.mesh)
    reference = nnx.merge(run.graphdef, run.frozen.reference, run.frozen.rest)
    by_hand = Decoder(ARCH, rngs=nnx.Rngs(0))
    averaged = {path: 0.25 * a + 0.75 * b for (path, a), b in
                zip(_flat(nnx.state(models[0], nnx.Param)).items(), _flat(nnx.state(models[1], nnx.Param)).values())}
    nnx.update(by_hand, nnx.from_flat_state([(p, v.replace(np.asarray(averaged[p], np.float32)))
                                             for p, v in nnx.to_flat_state(nnx.state(by_hand, nnx.Param))]))
    got, mask = score(reference, batch)[:2]
    want = score(by_hand, batch)[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
