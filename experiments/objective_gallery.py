"""Objective gallery: every objective's loss and gradient weight against the margin.

For each registered objective that reads a pair (or a single response), the
gallery sweeps the log-ratio margin ``h`` (chosen minus rejected; for unpaired
objectives the response's own log-ratio) and plots the loss and the gradient
weight ``-dL/dh`` — how hard the objective still pushes at that margin. It
writes ``gallery.png`` and ``gallery.md`` (a table of the same curves'
landmarks) into the output folder.

    python experiments/objective_gallery.py --out runs/gallery
"""

from __future__ import annotations

import argparse
import math
import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jalign.objectives import LogProbs, registered  # noqa: E402
from jalign.objectives.core import PAIR, SINGLE  # noqa: E402

MARGINS = jnp.linspace(-10.0, 10.0, 201)
BASE_LOG_PROB = -6.0  # keeps policy log-probs <= 0 across the sweep


def _batch(margin: jax.Array, requires) -> LogProbs:
    """One example whose log-ratio margin is ``margin``, with neutral labels.

    Pairs: chosen and rejected move symmetrically, ``+h/2`` and ``-h/2``.
    Single responses: the response's log-ratio is ``h`` and it is desirable.
    """
    if requires.responses == PAIR:
        shift, labels = jnp.stack([margin / 2, -margin / 2]), {
            "preference": jnp.ones(1), "score": jnp.array([[1.0, 0.0]])}
    else:
        shift, labels = margin[None], {"desirable": jnp.ones((1, 1))}
    groups = shift.shape[0]
    reference = jnp.full((1, groups, 1), BASE_LOG_PROB)
    policy = reference + shift.reshape(1, groups, 1)
    labels["other_rewards"] = jnp.zeros((1, groups, 2))
    labels["guide_log_ratio"] = jnp.zeros((1, groups, 1))
    labels["kl_estimate"] = jnp.zeros((1,))
    labels["win_prob"] = jnp.array([[0.75, 0.25]])[:, :groups]  # the chosen usually beats the opponent
    labels["previous_logps"] = reference[..., 0]  # the previous iterate is the reference
    labels["semantic_weight"] = jnp.ones((1,))  # Sem-DPO's weight 1 is DPO
    labels["instruction_length"] = jnp.zeros((1, groups))  # JPO with a shared instruction is DPO
    labels["aligned_logps"] = reference  # PoFT's aligned models score like the reference, per token
    labels["reward"] = jnp.array([[1.0, 0.0]])[:, :groups]  # the chosen earns the higher reward
    extras = {k: jnp.zeros((1, groups, 1)) for k in ("ref_kl", "entropy")}
    extras["token_mask_logits"] = jnp.ones((1, groups, 1))  # a neutral learned mask (weight 1)
    extras["log_prob_sq_sum"] = policy  # a valid value: log sum_v pi(v)^2 >= 2 log pi(y)
    return LogProbs(
        policy=policy, mask=jnp.ones_like(policy), reference=reference if requires.reference else None,
        labels={k: v for k, v in labels.items() if k in requires.labels},
        extras={k: v for k, v in extras.items() if k in requires.extras})


# What _batch provides: an objective needing anything else is not a function of the margin alone.
PROVIDED_LABELS = ("preference", "score", "desirable", "other_rewards", "guide_log_ratio", "kl_estimate", "win_prob",
                   "previous_logps", "semantic_weight", "instruction_length", "aligned_logps", "reward")
PROVIDED_EXTRAS = ("ref_kl", "entropy", "token_mask_logits", "log_prob_sq_sum")


def curves(cls) -> tuple[jax.Array, jax.Array]:
    """Loss ``[M]`` and gradient weight ``-dL/dh`` ``[M]`` over :data:`MARGINS`."""
    objective = cls()

    def loss(margin):
        return objective(_batch(margin, cls().requires))[0]

    return jax.jit(jax.vmap(jax.value_and_grad(loss)))(MARGINS)


def plottable() -> dict[str, type]:
    """Registered objectives the margin sweep applies to: policy objectives on pairs and singles.

    Preference-model losses (``requires.logprobs`` False) read a judge's scores, not log-ratios;
    objectives reading inputs outside :data:`PROVIDED_LABELS` / :data:`PROVIDED_EXTRAS` (a teacher's
    distribution, a critic's values) are not functions of the margin alone (:func:`not_plotted`).
    """
    left_out = not_plotted()
    return {n: c for n, c in registered().items() if _sweeps(c().requires) and n not in left_out}


def _sweeps(requires) -> bool:
    return requires.responses in (PAIR, SINGLE) and requires.logprobs


def not_plotted() -> dict[str, str]:
    """Objectives on pairs or singles left out because they read more than the margin: name -> their inputs."""
    out = {}
    for name, cls in registered().items():
        requires = cls().requires
        if _sweeps(requires) and (set(requires.labels) - set(PROVIDED_LABELS)
                                  or set(requires.extras) - set(PROVIDED_EXTRAS)):
            out[name] = requires.describe()
    return out


def _landmarks(losses, grads) -> tuple[float, float, float]:
    zero = int(jnp.argmin(jnp.abs(MARGINS)))
    weights = -grads
    peak = float(jnp.max(jnp.abs(weights)))
    active = jnp.abs(weights) > 0.01 * peak
    saturates = float(jnp.max(jnp.where(active, MARGINS, -jnp.inf))) if peak > 0 else math.nan
    return float(losses[zero]), float(weights[zero]), saturates


def families(table: dict[str, type]) -> dict[str, list[str]]:
    """Objective names grouped by the module (family) that defines them."""
    grouped: dict[str, list[str]] = {}
    for name, cls in table.items():
        grouped.setdefault(cls.__module__.rsplit(".", 1)[-1], []).append(name)
    return grouped


def main(out_dir: pathlib.Path) -> dict[str, tuple[float, float, float]]:
    """One row per family: loss, and gradient weight scaled to its peak so shapes compare."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = plottable()
    grouped = families(table)
    fig, axes = plt.subplots(len(grouped), 2, figsize=(13, 3.1 * len(grouped)), squeeze=False)
    rows = {}
    for (family, names), (ax_loss, ax_weight) in zip(grouped.items(), axes):
        for name in names:
            losses, grads = curves(table[name])
            style = "-" if table[name]().requires.responses == PAIR else "--"
            peak = float(jnp.max(jnp.abs(grads)))
            ax_loss.plot(MARGINS, losses, style, label=name)
            ax_weight.plot(MARGINS, -grads / (peak if peak > 0 else 1.0), style, label=name)
            rows[name] = _landmarks(losses, grads)
        ax_loss.set(ylabel=family, yscale="symlog")
        ax_weight.set(ylim=(-1.1, 1.1))
        ax_weight.axhline(0, color="0.8", lw=0.8)
        ax_weight.legend(fontsize=7, loc="upper right", ncol=2)
    axes[0][0].set_title("loss (default hyperparameters)")
    axes[0][1].set_title("gradient weight -dL/dh, scaled to its peak")
    for ax in axes[-1]:
        ax.set_xlabel("log-ratio margin h (unpaired: the response's log-ratio, dashed)")
    fig.tight_layout()
    fig.savefig(out_dir / "gallery.png", dpi=100)
    plt.close(fig)
    lines = ["| objective | inputs | loss at h=0 | -dL/dh at h=0 | last h with weight > 1% of peak |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {table[n]().requires.describe()} | {a:.4g} | {b:.4g} | {c:.3g} |" for n, (a, b, c) in rows.items()]
    lines += ["", "Not plotted, as their inputs are not functions of the margin alone: "
              + "; ".join(f"{n} ({inputs})" for n, inputs in not_plotted().items())]
    (out_dir / "gallery.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out_dir / 'gallery.png'} and {out_dir / 'gallery.md'}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gallery", type=pathlib.Path)
    main(parser.parse_args().out)
