"""Azar et al. 2023 (IPO), Sec. 5.3.1 and Fig. 1: DPO overfits, IPO stays regularised.

Three actions ``a, b, c``, a uniform reference, softmax-logit policies
initialised at the reference, and the offline dataset
``D = {(a, b), (b, c), (a, c)}`` (chosen first). Adam with learning rate
0.01 for 18,000 steps on mini-batches of 9 pairs drawn from ``D``, 10 seeds,
for a grid of tau (DPO's beta = tau).

Expected outcome (Azar et al. 2023, Sec. 5.3.1): DPO's loss has no minimiser
at finite logits, so for every tau it drives the policy to the deterministic
``pi(a) = 1``; IPO's minimiser is the regularised solution of the regression
``h(y_w, y_l) = 1/(2 tau)`` over ``D``, i.e. logit gaps
``theta_a - theta_b = theta_b - theta_c = 1/(3 tau)`` (see :func:`ipo_optimum`).

Run: ``python experiments/reproduce/azar_ipo.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jalign.objectives import make  # noqa: E402
from jalign.tabular import dataset_pairs, make_game, train  # noqa: E402
from jalign.tabular.report import script_arguments, timed, write_outputs  # noqa: E402

NAME = "azar_ipo"
TAUS = (0.1, 0.25, 0.5, 1.0)
ACTIONS = ("a", "b", "c")
DATASET = ((0, 0, 1), (0, 1, 2), (0, 0, 2))  # (context, chosen, rejected): a>b, b>c, a>c
LEARNING_RATE, BATCH_SIZE = 0.01, 9
FULL = {"steps": 18_000, "seeds": 10}
QUICK = {"steps": 2_000, "seeds": 3}


def ipo_optimum(tau) -> np.ndarray:
    """IPO's regularised optimum on D with a uniform reference, ``[len(tau), 3]``.

    Minimising ``sum_D (h - 1/(2 tau))^2`` over logit gaps ``x = theta_a -
    theta_b``, ``y = theta_b - theta_c`` (``h(a, c) = x + y``) gives
    ``x = y = 1/(3 tau)`` (Azar et al. 2023, Sec. 5.3.1).
    """
    gap = 1.0 / (3.0 * np.asarray(tau, np.float64))[..., None]
    logits = gap * np.array([1.0, 0.0, -1.0])
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


def _game_and_data():
    # The oracle P only labels soft-label objectives; DPO and IPO read the dataset.
    preference = jnp.array([[0.5, 1.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.5]])
    return make_game(preference, jnp.zeros(3)), dataset_pairs(1, 3, DATASET)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def simulate(steps: int, seeds: int, taus=TAUS):
    """Probability curves ``{dpo, ipo: [tau, seed, steps, 3]}``, one compiled program."""
    game, data = _game_and_data()
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)

    def run(name, tau, key):
        objective = make(name, **({"beta": tau} if name == "dpo" else {"tau": tau}))
        _, history = train(objective, game, jnp.zeros((1, 3)), optax.adam(LEARNING_RATE), steps=steps,
                           data=data, key=key, batch_size=BATCH_SIZE,
                           record=lambda log_pi: {"probs": jnp.exp(log_pi[0])})
        return history["probs"]

    def grid(name):
        per_seed = jax.vmap(lambda tau, key: run(name, tau, key), in_axes=(None, 0))
        return jax.vmap(per_seed, in_axes=(0, None))(jnp.asarray(taus, jnp.float32), keys)

    return {"dpo": grid("dpo"), "ipo": grid("ipo")}


def _plot(curves, optimum, taus):
    fig, axes = plt.subplots(2, len(taus), figsize=(3.2 * len(taus), 5.5), sharex=True, sharey=True)
    for row, name in enumerate(("dpo", "ipo")):
        mean = np.asarray(curves[name]).mean(axis=1)
        for col, tau in enumerate(taus):
            ax = axes[row, col]
            for k, action in enumerate(ACTIONS):
                line, = ax.plot(mean[col, :, k], label=f"pi({action})")
                if name == "ipo":
                    ax.axhline(optimum[col, k], color=line.get_color(), ls="--", lw=0.8)
            ax.set_title(f"{name.upper()}, tau={tau}")
            ax.set_xlabel("step")
    axes[0, 0].set_ylabel("probability (mean of seeds)")
    axes[1, 0].set_ylabel("dashed: analytic IPO optimum")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Azar et al. 2023, Fig. 1: D={(a,b),(b,c),(a,c)}, Adam 0.01, batch 9")
    return fig


def main(out_dir: pathlib.Path, quick: bool = False) -> dict:
    """Runs the experiment, writes ``azar_ipo.png``/``.json`` and returns the numbers."""
    config = QUICK if quick else FULL
    curves, seconds = timed(lambda: simulate(config["steps"], config["seeds"]))
    optimum = ipo_optimum(TAUS)
    final = {name: np.asarray(value)[:, :, -1, :] for name, value in curves.items()}
    numbers = {
        **config, "taus": TAUS, "seconds": seconds, "actions": ACTIONS,
        "dpo_final_mean": final["dpo"].mean(axis=1), "dpo_min_pi_a": final["dpo"][..., 0].min(axis=1),
        "ipo_final_mean": final["ipo"].mean(axis=1), "ipo_final_std": final["ipo"].std(axis=1),
        "ipo_analytic_optimum": optimum,
        "ipo_max_abs_error": float(np.abs(final["ipo"].mean(axis=1) - optimum).max()),
    }
    return write_outputs(out_dir, NAME, _plot(curves, optimum, TAUS), numbers)


if __name__ == "__main__":
    args = script_arguments(__doc__)
    result = main(args.out, quick=args.quick)
    print({k: result[k] for k in ("seconds", "dpo_min_pi_a", "ipo_max_abs_error")})
