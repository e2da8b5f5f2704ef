"""SPPO's and Nash-MD's defaults and documented fixed points, checked against independent numbers.

- SPPO: the authors' loss (uclaml/SPPO ``sppo/trainer.py``, ``loss_type="sppo"``
  with ``beta = 0.001`` from ``scripts/pipeline.sh``) transcribed in NumPy, and
  the exact minimiser of the population loss found by SciPy on a NumPy
  transcription of the formula, compared with the multiplicative-weights step.
- Nash-MD / IPO-MD: the constant-mixture fixed point
  ``pi ∝ ref exp(P pi^b / beta)`` and the regularised equilibrium (``b = 0``)
  solved by a damped NumPy fixed-point iteration, and exact tabular Nash-MD
  with a constant step written out in NumPy; the objectives are trained on
  the tabular engine's exact populations.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

from jalign import tabular as tb
from jalign.objectives import from_sequences, make
from jalign.objectives import online  # noqa: F401  (registers the online objectives)


def _np_softmax(x):
    e = np.exp(np.asarray(x, np.float64) - np.max(x))
    return e / e.sum()


def _np_preference(rng, k):
    """A random preference matrix: upper triangle U(0, 1), P + P^T = 1."""
    upper = np.triu(rng.uniform(size=(k, k)), 1)
    return upper + np.tril(1.0 - upper.T, -1) + 0.5 * np.eye(k)


# --- SPPO -------------------------------------------------------------------------------------------

def _authors_sppo_loss(logratio_w, logratio_l, prob_w, prob_l, beta):
    """uclaml/SPPO sppo/trainer.py, loss_type="sppo": mean over the pair of squared errors."""
    loss_w = (logratio_w - (1.0 / beta) * (prob_w - 0.5)) ** 2
    loss_l = (logratio_l - (1.0 / beta) * (prob_l - 0.5)) ** 2
    return (loss_w + loss_l) / 2


def test_sppo_default_is_the_authors_eta_one_over_beta():
    """sppo's eta and sppo_hard's beta are the same hyperparameter: eta = 1 / beta = 1000."""
    assert make("sppo").eta == 1000.0
    assert make("sppo_hard").beta == 0.001
    assert make("sppo").eta * make("sppo_hard").beta == pytest.approx(1.0)


def test_sppo_on_pairs_is_the_authors_loss_at_the_default():
    """Per-response sppo averaged over y_w, y_l equals the authors' pair loss; hard labels give sppo_hard."""
    policy = np.array([[-40.0, -55.0], [-12.0, -9.0], [-300.0, -80.0]], np.float32)
    previous = np.array([[-140.0, -20.0], [-10.0, -11.0], [-100.0, -260.0]], np.float32)
    win = np.array([[0.8, 0.3], [0.55, 0.6], [0.1, 0.9]], np.float32)
    ratio = (policy - previous).astype(np.float64)
    expected = _authors_sppo_loss(ratio[:, 0], ratio[:, 1], win[:, 0], win[:, 1], beta=0.001)
    singles = from_sequences(policy.T.reshape(-1, 1), previous.T.reshape(-1, 1),
                             labels={"win_prob": win.T.reshape(-1, 1)})
    per_response = np.asarray(make("sppo").per_example(singles)[0]).reshape(2, -1)
    np.testing.assert_allclose(per_response.mean(0), expected, rtol=1e-5)
    hard = _authors_sppo_loss(ratio[:, 0], ratio[:, 1], 1.0, 0.0, beta=0.001)
    np.testing.assert_allclose(make("sppo_hard").per_example(from_sequences(policy, previous))[0], hard, rtol=1e-5)


def _sppo_population(log_pi, log_prev, win, eta):
    """NumPy transcription: E_{y ~ pi_t}[(log pi(y)/pi_t(y) - eta (P(y ≻ pi_t) - 1/2))^2]."""
    return np.sum(np.exp(log_prev) * (log_pi - log_prev - eta * (win - 0.5)) ** 2)


def test_sppo_minimiser_is_only_approximately_the_multiplicative_weights_step():
    """The exact minimiser over normalised policies (SciPy, on the NumPy formula) satisfies the
    documented relation log(pi/pi_t) - eta (P - 1/2) = c pi/pi_t with one c < 0; our loss is
    stationary there; the multiplicative-weights step is not, since log Z_t > eta/2."""
    rng = np.random.default_rng(3)
    k, eta = 5, 2.0
    p = _np_preference(rng, k)
    log_prev = np.log(_np_softmax(rng.normal(size=k)))
    win = p @ np.exp(log_prev)
    assert np.exp(log_prev) @ win == pytest.approx(0.5)  # E_{pi_t} P(y ≻ pi_t) = 1/2

    def numpy_loss(theta):
        return _sppo_population(np.log(_np_softmax(theta)), log_prev, win, eta)

    theta = optimize.minimize(numpy_loss, log_prev, method="BFGS", options={"gtol": 1e-12}).x
    log_min = np.log(_np_softmax(theta))
    log_z = np.log(np.sum(np.exp(log_prev + eta * win)))
    log_mw = log_prev + eta * win - log_z  # pi_t exp(eta P) / Z_t

    ratio_min = np.exp(log_min - log_prev)
    c = (log_min - log_prev - eta * (win - 0.5)) / ratio_min
    np.testing.assert_allclose(c, c[0], atol=1e-6)  # one constant for every response
    assert c[0] < -1e-3 and log_z > eta / 2 + 1e-3
    assert np.max(np.abs(log_min - log_mw)) > 1e-2  # the two policies differ

    def ours(theta):  # the population as one weighted batch: one row per response y
        lp = from_sequences(jax.nn.log_softmax(theta)[:, None], jnp.asarray(log_prev, jnp.float32)[:, None],
                            labels={"win_prob": jnp.asarray(win, jnp.float32)[:, None],
                                    "example_weight": jnp.asarray(np.exp(log_prev), jnp.float32)})
        return make("sppo", eta=eta)(lp)[0]

    grad = jax.grad(ours)
    np.testing.assert_allclose(grad(jnp.asarray(theta, jnp.float32)), 0.0, atol=1e-5)
    assert np.max(np.abs(grad(jnp.asarray(log_mw, jnp.float32)))) > 1e-2
    assert float(ours(jnp.asarray(theta, jnp.float32))) < float(ours(jnp.asarray(log_mw, jnp.float32)))


# --- Nash-MD / IPO-MD with a constant mixture ------------------------------------------------------

BETA, MIXTURE = 0.2, 0.5
REF_LOGITS = np.array([0.8, -0.3, 0.1, -0.9, 0.4])


def _np_constant_mixture_fixed_point(p, log_ref, beta, b, iters=20_000, damping=0.05):
    """Solves pi = softmax(log ref + P pi^b / beta), pi^b ∝ pi^(1-b) ref^b, by damped iteration."""
    log_pi = log_ref.copy()

    def target(log_pi):
        log_mix = np.log(_np_softmax((1 - b) * log_pi + b * log_ref))
        return np.log(_np_softmax(log_ref + p @ np.exp(log_mix) / beta))

    for _ in range(iters):
        log_pi = np.log(_np_softmax((1 - damping) * log_pi + damping * target(log_pi)))
    assert np.max(np.abs(log_pi - target(log_pi))) < 1e-10
    return log_pi


def _np_nash_md(p, log_ref, tau, eta, steps=5_000):
    """Exact tabular Nash-MD with a constant step (Munos et al.): mirror descent against the mixture."""
    log_pi = log_ref.copy()
    for _ in range(steps):
        log_mix = np.log(_np_softmax((1 - eta * tau) * log_pi + eta * tau * log_ref))
        log_pi = np.log(_np_softmax(log_mix + eta * p @ np.exp(log_mix)))
    return log_pi


@pytest.fixture(scope="module")
def cyclic():
    """Generalised rock-paper-scissors over 5 actions with a non-uniform reference, in NumPy and JAX."""
    p = np.asarray(tb.cyclic_game(5, margin=0.4), np.float64)
    log_ref = np.log(_np_softmax(REF_LOGITS))
    game = tb.make_game(jnp.asarray(p, jnp.float32), jnp.asarray(REF_LOGITS, jnp.float32))
    biased = _np_constant_mixture_fixed_point(p, log_ref, BETA, MIXTURE)
    equilibrium = _np_constant_mixture_fixed_point(p, log_ref, BETA, 0.0)
    return p, log_ref, game, biased, equilibrium


def _train(objective, game, lr, steps=2_000):
    final, _ = jax.jit(lambda: tb.train(objective, game, game.log_ref, optax.sgd(lr), steps=steps))()
    return np.asarray(tb.log_policy(final)[0], np.float64)


def test_constant_mixture_fixed_point_is_nash_md_constant_step_fixed_point_not_the_equilibrium(cyclic):
    """The documented pi_bar_b is where exact Nash-MD with eta tau = b stops, and it is not pi*."""
    p, log_ref, _, biased, equilibrium = cyclic
    np.testing.assert_allclose(_np_nash_md(p, log_ref, BETA, MIXTURE / BETA), biased, atol=1e-8)
    assert np.max(np.abs(biased - equilibrium)) > 0.1  # the bias, in log-probability


@pytest.mark.parametrize("lr", [0.25, 0.5])
def test_nash_md_with_constant_mixture_converges_to_the_biased_fixed_point_for_any_lr(cyclic, lr):
    """SGD on nash_md(mixture=b) reaches pi_bar_b whatever the step; mixture=0 reaches pi*."""
    _, _, game, biased, equilibrium = cyclic
    np.testing.assert_allclose(_train(make("nash_md", beta=BETA, mixture=MIXTURE), game, lr), biased, atol=1e-5)
    np.testing.assert_allclose(_train(make("nash_md", beta=BETA, mixture=0.0), game, lr), equilibrium, atol=1e-5)


def test_ipo_md_with_constant_mixture_stops_at_the_same_biased_point(cyclic):
    """IPO-MD (tau = beta) with both responses from the constant mixture: the same pi_bar_b."""
    _, _, game, biased, _ = cyclic
    np.testing.assert_allclose(_train(make("ipo_md", tau=BETA, mixture=MIXTURE), game, 0.5), biased, atol=1e-5)


def test_nash_md_pg_with_constant_mixture_stops_at_the_same_biased_point(cyclic):
    """Nash-MD-PG's exact policy gradient against the constant mixture vanishes at pi_bar_b too."""
    _, _, game, biased, _ = cyclic
    np.testing.assert_allclose(_train(make("nash_md_pg", beta=BETA, mixture=MIXTURE), game, 0.1, steps=8_000),
                               biased, atol=1e-3)
