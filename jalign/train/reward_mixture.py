"""MaxMin-RLHF's EM over reward heads: one Bradley-Terry reward model per hidden group of annotators.

Chakraborty et al. 2024 learn ``G`` reward models from preference data whose
records carry an annotator id, by hard expectation-maximisation (the
authors' ``test_data_multiple.py``): users start in group ``user % G`` (in
order of first appearance); each iteration trains every group's reward model
on its users' pairs (M-step: ``jalign train`` with ``bt_reward`` on the
group's records), then moves each user to the group whose model gives their
pairs the highest log-likelihood ``sum log sigma(r_g(chosen) - r_g(rejected))``
(E-step). The policy then maximises the worst group's reward:
``ShapedRewardJudge([HeadRewards(m, tok) for m in models], "maxmin")``.

One departure: the authors keep training each group's model across
iterations; here every M-step trains from the experiment's initialisation
(a run's reward head cannot yet be saved as a checkpoint to start from).

    from jalign.train.reward_mixture import em_reward_models
    result = em_reward_models(experiment(), "pairs_with_users.jsonl", num_groups=2, out_dir="runs/em")
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np

from jalign.models.tokenizer import load_tokenizer
from jalign.train import loop
from jalign.train.config import Experiment
from jalign.train.reward_judges import HeadRewards

EM_ITERATIONS = 10  # the authors' num_EM_iterations


@dataclasses.dataclass(frozen=True)
class RewardModels:
    """The outcome of :func:`em_reward_models`.

    Attributes:
      users: the annotator ids, in order of first appearance.
      assignment: ``[U]`` each user's group after the last iteration.
      history: ``[iterations, U]`` the assignment after each iteration.
      log_likelihood: ``[U, G]`` each user's pairs' log-likelihood under each final model.
      models: the ``G`` final reward models (decoders with a ``reward`` head).
      runs: each final model's run directory.
    """

    users: list
    assignment: np.ndarray
    history: np.ndarray
    log_likelihood: np.ndarray
    models: list
    runs: list[pathlib.Path]


def _read(path: str | pathlib.Path, user_field: str) -> list[dict]:
    records = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
    for number, record in enumerate(records, 1):
        if user_field not in record:
            raise ValueError(f"{path}: record {number} has no {user_field!r} field (the annotator id)")
    return records


def _train_group(base: Experiment, records: list[dict], user_field: str, directory: pathlib.Path) -> Any:
    """M-step for one group: ``jalign train`` of ``base`` on its records; the trained model."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "pairs.jsonl"
    data.write_text("".join(json.dumps({k: v for k, v in r.items() if k != user_field}) + "\n" for r in records))
    exp = dataclasses.replace(base, data=dataclasses.replace(base.data, train=str(data)),
                              train=dataclasses.replace(base.train, out_dir=str(directory / "run")))
    loop.train(exp, progress=False)
    return loop.final_policy(exp)


def em_reward_models(base: Experiment, data: str | pathlib.Path, num_groups: int, *, out_dir: str | pathlib.Path,
                     iterations: int = EM_ITERATIONS, user_field: str = "user") -> RewardModels:
    """Hard EM over ``num_groups`` reward heads trained by ``jalign train`` (MaxMin-RLHF's reward learning).

    Args:
      base: a reward-model experiment (objective ``bt_reward``); its data and
        output directory are replaced per group and iteration.
      data: paired records (``prompt``, ``chosen``, ``rejected``) with an annotator id field.
      num_groups: ``G``.
      out_dir: where each iteration's group data and runs go (``iter{i}/group{g}``).
      iterations: EM iterations (the authors' 10).
      user_field: the annotator id's field.

    Returns:
      :class:`RewardModels`.
    """
    if base.objective.name != "bt_reward":
        raise ValueError(f"em_reward_models trains Bradley-Terry reward heads; the experiment's objective is "
                         f"{base.objective.name}")
    records = _read(data, user_field)
    users = list(dict.fromkeys(r[user_field] for r in records))
    index = {u: i for i, u in enumerate(users)}
    owner = np.array([index[r[user_field]] for r in records])
    assignment = np.arange(len(users)) % num_groups
    tokenizer = load_tokenizer(base.model.tokenizer or base.model.hf_dir)
    models, runs, history = [None] * num_groups, [None] * num_groups, []
    for iteration in range(iterations):
        for group in range(num_groups):
            members = [r for r, u in zip(records, owner) if assignment[u] == group]
            if members:  # an empty group keeps its previous model, as the authors' script skips it
                directory = pathlib.Path(out_dir) / f"iter{iteration}" / f"group{group}"
                models[group] = _train_group(base, members, user_field, directory)
                runs[group] = directory / "run"
        log_likelihood = _user_log_likelihood(models, tokenizer, records, owner, len(users))
        assignment = np.argmax(log_likelihood, axis=1)
        history.append(assignment)
    return RewardModels(users, assignment, np.stack(history), log_likelihood, models, runs)


def _user_log_likelihood(models, tokenizer, records, owner, num_users) -> np.ndarray:
    """E-step: ``[U, G]`` sums over each user's pairs of ``log sigma(r_g(chosen) - r_g(rejected))``."""
    prompts = [r["prompt"] for r in records]
    out = np.full((num_users, len(models)), -np.inf)
    for group, model in enumerate(models):
        if model is None:
            continue
        rewards = HeadRewards(model, tokenizer)
        margin = rewards(prompts, [r["chosen"] for r in records]) - rewards(prompts, [r["rejected"] for r in records])
        per_pair = -np.logaddexp(0.0, -margin)                            # log sigma(margin), stable
        out[:, group] = np.bincount(owner, weights=per_pair, minlength=num_users)
    return out
