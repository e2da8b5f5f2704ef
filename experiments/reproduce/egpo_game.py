"""The EGPO paper's tabular game: duality gaps of online IPO, Nash-MD, Nash-MD-PG and EGPO.

Zhou et al. 2025, *Extragradient Preference Optimization (EGPO)*, numerical
simulations: ``N = 10`` actions, ``P`` with lower triangle ``U(0, 1)`` and
``P + P^T = 1``, reference logits ``N(0, 1)``, the policy initialised at the
reference, exact gradients (population losses) with SGD on the logits,
``beta = 0.1`` (lr 0.1, 1,000 steps) and ``beta = 0.01`` (lr 0.02, 5,000
steps), 10 runs with a fresh game each.

Nash-MD's mixture coefficient is ``a = 4 lr / N``, the value for which one SGD
step on its loss is exactly one Nash-MD step (see :class:`~jalign.objectives.online.NashMD`);
Nash-MD-PG uses the same mixture. "OMD" is the Nash-MD loss against the
current policy (mixture 0), the EGPO paper's "online IPO 1".

The independent check: the regularised Nash equilibrium from
:func:`jalign.tabular.regularized_nash` (mirror prox, validated by its fixed-point
residual), at which the duality gap is 0; EGPO's last iterate should reach it.

Run: ``python experiments/reproduce/egpo_game.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import pathlib

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jalign.objectives import make  # noqa: E402
import jalign.objectives.online  # noqa: E402,F401  (registers the online objectives)
from jalign.tabular import (  # noqa: E402
    duality_gap, fixed_point_residual, kl_to, log_policy, make_game, random_game, regularized_nash, train)
from jalign.tabular.report import script_arguments, timed, write_outputs  # noqa: E402

NAME = "egpo_game"
NUM_ACTIONS = 10
SETTINGS = ({"beta": 0.1, "lr": 0.1, "steps": 1_000}, {"beta": 0.01, "lr": 0.02, "steps": 5_000})
METHODS = ("online_ipo", "omd", "nash_md", "nash_md_pg", "egpo")
FULL, QUICK = {"runs": 10, "step_scale": 1.0}, {"runs": 3, "step_scale": 0.2}


def make_objective(method: str, beta, lr):
    """The objective of ``method`` at regularisation ``beta`` for SGD step ``lr``."""
    mixture = 4.0 * lr / NUM_ACTIONS
    return {
        "online_ipo": lambda: make("online_ipo", tau=beta),
        "omd": lambda: make("nash_md", beta=beta, mixture=0.0),
        "nash_md": lambda: make("nash_md", beta=beta, mixture=mixture),
        "nash_md_pg": lambda: make("nash_md_pg", beta=beta, mixture=mixture),
        "egpo": lambda: make("egpo", beta=beta),
    }[method]()


def sample_game(key):
    """One game of the paper: random non-transitive P and N(0, 1) reference logits."""
    k_pref, k_ref = jax.random.split(key)
    return make_game(random_game(k_pref, NUM_ACTIONS), jax.random.normal(k_ref, (NUM_ACTIONS,)))


def simulate(runs: int, step_scale: float):
    """Duality-gap curves ``[setting][method] -> [runs, steps]`` and equilibrium checks."""
    keys = jax.random.split(jax.random.PRNGKey(2025), runs)

    def one_setting(setting):
        beta, lr = setting["beta"], setting["lr"]
        steps = int(setting["steps"] * step_scale)

        def per_game(key):
            game = sample_game(key)
            star = regularized_nash(game.preference, game.log_ref, beta)
            out = {"residual": fixed_point_residual(game.preference, game.log_ref, beta, star),
                   "star_gap": duality_gap(game, star, beta)}
            for method in METHODS:
                final, history = train(make_objective(method, beta, lr), game, game.log_ref[0], optax.sgd(lr),
                                       steps=steps, record=lambda lp: {"gap": duality_gap(game, lp, beta)})
                out[method] = history["gap"]
                out[f"{method}/kl_to_star"] = kl_to(star, log_policy(final))
            out["initial_gap"] = duality_gap(game, game.log_ref, beta)
            return out

        return jax.vmap(per_game)(keys)

    return jax.jit(lambda: [one_setting(s) for s in SETTINGS])()


def _plot(results):
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(6 * len(SETTINGS), 4.2))
    for ax, setting, result in zip(axes, SETTINGS, results):
        for method in METHODS:
            curves = np.asarray(result[method])
            steps = np.arange(1, curves.shape[1] + 1)
            mean = np.maximum(curves.mean(axis=0), 1e-9)
            ax.plot(steps, mean, label=method)
            ax.fill_between(steps, np.maximum(curves.min(0), 1e-9), np.maximum(curves.max(0), 1e-9), alpha=0.15)
        ax.set_yscale("log")
        ax.set_title(f"beta={setting['beta']}, SGD lr={setting['lr']}")
        ax.set_xlabel("step")
        ax.set_ylabel("duality gap (mean, min-max over runs)")
    axes[0].legend()
    fig.suptitle("EGPO tabular game: N=10, P lower triangle ~ U(0,1), ref logits ~ N(0,1), exact gradients")
    return fig


def main(out_dir: pathlib.Path, quick: bool = False) -> dict:
    """Runs the experiment, writes ``egpo_game.png``/``.json`` and returns the numbers."""
    config = QUICK if quick else FULL
    results, seconds = timed(lambda: simulate(config["runs"], config["step_scale"]))
    numbers = {"runs": config["runs"], "seconds": seconds, "methods": METHODS, "settings": []}
    for setting, result in zip(SETTINGS, results):
        summary = {**setting, "steps": int(setting["steps"] * config["step_scale"]),
                   "solver_max_residual": float(np.max(result["residual"])),
                   "solver_max_gap": float(np.max(result["star_gap"])),
                   "initial_gap_mean": float(np.mean(result["initial_gap"]))}
        for method in METHODS:
            summary[f"{method}/final_gap_mean"] = float(np.mean(np.asarray(result[method])[:, -1]))
            summary[f"{method}/final_gap_max"] = float(np.max(np.asarray(result[method])[:, -1]))
            summary[f"{method}/kl_to_star_mean"] = float(np.mean(result[f"{method}/kl_to_star"]))
        numbers["settings"].append(summary)
    return write_outputs(out_dir, NAME, _plot(results), numbers)


if __name__ == "__main__":
    args = script_arguments(__doc__)
    for row in main(args.out, quick=args.quick)["settings"]:
        print({k: v for k, v in row.items() if "final_gap_mean" in k or k in ("beta", "solver_max_gap")})
