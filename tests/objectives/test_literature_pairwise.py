"""MaPO, Sem-DPO, JPO and IFT against independent computations.

MaPO and IFT are checked against the authors' PyTorch code, transcribed here
in float64 (mapo-t2i/mapo ``utils.py:compute_loss``; TsinghuaC3I/
Intuitive-Fine-Tuning ``src/trainers.py``: ``get_cumsum_weight`` with its
default ``loss`` / ``left`` / ``L1`` propagation and the ``'ift'`` loss line),
gradients included; Sem-DPO and JPO against NumPy float64 DPO sums written
from the papers' formulas. Finite losses and gradients at extreme
log-ratios and for bf16 inputs are checked for every registered objective,
these included, by ``test_properties.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jalign.objectives import LogProbs, dpo, from_sequences, ift, jpo, mapo, sem_dpo
from jalign.objectives.literature_pairwise import _x_over_expm1

from numpy_reference import log_sigmoid, padded_pair_batch


def _torch_mapo(nll_w, nll_l, *, beta, snr, timesteps):
    """The authors' compute_loss with model_losses_w/l given (per-example, not batch-reduced)."""
    log_odds = (snr * nll_w) / (torch.exp(snr * nll_w) - 1) - (snr * nll_l) / (torch.exp(snr * nll_l) - 1)
    return nll_w - beta * torch.nn.functional.logsigmoid(log_odds * timesteps)


def test_mapo_matches_the_authors_formula_and_gradient():
    lp, _ = padded_pair_batch()
    policy, mask = np.asarray(lp.policy, np.float64), np.asarray(lp.mask, np.float64)
    beta, snr, scale = 0.3, 0.5, 4.0
    objective = mapo(beta=beta, snr=snr, scale=scale)
    loss, metrics = jax.jit(objective)(lp)
    grad = jax.jit(jax.grad(lambda p: objective(lp.replace(policy=p))[0]))(lp.policy)

    p = torch.tensor(policy, requires_grad=True)
    m = torch.tensor(mask)
    nll = -(p * m).sum(-1) / m.sum(-1)                                          # [B, 2]
    expected = _torch_mapo(nll[:, 0], nll[:, 1], beta=beta, snr=snr, timesteps=scale).mean()
    expected.backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-6)
    np.testing.assert_allclose(grad, p.grad.numpy() * mask, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["nll"], nll[:, 0].detach().numpy().mean(), rtol=1e-6)


def test_mapo_link_is_stable_where_the_authors_form_divides_zero_by_zero():
    """x / (e^x - 1) near 0 (the authors' form is 0/0 at x = 0) and far out, against float64."""
    x = np.array([-80.0, -5.0, -1e-2, -1e-4, 0.0, 1e-4, 1e-2, 0.7, 30.0, 200.0, 1e4])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        expected = np.where(x == 0, 1.0, x / np.expm1(x))
    np.testing.assert_allclose(_x_over_expm1(jnp.asarray(x, jnp.float32)), expected, rtol=2e-6, atol=1e-30)
    slopes = jax.jit(jax.vmap(jax.grad(_x_over_expm1)))(jnp.asarray(x, jnp.float32))
    assert np.all(np.isfinite(slopes)) and np.all(np.asarray(slopes) <= 0)


def test_sem_dpo_is_the_weighted_dpo_sum_and_the_weight_is_a_constant():
    lp, ratios = padded_pair_batch()
    weight = np.array([0.2, 1.0, 0.7])
    beta = 0.4
    batch = lp.replace(labels={"semantic_weight": jnp.asarray(weight[:, None], jnp.float32)})  # [B, 1], as read
    loss, _ = sem_dpo(beta=beta)(batch)
    h = ratios[:, 0] - ratios[:, 1]
    np.testing.assert_allclose(loss, np.mean(-weight * log_sigmoid(beta * h)), rtol=1e-6)
    unit = lp.replace(labels={"semantic_weight": jnp.ones((3,))})
    np.testing.assert_allclose(sem_dpo(beta=beta)(unit)[0], dpo(beta=beta)(lp)[0], rtol=1e-6)
    grad = jax.grad(lambda b: sem_dpo(beta=beta)(b)[0])(batch)
    assert np.all(np.asarray(grad.labels["semantic_weight"]) == 0.0)


def _joint_batch():
    """Two pairs, T = 4; each slot's leading instruction tokens (1 or 2, or 0) precede its response."""
    rng = np.random.default_rng(3)
    policy = -rng.uniform(0.1, 3.0, size=(2, 2, 4))
    reference = -rng.uniform(0.1, 3.0, size=(2, 2, 4))
    mask = np.array([[[1, 1, 1, 1], [1, 1, 1, 0]], [[1, 1, 1, 0], [1, 1, 1, 1]]], np.float64)
    start = np.array([[2, 1], [0, 2]], np.float64)
    return policy, reference, mask, start


def test_jpo_scores_only_response_tokens_of_each_instruction_response_pair():
    """-log sigmoid(beta (r(x_w, y_w) - r(x_l, y_l))), r summed over response tokens only (Bansal et al.)."""
    policy, reference, mask, start = _joint_batch()
    beta = 0.1
    lp = LogProbs(policy=jnp.asarray(policy), mask=jnp.asarray(mask), reference=jnp.asarray(reference),
                  labels={"instruction_length": jnp.asarray(start)})
    scored = mask * (np.arange(4)[None, None, :] >= start[..., None])
    ratio = ((policy - reference) * scored).sum(-1)
    expected = np.mean(-log_sigmoid(beta * (ratio[:, 0] - ratio[:, 1])))
    np.testing.assert_allclose(jpo(beta=beta)(lp)[0], expected, rtol=1e-6)
    # The instruction tokens are context: their log-probs do not move the loss.
    moved = policy.copy()
    moved[0, 0, :2] -= 5.0
    np.testing.assert_allclose(jpo(beta=beta)(lp.replace(policy=jnp.asarray(moved)))[0], expected, rtol=1e-6)


def test_jpo_with_shared_instructions_is_dpo():
    lp, _ = padded_pair_batch()
    shared = lp.replace(labels={"instruction_length": jnp.zeros((3, 2))})
    np.testing.assert_allclose(jpo(beta=0.3)(shared)[0], dpo(beta=0.3)(lp)[0], rtol=1e-6)


def _torch_ift(logps, loss_mask, gamma):
    """The authors' get_cumsum_weight (loss, left, L1) and IFT loss line, per example."""
    if gamma == 0:
        weight = torch.ones_like(logps)
    else:
        item = -logps / loss_mask.sum(-1).unsqueeze(-1)
        item = torch.where(loss_mask == 0, torch.zeros_like(item), item)
        columns = [torch.zeros_like(item[:, 0])]
        for t in reversed(range(item.shape[-1])):  # discounted_cumsum_right
            columns.insert(0, item[:, t] + gamma * columns[0])
        weight = torch.stack(columns[:-1], dim=-1)
        weight = torch.where(loss_mask == 0, torch.zeros_like(weight), weight)
        weight = weight * (loss_mask.sum(-1, keepdim=True) / weight.sum(-1, keepdim=True))
    weight = torch.where(loss_mask == 0, torch.zeros_like(weight), weight)
    return (-logps * loss_mask * weight).sum(-1) / loss_mask.sum(-1)


@pytest.mark.parametrize("gamma", [0.0, 0.95, 1.0])
def test_ift_matches_the_authors_weighting_and_gradient(gamma):
    rng = np.random.default_rng(5)
    policy = -rng.uniform(0.05, 4.0, size=(3, 1, 5))
    mask = np.ones((3, 1, 5))
    mask[0, 0, 3:] = 0
    mask[2, 0, 4:] = 0
    lp = LogProbs(policy=jnp.asarray(policy), mask=jnp.asarray(mask))
    objective = ift(gamma=gamma)
    loss = jax.jit(objective)(lp)[0]
    grad = jax.jit(jax.grad(lambda p: objective(lp.replace(policy=p))[0]))(lp.policy)

    p = torch.tensor(policy[:, 0], requires_grad=True)
    expected = _torch_ift(p, torch.tensor(mask[:, 0]), gamma).mean()
    expected.backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad)[:, 0] * mask[:, 0], p.grad.numpy() * mask[:, 0],
                               rtol=1e-5, atol=1e-7)


def test_ift_without_propagation_is_the_token_mean_nll_and_earlier_tokens_weigh_more():
    lp = from_sequences(np.array([[-1.0], [-2.0]]))
    np.testing.assert_allclose(ift(gamma=0.95)(lp)[0], 1.5, rtol=1e-6)  # one token: weight 1
    tokens = LogProbs(policy=jnp.full((1, 1, 4), -1.0), mask=jnp.ones((1, 1, 4)))
    grad = jax.jit(jax.grad(lambda p: ift(gamma=0.9)(tokens.replace(policy=p))[0]))(tokens.policy)[0, 0]
    assert np.all(np.diff(-np.asarray(grad)) < 0)
