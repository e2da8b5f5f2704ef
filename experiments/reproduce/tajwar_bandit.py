"""Tajwar et al. 2024, didactic bandit: on-policy sampling and negative gradients.

*Preference Fine-Tuning of LLMs Should Leverage Suboptimal, On-Policy Data*,
Sec. 4's didactic bandit in our own instantiation: 100 actions, a reference
policy that is a discretised Gaussian peaked at action 35 (sd 12), and two
rewards, ``R1`` a bump at action 80 (where the reference has little mass) and
``R2`` a bump at action 40 (near the reference's mode). Preferences are
Bradley-Terry in the reward (scale 0.1). Four objectives, all from
:mod:`jalign.objectives`, with exact population gradients (Adam):

- offline SFT on the winner of reference pairs (maximum likelihood, offline),
- on-policy SFT on the winner of policy pairs (maximum likelihood, on-policy),
- offline DPO on reference pairs (negative gradient, offline),
- online DPO on policy pairs (negative gradient, on-policy).

Independent targets: offline SFT's maximiser is the reference winner
distribution ``q_w(y) = 2 ref(y) P(y ≻ ref)`` and both DPO variants share the
population optimum ``pi* ∝ ref exp(r / (0.1 beta))`` (the BT/RLHF optimum);
what differs is how fast they get there when the reward sits where the
reference puts little mass.

Run: ``python experiments/reproduce/tajwar_bandit.py [--quick] [--out DIR]``.
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
from jalign.tabular import bradley_terry, expected, labelled_pairs, make_game, rlhf_optimum, train  # noqa: E402
from jalign.tabular.report import script_arguments, timed, write_outputs  # noqa: E402

NAME = "tajwar_bandit"
NUM_ACTIONS, REF_MODE, REF_SD = 100, 35.0, 12.0
REWARD_CENTRES = {"R1": 80.0, "R2": 40.0}
REWARD_WIDTH, BT_SCALE, BETA, LR = 5.0, 0.1, 0.1, 0.01
METHODS = ("offline_sft", "onpolicy_sft", "offline_dpo", "online_dpo")
FULL, QUICK = {"steps": 3_000}, {"steps": 600}


def rewards(centre) -> jax.Array:
    """``[1, K]`` reward bump ``exp(-(y - centre)^2 / (2 w^2))`` in [0, 1]."""
    y = jnp.arange(NUM_ACTIONS, dtype=jnp.float32)
    return jnp.exp(-jnp.square(y - centre) / (2 * REWARD_WIDTH**2))[None]


def make_bandit(centre):
    """The game (BT preferences of the reward) and the reward ``[1, K]``."""
    y = jnp.arange(NUM_ACTIONS, dtype=jnp.float32)
    ref_logits = -jnp.square(y - REF_MODE) / (2 * REF_SD**2)
    reward = rewards(centre)
    return make_game(bradley_terry(reward, scale=BT_SCALE), ref_logits), reward


def run_method(method: str, game, reward, steps: int):
    """Expected reward after every step ``[steps]`` and the final log-policy."""
    rho = game.context_probs
    offline = labelled_pairs(game.preference, game.log_ref, game.log_ref, rho)
    on_policy = lambda log_pi: labelled_pairs(game.preference, log_pi, log_pi, rho)  # noqa: E731
    objective, data = {
        "offline_sft": (make("sft", average=False), offline),
        "onpolicy_sft": (make("sft", average=False), on_policy),
        "offline_dpo": (make("dpo", beta=BETA), offline),
        "online_dpo": (make("online_dpo", beta=BETA), None),
    }[method]
    final, history = train(objective, game, game.log_ref, optax.adam(LR), steps=steps, data=data,
                           record=lambda log_pi: {"reward": expected(reward, log_pi)})
    return history["reward"], jax.nn.log_softmax(final, axis=-1)


def simulate(steps: int):
    out = {}
    for name, centre in REWARD_CENTRES.items():
        game, reward = make_bandit(centre)
        optimum = rlhf_optimum(game.log_ref, reward / BT_SCALE, BETA)
        out[name] = {"ref_reward": expected(reward, game.log_ref), "optimum_reward": expected(reward, optimum),
                     "ref": jnp.exp(game.log_ref[0]), "reward": reward[0]}
        for method in METHODS:
            curve, final = run_method(method, game, reward, steps)
            out[name][method] = curve
            out[name][f"{method}/policy"] = jnp.exp(final[0])
    return out


def _plot(result):
    fig, axes = plt.subplots(2, len(REWARD_CENTRES), figsize=(12, 7.5), layout="constrained")
    for col, name in enumerate(REWARD_CENTRES):
        r = result[name]
        ax = axes[0, col]
        for method in METHODS:
            ax.plot(np.asarray(r[method]), label=method)
        ax.axhline(float(r["optimum_reward"]), color="k", ls="--", lw=0.8, label="BT/RLHF optimum")
        ax.set_title(f"{name}: expected reward")
        ax.set_xlabel("step")
        ax = axes[1, col]
        ax.plot(np.asarray(r["ref"]), "k:", label="reference")
        ax.plot(np.asarray(r["reward"]) * float(np.max(r["ref"])), "k--", lw=0.8, label="reward (scaled)")
        for method in METHODS:
            ax.plot(np.asarray(r[f"{method}/policy"]), label=method)
        ax.set_title(f"{name}: final policies")
        ax.set_xlabel("action")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.suptitle("Tajwar et al. 2024 didactic bandit: on-policy / negative-gradient vs offline / max-likelihood")
    return fig


def main(out_dir: pathlib.Path, quick: bool = False) -> dict:
    """Runs the experiment, writes ``tajwar_bandit.png``/``.json`` and returns the numbers."""
    config = QUICK if quick else FULL
    result, seconds = timed(lambda: jax.jit(simulate, static_argnums=0)(config["steps"]))
    numbers = {**config, "seconds": seconds, "beta": BETA, "bt_scale": BT_SCALE, "lr": LR, "rewards": {}}
    for name in REWARD_CENTRES:
        r = result[name]
        numbers["rewards"][name] = {
            "centre": REWARD_CENTRES[name], "reference_reward": float(r["ref_reward"]),
            "optimum_reward": float(r["optimum_reward"]),
            **{f"{m}/final_reward": float(np.asarray(r[m])[-1]) for m in METHODS},
            **{f"{m}/policy": r[f"{m}/policy"] for m in METHODS},
        }
    return write_outputs(out_dir, NAME, _plot(result), numbers)


if __name__ == "__main__":
    args = script_arguments(__doc__)
    for name, row in main(args.out, quick=args.quick)["rewards"].items():
        print(name, {k: round(v, 4) for k, v in row.items() if not k.endswith("/policy") and k != "centre"})
