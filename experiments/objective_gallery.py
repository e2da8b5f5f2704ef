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
    labels["token_reward"] = jnp.zeros((1, groups, 1))
    labels["kl_estimate"] = jnp.zeros((1,))
    extras = {k: jnp.zeros((1, groups, 1)) for k in ("ref_kl", "entropy", "token_mask_logits")}
    extras["log_prob_sq_sum"] = policy  # a valid value: log sum_v pi(v)^2 >= 2 log pi(y)
    return LogProbs(
        policy=policy, mask=jnp.ones_like(policy), reference=reference if requires.reference else None,
        labels={k: v for k, v in labels.items() if k in requires.labels},
        extras={k: v for k, v in extras.items() if k in requires.extras})


def curves(cls) -> tuple[jax.Array, jax.Array]:
    """Loss ``[M]`` and gradient weight ``-dL/dh`` ``[M]`` over :data:`MARGINS`."""
    objective = cls()

    def loss(margin):
        return objective(_batch(margin, cls.requires))[0]

    return jax.jit(jax.vmap(jax.value_and_grad(loss)))(MARGINS)


def plottable() -> dict[str, type]:
    """Registered objectives the margin sweep applies to (pairs and singles)."""
    return {n: c for n, c in registered().items() if c.requires.responses in (PAIR, SINGLE)}


def _landmarks(losses, grads) -> tuple[float, float, float]:
    zero = int(jnp.argmin(jnp.abs(MARGINS)))
    weights = -grads
    peak = float(jnp.max(jnp.abs(weights)))
    active = jnp.abs(weights) > 0.01 * peak
    saturates = float(jnp.max(jnp.where(active, MARGINS, -jnp.inf))) if peak > 0 else math.nan
    return float(losses[zero]), float(weights[zero]), saturates


def main(out_dir: pathlib.Path) -> dict[str, tuple[float, float, float]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = plottable()
    fig, (ax_loss, ax_weight) = plt.subplots(1, 2, figsize=(15, 6.5))
    rows = {}
    for name, cls in table.items():
        losses, grads = curves(cls)
        style = "-" if cls.requires.responses == PAIR else "--"
        ax_loss.plot(MARGINS, losses, style, label=name)
        ax_weight.plot(MARGINS, -grads, style, label=name)
        rows[name] = _landmarks(losses, grads)
    ax_loss.set(xlabel="log-ratio margin h", ylabel="loss", title="Loss (default hyperparameters)")
    ax_loss.set_yscale("symlog")
    ax_weight.set(xlabel="log-ratio margin h", ylabel="-dL/dh", title="Gradient weight")
    ax_weight.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(out_dir / "gallery.png", dpi=120)
    lines = ["| objective | inputs | loss at h=0 | -dL/dh at h=0 | last h with weight > 1% of peak |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {table[n].requires.describe()} | {a:.4g} | {b:.4g} | {c:.3g} |" for n, (a, b, c) in rows.items()]
    (out_dir / "gallery.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out_dir / 'gallery.png'} and {out_dir / 'gallery.md'}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gallery", type=pathlib.Path)
    main(parser.parse_args().out)
