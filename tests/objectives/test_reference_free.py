"""Reference-free objectives (``jalign.objectives.reference_free``).

Expected values come from NumPy transcriptions of each paper's formula on
hand-picked token batches (odds computed directly as ``p / (1 - p)`` in
float64), and from identities: SimPO without length normalisation and margin
is DPO with a zero reference; CPO without its NLL is that SimPO; TPO without
its gold NLL is CPO without NLL on the (chosen, rejected) pair.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jalign.objectives import LogProbs
from jalign.objectives.sequence import log1mexp
from jalign.objectives.pairwise import DPO
from jalign.objectives.reference_free import (
    ASFT, CPO, ORPO, TPO, SimPO, asft_loss, cpo_loss, log_odds, orpo_loss, simpo_loss,
    tpo_loss,
)
from numpy_reference import log_sigmoid

# [B=2, G=3, T=4]: response 0 is TPO's gold; pairs use responses 1 and 2 (or 0 and 1).
POLICY = np.array([[[-0.2, -0.4, -0.1, 0.0], [-1.0, -0.5, -2.0, 0.0], [-0.7, 0.0, 0.0, 0.0]],
                   [[-0.05, -0.1, 0.0, 0.0], [-0.3, -1.2, 0.0, 0.0], [-0.4, -0.6, -0.9, -1.1]]])
MASK = np.array([[[1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]],
                 [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]], np.float32)


def _lp(responses=(1, 2), dtype=jnp.float32):
    index = list(responses)
    return LogProbs(policy=jnp.asarray(POLICY[:, index], dtype), mask=jnp.asarray(MASK[:, index]))


def _sums(responses=(1, 2)):
    return np.sum(POLICY[:, list(responses)] * MASK[:, list(responses)], -1)


def _means(responses=(1, 2)):
    return _sums(responses) / MASK[:, list(responses)].sum(-1)


def _np_log_odds(mean):
    p = np.exp(mean)
    return np.log(p / (1 - p))


def test_log1mexp_matches_float64_and_has_finite_gradients():
    """log(1 - e^x) against NumPy float64 from -80 to -1e-6, and finite gradients at and above 0."""
    x = np.concatenate([-np.logspace(-6, np.log10(80), 60), [-np.log(2.0)]])
    # In float64 the cancellation in 1 - e^x costs at most ~1e-10 relative error here.
    np.testing.assert_allclose(log1mexp(jnp.asarray(x)), np.log1p(-np.exp(x)), rtol=1e-5, atol=1e-30)
    grad = jax.vmap(jax.grad(log1mexp))(jnp.array([-1e-12, 0.0, 2.0, -1e4, -0.5]))
    assert np.all(np.isfinite(np.asarray(grad)))
    check_grads(lambda v: jnp.sum(log1mexp(v)), (jnp.array([-0.3, -0.69, -0.7, -3.0]),), order=1,
                modes=["rev"], atol=1e-2, rtol=1e-2)


def test_simpo_matches_eq_6():
    """Meng et al. Eq. 6 with length-averaged log-probs."""
    beta, gamma = 2.0, 0.7
    mean = _means()
    expected = -log_sigmoid(beta * (mean[:, 0] - mean[:, 1]) - gamma)
    losses, metrics = SimPO(beta=beta, gamma=gamma).per_example(_lp())
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/chosen"], beta * mean[:, 0], rtol=1e-6)


def test_simpo_without_normalisation_or_margin_is_reference_free_dpo():
    """SimPO(average=False, gamma=0) == DPO with reference log-probs identically 0."""
    lp = _lp()
    zero_reference = lp.replace(reference=jnp.zeros_like(lp.policy))
    np.testing.assert_allclose(SimPO(beta=0.3, gamma=0.0, average=False).per_example(lp)[0],
                               DPO(beta=0.3).per_example(zero_reference)[0], rtol=1e-6)


def test_cpo_matches_hand_formula_and_without_nll_is_simpo():
    """Xu et al.: -log sigma(beta (log pi_w - log pi_l)) - alpha log pi_w, sequence log-probs."""
    beta, alpha = 0.1, 1.0
    seq = _sums()
    expected = -log_sigmoid(beta * (seq[:, 0] - seq[:, 1])) - alpha * seq[:, 0]
    losses, metrics = CPO(beta=beta, alpha=alpha).per_example(_lp())
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["nll"], -seq[:, 0], rtol=1e-6)
    np.testing.assert_allclose(CPO(beta=0.5, alpha=0.0).per_example(_lp())[0],
                               SimPO(beta=0.5, gamma=0.0, average=False).per_example(_lp())[0], rtol=1e-6)


def test_orpo_matches_eqs_6_7():
    """Hong et al.: mean NLL - lam log sigma(log odds_w - log odds_l), P = exp(mean log-prob)."""
    lam = 0.25
    mean = _means()
    ratio = _np_log_odds(mean[:, 0]) - _np_log_odds(mean[:, 1])
    expected = -mean[:, 0] - lam * log_sigmoid(ratio)
    losses, metrics = ORPO(lam=lam).per_example(_lp())
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards/margin"], ratio, rtol=1e-5)


def test_asft_matches_absolute_likelihood_form():
    """Wang et al.: sigma(log odds) = P, so the loss is -mean_w - lam (log P_w + log(1 - P_l))."""
    lam = 0.5
    mean = _means()
    expected = -mean[:, 0] - lam * (mean[:, 0] + np.log1p(-np.exp(mean[:, 1])))
    np.testing.assert_allclose(ASFT(lam=lam).per_example(_lp())[0], expected, rtol=1e-5)


def test_tpo_matches_hand_formula():
    """Saeidi et al. Eq. 3: -log sigma(beta (log pi_w - log pi_l)) - alpha mean log pi(gold)."""
    beta, alpha = 0.2, 0.05
    seq, gold = _sums(), _means((0,))[:, 0]
    expected = -log_sigmoid(beta * (seq[:, 0] - seq[:, 1])) - alpha * gold
    losses, metrics = TPO(beta=beta, alpha=alpha).per_example(_lp((0, 1, 2)))
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["nll"], -gold, rtol=1e-6)
    mean = _means()
    tpo_l = -log_sigmoid(beta * (mean[:, 0] - mean[:, 1]) - 0.5) - alpha * gold
    np.testing.assert_allclose(TPO(beta=beta, alpha=alpha, gamma=0.5, average=True).per_example(_lp((0, 1, 2)))[0],
                               tpo_l, rtol=1e-6)


def _authors_tpo_batch_loss(policy, mask, beta, alpha):
    """sahsaeedi/TPO utils/tpo_trainer.py: mean over pairs of -log sigma(beta (sum log pi_w - sum log pi_l))
    plus alpha times the cross-entropy averaged over every gold token of the batch."""
    sums = np.sum(policy * mask, -1)
    preference = -log_sigmoid(beta * (sums[:, 1] - sums[:, 2]))
    nll = -np.sum(policy[:, 0] * mask[:, 0]) / np.sum(mask[:, 0])
    return preference.mean() + alpha * nll


def test_tpo_defaults_are_the_authors_script_and_match_their_trainer():
    """run_tpo.sh trains with --beta 0.01 --tpo_alpha 1; with gold responses of equal length the
    batch loss equals their trainer's, whose NLL is a token mean over the batch."""
    assert (TPO().beta, TPO().alpha) == (0.01, 1.0)
    mask = MASK.copy()
    mask[:, 0] = [1, 1, 1, 0]  # both gold responses 3 tokens long
    lp = LogProbs(policy=jnp.asarray(POLICY), mask=jnp.asarray(mask))
    expected = _authors_tpo_batch_loss(POLICY, mask, beta=0.01, alpha=1.0)
    np.testing.assert_allclose(TPO()(lp)[0], expected, rtol=1e-6)


def test_tpo_without_gold_term_is_cpo_without_nll_and_needs_triples():
    np.testing.assert_allclose(TPO(beta=0.3, alpha=0.0).per_example(_lp((0, 1, 2)))[0],
                               CPO(beta=0.3, alpha=0.0).per_example(_lp())[0], rtol=1e-6)
    with pytest.raises(ValueError, match="tpo: needs responses=.triple.; batch has G=2"):
        TPO().per_example(_lp())


ALL = [(SimPO(), (1, 2)), (CPO(), (1, 2)), (ORPO(), (1, 2)), (ASFT(), (1, 2)), (TPO(), (0, 1, 2))]


@pytest.mark.parametrize("objective, responses", ALL, ids=lambda x: getattr(x, "name", ""))
def test_jit_batched_and_finite_at_extremes(objective, responses):
    """jit equals eager; log-probs scaled to 1e4, P -> 1 (log-prob 0) and bf16 stay finite."""
    lp = _lp(responses)
    eager = objective(lp)[0]
    np.testing.assert_allclose(jax.jit(lambda o, b: o(b)[0])(objective, lp), eager, rtol=1e-6)
    np.testing.assert_allclose(eager, np.mean(objective.per_example(lp)[0]), rtol=1e-6)
    value_and_grad = jax.jit(jax.value_and_grad(lambda b: objective(b)[0]))
    for batch in (lp.replace(policy=lp.policy * 1e4), lp.replace(policy=jnp.zeros_like(lp.policy)),
                  _lp(responses, jnp.bfloat16)):
        loss, grad = value_and_grad(batch)
        assert loss.dtype == jnp.float32 and np.isfinite(loss), objective.name
        assert np.all(np.isfinite(np.asarray(grad.policy, np.float32))), objective.name


@pytest.mark.parametrize("fn, kwargs, n", [
    (simpo_loss, dict(beta=2.0, gamma=0.5), 2),
    (cpo_loss, dict(beta=0.1), 2),
    (orpo_loss, dict(lam=0.1), 2),
    (asft_loss, dict(lam=0.1), 2),
    (tpo_loss, dict(beta=0.1, alpha=0.05), 3),
], ids=lambda x: getattr(x, "__name__", ""))
def test_pure_loss_gradients_match_finite_differences(fn, kwargs, n):
    args = tuple(jnp.asarray(_means((0, 1, 2))[:, i] if n == 3 else _means()[:, i], jnp.float32) for i in range(n))
    check_grads(lambda *a: jnp.sum(fn(*a, **kwargs)), args, order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_vmap_over_hyperparameters():
    """A grid of (beta, gamma) and of ORPO's lam are single vmapped programs matching a loop."""
    lp = _lp()
    betas, gammas = jnp.array([1.0, 2.0, 2.5]), jnp.array([0.0, 0.5, 1.6])
    grid = jax.vmap(lambda b, g: SimPO(beta=b, gamma=g)(lp)[0])(betas, gammas)
    np.testing.assert_allclose(grid, [SimPO(beta=float(b), gamma=float(g))(lp)[0] for b, g in zip(betas, gammas)],
                               rtol=1e-6)
    lams = jnp.array([0.0, 0.1, 1.0])
    np.testing.assert_allclose(jax.vmap(lambda l: ORPO(lam=l)(lp)[0])(lams),
                               [ORPO(lam=float(l))(lp)[0] for l in lams], rtol=1e-6)


def test_log_odds_is_logit_of_length_averaged_likelihood():
    mean = _means().ravel()
    np.testing.assert_allclose(log_odds(jnp.asarray(mean)), _np_log_odds(mean), rtol=1e-5)


def test_registered_names_and_requirements():
    """Importing the module registers every objective as reference-free."""
    names = {cls.name: cls for cls, _ in ((type(o), r) for o, r in ALL)}
    assert set(names) == {"simpo", "cpo", "orpo", "asft", "tpo"}
    assert not any(cls().requires.reference for cls in names.values())
