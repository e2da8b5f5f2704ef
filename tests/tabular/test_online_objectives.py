"""The online objectives of ``jalign.objectives.online`` on hand-built batches.

Expected values are NumPy formulas written here from the papers' equations, or
identities with the offline objectives (online IPO with p = 1 is IPO; online
DPO with p = 1 is DPO; INPO with eta tau = 1 is online IPO with tau = 1/eta).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jalign.objectives import from_sequences, make
from jalign.objectives import online  # noqa: F401  (registers the online objectives)
from jalign.objectives.declaration import Sampling


POLICY = np.array([[-1.0, -2.0], [-0.5, -0.7], [-3.0, -0.2]], np.float32)
REFERENCE = np.array([[-1.5, -1.5], [-0.6, -0.6], [-1.0, -1.0]], np.float32)
PREFERENCE = np.array([0.9, 0.5, 0.2], np.float32)
WIN = np.array([[0.6, 0.4], [0.5, 0.7], [0.1, 0.9]], np.float32)
PREVIOUS = np.array([[-1.2, -1.8], [-0.4, -0.9], [-2.0, -0.5]], np.float32)
ALL = ("online_ipo", "ipo_md", "nash_md", "egpo", "nash_md_pg", "inpo", "online_dpo")


def _batch(policy=POLICY, preference=PREFERENCE):
    labels = {"preference": jnp.asarray(preference), "win_prob": jnp.asarray(WIN),
              "previous_logps": jnp.asarray(PREVIOUS)}
    return from_sequences(jnp.asarray(policy), jnp.asarray(REFERENCE), labels=labels)


def _margin():
    ratio = POLICY.astype(np.float64) - REFERENCE
    return ratio[:, 0] - ratio[:, 1]


def test_online_ipo_and_ipo_md_match_formula():
    tau = 0.25
    expected = np.mean((_margin() - (PREFERENCE - 0.5) / tau) ** 2)
    for name in ("online_ipo", "ipo_md"):
        np.testing.assert_allclose(make(name, tau=tau)(_batch())[0], expected, rtol=1e-5)


def test_online_ipo_with_certain_label_is_ipo():
    ones = np.ones(3, np.float32)
    np.testing.assert_allclose(make("online_ipo", tau=0.3)(_batch(preference=ones))[0],
                               make("ipo", tau=0.3)(_batch())[0], rtol=1e-6)


def test_online_dpo_matches_soft_label_formula_and_dpo():
    beta = 0.5
    z = beta * _margin()
    expected = np.mean(-PREFERENCE * np.log(1 / (1 + np.exp(-z))) - (1 - PREFERENCE) * np.log(1 / (1 + np.exp(z))))
    np.testing.assert_allclose(make("online_dpo", beta=beta)(_batch())[0], expected, rtol=1e-5)
    ones = np.ones(3, np.float32)
    np.testing.assert_allclose(make("online_dpo", beta=beta)(_batch(preference=ones))[0],
                               make("dpo", beta=beta)(_batch())[0], rtol=1e-6)


def test_nash_md_and_egpo_regress_on_win_margin():
    beta = 0.2
    expected = np.mean((_margin() - (WIN[:, 0] - WIN[:, 1]) / beta) ** 2)
    for name in ("nash_md", "egpo"):
        np.testing.assert_allclose(make(name, beta=beta)(_batch())[0], expected, rtol=1e-5)


def test_nash_md_pg_gradient_is_reinforce():
    """d loss / d log pi(y_0) = -(p - 1/2 - beta log-ratio(y_0)) / B, zero for y_1 and the reference."""
    beta = 0.3
    grads = jax.grad(lambda lp: make("nash_md_pg", beta=beta)(lp)[0], allow_int=True)(_batch())
    advantage = PREFERENCE - 0.5 - beta * (POLICY[:, 0] - REFERENCE[:, 0])
    np.testing.assert_allclose(grads.policy[:, 0, 0], -advantage / 3, rtol=1e-5)
    np.testing.assert_allclose(grads.policy[:, 1, 0], 0.0)


def test_sppo_matches_formula():
    eta = 2.0
    lp = from_sequences(jnp.asarray(POLICY[:, :1]), jnp.asarray(PREVIOUS[:, :1]),
                        labels={"win_prob": jnp.asarray(WIN[:, :1])})
    expected = np.mean((POLICY[:, 0] - PREVIOUS[:, 0] - eta * (WIN[:, 0] - 0.5)) ** 2)
    np.testing.assert_allclose(make("sppo", eta=eta)(lp)[0], expected, rtol=1e-5)


def test_inpo_matches_formula_and_reduces_to_online_ipo():
    tau, eta = 0.1, 2.0
    step = eta * tau
    h = ((POLICY[:, 0] - POLICY[:, 1]) - step * (REFERENCE[:, 0] - REFERENCE[:, 1])
         - (1 - step) * (PREVIOUS[:, 0] - PREVIOUS[:, 1]))
    expected = np.mean((h - eta * (PREFERENCE - 0.5)) ** 2)
    np.testing.assert_allclose(make("inpo", tau=tau, eta=eta)(_batch())[0], expected, rtol=1e-5)
    np.testing.assert_allclose(make("inpo", tau=0.5, eta=2.0)(_batch())[0],
                               make("online_ipo", tau=0.5)(_batch())[0], rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_jit_grad_and_no_reference_gradient(name):
    objective = make(name)
    loss_fn = jax.jit(lambda policy, reference: objective(
        from_sequences(policy, reference, labels=dict(_batch().labels)))[0])
    g_policy, g_reference = jax.grad(loss_fn, argnums=(0, 1))(jnp.asarray(POLICY), jnp.asarray(REFERENCE))
    assert np.all(np.isfinite(g_policy))
    np.testing.assert_array_equal(g_reference, 0.0)
    if name != "nash_md_pg":  # a REINFORCE surrogate: its gradient is not its value's derivative
        check_grads(lambda p: loss_fn(p, jnp.asarray(REFERENCE)), (jnp.asarray(POLICY),), order=1,
                    modes=["rev"], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", ALL)
def test_finite_at_extreme_log_ratios(name):
    extreme = np.array([[1e4, -1e4], [-1e4, 1e4], [0.0, 0.0]], np.float32)
    loss, grads = jax.value_and_grad(lambda p: make(name)(_batch(policy=p))[0])(jnp.asarray(extreme))
    assert np.isfinite(loss) and np.all(np.isfinite(grads))


def test_vmap_over_hyperparameter():
    taus = jnp.array([0.1, 0.2, 0.4])
    losses = jax.vmap(lambda tau: make("online_ipo", tau=tau)(_batch())[0])(taus)
    expected = [np.mean((_margin() - (PREFERENCE - 0.5) / t) ** 2) for t in (0.1, 0.2, 0.4)]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_sampling_declarations_are_validated():
    assert make("egpo").sampling.opponent == "extrapolated"
    assert make("sppo").sampling.reference == "previous"
    with pytest.raises(ValueError, match="unknown sampling source"):
        Sampling(responses=("policy", "teacher"))
    with pytest.raises(ValueError, match="needs an opponent"):
        Sampling(responses=("policy", "policy"), labels=("win_prob",))
