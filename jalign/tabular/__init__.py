"""Exact tabular policies, preference games, solvers and metrics.

The toy setting of jalign: softmax policies over ``K`` actions (optionally per
context), preference matrices, exact expectations, equilibrium solvers and
exploitability, feeding the very same :mod:`jalign.objectives` functions the
LLM trainer calls. See ``docs/tabular.md`` for a worked example.
"""

from jalign.tabular.engine import Policies, batch_for, loss_and_grad, sampling_of, train
from jalign.tabular.feeding import (
    all_pairs, all_tuples, batch_at, dataset_pairs, exact_batch, labelled_pairs, per_response,
    sample_indices, sampled_batch)
from jalign.tabular.games import (
    Game, bradley_terry, check_preference, cyclic_game, make_game, preference_prob, random_game, win_probs)
from jalign.tabular.metrics import best_response, duality_gap, exploitability, kl_to, win_rate
from jalign.tabular.policies import (
    entropy, expected, geometric_mixture, kl, log_policy, probs, rlhf_optimum, uniform)
from jalign.tabular.preference_models import (
    PreferenceFit, bt_best_accuracy, fit_bt, fit_gpm, pairwise_accuracy, preference_batch)
from jalign.tabular.solvers import (
    NashEquilibrium, fixed_point_residual, nash_equilibrium, nash_md_bound, nash_md_step, regularized_nash)

__all__ = [
    "Game", "NashEquilibrium", "Policies", "PreferenceFit", "all_pairs", "all_tuples", "batch_at", "batch_for",
    "best_response", "bradley_terry", "bt_best_accuracy", "check_preference", "cyclic_game", "dataset_pairs",
    "duality_gap", "entropy", "exact_batch", "expected", "exploitability", "fit_bt", "fit_gpm",
    "fixed_point_residual", "geometric_mixture", "kl", "kl_to", "labelled_pairs", "log_policy", "loss_and_grad",
    "make_game", "nash_equilibrium", "nash_md_bound", "nash_md_step", "pairwise_accuracy", "per_response",
    "preference_batch", "preference_prob", "probs", "random_game", "regularized_nash", "rlhf_optimum",
    "sample_indices", "sampled_batch", "sampling_of", "train", "uniform", "win_probs", "win_rate",
]
