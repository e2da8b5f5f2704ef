"""EXO, DiscoPOP and AOT against NumPy formulas, closed forms and DPO identities.

Independent sources: EXO as the KL divergence between two explicit Bernoulli
distributions in float64 NumPy (Ji et al. 2024, Eq. 16) and its closed-form
zero; EXO-rw as a KL between two softmaxes in NumPy, and its reduction to
EXO-pref when the scores encode the smoothed label; DiscoPOP's LRML formula written naively in NumPy (Chen, Lu et al. 2024,
Eq. 5); AOT as "sort both samples, apply the logistic loss" in NumPy (Melnyk
et al. 2024), its permutation invariances, and its reduction to (c)DPO on a
single pair or on comonotone batches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from numpy_reference import log_sigmoid
from objective_checks import (
    assert_gradient_reaches_policy_only,
    assert_grid_matches_loop,
)
from random_batches import batch_for

import jalign.objectives.distributional as distributional
from jalign.objectives import from_sequences
from jalign.objectives.pairwise import DPO
from jalign.objectives.registry import make

NAMES = ["exo", "exo_reward", "discopop", "aot_paired", "aot_unpaired"]
SCORES = np.array([1.0, -0.5])  # labels["score"] row for exo_reward in mixed tests


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _batch(seed=0, batch=5):
    """Sequence log-probs [B, 2] (T = 1) and the batch built from them."""
    rng = np.random.default_rng(seed)
    policy = -rng.uniform(0.5, 6.0, size=(batch, 2))
    reference = -rng.uniform(0.5, 6.0, size=(batch, 2))
    return policy, reference, from_sequences(policy, reference)


@pytest.mark.parametrize("beta,eps", [(0.1, 1e-3), (1.0, 0.2)])
def test_exo_is_kl_between_bernoullis(beta, eps):
    """KL(p_theta || p_data) with p_theta = (s(beta h), s(-beta h)) and p_data = (1 - eps, eps)."""
    policy, reference, lp = _batch(seed=1)
    h = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    p = _sigmoid(beta * h)
    expected = p * np.log(p / (1 - eps)) + (1 - p) * np.log((1 - p) / eps)
    objective = make("exo", beta=beta, label_smoothing=eps)
    losses, metrics = objective.per_example(lp)
    np.testing.assert_allclose(losses, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(objective(lp)[0], expected.mean(), rtol=1e-4)
    np.testing.assert_allclose(metrics["rewards/margin"], beta * h, rtol=1e-5)


def test_exo_default_is_trl_1_16_exo_pair_at_its_recommended_smoothing():
    """TRL 1.16's exo_pair, transcribed: q_w (log q_w - log(1 - eps)) + q_l (log q_l - log eps) with
    q = sigmoid(+-beta h); our default eps = 1e-3 is the value TRL requires instead of its default 0,
    where the KL is infinite."""
    policy, reference, lp = _batch(seed=4)
    beta, eps = 0.1, 1e-3
    h = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    q_w, q_l = _sigmoid(beta * h), _sigmoid(-beta * h)
    trl = q_w * (np.log(q_w) - np.log1p(-eps)) + q_l * (np.log(q_l) - np.log(eps))
    np.testing.assert_allclose(make("exo").per_example(lp)[0], trl, rtol=1e-4, atol=1e-6)
    assert np.isinf(float(distributional.exo_loss(jnp.array(1.0), beta=beta, label_smoothing=0.0)))


def test_exo_vanishes_where_model_matches_smoothed_label():
    """The KL is zero exactly at sigmoid(beta h) = 1 - eps, i.e. h = log((1 - eps) / eps) / beta."""
    beta, eps = 0.5, 0.1
    h = np.log((1 - eps) / eps) / beta
    lp = from_sequences(np.array([[h, 0.0], [h + 3.0, 0.0]]), np.zeros((2, 2)))
    losses, _ = make("exo", beta=beta, label_smoothing=eps).per_example(lp)
    np.testing.assert_allclose(losses[0], 0.0, atol=1e-6)
    assert losses[1] > 1e-3


def test_exo_reward_is_kl_between_softmaxes_and_ignores_padding():
    """KL(softmax(beta_pi r) || softmax(s / beta_r)) in NumPy; a padded entry is as if absent."""
    policy = np.array([[-1.0, -2.0, -0.5], [-3.0, -0.2, -1.0]])
    reference = np.full_like(policy, -1.5)
    scores = np.array([[0.3, 1.2, -0.4], [2.0, 0.0, 1.0]])
    beta, beta_r = 0.7, 0.5

    def np_kl(r, s):
        p = np.exp(beta * r) / np.exp(beta * r).sum(-1, keepdims=True)
        q = np.exp(s / beta_r) / np.exp(s / beta_r).sum(-1, keepdims=True)
        return (p * np.log(p / q)).sum(-1)

    objective = make("exo_reward", beta=beta, beta_r=beta_r)
    losses, metrics = objective.per_example(from_sequences(policy, reference, labels={"score": scores}))
    np.testing.assert_allclose(losses, np_kl(policy - reference, scores), rtol=1e-5)
    np.testing.assert_allclose(metrics["top1_accuracy"], [0.0, 0.0])

    mask = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    ragged = from_sequences(policy, reference, labels={"score": scores, "list_mask": mask})
    losses, _ = objective.per_example(ragged)
    np.testing.assert_allclose(losses[0], np_kl(policy[0, :2] - reference[0, :2], scores[0, :2]), rtol=1e-5)


def test_exo_reward_on_pairs_with_matching_scores_is_exo():
    """With G = 2 and s_w - s_l = beta_r log((1 - eps) / eps), p_r = (1 - eps, eps): EXO-pref."""
    policy, reference, lp = _batch(seed=6)
    eps, beta_r = 0.05, 0.5
    scores = np.tile([beta_r * np.log((1 - eps) / eps), 0.0], (policy.shape[0], 1))
    with_scores = from_sequences(policy, reference, labels={"score": scores})
    reward, _ = make("exo_reward", beta=0.3, beta_r=beta_r).per_example(with_scores)
    pref, _ = make("exo", beta=0.3, label_smoothing=eps).per_example(lp)
    np.testing.assert_allclose(reward, pref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta,tau", [(0.05, 0.05), (0.5, 0.05), (1.0, 2.0)])
def test_discopop_matches_lrml_formula(beta, tau):
    """(1 - s(rho/tau)) log(1 + e^-rho) + s(rho/tau) e^-rho, rho = beta h, written naively.

    With beta = tau the gate is s(h), the unscaled gate of the discovered code."""
    policy, reference, lp = _batch(seed=2)
    h = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    rho = beta * h
    gate = _sigmoid(rho / tau)
    expected = (1 - gate) * np.log1p(np.exp(-rho)) + gate * np.exp(-rho)
    losses, _ = make("discopop", beta=beta, tau=tau).per_example(lp)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def _np_aot(dominant, dominated, beta, eps):
    delta = np.sort(dominant) - np.sort(dominated)
    return -(1 - eps) * log_sigmoid(beta * delta) - eps * log_sigmoid(-beta * delta)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_aot_matches_sorted_logistic_formula(eps):
    """Paired: sorted policy margins vs sorted reference margins; unpaired: sorted chosen vs rejected log-ratios."""
    policy, reference, lp = _batch(seed=3, batch=6)
    beta = 0.4
    paired, metrics = make("aot_paired", beta=beta, label_smoothing=eps).per_example(lp)
    expected = _np_aot(policy[:, 0] - policy[:, 1], reference[:, 0] - reference[:, 1], beta, eps)
    np.testing.assert_allclose(paired, expected, rtol=1e-5)
    np.testing.assert_allclose(make("aot_paired", beta=beta, label_smoothing=eps)(lp)[0], expected.mean(), rtol=1e-5)
    gaps = np.sort(policy[:, 0] - policy[:, 1]) - np.sort(reference[:, 0] - reference[:, 1])
    np.testing.assert_allclose(metrics["aot/quantile_gap"], gaps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["aot/dominance_violation"], gaps < 0)

    ratios = policy - reference
    unpaired, _ = make("aot_unpaired", beta=beta, label_smoothing=eps).per_example(lp)
    np.testing.assert_allclose(unpaired, _np_aot(ratios[:, 0], ratios[:, 1], beta, eps), rtol=1e-5)


@pytest.mark.parametrize("name", ["aot_paired", "aot_unpaired"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_aot_on_a_single_pair_is_cdpo(name, eps):
    """With B = 1 the sort is the identity and both AOT forms reduce to (c)DPO on that pair."""
    policy, reference, lp = _batch(seed=4, batch=1)
    aot, _ = make(name, beta=0.3, label_smoothing=eps).per_example(lp)
    dpo, _ = DPO(beta=0.3, label_smoothing=eps).per_example(lp)
    np.testing.assert_allclose(aot, dpo, rtol=1e-6)


def test_aot_unpaired_on_comonotone_batch_is_dpo_per_row():
    """If chosen and rejected log-ratios are sorted in the same row order, quantiles pair up row by row."""
    ratios = np.array([[-3.0, -4.0], [-1.0, -2.5], [0.5, 1.0], [2.0, 1.5]])  # both columns ascending
    lp = from_sequences(ratios - 1.0, np.full_like(ratios, -1.0))
    aot, _ = make("aot_unpaired", beta=0.5).per_example(lp)
    dpo, _ = DPO(beta=0.5).per_example(lp)
    np.testing.assert_allclose(aot, dpo, rtol=1e-6)


def test_aot_is_a_distributional_loss():
    """Paired AOT ignores the order of rows; unpaired AOT also ignores which rejected goes with which chosen."""
    policy, reference, lp = _batch(seed=5, batch=6)
    rows = np.array([3, 0, 5, 1, 4, 2])
    shuffled = from_sequences(policy[rows], reference[rows])
    for name in ["aot_paired", "aot_unpaired"]:
        np.testing.assert_allclose(make(name)(shuffled)[0], make(name)(lp)[0], rtol=1e-6)
    rejected = np.array([1, 2, 3, 4, 5, 0])
    unpaired = from_sequences(np.stack([policy[:, 0], policy[rejected, 1]], 1),
                              np.stack([reference[:, 0], reference[rejected, 1]], 1))
    np.testing.assert_allclose(make("aot_unpaired")(unpaired)[0], make("aot_unpaired")(lp)[0], rtol=1e-6)


def _all_losses(beta, batch):
    return jnp.stack([make(name, beta=beta)(batch)[0] for name in NAMES])


def test_jit_vmap_over_beta_and_no_reference_gradient():
    """Jit equals eager; a vmapped beta grid equals one jitted call per value; d/d reference = 0."""
    lp = batch_for(DPO().requires, seed=31, batch=6, log_ratio_scale=5.0)
    lp = lp.replace(labels={"score": jnp.tile(SCORES, (6, 1))})
    assert_grid_matches_loop(_all_losses, (jnp.array([0.02, 0.1, 1.0]),), lp)
    assert_gradient_reaches_policy_only(lambda batch: _all_losses(0.1, batch).sum(), lp)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_finite_at_extreme_log_ratios(dtype):
    """Log-ratios of +/-1e4 in every sign pattern, default hyperparameters: finite loss and gradients."""
    signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], np.float32)
    lp = from_sequences(jnp.asarray(1e4 * signs - 1e4, dtype), jnp.asarray(np.full((4, 2), -1e4), dtype),
                        labels={"score": jnp.tile(SCORES, (4, 1))})

    def total(batch):
        return jnp.stack([make(name)(batch)[0] for name in NAMES])

    losses, grad = jax.jit(lambda batch: (total(batch), jax.grad(lambda b: total(b).sum())(batch)))(lp)
    assert losses.dtype == jnp.float32 and np.all(np.isfinite(losses))
    assert np.all(np.isfinite(np.asarray(grad.policy, np.float32)))


def test_gradients_match_finite_differences():
    """EXO (both forms), DiscoPOP and the sorted AOT loss (distinct values: the sort is locally fixed)."""
    margin = jnp.array([-2.0, -0.3, 0.8, 1.7])
    other = jnp.array([0.5, -1.2, 0.1, -2.5])
    options = dict(order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)
    check_grads(lambda m: distributional.exo_loss(m, beta=0.5, label_smoothing=0.1), (margin,), **options)
    check_grads(lambda m: distributional.discopop_loss(m, beta=0.5, tau=0.3), (margin,), **options)
    check_grads(lambda r: distributional.exo_reward_loss(r, jnp.stack([other, margin], 1), beta=0.5),
                (jnp.stack([margin, other], 1),), **options)
    check_grads(lambda u, v: distributional.aot_loss(u, v, beta=0.5, label_smoothing=0.1), (margin, other),
                **options)
