"""Random batches that satisfy an objective's declared requirements."""

import jax
import jax.numpy as jnp
import numpy as np

from jalign.objectives import LogProbs
from jalign.objectives.core import LIST, PAIR, SINGLE, TRIPLE, Requirements

GROUPS = {PAIR: 2, SINGLE: 1, TRIPLE: 3, LIST: 4}


def batch_for(requires: Requirements, *, seed=0, batch=4, tokens=3, log_ratio_scale=1.0,
              dtype=jnp.float32) -> LogProbs:
    """A ragged-mask batch with per-response log-ratios of about ``log_ratio_scale``.

    Each token's log-ratio has magnitude about ``log_ratio_scale / tokens`` and a
    random sign, and both log-probs stay <= 0; labels and extras are drawn from
    the distributions documented in ``jalign/objectives/batch.py``.
    """
    rng = np.random.default_rng(seed)
    g = GROUPS.get(requires.responses, 2)
    shape = (batch, g, tokens)
    mask = np.ones(shape, np.float32)
    mask[:, :, -1] = rng.integers(0, 2, size=(batch, g))  # ragged lengths
    # Valid log-probs (<= 0) whichever way the ratio points: the larger of the
    # two is near zero, the other lies |ratio| below it.
    higher = -rng.uniform(0.01, 3.0, size=shape)
    magnitude = rng.uniform(0.5, 1.0, size=shape) * log_ratio_scale / tokens
    policy_higher = rng.integers(0, 2, size=shape).astype(bool)
    policy = np.where(policy_higher, higher, higher - magnitude)
    reference = np.where(policy_higher, higher - magnitude, higher)
    labels = {
        "preference": rng.uniform(0, 1, size=(batch,)),
        "score": rng.normal(size=(batch, g)),
        "desirable": rng.integers(0, 2, size=(batch, g)).astype(np.float32),
        "other_rewards": rng.normal(size=(batch, g, 2)),
        "attributes": rng.normal(size=(batch, g, 4)),
        "guide_log_ratio": rng.normal(size=shape),
        "aligned_logps": -rng.uniform(0.1, 3.0, size=(batch, g, 3)),
        "kl_estimate": rng.normal(size=(batch,)),
        "win_prob": rng.uniform(0, 1, size=(batch, g)),
        "previous_logps": policy.sum(-1) + rng.normal(size=(batch, g)),
        "semantic_weight": rng.uniform(0, 1, size=(batch,)),
        "instruction_length": rng.integers(0, 2, size=(batch, g)).astype(np.float32),
        "reward": rng.normal(size=(batch, g)),
    }
    extras = {
        "ref_kl": rng.uniform(0, 2, size=shape),
        "entropy": rng.uniform(0, 3, size=shape),
        "token_mask_logits": rng.normal(size=shape),
        # log sum_v pi(v)^2 >= 2 log pi(y_t), and pi(y_t) / sum_v pi(v)^2 stays below
        # ~sqrt(V) for a real distribution: here below e^3.
        "log_prob_sq_sum": np.maximum(2 * policy, policy - rng.uniform(0, 3, size=shape)),
        "reference_token_mask": rng.uniform(0, 1, size=shape),
        "teacher_kl": rng.uniform(0, 2, size=shape),
        "teacher_weight": rng.uniform(1e-3, 20, size=shape),
        "values": rng.normal(size=shape),
    }
    as_array = lambda x: jnp.asarray(x, dtype)
    if requires.scores is not None:
        # Preference-model outputs of about log_ratio_scale; ranked lists' scores label their pairs.
        shape = {"reward": (batch, g), "pairwise": (batch, 2), "embedding": (batch, g, 4),
                 "multi_reward": (batch, g, 4)}[requires.scores]
        scores = rng.normal(size=shape) * log_ratio_scale
        wanted = set(requires.labels) | ({"score"} if g > 2 else {"preference"})
        return LogProbs(policy=as_array(policy) if requires.logprobs else None,
                        mask=jnp.asarray(mask) if requires.logprobs else None,
                        labels={k: jnp.asarray(v, jnp.float32) for k, v in labels.items() if k in wanted},
                        scores=as_array(scores))
    return LogProbs(
        policy=as_array(policy),
        mask=jnp.asarray(mask),
        reference=as_array(reference) if requires.reference else None,
        extras={k: as_array(v) for k, v in extras.items() if k in requires.extras},
        labels={k: jnp.asarray(v, jnp.float32) for k, v in labels.items() if k in requires.labels},
    )


def grads(objective, lp: LogProbs):
    """Gradient of the mean loss with respect to every float input of the batch."""
    return jax.grad(lambda batch: objective(batch)[0])(lp)
