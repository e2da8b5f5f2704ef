"""Tests of TDPO1/TDPO2, SparsePO and TGDPO.

Expected numbers come from NumPy transcriptions of the papers' formulas on a
fixed padded batch (token sums written out with the padding mask), and from
identities: zero sequential KL gives DPO (TDPO1, TDPO2), a mask of ones gives
TDPO1 (SparsePO), zero guidance or alpha = 0 gives DPO (TGDPO).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jalign.objectives.batch import LogProbs
from jalign.objectives.pairwise import DPO
from jalign.objectives.token_level import TDPO1, TDPO2, TGDPO, SparsePO

RNG = np.random.default_rng(1)
B, T = 3, 5
POLICY = RNG.normal(-2.0, 1.0, (B, 2, T)).astype(np.float32)
REFERENCE = RNG.normal(-2.0, 1.0, (B, 2, T)).astype(np.float32)
MASK = np.ones((B, 2, T), np.float32)
MASK[0, 1, 3:] = 0.0
MASK[2, 0, 4:] = 0.0
REF_KL = RNG.uniform(0.0, 0.5, (B, 2, T)).astype(np.float32)
MASK_LOGITS = RNG.normal(size=(B, 2, T)).astype(np.float32)
GUIDE_RATIO = RNG.normal(size=(B, 2, T)).astype(np.float32)


@jax.jit
def _per_example(objective, lp):
    """``objective.per_example`` compiled once per objective type (keeps the tests fast)."""
    return objective.per_example(lp)


def _batch(policy=POLICY, reference=REFERENCE, ref_kl=REF_KL, mask_logits=MASK_LOGITS, guide_ratio=GUIDE_RATIO,
           **extras):
    return LogProbs(policy=jnp.asarray(policy), mask=jnp.asarray(MASK), reference=jnp.asarray(reference),
                    extras={"ref_kl": ref_kl, "token_mask_logits": mask_logits, **extras},
                    labels={"guide_log_ratio": guide_ratio})


def _log_sigmoid(x):
    return -np.log1p(np.exp(-x))


def _sum(x):
    return np.sum(x * MASK, axis=-1)


def test_tdpo_matches_numpy():
    beta, alpha = 0.4, 0.3
    u = beta * (_sum(POLICY - REFERENCE)[:, 0] - _sum(POLICY - REFERENCE)[:, 1])
    kl = _sum(REF_KL)
    delta = beta * (kl[:, 1] - kl[:, 0])
    np.testing.assert_allclose(_per_example(TDPO1(beta=beta), _batch())[0], -_log_sigmoid(u - delta), rtol=1e-5)
    np.testing.assert_allclose(_per_example(TDPO2(beta=beta, alpha=alpha), _batch())[0],
                               -_log_sigmoid(u - alpha * delta), rtol=1e-5)


def test_tdpo_zero_kl_equals_dpo():
    zero = np.zeros_like(REF_KL)
    dpo = _per_example(DPO(beta=0.3), _batch())[0]
    for obj in (TDPO1(beta=0.3), TDPO2(beta=0.3, alpha=0.7)):
        np.testing.assert_allclose(_per_example(obj, _batch(ref_kl=zero))[0], dpo, rtol=1e-6)


def test_tdpo2_stops_gradient_of_chosen_kl():
    """TDPO2's gradient w.r.t. the chosen's token KL is zero; TDPO1's and the rejected's are not."""

    def grad_kl(obj):
        return jax.grad(lambda kl: obj(_batch(ref_kl=kl))[0])(jnp.asarray(REF_KL))

    g2, g1 = grad_kl(TDPO2()), grad_kl(TDPO1())
    np.testing.assert_array_equal(g2[:, 0], 0.0)
    assert np.all(np.abs(g2[:, 1][MASK[:, 1] > 0]) > 0)
    assert np.all(np.abs(g1[:, 0][MASK[:, 0] > 0]) > 0)


def test_sparsepo_matches_numpy():
    beta = 0.5
    m = np.maximum(MASK_LOGITS, 0.0)
    ratio = _sum(m * (POLICY - REFERENCE))
    kl = _sum(m * REF_KL)
    logits = beta * (ratio[:, 0] - ratio[:, 1]) - beta * (kl[:, 1] - kl[:, 0])
    losses, metrics = _per_example(SparsePO(beta=beta), _batch())
    np.testing.assert_allclose(losses, -_log_sigmoid(logits), rtol=1e-5)
    density = (_sum(m) / _sum(np.ones_like(m))).mean(axis=1)
    np.testing.assert_allclose(metrics["mask/density"], density, rtol=1e-5)


def test_sparsepo_mask_of_ones_is_tdpo1_and_reference_mask_is_constant():
    ones = np.ones_like(MASK_LOGITS)
    tdpo1 = _per_example(TDPO1(beta=0.2), _batch())[0]
    np.testing.assert_allclose(_per_example(SparsePO(beta=0.2), _batch(mask_logits=ones))[0], tdpo1, rtol=1e-6)
    ref = SparsePO(beta=0.2, mask="reference")
    np.testing.assert_allclose(_per_example(ref, _batch(reference_token_mask=ones))[0], tdpo1, rtol=1e-6)
    grad = jax.grad(lambda m: ref(_batch(reference_token_mask=m))[0])(jnp.asarray(ones) * 0.5)
    np.testing.assert_array_equal(grad, 0.0)
    with pytest.raises(ValueError, match="reference_token_mask"):
        ref(_batch())


def test_sparsepo_learned_mask_gets_gradient_where_active():
    """ReLU masks: gradient flows to positive logits on response tokens, none to negative ones."""
    grad = jax.grad(lambda m: SparsePO()(_batch(mask_logits=m))[0])(jnp.asarray(MASK_LOGITS))
    active = (MASK_LOGITS > 0) & (MASK > 0)
    assert np.all(np.abs(grad[active]) > 0)
    np.testing.assert_array_equal(grad[~active], 0.0)


def test_tgdpo_matches_numpy_and_reduces_to_dpo():
    """Against the authors' weight ``beta * (1 +/- alpha * beta * (logp_guide - logp_ref))`` (TGDPO trainer)."""
    beta, alpha = 0.3, 0.6
    reward = beta * GUIDE_RATIO
    f = np.stack([1 + alpha * reward[:, 0], 1 - alpha * reward[:, 1]], axis=1)
    weighted = _sum(beta * f * (POLICY - REFERENCE))
    expected = -_log_sigmoid(weighted[:, 0] - weighted[:, 1])
    np.testing.assert_allclose(_per_example(TGDPO(beta=beta, alpha=alpha), _batch())[0], expected, rtol=1e-5)
    dpo = _per_example(DPO(beta=beta), _batch())[0]
    zero = np.zeros_like(GUIDE_RATIO)
    guided = _per_example(TGDPO(beta=beta, alpha=alpha), _batch(guide_ratio=zero))[0]
    np.testing.assert_allclose(guided, dpo, rtol=1e-6)
    np.testing.assert_allclose(_per_example(TGDPO(beta=beta, alpha=0.0), _batch())[0], dpo, rtol=1e-6)


def test_sparsepo_l1_penalty_is_the_authors_sum_over_response_tokens():
    """``lambda * (||m^w||_1 + ||m^l||_1)`` over response tokens, unnormalised (HEBO SparsePO trainer)."""
    lam = 0.01
    m = np.maximum(MASK_LOGITS, 0.0)
    penalty = lam * (_sum(m)[:, 0] + _sum(m)[:, 1])
    plain = _per_example(SparsePO(beta=0.5), _batch())[0]
    penalised, metrics = _per_example(SparsePO(beta=0.5, sparsity=lam), _batch())
    np.testing.assert_allclose(penalised - plain, penalty, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["mask/l1"], _sum(m).sum(axis=1), rtol=1e-5)


OBJECTIVES = [TDPO1, TDPO2, SparsePO, TGDPO]


@pytest.mark.parametrize("cls", OBJECTIVES)
def test_jit_grads_extremes_reference_vmap_bf16(cls):
    """Finite gradients at log-ratios of 1e4 under jit, zero reference gradient,
    finite-difference check, a vmapped beta grid and bf16 inputs."""

    def loss(p, r):
        return cls()(_batch(p, r))[0]

    value, (g_pol, g_ref) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        jnp.asarray(POLICY * 1e4), jnp.asarray(REFERENCE))
    assert np.isfinite(value) and np.all(np.isfinite(g_pol))
    np.testing.assert_array_equal(g_ref, 0.0)
    check_grads(jax.jit(lambda p: cls(beta=0.5)(_batch(p))[0]), (jnp.asarray(POLICY),), order=1, modes=["rev"],
                atol=1e-2, rtol=1e-2)
    betas = jnp.array([0.05, 0.5])
    grid = jax.vmap(lambda b: cls(beta=b)(_batch())[0])(betas)
    np.testing.assert_allclose(grid, [cls(beta=float(b))(_batch())[0] for b in betas], rtol=1e-5)
    bf16 = _batch(jnp.asarray(POLICY, jnp.bfloat16), jnp.asarray(REFERENCE, jnp.bfloat16),
                  ref_kl=jnp.asarray(REF_KL, jnp.bfloat16))
    loss16, _ = cls()(bf16)
    assert loss16.dtype == jnp.float32 and np.isfinite(loss16)
