"""Tests of LiPO-lambda, listwise softmax, ListMLE and Curry-DPO pairs.

Expected numbers come from loop-based NumPy transcriptions of the papers'
formulas (pairs enumerated one by one, Plackett-Luce stages written out), and
from identities with DPO at ``G = 2`` and with truncated lists for padding.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jalign.objectives import from_sequences
from jalign.objectives.batch import LogProbs
from jalign.objectives.listwise import CurryDPO, LiPOLambda, LiPOSoftmax, ListMLE
from jalign.objectives.pairwise import DPO

RNG = np.random.default_rng(0)
POLICY = RNG.normal(-5.0, 2.0, (3, 4)).astype(np.float32)
REFERENCE = RNG.normal(-5.0, 2.0, (3, 4)).astype(np.float32)
SCORES = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.8, 0.0], [0.4, 0.7, 0.1, 0.6]], np.float32)
LIST_OBJECTIVES = [LiPOLambda, LiPOSoftmax, ListMLE, CurryDPO]


@jax.jit
def _per_example(objective, lp):
    """``objective.per_example`` compiled once per objective type (keeps the tests fast)."""
    return objective.per_example(lp)


def _log_sigmoid(x):
    return -np.log1p(np.exp(-x))


def _batch(policy=POLICY, reference=REFERENCE, scores=SCORES, **labels):
    return from_sequences(policy, reference, labels={"score": scores, **labels})


def _lipo_lambda_numpy(s, psi):
    g = len(s)
    order = sorted(range(g), key=lambda i: (-s[i], i))
    rank = {i: k + 1 for k, i in enumerate(order)}
    total = 0.0
    for i, j in itertools.permutations(range(g), 2):
        if psi[i] > psi[j]:
            delta = abs(2 ** psi[i] - 2 ** psi[j]) * abs(1 / np.log2(1 + rank[i]) - 1 / np.log2(1 + rank[j]))
            total += -delta * _log_sigmoid(s[i] - s[j])
    return total


def _list_mle_numpy(s, psi):
    order = sorted(range(len(s)), key=lambda i: (-psi[i], i))
    total = 0.0
    for k in range(len(order)):
        tail = [s[m] for m in order[k:]]
        total -= s[order[k]] - np.log(np.sum(np.exp(tail)))
    return total


def _curry_numpy(r, psi, beta, pairs):
    best = int(np.argmax(psi))
    chosen = [(i, j) for i, j in itertools.permutations(range(len(r)), 2)
              if psi[i] > psi[j] and (pairs == "all" or i == best)]
    return np.mean([-_log_sigmoid(beta * (r[i] - r[j])) for i, j in chosen])


def test_lipo_lambda_matches_numpy():
    beta = 0.7
    s = beta * (POLICY - REFERENCE)
    expected = [_lipo_lambda_numpy(s[b], SCORES[b]) for b in range(3)]
    losses, metrics = _per_example(LiPOLambda(beta=beta), _batch())
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["num_pairs"], [6, 5, 6])


def test_lipo_lambda_is_a_sum_over_pairs_without_max_dcg():
    """Liu et al.'s normalisation by hand. Equal rewards rank the list 1, 2, 3 by index; psi = (2, 1, 0)
    gives gains (3, 1, 0) and 1/D = (1, 1/log2 3, 1/2), every pair loss is log 2, and the paper's sum is
    (2 (1 - 1/log2 3) + 3 (1 - 1/2) + (1/log2 3 - 1/2)) log 2 = 1.6421. Dividing by maxDCG (3 + 1/log2 3)
    or averaging over the 3 pairs would give 0.4523 or 0.5474."""
    inv_d = 1.0 / np.log2(3.0)
    paper = (2 * (1 - inv_d) + 3 * 0.5 + (inv_d - 0.5)) * np.log(2.0)
    lp = from_sequences(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32),
                        labels={"score": np.array([[2.0, 1.0, 0.0]], np.float32)})
    loss = _per_example(LiPOLambda(beta=0.5), lp)[0]
    np.testing.assert_allclose(loss, [paper], rtol=1e-6)
    np.testing.assert_allclose(paper, 1.6421, atol=1e-4)


def test_softmax_and_list_mle_match_numpy():
    beta = 0.7
    s = beta * (POLICY - REFERENCE)
    log_softmax = s - np.log(np.sum(np.exp(s), axis=1, keepdims=True))
    linear = -np.sum(SCORES / SCORES.sum(1, keepdims=True) * log_softmax, axis=1)
    soft_targets = np.exp(SCORES) / np.exp(SCORES).sum(1, keepdims=True)
    np.testing.assert_allclose(_per_example(LiPOSoftmax(beta=beta), _batch())[0], linear, rtol=1e-5)
    np.testing.assert_allclose(_per_example(LiPOSoftmax(beta=beta, target="softmax"), _batch())[0],
                               -np.sum(soft_targets * log_softmax, axis=1), rtol=1e-5)
    expected_mle = [_list_mle_numpy(s[b], SCORES[b]) for b in range(3)]
    np.testing.assert_allclose(_per_example(ListMLE(beta=beta), _batch())[0], expected_mle, rtol=1e-5)


@pytest.mark.parametrize("pairs", ["best", "all"])
def test_curry_dpo_matches_numpy(pairs):
    beta = 0.7
    r = POLICY - REFERENCE
    expected = [_curry_numpy(r[b], SCORES[b], beta, pairs) for b in range(3)]
    np.testing.assert_allclose(_per_example(CurryDPO(beta=beta, pairs=pairs), _batch())[0], expected, rtol=1e-5)


def test_g2_identities_with_dpo():
    """With G = 2 and psi_0 > psi_1: LiPO-lambda = (2^psi_0 - 2^psi_1)(1 - 1/log2 3) DPO;
    ListMLE, Curry-DPO and softmax-CE with scores (1, 0) equal DPO."""
    beta = 0.3
    policy, reference = POLICY[:, :2], REFERENCE[:, :2]
    scores = np.array([[0.9, 0.1], [2.0, -1.0], [0.5, 0.4]], np.float32)
    dpo = _per_example(DPO(beta=beta), from_sequences(policy, reference))[0]
    factor = (2 ** scores[:, 0] - 2 ** scores[:, 1]) * (1 - 1 / np.log2(3))
    lam = _per_example(LiPOLambda(beta=beta), _batch(policy, reference, scores))[0]
    np.testing.assert_allclose(lam, factor * dpo, rtol=1e-5)
    for obj in (ListMLE(beta=beta), CurryDPO(beta=beta), CurryDPO(beta=beta, pairs="all")):
        np.testing.assert_allclose(_per_example(obj, _batch(policy, reference, scores))[0], dpo, rtol=1e-5)
    one_hot = np.tile(np.array([[1.0, 0.0]], np.float32), (3, 1))
    np.testing.assert_allclose(_per_example(LiPOSoftmax(beta=beta), _batch(policy, reference, one_hot))[0],
                               dpo, rtol=1e-5)


@pytest.mark.parametrize("cls", LIST_OBJECTIVES)
def test_list_mask_equals_truncated_list(cls):
    """A padded entry contributes nothing: masking entry 3 equals the G = 3 list."""
    mask = np.array([[1, 1, 1, 0]] * 3, np.float32)
    padded = _per_example(cls(beta=0.5), _batch(list_mask=mask))[0]
    truncated = _per_example(cls(beta=0.5), _batch(POLICY[:, :3], REFERENCE[:, :3], SCORES[:, :3]))[0]
    np.testing.assert_allclose(padded, truncated, rtol=1e-5)


@pytest.mark.parametrize("cls", LIST_OBJECTIVES)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_jit_grad_finite_and_reference_constant(cls, scale):
    scores = RNG.normal(size=(3, 4)).astype(np.float32)  # signed scores, as in property tests

    def loss(p, r):
        return cls()(from_sequences(p, r, labels={"score": scores}))[0]

    value, (g_pol, g_ref) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
        jnp.asarray(POLICY * scale), jnp.asarray(REFERENCE))
    assert np.isfinite(value) and np.all(np.isfinite(g_pol))
    np.testing.assert_array_equal(g_ref, 0.0)


@pytest.mark.parametrize("cls", LIST_OBJECTIVES)
def test_check_grads_vmap_and_bf16(cls):
    check_grads(jax.jit(lambda p: cls(beta=0.5)(_batch(p))[0]), (jnp.asarray(POLICY),), order=1, modes=["rev"],
                atol=1e-2, rtol=1e-2)
    betas = jnp.array([0.05, 0.1, 0.5])
    grid = jax.vmap(lambda b: cls(beta=b)(_batch())[0])(betas)
    np.testing.assert_allclose(grid, [cls(beta=float(b))(_batch())[0] for b in betas], rtol=1e-5)
    lp = LogProbs(policy=jnp.asarray(POLICY, jnp.bfloat16)[..., None], mask=jnp.ones((3, 4, 1), jnp.bfloat16),
                  reference=jnp.asarray(REFERENCE, jnp.bfloat16)[..., None], labels={"score": SCORES})
    loss, _ = cls()(lp)
    assert loss.dtype == jnp.float32 and np.isfinite(loss)
