"""Statistical rejection sampling (RSO's Algorithm 1): responses from ``pi_sft exp(r / beta)``, on the host.

Liu et al., *Statistical Rejection Sampling Improves Preference Optimization*,
2023, Appendix A.1, Algorithm 1. Given candidates drawn from the SFT policy and
their rewards, each pass over the candidates not yet accepted draws
``u ~ U[0, 1]`` per candidate and accepts it when ``u < exp((r - r_max) / beta)``,
``r_max`` the largest reward among them, until ``num_samples`` are accepted.
With ``r_max`` the maximum over the whole support, one pass accepts a
candidate ``y ~ pi_sft`` with probability ``exp((r(y) - r_max) / beta)``, so an
accepted response is distributed as ``pi_r ∝ pi_sft exp(r / beta)`` (Eq. 15-17).
"""

from __future__ import annotations

import numpy as np


def rejection_sample(rewards: np.ndarray, num_samples: int, beta: float, rng: np.random.Generator) -> list[int]:
    """Indices of ``num_samples`` accepted candidates, in acceptance order (Algorithm 1).

    Args:
      rewards: ``[N]`` rewards of the candidates (``N >= num_samples``).
      num_samples: how many distinct candidates to accept.
      beta: the KL-regularisation strength of the target ``pi_sft exp(r / beta)``.
      rng: the source of the uniform draws.

    Raises:
      ValueError: for fewer candidates than ``num_samples`` or ``beta <= 0``.
    """
    rewards = np.asarray(rewards, np.float64)
    if rewards.ndim != 1 or rewards.shape[0] < num_samples:
        raise ValueError(f"rejection sampling needs at least {num_samples} candidate rewards; got {rewards.shape=}")
    if not beta > 0:
        raise ValueError(f"rejection sampling needs beta > 0; got {beta=}")
    remaining = list(range(rewards.shape[0]))
    accepted: list[int] = []
    while len(accepted) < num_samples:
        max_reward = max(rewards[i] for i in remaining)
        for i in remaining:
            if rng.uniform() >= np.exp((rewards[i] - max_reward) / beta):
                continue
            accepted.append(i)
            if len(accepted) == num_samples:
                break
        remaining = [i for i in remaining if i not in accepted]
    return accepted
