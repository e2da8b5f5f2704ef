"""Sampled generations at held-out evaluation (``train.eval_generations``), checked against a plain forward.

The independent reference is greedy decoding by hand: the policy is run on
the whole prefix for every new token (one jitted full forward over a
right-padded ``[1, P + N]`` row, no KV cache) and the argmax appended, until
EOS or the token budget. Its decoded text must be the logged response.
"""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jalign.data import read_preferences
from jalign.models import Decoder
from jalign.models.tokenizer import load_tokenizer
from jalign.sharding import make_mesh, MeshConfig
from jalign.train.config import DataSection, Experiment
from jalign.train.generations import EvalGenerations
from jalign.train.loop import train
from jalign.train.metrics_log import MetricsWriter
from test_faults_logs import _events
from tiny_experiment import DATA, experiment

SHOWN, EVAL_RECORDS, NEW_TOKENS = 2, 3, 6


@nnx.jit
def _forward(policy, tokens, mask):
    return policy(tokens, mask)


def _greedy_text(policy, prompt: np.ndarray, tokenizer) -> str:
    """The decoded argmax continuation of prompt ``[P]``: NEW_TOKENS full forwards, stopping at EOS."""
    eos, length = tokenizer.eos_token_id, len(prompt)
    tokens = np.zeros((1, length + NEW_TOKENS), np.int32)
    tokens[0, :length] = prompt
    answer = []
    for t in range(NEW_TOKENS):
        mask = np.arange(tokens.shape[1])[None] < length + t
        logits = _forward(policy, jnp.asarray(tokens), jnp.asarray(mask))          # [1, P + N, V]
        tokens[0, length + t] = int(jnp.argmax(logits[0, length + t - 1]))
        if tokens[0, length + t] == eos:
            break
        answer.append(int(tokens[0, length + t]))
    return tokenizer.decode(answer, skip_special_tokens=True)


def _held_out(tmp_path):
    """The first EVAL_RECORDS records of the tiny file, as a held-out file; and the records."""
    records = [json.loads(line) for line in DATA.read_text().splitlines()[:EVAL_RECORDS]]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, records


def _experiment(tmp_path, held_out, steps):
    base = experiment(tmp_path, steps, checkpoint_every=0)
    return Experiment(model=base.model, objective=base.objective, optimizer=base.optimizer,
                      data=DataSection(train=str(DATA), max_length=128, eval=str(held_out)),
                      train=dataclasses.replace(base.train, eval_every=1, eval_generations=SHOWN,
                                                eval_max_new_tokens=NEW_TOKENS))


def _check_rows(rows, records, expected):
    for row in rows:
        assert row["response"] == expected[row["step"], row["record"]], row
        assert row["chosen"].strip() == records[row["record"]]["chosen"].strip()
        assert records[row["record"]]["prompt"] in row["prompt"]
    assert any(r["response"] for r in rows), "every response is empty: the comparison checked little"


def _texts(directory):
    """``{(step, tag): markdown}`` of the generation texts in ``directory``'s TensorBoard events."""
    return {(e.step, v.tag): v.tensor.string_val[0].decode() for e in _events(directory)
            for v in e.summary.value if v.tag.startswith("generations/")}


def test_generations_are_the_greedy_answers_and_reach_jsonl_and_tensorboard(tmp_path):
    """A random tiny decoder answers the first 2 of 3 held-out prompts (rows padded to the mesh); the writer
    puts one JSONL row and one TensorBoard text per prompt, and a resume at step 3 drops step 7's rows."""
    held_out, records = _held_out(tmp_path)
    exp = _experiment(tmp_path, held_out, 1)
    tokenizer = load_tokenizer(exp.model.tokenizer)
    data = read_preferences(str(held_out), tokenizer)
    policy = Decoder(exp.model.arch, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(policy, nnx.Param, ...)
    mesh = make_mesh(MeshConfig())
    generations = EvalGenerations(exp, graphdef, tokenizer, data, mesh, MeshConfig().rule_table())

    writer = MetricsWriter(tmp_path / "run")
    for step in (3, 7):
        writer.write_generations(step, generations(params, rest, step))
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert [(r["step"], r["record"]) for r in rows] == [(3, 0), (3, 1), (7, 0), (7, 1)]
    answers = [_greedy_text(policy, data.examples[i].prompt, tokenizer) for i in range(SHOWN)]  # same policy
    expected = {(s, i): answers[i] for s in (3, 7) for i in range(SHOWN)}
    _check_rows(rows, records, expected)
    texts = _texts(tmp_path / "run")
    assert sorted(texts) == [(s, f"generations/record_{i}/text_summary") for s in (3, 7) for i in range(SHOWN)]
    for row in rows:
        text = texts[row["step"], f"generations/record_{row['record']}/text_summary"]
        assert all("    " + line in text for line in row["response"].splitlines()), text

    MetricsWriter(tmp_path / "run", resume_from=3, tensorboard=False).close()
    kept = (tmp_path / "run" / "generations.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in kept] == [3, 3]


def test_a_run_without_held_out_data_refuses_generations(tmp_path):
    exp = experiment(tmp_path, 1)
    with pytest.raises(ValueError, match="train.eval_generations needs held-out data"):
        EvalGenerations(dataclasses.replace(exp, train=dataclasses.replace(exp.train, eval_generations=2)),
                        None, None, None, None, None)


@pytest.mark.slow
def test_each_evaluation_of_a_run_writes_the_policys_greedy_answers(tmp_path):
    """2 steps, evaluated at both: 2 prompts x 2 steps rows; each response is the hand-decoded greedy text of
    the policy the ``evaluate`` hook receives at that step (the same state)."""
    held_out, records = _held_out(tmp_path)
    exp = _experiment(tmp_path, held_out, 2)
    tokenizer = load_tokenizer(exp.model.tokenizer)
    prompts = [e.prompt for e in read_preferences(str(held_out), tokenizer).examples[:SHOWN]]
    expected = {}

    def greedy_answers(step, policy, reference):
        expected.update({(step, i): _greedy_text(policy, prompt, tokenizer) for i, prompt in enumerate(prompts)})
        return {}

    train(exp, evaluate=greedy_answers, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert [(r["step"], r["record"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    _check_rows(rows, records, expected)
    assert sorted(_texts(tmp_path / "run")) == [(s, f"generations/record_{i}/text_summary")
                                                for s in (1, 2) for i in range(SHOWN)]
