"""The tabular engine feeding jalign.objectives: exact populations, samples, online updates.

Expected numbers are NumPy double sums over action pairs, closed-form
minimisers of each loss (written from the papers' update rules), or
Monte-Carlo frequencies; none is produced by the engine itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jalign import tabular as tb
from jalign.objectives import make
from jalign.objectives import online  # noqa: F401  (registers the online objectives)

K = 4


def _np_softmax(x):
    e = np.exp(np.asarray(x, np.float64) - np.max(x, -1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def game():
    k1, k2 = jax.random.split(jax.random.PRNGKey(11))
    return tb.make_game(tb.random_game(k1, K), jax.random.normal(k2, (K,)))


def _np(game):
    return (np.asarray(game.preference[0], np.float64), np.asarray(game.log_ref[0], np.float64))


def _policies(logits):
    log_pi = tb.log_policy(logits)
    return tb.Policies(log_pi, log_pi, log_pi)


def test_exact_offline_dpo_is_weighted_double_sum(game):
    data = tb.dataset_pairs(1, K, [(0, 0, 1), (0, 2, 1), (0, 0, 3)], probs=[0.5, 0.3, 0.2])
    logits = jnp.array([[0.4, -0.3, 1.0, 0.0]])
    batch = tb.batch_for(make("dpo", beta=0.5), game, _policies(logits), data=data)
    ratio = np.log(_np_softmax(np.asarray(logits[0]))) - _np(game)[1]
    expected = sum(w * np.log1p(np.exp(-0.5 * (ratio[a] - ratio[b])))
                   for (a, b), w in zip([(0, 1), (2, 1), (0, 3)], [0.5, 0.3, 0.2]))
    np.testing.assert_allclose(make("dpo", beta=0.5)(batch)[0], expected, rtol=1e-5)


def test_exact_online_ipo_is_policy_weighted_double_sum(game):
    tau, logits = 0.3, jnp.array([[0.1, 0.5, -0.4, 0.2]])
    loss = make("online_ipo", tau=tau)(tb.batch_for(make("online_ipo", tau=tau), game, _policies(logits)))[0]
    p, log_ref = _np(game)
    pi = _np_softmax(np.asarray(logits[0]))
    ratio = np.log(pi) - log_ref
    h = ratio[:, None] - ratio[None, :]
    expected = np.sum(pi[:, None] * pi[None, :] * (h - (p - 0.5) / tau) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_contextual_population_weights_contexts():
    preference = jnp.stack([tb.cyclic_game(3), tb.bradley_terry(jnp.array([1.0, 0.0, -1.0]))])
    game = tb.make_game(preference, jnp.zeros((2, 3)), context_probs=jnp.array([0.25, 0.75]))
    logits = jnp.array([[0.3, 0.0, -0.2], [1.0, -1.0, 0.5]])
    objective = make("online_ipo", tau=0.5)
    loss = objective(tb.batch_for(objective, game, _policies(logits)))[0]
    per_context = []
    for c in range(2):
        pi = _np_softmax(np.asarray(logits[c]))
        ratio = np.log(pi) - np.log(1 / 3)
        h = ratio[:, None] - ratio[None, :]
        per_context.append(np.sum(np.outer(pi, pi) * (h - (np.asarray(preference[c]) - 0.5) / 0.5) ** 2))
    np.testing.assert_allclose(loss, 0.25 * per_context[0] + 0.75 * per_context[1], rtol=1e-5)


def test_labelled_pairs_formula(game):
    log_q = tb.log_policy(jnp.array([[0.2, -0.1, 0.7, 0.0]]))
    weights = np.asarray(tb.labelled_pairs(game.preference, log_q, game.log_ref, game.context_probs)[0])
    p, log_ref = _np(game)
    q, ref = np.exp(np.asarray(log_q[0], np.float64)), np.exp(log_ref)
    np.testing.assert_allclose(weights, p * (np.outer(q, ref) + np.outer(ref, q)), rtol=1e-5)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)


def test_sampled_batches_estimate_the_population(game):
    data = tb.labelled_pairs(game.preference, game.log_ref, game.log_ref, game.context_probs)
    index = tb.sample_indices(jax.random.PRNGKey(0), data, 100_000)
    counts = np.zeros((K, K))
    np.add.at(counts, (np.asarray(index[1]), np.asarray(index[2])), 1.0)
    np.testing.assert_allclose(counts / counts.sum(), np.asarray(data[0]), atol=5e-3)
    objective, policies = make("ipo", tau=0.5), _policies(jnp.array([[0.3, -0.2, 0.1, 0.0]]))
    exact = objective(tb.batch_for(objective, game, policies, data=data))[0]
    sampled = jax.vmap(lambda key: objective(tb.batch_for(
        objective, game, policies, data=data, key=key, batch_size=500))[0])(jax.random.split(jax.random.PRNGKey(1), 200))
    np.testing.assert_allclose(np.mean(sampled), exact, rtol=2e-2)


def test_online_dpo_converges_to_rlhf_optimum():
    """Online DPO under BT preferences -> pi* ∝ ref exp(r / (scale beta)), computed in NumPy."""
    rewards, ref_logits, beta, scale = np.array([0.5, 0.0, -0.3, 0.2]), np.array([0.0, 1.0, 0.0, -0.5]), 2.0, 1.0
    game = tb.make_game(tb.bradley_terry(jnp.asarray(rewards), scale=scale), jnp.asarray(ref_logits))
    final, _ = jax.jit(lambda: tb.train(make("online_dpo", beta=beta), game, game.log_ref, optax.adam(0.05),
                                        steps=1500))()
    expected = _np_softmax(ref_logits + rewards / (scale * beta))
    np.testing.assert_allclose(_np_softmax(np.asarray(final[0])), expected, atol=2e-3)


def test_egpo_step_is_the_extragradient_update(game):
    """One SGD step on EGPO = log pi' ∝ (1-a) log pi + a log ref + (a/beta) P pi_half, a = 4 lr / K."""
    beta, lr = 0.2, 0.05
    logits = jnp.array([[0.3, -0.1, 0.2, 0.6]])
    final, _ = tb.train(make("egpo", beta=beta), game, logits, optax.sgd(lr), steps=1)
    p, log_ref = _np(game)
    a = 4 * lr / K
    log_pi = np.log(_np_softmax(np.asarray(logits[0])))
    half = _np_softmax((1 - a) * log_pi + a * log_ref + (a / beta) * p @ np.exp(log_pi))
    expected = _np_softmax((1 - a) * log_pi + a * log_ref + (a / beta) * p @ half)
    np.testing.assert_allclose(_np_softmax(np.asarray(final[0])), expected, rtol=1e-4)


def test_sppo_and_inpo_inner_loops_reach_their_minimisers(game):
    """With pi_t frozen, SPPO -> pi_t exp(eta (P pi_t - 1/2)); INPO -> pi_t^(1-eta tau) ref^(eta tau) exp(eta P pi_t)."""
    p, log_ref = _np(game)
    logits = jnp.array([[0.5, -0.5, 0.0, 0.3]])
    log_t = np.log(_np_softmax(np.asarray(logits[0])))
    eta, tau, steps = 0.8, 0.5, 2000
    expected = {"sppo": _np_softmax(log_t + eta * (p @ np.exp(log_t) - 0.5)),
                "inpo": _np_softmax((1 - eta * tau) * log_t + eta * tau * log_ref + eta * p @ np.exp(log_t))}
    objectives = {"sppo": make("sppo", eta=eta), "inpo": make("inpo", tau=tau, eta=eta)}
    for name, objective in objectives.items():
        final, _ = jax.jit(lambda o: tb.train(o, game, logits, optax.adam(0.02), steps=steps,
                                              inner_steps=steps + 1))(objective)
        np.testing.assert_allclose(_np_softmax(np.asarray(final[0])), expected[name], atol=2e-3, err_msg=name)


def test_grid_and_seeds_compile_once(game):
    traces = []

    def run(tau, key):
        traces.append(1)
        data = tb.labelled_pairs(game.preference, game.log_ref, game.log_ref, game.context_probs)
        final, history = tb.train(make("ipo", tau=tau), game, game.log_ref, optax.adam(0.01), steps=20,
                                  data=data, key=key, batch_size=8)
        return history["loss"]

    grid = jax.jit(jax.vmap(jax.vmap(run, in_axes=(None, 0)), in_axes=(0, None)))
    losses = grid(jnp.array([0.1, 0.5, 1.0]), jax.random.split(jax.random.PRNGKey(0), 4))
    assert losses.shape == (3, 4, 20) and np.all(np.isfinite(losses))
    grid(jnp.array([0.2, 0.3, 0.4]), jax.random.split(jax.random.PRNGKey(1), 4))
    assert len(traces) == 1


def test_offline_objective_without_data_is_an_error(game):
    with pytest.raises(ValueError, match="offline"):
        tb.batch_for(make("dpo"), game, _policies(game.log_ref))


def _engine_can_feed_offline(cls):
    """Offline policy objectives on pairs; preference-model losses (scores, no log-probs) are fitted by
    ``tb.fit_bt`` / ``tb.fit_gpm`` instead (tests/tabular/test_preference_models.py)."""
    requires = cls().requires
    return (tb.sampling_of(cls()) is None and requires.responses in ("pair", "any") and not requires.extras
            and set(requires.labels) <= {"preference"} and requires.scores is None)


def test_every_registered_pairwise_objective_runs_unchanged(game):
    """All registered offline pairwise objectives train on exact tabular populations: finite, descending."""
    from jalign.objectives import registered

    names = [name for name, cls in registered().items() if _engine_can_feed_offline(cls)]
    assert {"dpo", "ipo", "sft"} <= set(names)
    data = tb.labelled_pairs(game.preference, game.log_ref, game.log_ref, game.context_probs)
    logits = jnp.array([[0.2, -0.4, 0.1, 0.3]])
    objectives = {name: make(name) for name in names}

    @jax.jit
    def losses_before_and_after_a_small_step(theta):
        out = {}
        for name, objective in objectives.items():
            loss, grads = tb.loss_and_grad(objective, game, theta, _policies(theta), data=data)
            stepped = theta - 1e-3 * grads / (jnp.linalg.norm(grads) + 1e-12)
            out[name] = (loss, grads, tb.loss_and_grad(objective, game, stepped, _policies(stepped), data=data)[0])
        return out

    for name, (loss, grads, after) in losses_before_and_after_a_small_step(logits).items():
        assert np.isfinite(loss) and np.all(np.isfinite(grads)), name
        assert after <= loss + 1e-6, name


def test_sampled_online_batches_estimate_the_population(game):
    """Mini-batches drawn from an online declaration (policy x mixture) average to the exact loss."""
    objective = make("nash_md_pg", beta=0.2, mixture=0.3)
    policies = _policies(jnp.array([[0.5, -0.2, 0.0, 0.4]]))
    exact = objective(tb.batch_for(objective, game, policies))[0]
    keys = jax.random.split(jax.random.PRNGKey(2), 200)
    sampled = jax.vmap(lambda key: objective(tb.batch_for(objective, game, policies, key=key, batch_size=500))[0])(keys)
    np.testing.assert_allclose(np.mean(sampled), exact, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("name, num_responses", [("list_mle", 3), ("npo", 1)])
def test_listwise_and_unpaired_populations_match_hand_built_batches(game, name, num_responses):
    """The exact population over every response tuple = a Python sum of hand-built one-example batches."""
    from jalign.objectives import from_sequences

    objective = make(name)
    rewards = jnp.array([[0.5, -0.2, 1.0, 0.1]])
    log_q = tb.log_policy(jnp.array([[0.1, 0.3, -0.2, 0.0]]))
    data = jnp.exp(log_q)
    for _ in range(num_responses - 1):
        data = data[..., None] * jnp.exp(log_q)[:, None]
    labels = {"score": tb.per_response(rewards, num_responses)} if "score" in objective.requires.labels else {}
    logits = jnp.array([[0.2, -0.1, 0.4, 0.0]])
    exact = objective(tb.batch_for(objective, game, _policies(logits), data=data, labels=labels))[0]
    log_pi, log_ref, q = np.asarray(tb.log_policy(logits)[0]), np.asarray(game.log_ref[0]), np.asarray(log_q[0])
    expected = 0.0
    for tup in np.ndindex(*(K,) * num_responses):
        idx = list(tup)
        one = {"score": jnp.asarray(np.asarray(rewards[0])[idx])[None]} if labels else {}
        batch = from_sequences(jnp.asarray(log_pi[idx])[None], jnp.asarray(log_ref[idx])[None], labels=one)
        expected += np.exp(q[idx].sum()) * float(objective(batch)[0])
    np.testing.assert_allclose(exact, expected, rtol=1e-4)


def test_online_ipo_converges_to_regularised_nash(game):
    """Online IPO's fixed point is pi ∝ ref exp(P pi / tau); the equilibrium is re-solved by SciPy."""
    from scipy import optimize

    tau = 0.5
    p, log_ref = _np(game)
    root = optimize.root(lambda x: x - np.log(_np_softmax(log_ref + p @ np.exp(x) / tau)), log_ref, tol=1e-12).x
    final, _ = jax.jit(lambda: tb.train(make("online_ipo", tau=tau), game, game.log_ref, optax.sgd(0.5),
                                        steps=2000))()
    np.testing.assert_allclose(_np_softmax(np.asarray(final[0])), np.exp(root), atol=1e-4)


def test_sampled_training_needs_a_batch_size(game):
    with pytest.raises(ValueError, match="batch_size"):
        tb.train(make("online_ipo"), game, game.log_ref, optax.sgd(0.1), steps=2, key=jax.random.PRNGKey(0))
