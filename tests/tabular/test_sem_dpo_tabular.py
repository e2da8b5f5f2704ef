"""Sem-DPO on an exact tabular population reaches the weighted Bradley-Terry optimum.

With two actions and pairs (0 over 1) of probability ``a``, weight ``w_01``
and (1 over 0) of probability ``b``, weight ``w_10``, the weighted DPO loss
``a w_01 l(beta h) + b w_10 l(-beta h)`` is stationary where
``beta h* = log(a w_01 / (b w_10))``, ``h = log pi(0)/ref(0) - log pi(1)/ref(1)``:
a closed form written here, not produced by the engine.
"""

import jax.numpy as jnp
import numpy as np
import optax

from jalign import tabular as tb
from jalign.objectives import make


def test_sem_dpo_converges_to_the_weighted_bradley_terry_optimum():
    beta, a, b, w01, w10 = 0.5, 0.7, 0.3, 0.4, 0.9
    game = tb.make_game(tb.bradley_terry(jnp.array([0.0, 0.0]))[None], jnp.log(jnp.array([[0.6, 0.4]])))
    data = tb.dataset_pairs(1, 2, [(0, 0, 1), (0, 1, 0)], probs=[a, b])
    weight = jnp.array([[[1.0, w01], [w10, 1.0]]])                                # [C, K, K] per pair
    logits, _ = tb.train(make("sem_dpo", beta=beta), game, jnp.zeros((1, 2)), optax.adam(0.05), steps=1500,
                         data=data, labels={"semantic_weight": weight})
    log_pi = np.asarray(tb.log_policy(logits)[0], np.float64)
    h = (log_pi[0] - np.log(0.6)) - (log_pi[1] - np.log(0.4))
    np.testing.assert_allclose(beta * h, np.log(a * w01 / (b * w10)), atol=1e-3)
