"""Quickstart: align a tiny model to a programmatic preference, on CPU, in minutes.

The task: a prompt ``"favour: c"`` asks for a string of the letters a-d; the
true reward of a response is the fraction of its letters that are the
favoured one. The run goes through every layer of jalign:

1. a byte-level BPE tokenizer is trained on the task's text;
2. a tiny Llama-style decoder learns the task's format by supervised
   fine-tuning (``sft()``) on uniformly random strings: this is the reference
   policy, with true reward about 1/4;
3. two responses per prompt are sampled from the reference and labelled by the
   true reward, giving a preference file in TRL's standard format;
4. the composed objective ``dpo(beta=0.1) + 0.05 * sft()`` (RPO) trains the
   policy from it; every ``eval_every`` steps responses are sampled from the
   policy and scored: the true reward and the KL to the reference, estimated
   as the mean of ``log pi(y) - log pi_ref(y)`` over those samples.

It prints the reward-against-KL table and writes ``quickstart.png`` and
``quickstart.json`` in ``train.out_dir``.

    jalign train experiments/quickstart.py
    jalign train experiments/quickstart.py --set objective.dpo.beta=0.3 --set train.steps=100
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from flax import nnx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jalign.models import ModelConfig, load_hf, save_hf
from jalign.models.sampling import SamplingConfig, generate
from jalign.models.tokenizer import load_tokenizer, train_tiny_tokenizer
from jalign.objectives import dpo, sft
from jalign.train.config import DataSection, Experiment, ModelSection, TrainSection
from jalign.models.scoring import score
from jalign.train.loop import final_policy, train
from jalign.train.optim import OptimizerConfig

LETTERS = "abcd"
RESPONSE_LENGTH = 8
NUM_PROMPTS = 1024


def true_reward(prompt: str, response: str) -> float:
    """Fraction of the response's letters that are the prompt's favoured letter."""
    favoured = prompt.rsplit(" ", 1)[-1]
    letters = [c for c in response if c in LETTERS]
    return letters.count(favoured) / max(len(letters), 1)


def _prompts(rng: np.random.Generator, n: int) -> list[str]:
    return [f"favour: {LETTERS[i]}" for i in rng.integers(0, len(LETTERS), n)]


def _random_response(rng: np.random.Generator) -> str:
    return " " + "".join(rng.choice(list(LETTERS), RESPONSE_LENGTH))


def experiment() -> Experiment:
    """The preference-training phase; ``run`` prepares tokenizer, reference and data first."""
    arch = ModelConfig("llama", vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=16, mlp_dim=128)
    out = "runs/quickstart"
    return Experiment(
        model=ModelSection(arch=arch, tokenizer=f"{out}/tokenizer"),
        data=DataSection(train=f"{out}/preferences.jsonl", max_length=48),
        objective=dpo(beta=0.1) + 0.05 * sft(),
        optimizer=OptimizerConfig(learning_rate=2e-3, warmup_steps=10, schedule="constant"),
        train=TrainSection(steps=200, batch_size=16, out_dir=out, log_every=10, eval_every=50,
                           checkpoint_every=0, extras=()))


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _sample(policy, tokenizer, prompts: list[str], key) -> tuple[list[str], dict]:
    """One sampled response per prompt, and the batch that scores it (G = 1)."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    prompt = np.zeros((len(prompts), width), np.int32)
    prompt_mask = np.zeros_like(prompt)
    for i, ids in enumerate(encoded):
        prompt[i, width - len(ids):], prompt_mask[i, width - len(ids):] = ids, 1
    cfg = SamplingConfig(max_new_tokens=RESPONSE_LENGTH + 2, pad_token=tokenizer.pad_token_id)
    out = generate(policy, jnp.asarray(prompt), jnp.asarray(prompt_mask), key, cfg,
                   stop_tokens=jnp.asarray([tokenizer.eos_token_id]))
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    texts = [tokenizer.decode(t[m & (t != tokenizer.eos_token_id)]) for t, m in zip(tokens, mask)]
    batch = dict(prompt_tokens=prompt, prompt_mask=prompt_mask, response_tokens=tokens[:, None],
                 response_mask=mask[:, None].astype(np.int32))
    return texts, batch


@nnx.jit
def _sequence_log_ratios(policy, reference, batch):
    own, mask = score(policy, batch, impl="chunked")
    ref, _ = score(reference, batch, impl="chunked")
    return jnp.sum((own - ref) * mask, axis=-1)[:, 0]


def evaluate(policy, reference, tokenizer, prompts: list[str], key) -> dict:
    """True reward and Monte-Carlo KL(pi || pi_ref) of responses sampled from ``policy``."""
    texts, batch = _sample(policy, tokenizer, prompts, key)
    rewards = [true_reward(p, t) for p, t in zip(prompts, texts)]
    kl = np.asarray(_sequence_log_ratios(policy, reference, batch))
    return {"true_reward": float(np.mean(rewards)), "kl_to_reference": float(np.mean(kl))}


def _reference(config: Experiment, rng: np.random.Generator, sft_steps: int) -> pathlib.Path:
    """Trains the tokenizer and the SFT reference; exports it as a Hugging Face checkpoint."""
    out = pathlib.Path(config.train.out_dir)
    sft_rows = [{"prompt": p, "completion": _random_response(rng), "label": True}
                for p in _prompts(rng, NUM_PROMPTS)]
    if not pathlib.Path(config.model.tokenizer).exists():
        train_tiny_tokenizer([r["prompt"] + r["completion"] for r in sft_rows], config.model.arch.vocab_size,
                             config.model.tokenizer)
    _write_jsonl(out / "sft.jsonl", sft_rows)
    sft_config = dataclasses.replace(
        config, objective=sft(), data=dataclasses.replace(config.data, train=str(out / "sft.jsonl")),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=10, schedule="cosine"),
        train=dataclasses.replace(config.train, steps=sft_steps, out_dir=str(out / "sft"), eval_every=0))
    train(sft_config, progress=False)
    hf_dir = out / "reference_hf"
    save_hf(final_policy(sft_config), str(hf_dir))
    return hf_dir


def _preference_rows(reference, tokenizer, rng: np.random.Generator) -> list[dict]:
    """Two reference samples per prompt, the truly better one chosen; ties and empty samples dropped."""
    prompts = _prompts(rng, NUM_PROMPTS)
    first, _ = _sample(reference, tokenizer, prompts, jax.random.key(1))
    second, _ = _sample(reference, tokenizer, prompts, jax.random.key(2))
    rows = []
    for prompt, a, b in zip(prompts, first, second):
        ra, rb = true_reward(prompt, a), true_reward(prompt, b)
        if ra != rb and a != b and a.strip() and b.strip():
            chosen, rejected = (a, b) if ra > rb else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def run(config: Experiment, *, quick: bool = False) -> dict:
    """Reference by SFT, preference data sampled from it, preference training with evaluation.

    ``quick`` shortens the SFT phase and the evaluation set (the test's run).
    """
    rng = np.random.default_rng(config.train.seed)
    out = pathlib.Path(config.train.out_dir)
    hf_dir = _reference(config, rng, sft_steps=80 if quick else 120)
    tokenizer = load_tokenizer(config.model.tokenizer)
    reference = load_hf(str(hf_dir))
    rows = _preference_rows(reference, tokenizer, rng)
    _write_jsonl(pathlib.Path(config.data.train), rows)

    eval_prompts = _prompts(np.random.default_rng(1234), 64 if quick else 128)
    curve = [{"step": 0, **evaluate(reference, reference, tokenizer, eval_prompts, jax.random.key(0))}]

    def on_eval(step, policy, reference_model):
        metrics = evaluate(policy, reference_model, tokenizer, eval_prompts, jax.random.key(step))
        curve.append({"step": step, **metrics})
        return metrics

    preference_config = dataclasses.replace(config, model=dataclasses.replace(config.model, hf_dir=str(hf_dir)))
    result = train(preference_config, evaluate=on_eval, progress=not quick)
    return _report(out, curve, len(rows), result, preference_config.objective.name)


def _report(out: pathlib.Path, curve: list[dict], pairs: int, result: dict, objective: str) -> dict:
    """Prints the reward-against-KL table; writes quickstart.json and quickstart.png."""
    lines = ["| step | true reward | KL(pi || ref) |", "|---|---|---|"]
    lines += [f"| {c['step']} | {c['true_reward']:.3f} | {c['kl_to_reference']:.3f} |" for c in curve]
    print("\n".join(lines))
    summary = {"objective": objective, "pairs": pairs, "curve": curve, "final_metrics": result["metrics"], "data": result["data"]}
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([c["kl_to_reference"] for c in curve], [c["true_reward"] for c in curve], "o-")
    for c in curve:
        ax.annotate(f"step {c['step']}", (c["kl_to_reference"], c["true_reward"]), fontsize=7)
    ax.set(xlabel="KL(pi || pi_ref), Monte-Carlo", ylabel="true reward",
           title=f"{objective}: true reward vs KL to the reference")
    fig.tight_layout()
    fig.savefig(out / "quickstart.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'quickstart.png'} and {out / 'quickstart.json'}")
    return summary
