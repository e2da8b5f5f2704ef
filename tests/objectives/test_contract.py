"""The objective contract: reductions, requirements, composition, registry, tracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jalign.objectives import LogProbs, dpo, from_sequences, ipo, make, sft
from jalign.objectives.sequence import log_ratios, policy_logps

from random_batches import batch_for, grads
from numpy_reference import log_sigmoid


def _token_batch():
    policy = jnp.array([[[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]]])  # [1, 2, 3]
    reference = jnp.array([[[-1.5, -1.0, 7.0], [-1.0, -0.2, -0.3]]])
    mask = jnp.array([[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]])
    return LogProbs(policy=policy, mask=mask, reference=reference)


def test_reductions_ignore_padding_and_normalise_by_length():
    """Sums and means over response tokens, written out by hand."""
    lp = _token_batch()
    np.testing.assert_allclose(policy_logps(lp), [[-3.0, -1.5]])
    np.testing.assert_allclose(policy_logps(lp, average=True), [[-1.5, -0.5]])
    np.testing.assert_allclose(log_ratios(lp), [[(-3.0) - (-2.5), (-1.5) - (-1.5)]])
    np.testing.assert_allclose(log_ratios(lp, average=True), [[-0.25, 0.0]])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_dpo_matches_hand_formula(smoothing):
    """DPO / cDPO against Rafailov et al. Eq. 7 and Mitchell's smoothed target, in NumPy."""
    policy = np.array([[-1.0, -2.0], [-3.0, -1.0], [-0.2, -7.0]])
    reference = np.array([[-1.5, -1.5], [-2.0, -2.0], [-1.0, -1.0]])
    beta = 0.3
    h = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    expected = -(1 - smoothing) * log_sigmoid(beta * h) - smoothing * log_sigmoid(-beta * h)
    loss, metrics = dpo(beta=beta, label_smoothing=smoothing)(from_sequences(policy, reference))
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/margin"], beta * h.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/accuracy"], np.mean(h > 0))


def test_ipo_matches_hand_formula():
    """IPO against Azar et al. Eq. 17: (h - 1/(2 tau))^2, in NumPy."""
    policy = np.array([[-1.0, -2.0], [-3.0, -1.0]])
    reference = np.array([[-1.5, -1.5], [-2.0, -2.0]])
    tau = 0.25
    h = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    loss, _ = ipo(tau=tau)(from_sequences(policy, reference))
    np.testing.assert_allclose(loss, np.mean((h - 1 / (2 * tau)) ** 2), rtol=1e-6)


def test_composed_gradient_is_sum_of_parts():
    """grad(a + w * b) == grad(a) + w * grad(b), each part differentiated alone."""
    lp = batch_for(dpo().requires, seed=1)
    a, b, w = dpo(beta=0.2), sft(), 0.7
    combined = grads(a + w * b, lp)
    separate = jax.tree.map(lambda ga, gb: ga + w * gb, grads(a, lp), grads(b, lp))
    chex.assert_trees_all_close(combined, separate, rtol=1e-6, atol=1e-7)


def test_composed_metrics_are_namespaced_and_numbered():
    """Metrics of a sum carry each term's name; repeated names are numbered."""
    lp = batch_for(dpo().requires)
    loss, metrics = (dpo(beta=0.1) + dpo(beta=0.5) + 0.2 * sft())(lp)
    assert {"dpo/loss", "dpo_1/loss", "sft/loss", "dpo/rewards/margin", "dpo_1/rewards/margin"} <= set(metrics)
    parts = metrics["dpo/loss"] + metrics["dpo_1/loss"] + metrics["sft/loss"]
    np.testing.assert_allclose(loss, parts, rtol=1e-6)
    np.testing.assert_allclose(metrics["sft/loss"], 0.2 * sft()(lp)[0], rtol=1e-6)


def test_no_gradient_reaches_reference():
    """The reference is a constant: its cotangent is exactly zero."""
    lp = batch_for(dpo().requires, seed=2)
    g = grads(dpo(beta=0.5) + ipo(tau=0.3), lp)
    assert np.all(np.asarray(g.reference) == 0.0)
    assert np.any(np.asarray(g.policy) != 0.0)


def test_hyperparameters_vmap_and_jit_without_retracing():
    """A grid over beta is one vmap; new beta values reuse the compiled program."""
    lp = batch_for(dpo().requires, seed=3)
    betas = jnp.array([0.01, 0.1, 1.0])
    grid = jax.vmap(lambda b: dpo(beta=b)(lp)[0])(betas)
    looped = [dpo(beta=float(b))(lp)[0] for b in betas]
    np.testing.assert_allclose(grid, looped, rtol=1e-6)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss_fn(objective, batch):
        return objective(batch)[0]

    for beta in (0.1, 0.2, 0.3):
        loss_fn(dpo(beta=beta), lp)


def test_example_weight_gives_weighted_mean():
    """labels['example_weight'] weights the batch mean; a zero weight removes a row."""
    lp = batch_for(dpo().requires, seed=4, batch=3)
    per_example, _ = dpo().per_example(lp)
    weighted = lp.replace(labels={"example_weight": jnp.array([1.0, 0.0, 3.0])})
    expected = (per_example[0] + 3 * per_example[2]) / 4
    np.testing.assert_allclose(dpo()(weighted)[0], expected, rtol=1e-6)


def test_requirement_errors_name_the_objective_and_input():
    lp = batch_for(dpo().requires)
    with pytest.raises(ValueError, match=r"dpo: needs reference"):
        dpo()(lp.replace(reference=None))
    three = LogProbs(policy=jnp.zeros((2, 3, 1)), mask=jnp.ones((2, 3, 1)), reference=jnp.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match=r"dpo: needs responses='pair'; batch has G=3"):
        dpo()(three)


def test_make_rejects_unknown_names_and_hyperparameters_listing_valid_ones():
    assert make("dpo", beta=0.2).beta == 0.2
    with pytest.raises(ValueError, match=r"unknown objective 'dpoo'; valid objectives: .*dpo"):
        make("dpoo")
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['betta'\]; valid: \['beta'"):
        make("dpo", betta=0.1)
