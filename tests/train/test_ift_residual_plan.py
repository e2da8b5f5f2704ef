"""IFT's temporal residual connection as a declaration: composed, planned, refused online, tabular no-op.

The forward itself is checked against the authors' procedure on
`transformers` in ``tests/models/test_residual_inputs.py``; the run through
`jalign train` is a slow test below (its losses at step 1, before any update,
differ from the teacher-forced run's: the provider did feed mixed inputs), and
another runs the two-pass step on 8 simulated devices against one.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jalign.objectives import Requirements, dpo, ift, online_dpo, parse, sft
from jalign.objectives.declaration import ANY
from jalign import tabular as tb
from jalign.train.provider import RefusedObjective, plan_inputs

PAIRED = ("prompt", "chosen", "rejected")


def test_ift_declares_the_authors_lambda_and_sums_carry_it():
    assert ift().requires.residual == 0.2                     # config/loss/ift.yaml: min_lambda = max_lambda = 0.2
    assert ift(lam=0.0).requires == Requirements(responses=ANY, reference=False)
    assert (dpo() + 0.5 * ift(lam=0.3)).requires.residual == 0.3
    assert parse("ift(lam=0.1) + sft").requires.residual == 0.1
    assert "residual inputs (lambda=0.2)" in ift().requires.describe()
    with pytest.raises(ValueError, match="different residual inputs"):
        _ = (ift(lam=0.2) + ift(lam=0.3)).requires
    with pytest.raises(ValueError, match=r"residual must be in \[0, 1\]"):
        ift(lam=1.5).requires


def test_the_plan_carries_the_residual_and_online_runs_refuse_it_by_name():
    assert plan_inputs(ift(), data_kind="paired", columns=PAIRED).residual == 0.2
    assert plan_inputs(ift(lam=0.0), data_kind="paired", columns=PAIRED).residual == 0.0
    assert plan_inputs(dpo(), data_kind="paired", columns=PAIRED).residual == 0.0
    with pytest.raises(RefusedObjective, match=r"online_dpo\+ift online:[\s\S]*residual inputs \(lambda=0.2\)"):
        plan_inputs(online_dpo() + ift(), online=True)
    assert plan_inputs(online_dpo() + ift(lam=0.0), online=True).residual == 0.0


def test_tabular_ift_reaches_the_data_distribution():
    """One-token responses have no input to mix: the engine serves the declaration unchanged.

    With one token the relation-propagation weight is 1, so the loss is the
    expected NLL of the data; its closed-form minimiser is the data
    distribution itself (NumPy), which gradient descent on the logits reaches.
    """
    data = jnp.asarray([[0.5, 0.3, 0.15, 0.05]])
    game = tb.make_game(tb.cyclic_game(4), jnp.zeros(4))

    def loss(objective, logits):
        log_pi = tb.log_policy(logits)
        return objective(tb.batch_for(objective, game, tb.Policies(log_pi, log_pi, log_pi), data=data))[0]

    logits = jnp.zeros((1, 4))
    np.testing.assert_array_equal(loss(ift(), logits), loss(ift(lam=0.0), logits))
    step = jax.jit(lambda x: x - 2.0 * jax.grad(lambda y: loss(ift(), y))(x))
    for _ in range(300):
        logits = step(logits)
    np.testing.assert_allclose(np.exp(np.asarray(tb.log_policy(logits))), np.asarray(data), atol=1e-4)


@pytest.mark.slow
def test_ift_trains_through_the_cli_with_the_residual_connection(tmp_path, capsys):
    """Step-1 losses differ between lam=0.2 and lam=0 (same initial weights, same batch): the TRC is applied."""
    from jalign import cli
    from jalign.models.tokenizer import train_tiny_tokenizer

    repo = pathlib.Path(__file__).resolve().parents[2]
    data = repo / "experiments" / "data" / "tiny_pref_scored.jsonl"
    from registry_experiment import ARCH

    train_tiny_tokenizer(data.read_text().splitlines(), ARCH.vocab_size, tmp_path / "tokenizer")
    experiment = str(pathlib.Path(__file__).with_name("registry_experiment.py"))
    rows = {}
    for lam in (0.2, 0.0):
        out = tmp_path / f"run{lam}"
        argv = ["train", experiment]
        for assignment in (f"objective=ift(lam={lam})", f"data.train={data}", "data.preference_field=preference",
                           f"model.tokenizer={tmp_path / 'tokenizer'}", f"train.out_dir={out}"):
            argv += ["--set", assignment]
        assert cli.main(argv) == 0
        capsys.readouterr()
        rows[lam] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows[0.2]:
        assert np.isfinite(row["loss"]) and row["finite"] == 1.0 and row["update_norm"] > 0
    assert abs(rows[0.2][0]["loss"] - rows[0.0][0]["loss"]) > 1e-4


@pytest.mark.slow
def test_residual_step_on_eight_devices_matches_one_device():
    """``residual_step_script.py``: ift's two-pass step on data x fsdp x tensor = 2x2x2 equals one device's."""
    import os
    import subprocess
    import sys

    here = pathlib.Path(__file__).parent
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(here / "residual_step_script.py")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-4000:]
