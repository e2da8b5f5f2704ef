"""NumPy building blocks for the objective tests' hand-written reference formulas."""

import jax.numpy as jnp
import numpy as np

from jalign.objectives import LogProbs


def log_sigmoid(x):
    """log sigma(x), stable for large |x|."""
    return -np.logaddexp(0.0, -x)


def padded_pair_batch():
    """B = 3 pairs, T = 2 with padding; returns the batch and its sequence log-ratios [B, 2]."""
    policy = np.array([[[-1.0, -2.0], [-0.5, -0.7]],
                       [[-0.2, -0.3], [-4.0, -1.0]],
                       [[-3.0, -0.1], [-0.1, -0.2]]])
    reference = np.array([[[-1.5, -1.0], [-1.0, -0.2]],
                          [[-2.0, -1.0], [-1.0, -1.0]],
                          [[-1.0, -0.4], [-0.9, -0.1]]])
    mask = np.array([[[1.0, 1.0], [1.0, 0.0]],
                     [[1.0, 1.0], [1.0, 1.0]],
                     [[1.0, 0.0], [1.0, 1.0]]])
    lp = LogProbs(policy=jnp.asarray(policy), mask=jnp.asarray(mask), reference=jnp.asarray(reference))
    return lp, ((policy - reference) * mask).sum(-1)
