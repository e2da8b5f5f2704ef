"""Online alignment on a transformer, measured exactly: Efron's dice as a two-token game.

A tiny Llama (random body, zero output head, so its reference distribution is
exactly uniform) answers the prompt ``"A B C D"`` with two tokens from a
five-token vocabulary: the blank ``_`` (also the padding token) and the
letters ``A-D``. The response space, ``5^2 = 25`` texts, is small enough to
enumerate: every response's exact probability comes from one forward pass of
the model (``jalign.models.scoring``), so the tabular toolkit measures the
transformer's policy exactly.

The game (a programmatic judge on texts). The first letter names one of
Efron's dice, A = (4,4,4,4,0,0), B = (3,3,3,3,3,3), C = (6,6,2,2,2,2),
D = (5,5,5,1,1,1): A beats B, B beats C, C beats D and D beats A, each with
probability 2/3 (ties count half). The second letter is ignored: each die has
four spellings, so the responses stay two tokens (two generation steps, a
per-token geometric mixture) while the game stays Efron's, and the
regularised equilibrium's second letter is the reference's (uniform), which
nothing but the KL term holds a method to. A response with a blank is
invalid and loses every comparison with a valid one.

The Bradley-Terry judge is :func:`jalign.tabular.preference_models.fit_bt` of
Efron's matrix: rewards ``(-0.056, 0, 0.056, 0)``, C on top. Its regularised
optimum ``pi ∝ ref exp(r / beta)`` leans on die C, which B beats, so it is
exploitable; the regularised Nash equilibrium
(:func:`jalign.tabular.solvers.regularized_nash`, ``tau = beta``, from the
model's exact reference distribution) is nearly uniform over the dice.

Methods, one run each from the same reference: offline DPO on reference
pairs labelled by the game (the normal offline path), online DPO with the BT
judge, online IPO, IPO-MD, Nash-MD and EGPO with the preference judge. Every
``eval_every`` steps the evaluation hook enumerates the policy and records its
exact exploitability and its total-variation distance to the equilibrium.

Run: ``python experiments/online_nash.py [--quick] [--out DIR] [--methods NAME ...]``
(writes ``online_nash.png``, ``online_nash.json`` and prints the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import shutil
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from jalign.models import Decoder, ModelConfig, load_hf, save_hf  # noqa: E402
from jalign.models.scoring import score  # noqa: E402
from jalign.objectives import make  # noqa: E402
from jalign.tabular import exploitability, kl_to, make_game, nash_md_step, regularized_nash  # noqa: E402
from jalign.tabular.preference_models import fit_bt  # noqa: E402
from jalign.tabular.report import write_outputs  # noqa: E402
from jalign.train.config import DataSection, Experiment, ModelSection, OnlineSection, TrainSection  # noqa: E402
from jalign.train.judges import FunctionJudge  # noqa: E402
from jalign.train.loop import train  # noqa: E402
from jalign.train.optim import OptimizerConfig  # noqa: E402

NAME = "online_nash"
BLANK, LETTERS = "_", "ABCD"
VOCAB = (BLANK,) + tuple(LETTERS)          # token ids 0..4; the blank pads
PROMPT = "A B C D"
FACES = {"A": (4, 4, 4, 4, 0, 0), "B": (3,) * 6, "C": (6, 6, 2, 2, 2, 2), "D": (5, 5, 5, 1, 1, 1)}
BETA = 0.05          # every method's KL strength, and the equilibrium's tau
MIXTURE = 0.1        # IPO-MD's and Nash-MD's constant geometric-mixture weight b
INVALID_GAP = 20.0   # the BT judge's reward of an invalid response: this far below the worst die
ARCH = ModelConfig("llama", vocab_size=len(VOCAB), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=8, mlp_dim=64)
FULL = {"steps": 300, "batch_size": 32, "eval_every": 20, "offline_pairs": 2048}
QUICK = {"steps": 20, "batch_size": 16, "eval_every": 10, "offline_pairs": 256}
# name -> (objective, its hyperparameters, judge: "bt" reward or the game's "preference")
METHODS = {
    "offline DPO": ("dpo", {"beta": BETA}, None),
    "online DPO (BT judge)": ("online_dpo", {"beta": BETA}, "bt"),
    "online IPO": ("online_ipo", {"tau": BETA}, "preference"),
    "IPO-MD": ("ipo_md", {"tau": BETA, "mixture": MIXTURE}, "preference"),
    "Nash-MD": ("nash_md", {"beta": BETA, "mixture": MIXTURE}, "preference"),
    "EGPO": ("egpo", {"beta": BETA}, "preference"),
}


# ----------------------------------------------------------------------------- the game on texts

def efron_matrix() -> np.ndarray:
    """``[4, 4]`` P(die i beats die j), a tie counting half (rows and columns in ``LETTERS`` order)."""
    faces = np.asarray([FACES[d] for d in LETTERS], np.float64)          # [4, 6]
    wins = faces[:, None, :, None] > faces[None, :, None, :]             # [4, 4, 6, 6]
    ties = faces[:, None, :, None] == faces[None, :, None, :]
    return np.mean(wins + 0.5 * ties, axis=(2, 3))


EFRON = efron_matrix()


def die_of(text: str) -> int | None:
    """The die (index into ``LETTERS``) a response text names, or None when it is not two letters.

    Spaces are dropped first: the tokenizer's decoder joins tokens with spaces.
    """
    letters = "".join(text.split())
    if len(letters) != 2 or any(c not in LETTERS for c in letters):
        return None
    return LETTERS.index(letters[0])


def game_preference(prompt: str, a: str, b: str) -> float:
    """The judge: P(a ≻ b) by Efron's dice; an invalid response loses to every valid one."""
    x, y = die_of(a), die_of(b)
    if x is None or y is None:
        return 0.5 if x == y else float(x is not None)
    return float(EFRON[x, y])


def bt_rewards() -> np.ndarray:
    """``[4]`` maximum-likelihood Bradley-Terry rewards of the dice (mean 0)."""
    return np.asarray(fit_bt(EFRON).params, np.float64)


def bt_reward_fn(rewards: np.ndarray):
    """``fn(prompt, text) -> reward`` of the BT judge; an invalid response sits ``INVALID_GAP`` below."""
    floor = float(rewards.min()) - INVALID_GAP

    def reward(prompt: str, text: str) -> float:
        die = die_of(text)
        return floor if die is None else float(rewards[die])

    return reward


# ----------------------------------------------------------------------------- tokenizer, model, enumeration

def make_tokenizer(out_dir: pathlib.Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``VOCAB`` split on whitespace, saved to ``out_dir``; the blank pads.

    There is no EOS token, so an offline response encodes to exactly its two tokens.
    """
    word_level = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token=None))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token=BLANK)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def make_reference(out_dir: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Saves the reference checkpoint and tokenizer to ``out_dir``: a random body, a zero output head.

    With a zero head every next-token distribution is uniform, so the
    reference is exactly uniform over the 25 responses; the body is random,
    so training moves the head first and the body from the next step on.
    """
    model = Decoder(ARCH, rngs=nnx.Rngs(seed))
    model.lm_head.kernel[...] = jnp.zeros_like(model.lm_head.kernel[...])
    save_hf(model, str(out_dir), pad_token_id=0)
    make_tokenizer(out_dir)
    return out_dir


@dataclasses.dataclass(frozen=True)
class ResponseSpace:
    """Every two-token response to ``PROMPT``.

    Attributes:
      tokens: ``[K, 2]`` token ids, ``K = V^2``.
      texts: the ``K`` decoded texts (what the judge reads).
      prompt: ``[P]`` the prompt's token ids.
    """

    tokens: np.ndarray
    texts: tuple[str, ...]
    prompt: np.ndarray

    @classmethod
    def of(cls, tokenizer) -> "ResponseSpace":
        v = len(VOCAB)
        tokens = np.stack(np.meshgrid(np.arange(v), np.arange(v), indexing="ij"), -1).reshape(-1, 2)
        texts = tuple(tokenizer.decode(t.tolist(), skip_special_tokens=False) for t in tokens)
        return cls(tokens.astype(np.int32), texts, np.asarray(tokenizer(PROMPT)["input_ids"], np.int32))

    def preference_matrix(self, judge=game_preference) -> np.ndarray:
        """``[K, K]`` the judge applied to every ordered pair of response texts."""
        return np.asarray([[judge(PROMPT, a, b) for b in self.texts] for a in self.texts], np.float64)

    def dice(self) -> np.ndarray:
        """``[K]`` the die of each response, -1 for invalid ones."""
        return np.asarray([-1 if die_of(t) is None else die_of(t) for t in self.texts])

    def batch(self) -> dict:
        """The scoring batch: one prompt, all ``K`` responses as its ``G = K`` completions."""
        k = len(self.tokens)
        return {"prompt_tokens": jnp.asarray(self.prompt[None]), "prompt_mask": jnp.ones((1, len(self.prompt)), bool),
                "response_tokens": jnp.asarray(self.tokens[None]), "response_mask": jnp.ones((1, k, 2), bool)}


@nnx.jit
def _response_logprobs(model, batch) -> jax.Array:
    logprobs, _ = score(model, batch)          # [1, K, 2]
    return jnp.sum(logprobs[0], axis=-1)       # [K]


def response_logprobs(model: nnx.Module, space: ResponseSpace) -> np.ndarray:
    """``[K]`` exact log pi(y | prompt) of every response (they sum to 1 in probability)."""
    return np.asarray(_response_logprobs(model, space.batch()), np.float64)


# ----------------------------------------------------------------------------- exact targets and metrics

def biased_fixed_point(game, tau: float, mixture: float, steps: int = 5_000) -> jax.Array:
    """``[1, K]`` log of the stationary point of a constant mixture ``b`` (see ``NashMD``'s docstring).

    The fixed point of exact Nash-MD with step ``eta = b / tau``:
    ``pi ∝ ref exp(P(. ≻ pi^(1-b) ref^b) / tau)``; it contracts like ``(1 - b)^t``.
    """
    eta = mixture / tau
    return jax.lax.fori_loop(0, steps, lambda _, lp: nash_md_step(game.preference, lp, game.log_ref, tau, eta),
                             game.log_ref)


def targets(space: ResponseSpace, log_ref: np.ndarray) -> dict:
    """The game and the exact policies each method should approach, as ``[1, K]`` log-probs."""
    game = make_game(space.preference_matrix(), jnp.asarray(log_ref, jnp.float32))
    rewards = bt_rewards()
    reward = bt_reward_fn(rewards)
    r = jnp.asarray([reward(PROMPT, t) for t in space.texts], jnp.float32)
    return {"game": game, "bt_rewards": rewards,
            "nash": regularized_nash(game.preference, game.log_ref, BETA),
            "bt_optimum": jax.nn.log_softmax(game.log_ref + r / BETA, axis=-1),
            "mixture_fixed_point": biased_fixed_point(game, BETA, MIXTURE)}


def exact_metrics(log_pi, game, log_nash, dice: np.ndarray) -> dict[str, float]:
    """Exploitability, distances to the equilibrium and the dice's marginals of a ``[K]`` log-policy."""
    log_pi = jnp.asarray(log_pi, jnp.float32).reshape(1, -1)
    pi, star = np.exp(np.asarray(log_pi[0], np.float64)), np.exp(np.asarray(log_nash[0], np.float64))
    out = {"exploitability": float(exploitability(game, log_pi)), "tv_to_nash": 0.5 * float(np.abs(pi - star).sum()),
           "kl_nash_to_policy": float(kl_to(log_nash, log_pi)), "invalid_mass": float(pi[dice < 0].sum())}
    out.update({f"p_{d}": float(pi[dice == i].sum()) for i, d in enumerate(LETTERS)})
    return out


def evaluation_hook(space: ResponseSpace, game, log_nash, log_ref: np.ndarray, history: list):
    """``evaluate(step, policy, reference)`` for ``train``: exact metrics, logged and appended to ``history``.

    ``history`` rows also keep the policy's ``[K]`` probabilities (for the JSON, not the log).

    Checks that the trainer's reference is the enumerated one (the equilibrium was computed from it).
    """
    dice = space.dice()

    def evaluate(step: int, policy, reference) -> dict[str, float]:
        if reference is not None and not np.allclose(response_logprobs(reference, space), log_ref, atol=1e-5):
            raise RuntimeError("the trainer's reference differs from the enumerated reference")
        log_pi = response_logprobs(policy, space)
        row = exact_metrics(log_pi, game, log_nash, dice)
        history.append({"step": step, **row, "policy": np.exp(log_pi)})
        return {f"exact/{k}": v for k, v in row.items()}

    return evaluate


# ----------------------------------------------------------------------------- the runs

def reference_pairs(space: ResponseSpace, log_ref: np.ndarray, count: int, path: pathlib.Path, seed: int = 0) -> int:
    """Writes ``count`` paired records sampled from the reference and labelled by the game.

    Both responses are drawn independently from the exact reference; the
    judge's probability decides the winner by a coin flip (as a rater
    would); identical pairs carry no comparison and are redrawn.
    """
    rng = np.random.default_rng(seed)
    probs = np.exp(log_ref) / np.exp(log_ref).sum()
    lines = []
    while len(lines) < count:
        a, b = rng.choice(len(probs), size=2, p=probs)
        if a == b:
            continue
        first, second = space.texts[a], space.texts[b]
        if rng.random() >= game_preference(PROMPT, first, second):
            first, second = second, first
        lines.append(json.dumps({"prompt": PROMPT, "chosen": first, "rejected": second}))
    path.write_text("\n".join(lines) + "\n")
    return count


def method_experiment(method: str, config: dict, reference_dir: pathlib.Path, run_dir: pathlib.Path,
                      data: dict) -> Experiment:
    """The experiment of one method: offline through ``data.train``, online through an ``OnlineSection``."""
    name, hyper, judge = METHODS[method]
    common = dict(model=ModelSection(hf_dir=str(reference_dir)), objective=make(name, **hyper),
                  optimizer=OptimizerConfig(learning_rate=3e-3, schedule="cosine", final_fraction=0.1,
                                            warmup_steps=5, max_grad_norm=1.0),
                  train=TrainSection(steps=config["steps"], batch_size=config["batch_size"], out_dir=str(run_dir),
                                     log_every=config["eval_every"], eval_every=config["eval_every"], extras=()))
    if judge is None:
        return Experiment(data=DataSection(train=str(data["pairs"]), max_length=8), **common)
    function = (FunctionJudge(bt_reward_fn(bt_rewards()), kind="reward") if judge == "bt"
                else FunctionJudge(game_preference, kind="preference"))
    online = OnlineSection(prompts=str(data["prompts"]), judge=function, max_new_tokens=2, temperature=1.0,
                           stop_tokens=())
    return Experiment(online=online, **common)


def run_name(method: str) -> str:
    """The folder name of a method's run: ``"online DPO (BT judge)"`` -> ``"online_dpo_bt_judge"``."""
    return re.sub(r"[^a-z0-9]+", "_", method.lower()).strip("_")


def run_method(method: str, config: dict, out_dir: pathlib.Path, setup: dict) -> dict:
    """Trains one method from the reference; returns its exact-metric history and wall-clock seconds."""
    run_dir = out_dir / "runs" / run_name(method)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time: train() would resume a finished one
    history = [{"step": 0, **setup["reference_metrics"], "policy": np.exp(setup["log_ref"])}]
    hook = evaluation_hook(setup["space"], setup["targets"]["game"], setup["targets"]["nash"], setup["log_ref"],
                           history)
    start = time.perf_counter()
    train(method_experiment(method, config, setup["reference_dir"], run_dir, setup["data"]), evaluate=hook,
          progress=False)
    return {"history": history, "seconds": time.perf_counter() - start}


def prepare(out_dir: pathlib.Path, config: dict) -> dict:
    """Reference checkpoint, response space, exact targets, the offline pairs and the prompt file."""
    reference_dir = make_reference(out_dir / "reference")
    space = ResponseSpace.of(make_tokenizer(reference_dir))
    log_ref = response_logprobs(load_hf(str(reference_dir)), space)
    found = targets(space, log_ref)
    data = {"pairs": out_dir / "reference_pairs.jsonl", "prompts": out_dir / "prompts.jsonl"}
    reference_pairs(space, log_ref, config["offline_pairs"], data["pairs"])
    data["prompts"].write_text(json.dumps({"prompt": PROMPT}) + "\n")
    dice = space.dice()
    fixed = {k: exact_metrics(found[k][0], found["game"], found["nash"], dice)
             for k in ("nash", "bt_optimum", "mixture_fixed_point")}
    return {"reference_dir": reference_dir, "space": space, "log_ref": log_ref, "targets": found, "data": data,
            "fixed_points": fixed, "reference_metrics": exact_metrics(log_ref, found["game"], found["nash"], dice)}


# ----------------------------------------------------------------------------- report

THEORY = {"offline DPO": "bt_optimum", "online DPO (BT judge)": "bt_optimum", "online IPO": "nash",
          "IPO-MD": "mixture_fixed_point", "Nash-MD": "mixture_fixed_point", "EGPO": "nash"}


def table(results: dict, fixed: dict) -> str:
    """The printed table: final exact metrics of each method beside its theoretical fixed point's."""
    head = (f"{'method':<24}{'exploitability':>15}{'TV to pi*':>11}{'p(invalid)':>11}  dice A/B/C/D"
            f"{'fixed point':>22}{'its expl.':>10}{'its TV':>8}{'seconds':>9}")
    lines = [head, "-" * len(head)]
    for method, result in results.items():
        last, point = result["history"][-1], THEORY[method]
        dice = "/".join(f"{last[f'p_{d}']:.2f}" for d in LETTERS)
        lines.append(f"{method:<24}{last['exploitability']:>15.4f}{last['tv_to_nash']:>11.4f}"
                     f"{last['invalid_mass']:>11.4f}  {dice}{point:>22}{fixed[point]['exploitability']:>10.4f}"
                     f"{fixed[point]['tv_to_nash']:>8.4f}{result['seconds']:>9.1f}")
    return "\n".join(lines)


def _plot(results: dict, fixed: dict):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, ax, label in (("exploitability", axes[0], "exploitability max_y P(y ≻ pi) - 1/2"),
                           ("tv_to_nash", axes[1], "TV to the regularised Nash equilibrium")):
        for method, result in results.items():
            ax.plot([r["step"] for r in result["history"]], [r[key] for r in result["history"]],
                    marker="o", ms=3, label=method)
        for point, style in (("nash", ":"), ("bt_optimum", "--")):
            if fixed[point][key] > 0:
                ax.axhline(fixed[point][key], color="gray", ls=style, lw=0.9,
                           label=f"exact {'regularised Nash' if point == 'nash' else 'BT optimum'}")
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{label} (exact)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Efron's dice on a tiny transformer, beta = tau = {BETA}")
    return fig


def main(out_dir: pathlib.Path, quick: bool = False, methods: tuple[str, ...] = tuple(METHODS)) -> dict:
    """Runs every method in ``methods``; writes ``online_nash.png``/``.json``; returns the numbers."""
    config = QUICK if quick else FULL
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; valid: {list(METHODS)}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup = prepare(out_dir, config)
    results = {m: run_method(m, config, out_dir, setup) for m in methods}
    numbers = {**config, "beta": BETA, "mixture": MIXTURE, "bt_rewards": setup["targets"]["bt_rewards"],
               "efron": EFRON, "responses": setup["space"].texts, "reference": setup["reference_metrics"],
               "fixed_points": setup["fixed_points"],
               "methods": {m: {"final": r["history"][-1], "history": r["history"], "seconds": r["seconds"],
                               "fixed_point": THEORY[m]} for m, r in results.items()},
               "table": table(results, setup["fixed_points"])}
    return write_outputs(out_dir, NAME, _plot(results, setup["fixed_points"]), numbers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/online_nash"))
    parser.add_argument("--quick", action="store_true", help="shortened run (seconds per method)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="NAME",
                        help=f"a subset of: {', '.join(repr(m) for m in METHODS)}")
    args = parser.parse_args()
    print(main(args.out, quick=args.quick, methods=tuple(args.methods))["table"])
