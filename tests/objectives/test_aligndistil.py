"""AlignDistil's loss (``jalign.objectives.distillation``) against a NumPy float64 transcription.

The reference transcribes the authors' off-policy trainer
(``aligndistil_offpolicy_trainer.py``, ``reward_boost_type="aligndistil"``,
``reward_len_norm``): ``rlhf_loss = KL_t * beta / w_t`` summed over the
chosen response's tokens, divided by their count; the rejected response
does not enter.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jalign.objectives import LogProbs, aligndistil


def _batch(seed, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    shape = (3, 2, 5)
    mask = (rng.uniform(size=shape) < 0.7).astype(np.float32)
    mask[..., 0] = 1.0
    kl, weight = rng.uniform(0, 2, size=shape), rng.uniform(1e-3, 20, size=shape)
    lp = LogProbs(policy=jnp.asarray(-rng.uniform(0, 3, size=shape), dtype), mask=jnp.asarray(mask),
                  extras={"teacher_kl": jnp.asarray(kl, dtype), "teacher_weight": jnp.asarray(weight, dtype)})
    return lp, mask, kl, weight


def test_matches_the_authors_length_normalised_token_weighted_kl():
    lp, mask, kl, weight = _batch(0)
    beta = 0.1
    chosen = (mask[:, 0] * beta / weight[:, 0] * kl[:, 0]).sum(-1) / mask[:, 0].sum(-1)
    loss, metrics = jax.jit(lambda lp: aligndistil(beta=beta)(lp))(lp)
    np.testing.assert_allclose(loss, chosen.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["teacher_kl"], ((mask[:, 0] * kl[:, 0]).sum(-1) / mask[:, 0].sum(-1)).mean(),
                               rtol=1e-6)


def test_gradient_flows_only_through_the_chosen_teacher_kl():
    lp, mask, kl, weight = _batch(1)
    grad = jax.grad(lambda lp: aligndistil(beta=0.2)(lp)[0])(lp)
    want = 0.2 / weight[:, 0] * mask[:, 0] / mask[:, 0].sum(-1, keepdims=True) / 3
    np.testing.assert_allclose(grad.extras["teacher_kl"][:, 0], want, rtol=1e-5)
    assert np.all(np.asarray(grad.extras["teacher_kl"][:, 1]) == 0.0)


def test_bf16_and_extreme_inputs_give_finite_float32_loss():
    lp, *_ = _batch(2, jnp.bfloat16)
    extreme = lp.replace(extras={"teacher_kl": lp.extras["teacher_kl"] * 1e4,
                                 "teacher_weight": jnp.zeros_like(lp.extras["teacher_weight"])})
    for batch in (lp, extreme):
        loss = aligndistil()(batch)[0]
        assert loss.dtype == jnp.float32 and np.isfinite(loss)
