"""Tests of KTO, BCO, paired BCO and NPO.

Expected numbers come from NumPy transcriptions of the papers' formulas on
fixed inputs (written independently of the JAX code), and from identities:
paired BCO equals unpaired BCO of the chosen (desirable) plus the rejected
(undesirable).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jalign.objectives import from_sequences
from jalign.objectives.batch import LogProbs
from jalign.objectives.unpaired import BCO, KTO, NPO, BCOPair, bco_loss, kto_loss, npo_loss

POLICY = np.array([[-3.0], [-5.0], [-2.0], [-7.0]], np.float32)
REFERENCE = np.array([[-4.0], [-4.5], [-2.5], [-6.0]], np.float32)
DESIRABLE = np.array([[1.0], [0.0], [1.0], [0.0]], np.float32)
KL = np.array([0.3, -0.1, 0.5, 0.2], np.float32)


@jax.jit
def _per_example(objective, lp):
    """``objective.per_example`` compiled once per objective type (keeps the tests fast)."""
    return objective.per_example(lp)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _batch(policy=POLICY, reference=REFERENCE, **labels):
    return from_sequences(policy, reference, labels=labels)


def test_kto_matches_numpy():
    """Eq. 8 by hand: lambda_y - v with z0 = max(0, mean(kl)) = 0.225."""
    beta, lam_d, lam_u = 0.5, 1.3, 0.7
    r = (POLICY - REFERENCE)[:, 0]
    z0 = max(0.0, KL.mean())
    v = np.where(DESIRABLE[:, 0] > 0, lam_d * _sigmoid(beta * (r - z0)), lam_u * _sigmoid(beta * (z0 - r)))
    expected = np.where(DESIRABLE[:, 0] > 0, lam_d, lam_u) - v
    lp = _batch(desirable=DESIRABLE, kl_estimate=KL)
    losses, metrics = _per_example(KTO(beta=beta, lambda_d=lam_d, lambda_u=lam_u), lp)
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["kl"], z0, rtol=1e-6)


def test_kto_reference_point_is_clipped_and_accepts_scalar():
    """A negative mean KL gives z0 = 0; a scalar label is used as the mean."""
    r = (POLICY - REFERENCE)[:, 0]
    clipped = _per_example(KTO(), _batch(desirable=DESIRABLE, kl_estimate=-np.abs(KL)))[1]["kl"]
    assert float(clipped) == 0.0
    scalar = _per_example(KTO(beta=0.2), _batch(desirable=DESIRABLE, kl_estimate=np.float32(0.4)))[0]
    expected = np.where(DESIRABLE[:, 0] > 0, _sigmoid(0.2 * (0.4 - r)), _sigmoid(0.2 * (r - 0.4)))
    np.testing.assert_allclose(scalar, expected, rtol=1e-6)


def test_kto_no_gradient_through_kl_or_reference():
    """The paper does not back-propagate through z0; the reference is a constant."""

    def loss(kl, reference):
        lp = from_sequences(POLICY, reference, labels={"desirable": DESIRABLE, "kl_estimate": kl})
        return KTO()(lp)[0]

    grad_kl, grad_ref = jax.grad(loss, argnums=(0, 1))(jnp.asarray(KL), jnp.asarray(REFERENCE))
    np.testing.assert_array_equal(grad_kl, 0.0)
    np.testing.assert_array_equal(grad_ref, 0.0)


def test_kto_requires_kl_estimate():
    with pytest.raises(ValueError, match="kl_estimate"):
        KTO()(_batch(desirable=DESIRABLE))


def test_bco_matches_numpy():
    """BCE of beta*r - delta: -log sigma for desirable, -log sigma(-.) otherwise."""
    beta, delta = 0.3, 0.05
    logits = beta * (POLICY - REFERENCE)[:, 0] - delta
    expected = np.where(DESIRABLE[:, 0] > 0, np.log1p(np.exp(-logits)), np.log1p(np.exp(logits)))
    losses, metrics = _per_example(BCO(beta=beta, delta=delta), _batch(desirable=DESIRABLE))
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["reward"], beta * (POLICY - REFERENCE)[:, 0], rtol=1e-6)


def _np_running_mean(mean, count, rewards):
    """The mean update of RunningMoments in TRL's BCOTrainer (trl/experimental/bco/bco_trainer.py)."""
    rewards = np.asarray(rewards, np.float64)
    total = count + rewards.size
    return mean + (rewards.mean() - mean) * rewards.size / total, total


def _np_bco(rewards, desirable, delta):
    logits = rewards - delta
    return np.where(desirable, np.log1p(np.exp(-logits)), np.log1p(np.exp(logits)))


def test_bco_default_shift_is_the_authors_running_mean_at_its_first_step():
    """TRL's BCOTrainer: running.update(cat(chosen, rejected rewards)); delta = running.mean, from
    mean 0 and count 1e-24. Its first-step loss is our default (delta = batch mean of beta r); its
    second-step loss is ours with that running mean passed as a fixed delta."""
    beta = 0.3
    desirable = DESIRABLE[:, 0] > 0
    policy1 = POLICY + np.array([[0.8], [0.0], [0.0], [0.0]], np.float32)
    first = beta * (policy1 - REFERENCE)[:, 0].astype(np.float64)
    delta1, count = _np_running_mean(0.0, 1e-24, np.concatenate([first[desirable], first[~desirable]]))
    assert abs(delta1) > 1e-2
    losses, metrics = _per_example(BCO(beta=beta), _batch(policy1, desirable=DESIRABLE))
    np.testing.assert_allclose(losses, _np_bco(first, desirable, delta1), rtol=1e-6)
    np.testing.assert_allclose(metrics["delta"], delta1, rtol=1e-6)

    policy2 = policy1 + np.array([[0.5], [-1.0], [2.0], [0.3]], np.float32)
    second = beta * (policy2 - REFERENCE)[:, 0].astype(np.float64)
    delta2, _ = _np_running_mean(delta1, count, second)
    lp2 = _batch(policy2, desirable=DESIRABLE)
    np.testing.assert_allclose(_per_example(BCO(beta=beta, delta=delta2), lp2)[0],
                               _np_bco(second, desirable, delta2), rtol=1e-6)
    assert abs(delta2 - second.mean()) > 1e-3  # the running mean is not the second batch's mean


def test_bco_shift_is_weighted_and_a_constant_for_the_gradient():
    """A zero-weight row does not move the shift; the gradient equals that of the same fixed delta."""
    beta = 0.5
    rewards = beta * (POLICY - REFERENCE)[:, 0]
    weights = np.array([1.0, 1.0, 1.0, 0.0], np.float32)
    lp = _batch(desirable=DESIRABLE, example_weight=weights)
    np.testing.assert_allclose(_per_example(BCO(beta=beta), lp)[1]["delta"], rewards[:3].mean(), rtol=1e-6)

    def loss(policy, objective):
        return objective(_batch(policy, desirable=DESIRABLE))[0]

    delta = float(rewards.mean())
    grad_default = jax.grad(loss)(jnp.asarray(POLICY), BCO(beta=beta))
    grad_fixed = jax.grad(loss)(jnp.asarray(POLICY), BCO(beta=beta, delta=delta))
    np.testing.assert_allclose(grad_default, grad_fixed, rtol=1e-6)


def test_bco_pair_shift_and_trl_1_16():
    """Default: delta = mean of the chosen and rejected rewards over the batch. delta = 0 is TRL 1.16's
    bco_pair, -logsigmoid(beta r_w) - logsigmoid(-beta r_l), transcribed."""
    beta = 0.4
    ratio = (POLICY - REFERENCE).reshape(2, 2).astype(np.float64)
    lp = from_sequences(POLICY.reshape(2, 2), REFERENCE.reshape(2, 2))
    delta = beta * ratio.mean()
    expected = (np.log1p(np.exp(-(beta * ratio[:, 0] - delta))) + np.log1p(np.exp(beta * ratio[:, 1] - delta)))
    losses, metrics = _per_example(BCOPair(beta=beta), lp)
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["delta"], delta, rtol=1e-6)
    trl = np.log1p(np.exp(-beta * ratio[:, 0])) + np.log1p(np.exp(beta * ratio[:, 1]))
    np.testing.assert_allclose(_per_example(BCOPair(beta=beta, delta=0.0), lp)[0], trl, rtol=1e-6)


def test_bco_pair_is_sum_of_unpaired_bco():
    """Identity: paired BCO = BCO(chosen, desirable) + BCO(rejected, undesirable)."""
    policy = POLICY.reshape(2, 2)
    reference = REFERENCE.reshape(2, 2)
    paired = _per_example(BCOPair(beta=0.4, delta=0.1), from_sequences(policy, reference))[0]
    bco = BCO(beta=0.4, delta=0.1)
    chosen = _per_example(bco, _batch(policy[:, :1], reference[:, :1], desirable=np.ones((2, 1))))[0]
    rejected = _per_example(bco, _batch(policy[:, 1:], reference[:, 1:], desirable=np.zeros((2, 1))))[0]
    np.testing.assert_allclose(paired, chosen + rejected, rtol=1e-6)


def test_npo_matches_numpy_and_extremes():
    """(2/beta) log(1 + (pi/pi_ref)^beta); at r = 1e4 it is ~2r, at r = -1e4 ~0."""
    beta = 0.1
    r = (POLICY - REFERENCE)[:, 0]
    expected = 2.0 / beta * np.log1p(np.exp(beta * r))
    losses, metrics = _per_example(NPO(beta=beta), _batch())
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["logratio"], r)
    extreme = npo_loss(jnp.array([1e4, -1e4]), beta=beta)
    np.testing.assert_allclose(extreme, [2e4, 2.0 / beta * np.exp(-1e3)], rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("make", [
    lambda p, r: (KTO(), from_sequences(p, r, labels={"desirable": DESIRABLE, "kl_estimate": KL})),
    lambda p, r: (BCO(), from_sequences(p, r, labels={"desirable": DESIRABLE})),
    lambda p, r: (BCOPair(), from_sequences(p.reshape(2, 2), r.reshape(2, 2))),
    lambda p, r: (NPO(), from_sequences(p, r)),
])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_jit_grad_finite_and_reference_constant(make, scale):
    """Under jit, gradients are finite at log-ratios up to 1e4 and zero for the reference."""
    policy, reference = jnp.asarray(POLICY * scale), jnp.asarray(REFERENCE)

    def loss(p, r):
        objective, lp = make(p, r)
        return objective(lp)[0]

    value, (g_pol, g_ref) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(policy, reference)
    assert np.isfinite(value) and np.all(np.isfinite(g_pol))
    np.testing.assert_array_equal(g_ref, 0.0)


def test_check_grads_and_bf16():
    """Analytic gradients match finite differences; bf16 inputs give finite fp32 losses."""
    labels = {"desirable": DESIRABLE, "kl_estimate": KL}
    # BCO's default shift is a stop-gradient batch statistic, so its gradient is not the derivative of
    # its value; finite differences are checked at a fixed shift (the shift is tested on its own below).
    for objective in (KTO(beta=0.5), BCO(beta=0.5, delta=0.1), NPO(beta=0.5)):
        lab = labels if not isinstance(objective, NPO) else {}
        check_grads(jax.jit(lambda p: objective(from_sequences(p, REFERENCE, labels=lab))[0]),
                    (jnp.asarray(POLICY, jnp.float32),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
        lp = LogProbs(policy=jnp.asarray(POLICY, jnp.bfloat16)[..., None],
                      mask=jnp.ones((4, 1, 1), jnp.bfloat16),
                      reference=jnp.asarray(REFERENCE, jnp.bfloat16)[..., None], labels=lab)
        loss, _ = objective(lp)
        assert loss.dtype == jnp.float32 and np.isfinite(loss)


def test_vmap_over_beta():
    """A grid of beta is one vmapped program and matches per-value calls."""
    lp = _batch(desirable=DESIRABLE, kl_estimate=KL)
    betas = jnp.array([0.05, 0.1, 0.5])
    for cls in (KTO, BCO, NPO):
        grid = jax.vmap(lambda b: cls(beta=b)(lp)[0])(betas)
        single = jnp.stack([cls(beta=float(b))(lp)[0] for b in betas])
        np.testing.assert_allclose(grid, single, rtol=1e-6)


def test_pure_functions_batched():
    """The optax-style functions take [B] arrays and return unreduced [B] losses."""
    r = jnp.linspace(-2.0, 2.0, 5)
    d = jnp.array([True, False, True, False, True])
    assert kto_loss(r, d, 0.1, beta=0.1).shape == (5,)
    assert bco_loss(r, d, beta=0.1).shape == (5,)
    assert npo_loss(r, beta=0.1).shape == (5,)
