"""PPO's critic in the trainer, and PPO and DR-PO (``dataset_reset(inner=ppo)``) through `jalign train`.

Independent references: the value head's output recomputed in NumPy from the
policy's final hidden states (``h w + b`` at the positions predicting each
response token, as the DR-PO authors slice ``full_value[:, context_length - 1
: -1]``); the head's initial parameters rebuilt from its seed (training must
move them, the checkpoint must give back the trained ones). Everything here
builds a model, so it is slow except the plan.
"""

import dataclasses
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jalign.models import Decoder
from jalign.models.scoring import encode_responses
from jalign.objectives import ppo
from jalign.train import loop
from jalign.train.provider import Plan, batch_logprobs
from jalign.train.value_head import ValueHead, add_value_head

from online_cli import train_online

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))
from decoder_batches import CFG, unpaired_batch  # noqa: E402
from online_experiment import DATA, experiment  # noqa: E402

COMPLETIONS = DATA / "tiny_prompt_completions.jsonl"
DRPO = "dataset_reset(inner=ppo)"


@pytest.mark.parametrize("name", ["ppo", DRPO])
def test_the_online_plan_serves_values_from_a_value_head(name, tmp_path):
    plan = loop.plan_for(experiment(tmp_path, 1, name, prompts=str(COMPLETIONS)))
    assert plan.value_extras == ("values",) and plan.needs_value_head and plan.sampling.labels == ("reward",)
    assert plan.sampling.reset == (1.0 if name == DRPO else 0.0)


@pytest.mark.slow
def test_the_value_head_reads_the_policys_hidden_states_and_its_gradient_reaches_it():
    batch = unpaired_batch()
    batch = {**batch, "labels": {**batch["labels"], "reward": jnp.asarray([[0.5], [-1.0], [2.0], [0.0]])}}
    policy, reference = Decoder(CFG, rngs=nnx.Rngs(0)), Decoder(CFG, rngs=nnx.Rngs(1))
    add_value_head(policy, rngs=nnx.Rngs(4))
    plan = Plan(reference="frozen", value_extras=("values",))
    lp = nnx.jit(lambda p, r: batch_logprobs(plan, p, r, batch, impl="chunked"))(policy, reference)
    own = encode_responses(policy, batch)
    head = policy.value_head
    expected = (np.einsum("bgre,e->bgr", np.asarray(own.hidden, np.float64), np.asarray(head.kernel[...]))
                + float(head.bias[...])) * np.asarray(own.target_mask)
    np.testing.assert_allclose(lp.extras["values"], expected, atol=1e-5)

    def loss(model, frozen):
        return ppo()(batch_logprobs(plan, model, frozen, batch, impl="chunked"))[0]

    grads = nnx.jit(nnx.grad(loss))(policy, reference)
    head_grads = jax.tree.leaves(nnx.state(grads.value_head))
    assert len(head_grads) == 2 and all(float(jnp.max(jnp.abs(g))) > 0 for g in head_grads)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppo", DRPO])
def test_ppo_and_drpo_train_with_generation_through_the_cli(name, tmp_path, monkeypatch, capsys):
    metrics, rows = train_online(name, tmp_path, monkeypatch, capsys, f"online.prompts={COMPLETIONS}")
    assert metrics["gen/length"] > 0
    assert all(math.isfinite(row[key]) for row in rows for key in ("value_loss", "value", "return"))


@pytest.mark.slow
def test_the_trained_value_head_survives_a_checkpoint_round_trip(tmp_path):
    exp = experiment(tmp_path, 2, "ppo", checkpoint_every=2)
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, eval_every=2))
    seen = {}

    def evaluate(step, policy, reference):
        seen[step] = [np.asarray(x) for x in jax.tree.leaves(nnx.state(policy.value_head))]
        return {}

    loop.train(exp, evaluate=evaluate, progress=False)
    initial = [np.asarray(x) for x in jax.tree.leaves(nnx.state(ValueHead(CFG.hidden_size, rngs=nnx.Rngs(
        exp.model.init_seed + 4))))]
    trained = seen[2]
    assert any(not np.allclose(a, b) for a, b in zip(trained, initial)), "training moved the value head"
    restored = [np.asarray(x) for x in jax.tree.leaves(nnx.state(loop.final_policy(exp).value_head))]
    for got, want in zip(restored, trained, strict=True):
        np.testing.assert_array_equal(got, want)
