"""AlignDistil on a tabular game (``jalign.tabular.distillation``) against its closed-form optimum.

The loss ``beta / w_c * KL(pi(.|c) || pi^*(.|c))`` is minimised exactly at
``pi = pi^*``; ``pi^*`` is written here in NumPy float64 from the authors'
formula (``aligndistil_offpolicy_trainer.py``), independently of the module.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jalign.objectives import aligndistil
from jalign.tabular import log_policy
from jalign.tabular.distillation import teacher_batch

C, K, SCALE, TEMPERATURE = 3, 4, 10.0, 0.8


def _numpy_teacher(log_dpo, log_contrast):
    d, c = np.asarray(log_dpo, np.float64), np.asarray(log_contrast, np.float64)
    w = SCALE * np.abs(np.exp(d) - np.exp(c)).sum(-1, keepdims=True) + 1e-3
    z = ((1 + w) * d - w * c) / TEMPERATURE
    return z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))


def test_training_reaches_the_extrapolated_teacher():
    keys = jax.random.split(jax.random.key(0), 3)
    log_dpo, log_contrast = (log_policy(jax.random.normal(k, (C, K))) for k in keys[:2])
    data = jax.random.dirichlet(keys[2], jnp.ones(C * K * K)).reshape(C, K, K)
    objective, optimizer = aligndistil(beta=0.1), optax.adam(0.1)

    def loss(theta):
        lp = teacher_batch(log_policy(theta), log_dpo, log_contrast, data, scale=SCALE, temperature=TEMPERATURE)
        return objective(lp)[0]

    @jax.jit
    def run(theta):
        def step(carry, _):
            theta, state = carry
            updates, state = optimizer.update(jax.grad(loss)(theta), state)
            return (optax.apply_updates(theta, updates), state), None
        return jax.lax.scan(step, (theta, optimizer.init(theta)), None, length=3000)[0][0]

    theta = run(jnp.zeros((C, K)))
    # Probabilities, not log-probabilities: extrapolation drives some teacher log-probs to -100 and below,
    # where the KL no longer pulls.
    teacher = np.exp(_numpy_teacher(log_dpo, log_contrast))
    np.testing.assert_allclose(np.exp(np.asarray(log_policy(theta), np.float64)), teacher, atol=2e-3)
    assert float(loss(theta)) < 1e-4 < 0.01 < float(loss(jnp.zeros((C, K))))
