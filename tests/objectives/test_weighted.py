"""Reweighted and margin-shifted DPO variants (``jalign.objectives.weighted``).

Expected values come from NumPy transcriptions of each paper's formula on
hand-picked inputs, or from identities with DPO / IPO at neutral settings.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jalign.objectives.weighted as weighted
from jalign.objectives import LogProbs, from_sequences
from jalign.objectives.pairwise import DPO, IPO
from jalign.objectives.weighted import (
    DPOP, IREPO, LDDPO, MADPO, MODPO, WPO, SoftDPO, dpop_loss, irepo_loss, madpo_loss, modpo_loss,
    soft_dpo_loss, wpo_loss,
)
from numpy_reference import log_sigmoid

POLICY = np.array([[-1.0, -2.0], [-3.0, -1.0], [-0.2, -7.0], [-4.0, -4.5]])
REFERENCE = np.array([[-1.5, -1.5], [-2.0, -2.0], [-1.0, -1.0], [-3.0, -5.0]])
RATIOS = POLICY - REFERENCE
H = RATIOS[:, 0] - RATIOS[:, 1]
PREFERENCE = np.array([0.9, 0.5, 0.0, 1.0])
SCORE = np.array([[1.0, 0.0], [0.2, 0.7], [3.0, -1.0], [0.0, 0.0]])
OTHER = np.array([[[1.0, 0.5], [0.0, 0.5]], [[-1.0, 2.0], [0.5, 0.0]],
                  [[0.3, 0.3], [0.1, 0.9]], [[2.0, -2.0], [1.0, 1.0]]])  # [B, 2, K=2]


def _seq_batch(**labels):
    return from_sequences(POLICY, REFERENCE, labels={k: jnp.asarray(v) for k, v in labels.items()})


def _dpo_losses(lp, beta=0.1):
    return DPO(beta=beta).per_example(lp)[0]


def _token_batch():
    """Two pairs with ragged lengths: pair 0 has |y_w| = 3, |y_l| = 1; pair 1 has 2 and 4."""
    policy = np.array([[[-1.0, -0.5, -2.0, 0.0], [-0.7, 0.0, 0.0, 0.0]],
                       [[-0.3, -1.2, 0.0, 0.0], [-0.4, -0.6, -0.9, -1.1]]])
    reference = np.array([[[-0.8, -0.9, -1.0, 0.0], [-0.2, 0.0, 0.0, 0.0]],
                          [[-0.5, -1.0, 0.0, 0.0], [-0.5, -0.5, -0.5, -0.5]]])
    mask = np.array([[[1, 1, 1, 0], [1, 0, 0, 0]], [[1, 1, 0, 0], [1, 1, 1, 1]]], np.float32)
    return policy, reference, mask


def _token_lp(extras=None):
    policy, reference, mask = _token_batch()
    return LogProbs(policy=jnp.asarray(policy), mask=jnp.asarray(mask), reference=jnp.asarray(reference),
                    extras=extras or {})


def test_dpop_matches_hand_formula():
    """Pal et al. Eq. 3 in NumPy; pair 1 has log pi(y_w) < log pi_ref(y_w), so its penalty is active."""
    beta, lam = 0.2, 5.0
    expected = -log_sigmoid(beta * (H - lam * np.maximum(0.0, -RATIOS[:, 0])))
    losses, metrics = DPOP(beta=beta, lam=lam).per_example(_seq_batch())
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["dpop/penalty"], np.maximum(0.0, -RATIOS[:, 0]), rtol=1e-6)
    assert np.count_nonzero(np.asarray(metrics["dpop/penalty"])) == 2


def test_dpop_with_zero_lambda_is_dpo():
    lp = _seq_batch()
    np.testing.assert_allclose(DPOP(beta=0.3, lam=0.0).per_example(lp)[0], _dpo_losses(lp, 0.3), rtol=1e-6)


def test_wpo_matches_hand_formula():
    """Zhou et al. Eq. 2: w(y) = exp(mean_t [log pi(y_t) - log sum_v pi(v)^2]), the pair loss times w_w w_l
    with no cap by default, as TRL 1.16's use_weighting computes it; max_weight=1 is TRL's pre-#3906 clip."""
    assert WPO().max_weight == float("inf")
    policy, reference, mask = _token_batch()
    sq = np.stack([np.full(policy.shape[1:], -0.6), np.full(policy.shape[1:], -1.5)])
    beta = 0.5
    log_w = np.sum((policy - sq) * mask, -1) / mask.sum(-1)  # [B, 2]
    h = np.sum((policy - reference) * mask, -1) @ np.array([1.0, -1.0])
    lp = _token_lp({"log_prob_sq_sum": jnp.asarray(sq)})
    uncapped = -np.exp(log_w.sum(-1)) * log_sigmoid(beta * h)
    np.testing.assert_allclose(WPO(beta=beta).per_example(lp)[0], uncapped, rtol=1e-6)
    capped = -np.minimum(np.exp(log_w.sum(-1)), 1.0) * log_sigmoid(beta * h)
    np.testing.assert_allclose(WPO(beta=beta, max_weight=1.0).per_example(lp)[0], capped, rtol=1e-6)
    assert np.exp(log_w.sum(-1)).min() < 1.0 < np.exp(log_w.sum(-1)).max()  # cap exercised


def test_wpo_with_uniform_weights_is_dpo():
    """When pi(y_t) = sum_v pi(v)^2 at every token every weight is 1: WPO is DPO."""
    lp = _token_lp()
    lp = lp.replace(extras={"log_prob_sq_sum": lp.policy})
    np.testing.assert_allclose(WPO(beta=0.2).per_example(lp)[0], _dpo_losses(lp, 0.2), rtol=1e-6)


def test_wpo_weight_is_a_constant():
    """The weight is stop-gradient: no gradient reaches the calibration extra."""
    lp = _token_lp({"log_prob_sq_sum": jnp.full((2, 2, 4), -2.0)})
    grad = jax.grad(lambda b: WPO()(b)[0])(lp)
    assert np.all(np.asarray(grad.extras["log_prob_sq_sum"]) == 0.0)


def test_ld_dpo_matches_hand_formula():
    """Liu et al.: tokens past l_p = min(|y_w|, |y_l|) weigh alpha, for policy and reference alike."""
    policy, reference, mask = _token_batch()
    alpha, beta = 0.3, 0.4
    weights = np.ones_like(policy)
    weights[0, 0, 1:] = alpha  # l_p = 1 for pair 0: tokens 2-3 of y_w
    weights[1, 1, 2:] = alpha  # l_p = 2 for pair 1: tokens 3-4 of y_l
    ratios = np.sum(weights * (policy - reference) * mask, -1)
    expected = -log_sigmoid(beta * (ratios[:, 0] - ratios[:, 1]))
    losses, metrics = LDDPO(beta=beta, alpha=alpha).per_example(_token_lp())
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["ld_dpo/public_length"], [1.0, 2.0])


def test_ld_dpo_with_alpha_one_is_dpo():
    lp = _token_lp()
    np.testing.assert_allclose(LDDPO(beta=0.4, alpha=1.0).per_example(lp)[0], _dpo_losses(lp, 0.4), rtol=1e-6)


def test_ld_dpo_down_weights_the_reference_tail_too():
    """At pi_theta = pi_ref the margin is 0 and the loss log 2 for any alpha; raising a reference tail
    token of y_w by d lowers the margin by alpha d (policy-only weighting would lower it by d)."""
    policy, reference, mask = _token_batch()
    at_reference = LogProbs(policy=jnp.asarray(reference), mask=jnp.asarray(mask), reference=jnp.asarray(reference))
    np.testing.assert_allclose(LDDPO(alpha=0.3).per_example(at_reference)[0], np.log(2.0), rtol=1e-6)
    alpha, beta, d = 0.3, 1.0, 0.5
    moved = reference.copy()
    moved[0, 0, 2] += d  # pair 0: |y_w| = 3 > |y_l| = 1, so token 3 of y_w is in the tail
    base = LDDPO(beta=beta, alpha=alpha).per_example(_token_lp())[0]
    shifted = LDDPO(beta=beta, alpha=alpha).per_example(
        LogProbs(policy=jnp.asarray(policy), mask=jnp.asarray(mask), reference=jnp.asarray(moved)))[0]
    neg_margin = lambda loss: np.log(np.expm1(loss))  # loss = log(1 + e^-h)  =>  -h = log(e^loss - 1)
    np.testing.assert_allclose(neg_margin(np.asarray(shifted)[0]) - neg_margin(np.asarray(base)[0]),
                               alpha * d, rtol=1e-5)


def test_ld_dpo_counts_positions_over_response_tokens_only():
    """The same pairs left-padded instead of right-padded give the same loss."""
    policy, reference, mask = _token_batch()
    shift = (mask.shape[-1] - mask.sum(-1)).astype(int)  # [B, 2] padding tokens per response
    left = [np.zeros_like(x) for x in (policy, reference, mask)]
    for b, g in np.ndindex(shift.shape):
        for src, dst in zip((policy, reference, mask), left):
            dst[b, g] = np.roll(src[b, g], shift[b, g])
    left_lp = LogProbs(policy=jnp.asarray(left[0]), mask=jnp.asarray(left[2]), reference=jnp.asarray(left[1]))
    assert left[2][0, 1, 0] == 0.0  # padding really is on the left now
    np.testing.assert_allclose(LDDPO(alpha=0.3).per_example(left_lp)[0],
                               LDDPO(alpha=0.3).per_example(_token_lp())[0], rtol=1e-6)


def _np_madpo_weight(h, c_max=2.0, c_min=0.5, lam=1.0, tau=2.0):
    """Transcription of the authors' MADPOLoss.coef and chosen-side weight, in float64."""
    c = c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * np.exp(lam * (np.abs(h) - tau)))
    sigmoid = lambda x: 1 / (1 + np.exp(-x))
    return np.where(h > -tau, sigmoid(c * h) / sigmoid(h), 1.0)


def test_madpo_matches_hand_formula():
    """-w(h_phi) log sigma(beta h), h_phi = score margin = (1, -0.5, 4, 0); w amplifies hard pairs."""
    lp = _seq_batch(score=SCORE)
    beta = 0.3
    h_phi = SCORE[:, 0] - SCORE[:, 1]
    weight = _np_madpo_weight(h_phi)
    losses, metrics = MADPO(beta=beta).per_example(lp)
    np.testing.assert_allclose(losses, -weight * log_sigmoid(beta * H), rtol=1e-5)
    np.testing.assert_allclose(metrics["madpo/weight"], weight, rtol=1e-5)
    assert weight[0] > 1.0 > weight[2]  # hard pair amplified, easy pair dampened
    np.testing.assert_allclose(weight[3], 1.0)  # sigma(0)/sigma(0)
    below = MADPO(tau=0.25).per_example(lp)[1]["madpo/weight"]
    np.testing.assert_allclose(below[1], 1.0)  # h_phi = -0.5 <= -tau: capped at 1


def test_madpo_with_unit_c_max_is_dpo():
    lp = _seq_batch(score=SCORE)
    np.testing.assert_allclose(MADPO(beta=0.3, c_max=1.0).per_example(lp)[0], _dpo_losses(lp, 0.3), rtol=1e-6)


def test_soft_dpo_identities():
    """p = 1 is DPO; p = 1/2 is symmetric in chosen/rejected; p equals cDPO with eps = 1 - p."""
    beta = 0.4
    ones = _seq_batch(preference=np.ones(4))
    np.testing.assert_allclose(SoftDPO(beta=beta).per_example(ones)[0], _dpo_losses(ones, beta), rtol=1e-6)
    half = _seq_batch(preference=np.full(4, 0.5))
    swapped = from_sequences(POLICY[:, ::-1], REFERENCE[:, ::-1], labels={"preference": jnp.full(4, 0.5)})
    np.testing.assert_allclose(SoftDPO(beta=beta).per_example(half)[0],
                               SoftDPO(beta=beta).per_example(swapped)[0], rtol=1e-6)
    p = 0.8
    soft = SoftDPO(beta=beta).per_example(_seq_batch(preference=np.full(4, p)))[0]
    np.testing.assert_allclose(soft, DPO(beta=beta, label_smoothing=1 - p).per_example(ones)[0], rtol=1e-6)


def test_irepo_matches_hand_formula_with_clipping():
    """(beta h - logit(clip(p)))^2; p = 0 and p = 1 are clipped to eps and 1 - eps."""
    beta, eps = 0.5, 1e-2
    p = np.clip(PREFERENCE, eps, 1 - eps)
    expected = (beta * H - np.log(p / (1 - p))) ** 2
    lp = _seq_batch(preference=PREFERENCE)
    np.testing.assert_allclose(IREPO(beta=beta, eps=eps).per_example(lp)[0], expected, rtol=1e-5)


def test_irepo_with_matched_target_is_ipo():
    """beta = 1 and logit(p) = 1/(2 tau) give Azar et al.'s IPO loss (h - 1/(2 tau))^2."""
    tau = 0.25
    p = 1.0 / (1.0 + np.exp(-1.0 / (2 * tau)))
    lp = _seq_batch(preference=np.full(4, p))
    np.testing.assert_allclose(IREPO(beta=1.0).per_example(lp)[0], IPO(tau=tau).per_example(lp)[0], rtol=1e-5)


def test_modpo_matches_hand_formula():
    """Zhou et al.: -log sigma((beta h - w_{1:} . (r(y_w) - r(y_l))) / w_0)."""
    beta, w = 0.2, np.array([0.5, 0.3, 0.2])
    other_margin = (OTHER[:, 0] - OTHER[:, 1]) @ w[1:]
    expected = -log_sigmoid((beta * H - other_margin) / w[0])
    lp = _seq_batch(other_rewards=OTHER)
    np.testing.assert_allclose(MODPO(beta=beta, weights=jnp.asarray(w)).per_example(lp)[0], expected, rtol=1e-6)
    uniform = -log_sigmoid((beta * H - (OTHER[:, 0] - OTHER[:, 1]).sum(-1) / 3) * 3)
    np.testing.assert_allclose(MODPO(beta=beta).per_example(lp)[0], uniform, rtol=1e-6)


def test_modpo_with_unit_first_weight_is_dpo_and_checks_k():
    lp = _seq_batch(other_rewards=OTHER)
    np.testing.assert_allclose(MODPO(beta=0.3, weights=(1.0, 0.0, 0.0)).per_example(lp)[0],
                               _dpo_losses(lp, 0.3), rtol=1e-6)
    with pytest.raises(ValueError, match="K \\+ 1 weights"):
        MODPO(weights=(1.0, 0.0)).per_example(lp)


ALL = [DPOP(), WPO(), LDDPO(), MADPO(), SoftDPO(), IREPO(), MODPO()]


def _full_batch():
    lp = _token_lp({"log_prob_sq_sum": jnp.full((2, 2, 4), -0.8)})
    return lp.replace(labels={"score": jnp.asarray(SCORE[:2]), "preference": jnp.asarray(PREFERENCE[:2]),
                              "other_rewards": jnp.asarray(OTHER[:2])})


@pytest.mark.parametrize("objective", ALL, ids=lambda o: o.name)
def test_jit_batched_and_reference_gradient_is_zero(objective):
    """Under jit the loss equals the eager batch mean; the reference gets no gradient."""
    lp = _full_batch()
    eager, _ = objective(lp)
    loss, grad = jax.jit(jax.value_and_grad(lambda o, b: o(b)[0], argnums=1))(objective, lp)
    np.testing.assert_allclose(loss, eager, rtol=1e-6)
    np.testing.assert_allclose(eager, np.mean(objective.per_example(lp)[0]), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad.policy)))
    assert np.all(np.asarray(grad.reference) == 0.0)


@pytest.mark.parametrize("fn, kwargs, args", [
    (dpop_loss, dict(beta=0.3, lam=2.0), (RATIOS[:, 0], RATIOS[:, 1])),
    (wpo_loss, dict(beta=0.3), (H, np.full((4, 2), -0.3))),
    (madpo_loss, dict(beta=0.3), (H, SCORE[:, 0] - SCORE[:, 1])),
    (soft_dpo_loss, dict(beta=0.3), (H, PREFERENCE)),
    (irepo_loss, dict(beta=0.3), (H, PREFERENCE)),
    (modpo_loss, dict(beta=0.3, weights=np.array([0.6, 0.2, 0.2])), (H, OTHER[:, 0] - OTHER[:, 1])),
], ids=lambda x: getattr(x, "__name__", ""))
def test_pure_loss_gradients_match_finite_differences(fn, kwargs, args):
    first, *rest = (jnp.asarray(a, jnp.float32) for a in args)
    # Nudge off the DPOP hinge so finite differences see a smooth function.
    check_grads(lambda x: jnp.sum(fn(x + 0.01, *rest, **kwargs)), (first,), order=1, modes=["rev"],
                atol=1e-2, rtol=1e-2)


def test_vmap_over_hyperparameters():
    """A grid of (beta, lam) is one vmapped program and matches a Python loop."""
    lp = _seq_batch()
    betas, lams = jnp.array([0.1, 0.5, 1.0]), jnp.array([0.0, 5.0, 50.0])
    grid = jax.vmap(lambda b, l: DPOP(beta=b, lam=l)(lp)[0])(betas, lams)
    loop = [DPOP(beta=float(b), lam=float(l))(lp)[0] for b, l in zip(betas, lams)]
    np.testing.assert_allclose(grid, loop, rtol=1e-6)
    alphas = jnp.array([0.0, 0.5, 1.0])
    tok = _token_lp()
    np.testing.assert_allclose(jax.vmap(lambda a: LDDPO(alpha=a)(tok)[0])(alphas),
                               [LDDPO(alpha=float(a))(tok)[0] for a in alphas], rtol=1e-6)


def test_finite_for_extreme_margins_and_bf16():
    """Log-ratios of +/-1e4 and bf16 inputs keep every loss and gradient finite."""
    lp = _full_batch()
    big = lp.replace(policy=lp.policy * 1e4)
    half = lp.replace(policy=lp.policy.astype(jnp.bfloat16), reference=lp.reference.astype(jnp.bfloat16))
    for objective in ALL:
        for batch in (big, half):
            loss, grad = jax.value_and_grad(lambda b: objective(b)[0])(batch)
            assert loss.dtype == jnp.float32 and np.isfinite(loss), objective.name
            assert np.all(np.isfinite(np.asarray(grad.policy, np.float32))), objective.name


def test_registered_names_and_requirements():
    """Importing the module registers every objective with the batch it needs."""
    names = {cls.name: cls for cls in (DPOP, WPO, LDDPO, MADPO, SoftDPO, IREPO, MODPO)}
    assert set(names) == {"dpop", "wpo", "ld_dpo", "madpo", "soft_dpo", "irepo", "modpo"}
    assert weighted.WPO().requires.extras == ("log_prob_sq_sum",)
    assert all(cls().requires.reference and cls().requires.responses == "pair" for cls in names.values())
