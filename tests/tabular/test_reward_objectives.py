"""Reward-labelled objectives on tabular games, and RSO's rejection sampler against its closed form.

Independent references: the KL-regularised optimum ``pi* ∝ ref exp(r / beta)``
(Rafailov et al. 2023, Eq. 4; Liu et al. 2023, Eq. 4), which REINFORCE, RLOO,
PPO-clip (one update per rollout) and CoPG reach from exact expectations
because their expected gradients are those of ``E_pi[r] - beta KL(pi || ref)``
(CoPG's loss is 0 only there); and, for Algorithm 1 of Liu et al., the same
tilted distribution, computed in NumPy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jalign.tabular as tb
from jalign.objectives import copg, grao, grpo, online_copg, ppo_clip, reinforce, rloo, rso
from jalign.tabular.engine import rejection_sampled_pairs
from jalign.train.rejection_sampling import rejection_sample

SFT = np.array([0.6, 0.3, 0.1])
REWARD = np.array([0.0, 0.5, 1.0])


def _tilted(beta):
    q = SFT * np.exp(REWARD / beta)
    return q / q.sum()


def test_algorithm_1_draws_from_the_tilted_sft_policy():
    """The first accepted of 40 SFT candidates, over 3000 trials, is distributed as pi_sft exp(r / beta) / Z."""
    beta, rng = 0.5, np.random.default_rng(0)
    counts = np.zeros(3)
    for _ in range(3000):
        actions = rng.choice(3, size=40, p=SFT)
        counts[actions[rejection_sample(REWARD[actions], 1, beta, rng)[0]]] += 1
    expected = _tilted(beta)
    sigma = np.sqrt(expected * (1 - expected) / 3000)
    np.testing.assert_array_less(np.abs(counts / 3000 - expected), 4 * sigma)


def test_algorithm_1_keeps_distinct_candidates_and_tends_to_best_of_n():
    rng = np.random.default_rng(1)
    picked = rejection_sample(np.array([0.1, 2.0, 0.3, 1.9]), 2, 1e-3, rng)
    assert picked == [1, 3]  # beta -> 0: the highest rewards, best first (Liu et al., Sec. 3.2)
    assert sorted(rejection_sample(np.zeros(5), 5, 0.5, rng)) == list(range(5))
    with pytest.raises(ValueError, match="at least 3 candidate rewards"):
        rejection_sample(np.zeros(2), 3, 0.5, rng)


def test_tabular_rso_pairs_are_the_samplers_pairs_in_the_limit():
    """The engine's closed-form pair distribution equals the sampler's ordered pairs (Monte Carlo, 3000 prompts)."""
    beta, rng = 0.5, np.random.default_rng(2)
    counts = np.zeros((3, 3))
    for _ in range(3000):
        actions = rng.choice(3, size=40, p=SFT)
        pair = sorted(rejection_sample(REWARD[actions], 2, beta, rng), key=lambda i: -REWARD[actions[i]])
        counts[actions[pair[0]], actions[pair[1]]] += 1
    closed = np.asarray(rejection_sampled_pairs(jnp.log(jnp.asarray(SFT))[None], jnp.asarray(REWARD)[None], beta))[0]
    np.testing.assert_allclose(closed.sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(counts / 3000, closed, atol=0.035)


def _game():
    return tb.make_game(jnp.full((3, 3), 0.5), jnp.log(jnp.asarray(SFT)))


OPTIMUM = [reinforce(beta=0.5), rloo(beta=0.5, k=2), ppo_clip(beta=0.5, k=3), online_copg(beta=0.5, k=2)]


@pytest.mark.parametrize("objective", [pytest.param(o, marks=() if o.name == "rloo" else pytest.mark.slow)
                                       for o in OPTIMUM], ids=[o.name for o in OPTIMUM])
def test_exact_training_reaches_the_kl_regularised_optimum(objective):
    game = _game()
    final, _ = jax.jit(lambda: tb.train(objective, game, game.log_ref, optax.sgd(1.0), steps=400,
                                        reward=jnp.asarray(REWARD)[None]))()
    np.testing.assert_allclose(np.exp(tb.log_policy(final))[0], _tilted(0.5), atol=2e-3)


@pytest.mark.slow
def test_offline_copg_on_uniform_pairs_reaches_the_optimum():
    """CoPG off-policy: pairs from a uniform behaviour policy, scores r, minimiser pi ∝ ref exp(r / beta)."""
    game = _game()
    pairs = jnp.full((1, 3, 3), 1 / 9)
    scores = tb.per_response(jnp.asarray(REWARD)[None], 2)
    final, _ = jax.jit(lambda: tb.train(copg(beta=0.5), game, game.log_ref, optax.sgd(1.0), steps=400, data=pairs,
                                        labels={"score": scores}))()
    np.testing.assert_allclose(np.exp(tb.log_policy(final))[0], _tilted(0.5), atol=2e-3)


@pytest.mark.slow
def test_groups_and_rejection_pairs_are_served_exactly():
    """A group of 3 is every 3-tuple with product weights; RSO's pairs are winner-first; a missing reward is refused."""
    game = _game()
    policies = tb.Policies(game.log_ref, game.log_ref, game.log_ref)
    batch = tb.batch_for(grpo(group_size=3), game, policies, reward=jnp.asarray(REWARD)[None])
    assert batch.policy.shape == (27, 3, 1) and batch.labels["reward"].shape == (27, 3)
    np.testing.assert_allclose(np.sum(batch.labels["example_weight"]), 1.0, rtol=1e-5)
    pairs = tb.batch_for(rso(rejection_beta=0.5), game, policies, reward=jnp.asarray(REWARD)[None])
    live = np.asarray(pairs.labels["example_weight"]) > 0
    assert np.all(np.asarray(pairs.labels["reward"])[live, 0] >= np.asarray(pairs.labels["reward"])[live, 1])
    with pytest.raises(ValueError, match=r"rloo needs labels\['reward'\]"):
        tb.batch_for(rloo(), game, policies)


def test_grao_gets_its_samples_and_the_datasets_answer():
    """GRAO's batch: every (o_1, o_2, y) with weight pi(o_1) pi(o_2) data(y); the answer's marginal is the data's."""
    game, answer = _game(), jnp.array([[0.0, 0.0, 1.0]])
    policies = tb.Policies(game.log_ref, game.log_ref, game.log_ref)
    batch = tb.batch_for(grao(group_size=2), game, policies, data=answer, reward=jnp.asarray(REWARD)[None])
    weights = np.asarray(batch.labels["example_weight"])
    assert batch.policy.shape == (27, 3, 1) and np.isclose(weights.sum(), 1.0)
    live = weights > 0
    np.testing.assert_allclose(np.asarray(batch.labels["reward"])[live, 2], REWARD[2])  # y is always action 2
    np.testing.assert_allclose(np.exp(np.asarray(batch.policy)[live, 2, 0]), SFT[2], rtol=1e-5)
