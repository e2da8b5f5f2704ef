"""Compiled tabular engine vs a straightforward NumPy loop on the Azar et al. Fig. 1 grid.

Both run the same experiment: DPO and IPO, taus (0.1, 0.25, 0.5, 1.0), 10
seeds, Adam (lr 0.01) on three softmax logits for 18,000 steps with
mini-batches of 9 pairs drawn from D = {(a,b), (b,c), (a,c)}. The engine is
``experiments/reproduce/azar_ipo.py``'s one jitted program (``lax.scan`` over
steps, ``vmap`` over taus and seeds, the losses from ``jalign.objectives``);
the baseline loops over objectives, taus, seeds and steps in Python with
NumPy, hand-written gradients and a hand-written Adam. Prints both wall
times (the engine's with and without compilation), the speed ratios measured
in this one run, and the agreement of the final IPO policies.

Run: ``python benchmarks/tabular_engine.py [--steps N] [--seeds S]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAIRS = np.array([[0, 1], [1, 2], [0, 2]])  # (chosen, rejected): a>b, b>c, a>c


def _load_azar():
    spec = importlib.util.spec_from_file_location("azar_ipo", ROOT / "experiments" / "reproduce" / "azar_ipo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _margin_grad(theta, chosen, rejected):
    """d h / d theta for h = log pi(w) - log pi(l) under softmax (uniform reference): ``[B, 3]``."""
    grad = np.zeros((chosen.size, 3))
    rows = np.arange(chosen.size)
    grad[rows, chosen] += 1.0
    grad[rows, rejected] -= 1.0
    return grad


def numpy_run(objective: str, tau: float, seed: int, steps: int, batch: int = 9, lr: float = 0.01):
    """One run with a Python loop over steps; returns the final probabilities ``[3]``."""
    rng = np.random.default_rng(seed)
    theta, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        chosen, rejected = PAIRS[rng.integers(0, 3, batch)].T
        h = theta[chosen] - theta[rejected]  # log-softmax normalisers cancel in the margin
        if objective == "dpo":
            coeff = -tau / (1.0 + np.exp(tau * h))  # d/dh of -log sigmoid(tau h)
        else:
            coeff = 2.0 * (h - 1.0 / (2.0 * tau))  # d/dh of (h - 1/(2 tau))^2
        grad = np.mean(coeff[:, None] * _margin_grad(theta, chosen, rejected), axis=0)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        theta = theta - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return np.exp(theta) / np.exp(theta).sum()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=18_000)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    azar = _load_azar()

    start = time.perf_counter()
    curves = jax.block_until_ready(azar.simulate(args.steps, args.seeds))
    engine_first = time.perf_counter() - start
    start = time.perf_counter()
    curves = jax.block_until_ready(azar.simulate(args.steps, args.seeds))
    engine_second = time.perf_counter() - start

    start = time.perf_counter()
    baseline = {name: np.array([[numpy_run(name, tau, seed, args.steps) for seed in range(args.seeds)]
                                for tau in azar.TAUS]) for name in ("dpo", "ipo")}
    numpy_seconds = time.perf_counter() - start

    runs = 2 * len(azar.TAUS) * args.seeds
    ipo_engine = np.asarray(curves["ipo"])[:, :, -1].mean(axis=1)
    print(f"grid: 2 objectives x {len(azar.TAUS)} taus x {args.seeds} seeds = {runs} runs x {args.steps} steps")
    print(f"numpy loop:                    {numpy_seconds:8.2f} s")
    print(f"jalign engine (incl. compile): {engine_first:8.2f} s   speed ratio {numpy_seconds / engine_first:7.1f}x")
    print(f"jalign engine (compiled):      {engine_second:8.2f} s   speed ratio {numpy_seconds / engine_second:7.1f}x")
    print("final IPO pi (mean over seeds), engine vs numpy, max |diff| = "
          f"{np.abs(ipo_engine - baseline['ipo'].mean(axis=1)).max():.4f}")


if __name__ == "__main__":
    main()
