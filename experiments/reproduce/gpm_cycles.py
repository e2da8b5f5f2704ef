"""Zhang et al. 2024 (GPM): cyclic preferences that no Bradley-Terry reward can represent.

The paper's motivating claim (and its cyclic-preference experiment): a
Bradley-Terry reward orders the responses, so on a non-transitive preference
it gets at least one comparison of every cycle wrong, while a general
preference model ``P(i ≻ j) = sigma(<R v_i, v_j> / tau)`` with a skew-symmetric
``R`` represents cycles; one 2x2 block (a 2-dimensional embedding) fits a
3-cycle exactly.

Tabular half. Games: the 3-, 4- and 5-cycles (``cyclic_game``, action ``y``
beats ``y + 1`` with probability 0.9) and random non-transitive 6-action games
(the EGPO paper's: lower triangle ``U(0, 1)``). Per game:

- ``BT (best order)``: the best pairwise accuracy of *any* BT reward, by
  enumerating all orders of the actions;
- ``BT (MLE)``: the maximum-likelihood BT fit (``fit_bt``, the trainer's
  ``bt_reward`` loss), its accuracy (ties count half) and log-loss;
- ``GPM rank r``: the best of several L-BFGS fits of the trainer's ``gpm``
  loss with ``2 r``-dimensional embeddings (``fit_gpm``), for ``r = 1, 2, 3``.

Accuracy is over the decided pairs (``P != 1/2``) of a game; the log-loss is
the population cross-entropy, whose floor (an exact model) is the mean binary
entropy of ``P`` (``excess_logloss`` is the distance to it). All games are
padded to 6 actions (padding pairs get weight 0) so each model compiles once.
``results["tabular"]["accuracy"]`` holds ``{setting: {model: accuracy}}``;
every entry of ``results`` with such an ``accuracy`` table gets a panel of the
figure.

Transformer half (``results["decoder"]``): ``experiments/cyclic_preferences.py``
writes four rounds of 3-cycles (a different trio of moves per round), and
``jalign.train.train`` fits a tiny decoder with a reward head (``bt_reward``)
and with a 2-dimensional preference-embedding head (``gpm``); the accuracy is
over the balanced held-out file, where no reward can exceed 2/3.

Run: ``python experiments/reproduce/gpm_cycles.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jalign.objectives import make  # noqa: E402
from jalign.tabular import bt_best_accuracy, cyclic_game, fit_bt, fit_gpm, random_game  # noqa: E402
from jalign.tabular.report import script_arguments, timed, write_outputs  # noqa: E402

NAME = "gpm_cycles"
CYCLES = (3, 4, 5)  # cycle lengths
MARGIN = 0.4  # P(y ≻ y + 1) = 1/2 + MARGIN
RANDOM_ACTIONS = 6  # actions of the random games; every game is padded to this size
RANKS = (1, 2, 3)  # GPM 2x2 blocks; rank 3 is full for 6 actions
TAU = 1.0  # GPM temperature (only rescales the embeddings)
FULL = {"random_games": 10, "restarts": 8}
QUICK = {"random_games": 2, "restarts": 4}


def make_games(random_games: int):
    """``(names, preference [G, 6, 6], weights [G, 6, 6])``: cycles, then random games, padded."""
    size = RANDOM_ACTIONS
    names, preference, weights = [], np.full((0, size, size), 0.5), np.zeros((0, size, size))
    matrices = [(f"{k}-cycle", np.asarray(cyclic_game(k, margin=MARGIN))) for k in CYCLES]
    keys = jax.random.split(jax.random.PRNGKey(0), random_games)
    matrices += [(f"random {i}", np.asarray(random_game(key, size))) for i, key in enumerate(keys)]
    for name, matrix in matrices:
        k = matrix.shape[0]
        padded, weight = np.full((1, size, size), 0.5), np.zeros((1, size, size))
        padded[0, :k, :k], weight[0, :k, :k] = matrix, 1.0 - np.eye(k)
        names.append(name)
        preference, weights = np.concatenate([preference, padded]), np.concatenate([weights, weight])
    return names, preference, weights


def fit_all(preference, weights, restarts: int) -> dict:
    """BT best order, BT MLE and GPM fits per rank for every game."""
    bt = fit_bt(preference, weights)
    out = {"bt_best": bt_best_accuracy(preference, weights), "bt": bt, "gpm": {}}
    for rank in RANKS:
        out["gpm"][rank] = fit_gpm(preference, rank, weights, tau=TAU, restarts=restarts,
                                   key=jax.random.PRNGKey(rank))
    return out


def _by_setting(names, per_game: dict) -> dict:
    """``{setting: {model: value}}`` from ``{model: [G] values}``: each cycle, and the mean over random games."""
    table = {name: {model: float(values[i]) for model, values in per_game.items()}
             for i, name in enumerate(names) if name.endswith("cycle")}
    random = [i for i, name in enumerate(names) if name.startswith("random")]
    table[f"random {RANDOM_ACTIONS}-action (mean of {len(random)})"] = {
        model: float(np.mean(values[random])) for model, values in per_game.items()}
    return table


def _tables(names, fits) -> dict:
    """Accuracy per setting and model, and log-loss above the floor (the mean binary entropy of P)."""
    accuracy = {"BT (best order)": fits["bt_best"], "BT (MLE)": np.asarray(fits["bt"].accuracy)}
    accuracy.update({f"GPM rank {r}": np.asarray(fit.accuracy) for r, fit in fits["gpm"].items()})
    floor = np.asarray(fits["bt"].entropy)
    excess = {"BT (MLE)": np.asarray(fits["bt"].logloss) - floor}
    excess.update({f"GPM rank {r}": np.asarray(fit.logloss) - floor for r, fit in fits["gpm"].items()})
    return {"accuracy": _by_setting(names, accuracy), "excess_logloss": _by_setting(names, excess)}


def tabular_results(quick: bool = False) -> dict:
    """The tabular entry of the results: per-game fits, accuracy and log-loss tables, cycle embeddings."""
    config = QUICK if quick else FULL
    names, preference, weights = make_games(config["random_games"])
    fits, seconds = timed(lambda: fit_all(preference, weights, config["restarts"]))
    games = []
    for i, name in enumerate(names):
        k = int(weights[i].any(axis=1).sum())
        row = {"name": name, "num_actions": k, "entropy": float(fits["bt"].entropy[i]),
               "bt_best_accuracy": float(fits["bt_best"][i]), "bt_mle_accuracy": float(fits["bt"].accuracy[i]),
               "bt_mle_logloss": float(fits["bt"].logloss[i]), "bt_rewards": fits["bt"].params[i, :k]}
        for rank, fit in fits["gpm"].items():
            row[f"gpm_rank{rank}_accuracy"] = float(fit.accuracy[i])
            row[f"gpm_rank{rank}_logloss"] = float(fit.logloss[i])
            if name.endswith("cycle"):
                row[f"gpm_rank{rank}_embeddings"] = fit.params[i, :k]
        games.append(row)
    return {**config, "cycles": CYCLES, "margin": MARGIN, "ranks": RANKS, "tau": TAU, "seconds": seconds,
            "games": games, **_tables(names, fits)}


def markdown_table(table: dict) -> str:
    """``{setting: {model: value}}`` as a Markdown table."""
    models = list(dict.fromkeys(m for row in table.values() for m in row))
    lines = ["| setting | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{row.get(m, float('nan')):.3f}" for m in models) + " |"
              for s, row in table.items()]
    return "\n".join(lines)


def _panel(ax, title: str, accuracy: dict):
    """Grouped bars: one group per setting, one bar per model."""
    settings = list(accuracy)
    models = list(dict.fromkeys(m for row in accuracy.values() for m in row))
    width = 0.8 / len(models)
    for j, model in enumerate(models):
        heights = [accuracy[s].get(model, np.nan) for s in settings]
        ax.bar(np.arange(len(settings)) + (j - (len(models) - 1) / 2) * width, heights, width, label=model)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.axhline(2 / 3, color="grey", lw=0.6, ls="--")
    ax.text(ax.get_xlim()[0], 2 / 3 + 0.01, " best any reward can do on a 3-cycle", fontsize=7, color="grey")
    ax.set_xticks(np.arange(len(settings)), settings, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pairwise accuracy (decided pairs)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(models), 3))


TITLES = {"tabular": "Tabular: exact fits to preference matrices",
          "decoder": "Tiny decoder trained by jalign train: balanced held-out 3-cycles"}


def _plot(results: dict):
    """One panel per entry of ``results`` that has an ``accuracy`` table."""
    entries = [(name, entry) for name, entry in results.items() if isinstance(entry, dict) and "accuracy" in entry]
    fig, axes = plt.subplots(1, len(entries), figsize=(7.5 * len(entries), 4.5), squeeze=False)
    for ax, (name, entry) in zip(axes[0], entries):
        _panel(ax, TITLES.get(name, name), entry["accuracy"])
    fig.suptitle("Bradley-Terry vs general preference model (GPM) on non-transitive preferences")
    return fig


def decoder_results(out_dir: pathlib.Path) -> dict:
    """Held-out accuracy of a tiny decoder's BT reward head and rank-1 GPM head on 3-cycles.

    Each trained head is also asked, as a judge, for ``P(a ≻ b)`` over every
    pair of every round's three moves; ``cyclic_rounds`` is the share of
    rounds whose predicted preferences form a cycle (the cycle-consistency
    report: 1 means every round's cycle is reproduced).
    """
    from jalign.cli import REPO_ROOT, load_module
    from jalign.models.tokenizer import load_tokenizer
    from jalign.train.evaluation import cyclic_triple_fraction
    from jalign.train.judges import ModelJudge
    from jalign.train.loop import final_policy, train

    cyclic = load_module(REPO_ROOT / "experiments" / "cyclic_preferences.py")
    accuracy, cycles, seconds = {}, {}, 0.0
    for label, objective in (("BT reward", "bt_reward"), ("GPM rank 1", "gpm")):
        exp = cyclic.experiment(out_dir / "decoder")
        exp = dataclasses.replace(exp, objective=make(objective), train=dataclasses.replace(
            exp.train, out_dir=str(out_dir / "decoder" / objective)))
        result, elapsed = timed(lambda exp=exp: train(exp, progress=False))
        accuracy[label], seconds = result["metrics"]["eval/pair_accuracy"], seconds + elapsed
        judge = ModelJudge(final_policy(exp), load_tokenizer(exp.model.tokenizer), max_length=32,
                           tau=getattr(exp.objective, "tau", 0.1))
        matrices = []
        for prompt, moves in cyclic.rounds():
            pairs = [(i, j) for i in range(3) for j in range(3)]
            p = judge.preference([prompt] * 9, [moves[i] for i, _ in pairs], [moves[j] for _, j in pairs])
            matrices.append(p.reshape(3, 3))
        cycles[label] = cyclic_triple_fraction(np.stack(matrices))
    return {"accuracy": {"3-cycles, tiny decoder (held out)": accuracy}, "cyclic_rounds": cycles,
            "seconds": seconds}


def main(out_dir: pathlib.Path, quick: bool = False) -> dict:
    """Runs the fits, writes ``gpm_cycles.png``/``.json`` and returns the numbers."""
    results = {"tabular": tabular_results(quick), "decoder": decoder_results(out_dir)}
    return write_outputs(out_dir, NAME, _plot(results), results)


if __name__ == "__main__":
    args = script_arguments(__doc__)
    for name, entry in main(args.out, quick=args.quick).items():
        print(f"{name} ({entry.get('seconds', 0):.1f} s)\naccuracy\n{markdown_table(entry['accuracy'])}")
        if "excess_logloss" in entry:
            print(f"log-loss above the floor\n{markdown_table(entry['excess_logloss'])}")
