"""Munos et al. 2023 (NLHF): last-iterate convergence of tabular Nash-MD.

A non-transitive game (generalised rock-paper-scissors over 5 actions, where
action ``y`` beats ``y + 1`` with probability 0.9), a non-uniform reference
(logits ``N(0, 1)``, fixed seed) and regularisation ``tau = 0.2``. Exact
tabular Nash-MD,

    pi_mu = pi_t^(1 - eta tau) ref^(eta tau),  pi_{t+1} ∝ pi_mu exp(eta P(. ≻ pi_mu)),

runs from the reference for a grid of constant learning rates ``eta`` and for
the theorem's schedule ``eta = log(T) / (tau T)``. Against each run: its
``KL(pi*_tau, pi_t)``, with ``pi*_tau`` from the independent mirror-prox
solver, and the theorem's bound unrolled from
``KL_{t+1} <= (1 - eta tau) KL_t + 2 eta^2``.

The same trajectories are produced by the ``nash_md`` objective of
:mod:`jalign.objectives.online` under SGD on softmax logits with
``lr = eta tau K / 4`` and mixture ``eta tau``; the JSON reports the largest
log-probability difference between the two.

Run: ``python experiments/reproduce/nash_md.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jalign.objectives import make  # noqa: E402
import jalign.objectives.online  # noqa: E402,F401  (registers the online objectives)
from jalign.tabular import (  # noqa: E402
    cyclic_game, exploitability, fixed_point_residual, kl_to, make_game, nash_md_bound, nash_md_step,
    regularized_nash, train)
from jalign.tabular.report import script_arguments, timed, write_outputs  # noqa: E402

NAME = "nash_md"
NUM_ACTIONS, TAU = 5, 0.2
ETAS = (0.01, 0.05, 0.2)
FULL, QUICK = {"steps": 5_000}, {"steps": 500}


def make_setup():
    """The game and its regularised Nash equilibrium ``pi*`` (mirror prox)."""
    game = make_game(cyclic_game(NUM_ACTIONS, margin=0.4), jax.random.normal(jax.random.PRNGKey(7), (NUM_ACTIONS,)))
    return game, regularized_nash(game.preference, game.log_ref, TAU)


def exact_nash_md(game, eta, steps: int):
    """Log-policies ``[steps + 1, 1, K]`` of tabular Nash-MD from the reference."""

    def step(log_pi, _):
        nxt = nash_md_step(game.preference, log_pi, game.log_ref, TAU, eta)
        return nxt, nxt

    _, path = jax.lax.scan(step, game.log_ref, None, length=steps)
    return jnp.concatenate([game.log_ref[None], path])


def objective_nash_md(game, eta, steps: int):
    """Log-policies ``[steps, 1, K]`` from SGD on the ``nash_md`` objective (same steps)."""
    a = eta * TAU
    objective = make("nash_md", beta=TAU, mixture=a)
    _, history = train(objective, game, game.log_ref, optax.sgd(a * NUM_ACTIONS / 4.0), steps=steps,
                       record=lambda log_pi: {"log_pi": log_pi})
    return history["log_pi"]


def simulate(steps: int):
    game, star = make_setup()
    etas = jnp.asarray(ETAS + (float(np.log(steps) / (TAU * steps)),), jnp.float32)

    def per_eta(eta):
        path = exact_nash_md(game, eta, steps)
        kls = jax.vmap(lambda lp: kl_to(star, lp))(path)
        via_objective = objective_nash_md(game, eta, steps)
        return {"kl": kls, "bound": nash_md_bound(kls[0], TAU, eta, steps),
                "objective_diff": jnp.max(jnp.abs(via_objective - path[1:])),
                "exploitability": exploitability(game, path[-1])}

    out = jax.vmap(per_eta)(etas)
    out.update(etas=etas, residual=fixed_point_residual(game.preference, game.log_ref, TAU, star),
               star=jnp.exp(star[0]), ref=jnp.exp(game.log_ref[0]))
    return out


def _plot(result):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, eta in enumerate(np.asarray(result["etas"])):
        label = f"eta={eta:.3g}" + (" (log T/(tau T))" if i == len(ETAS) else "")
        line, = ax.plot(np.maximum(np.asarray(result["kl"][i]), 1e-12), label=f"KL(pi*, pi_t), {label}")
        ax.plot(np.asarray(result["bound"][i]), ls="--", color=line.get_color(), lw=0.9)
    ax.set_yscale("log")
    ax.set_xlabel("iteration t")
    ax.set_ylabel("KL(pi*_tau, pi_t); dashed: theorem's bound")
    ax.set_title(f"Tabular Nash-MD, 5-action cyclic game, tau={TAU}")
    ax.legend(fontsize=7)
    return fig


def main(out_dir: pathlib.Path, quick: bool = False) -> dict:
    """Runs the experiment, writes ``nash_md.png``/``.json`` and returns the numbers."""
    config = QUICK if quick else FULL
    result, seconds = timed(lambda: jax.jit(simulate, static_argnums=0)(config["steps"]))
    kl, bound = np.asarray(result["kl"]), np.asarray(result["bound"])
    numbers = {
        **config, "tau": TAU, "seconds": seconds, "etas": result["etas"], "equilibrium": result["star"],
        "reference": result["ref"], "solver_residual": float(result["residual"]),
        "kl_initial": kl[:, 0], "kl_final": kl[:, -1], "bound_final": bound[:, -1],
        "bound_violations": int(np.sum(kl > bound + 1e-5)),
        "objective_vs_exact_max_logp_diff": result["objective_diff"],
        "exploitability_final": result["exploitability"],
    }
    return write_outputs(out_dir, NAME, _plot(result), numbers)


if __name__ == "__main__":
    args = script_arguments(__doc__)
    result = main(args.out, quick=args.quick)
    print({k: result[k] for k in ("seconds", "kl_final", "bound_final", "bound_violations",
                                  "objective_vs_exact_max_logp_diff")})
