"""SPIN, SELM, XPO and CREAM against the authors' code transcribed in NumPy float64, and SPIN's fixed point.

- SPIN: uclaml/SPIN ``spin/alignment/trainer.py`` ``spin_loss`` (``loss_type="sigmoid"``).
- SELM: shenao-zhang/SELM ``scripts/selm_trainer.py`` ``optimistic_dpo_loss``.
- XPO: huggingface/trl ``XPOTrainer._compute_losses`` (hard judge labels).
- CREAM: Raibows/CREAM ``cal_consistency.py`` (SciPy's ``kendalltau`` of
  ``rankdata`` ranks, rescaled to [0, 1], averaged: ``consistency_avg``) and
  ``sft_dpo_trainer.py``'s consistency-weighted DPO loss.
- SPIN on a tabular context: the iteration stops at the dataset's
  distribution (Chen et al. 2024, Theorem 5.2), trained by the engine's
  ``"data"`` source.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from jalign import tabular as tb
from jalign.objectives import from_sequences, make

from numpy_reference import log_sigmoid

RNG = np.random.default_rng(0)
POLICY = -RNG.uniform(1, 30, size=(6, 2))
REFERENCE = -RNG.uniform(1, 30, size=(6, 2))


def _batch(labels=None):
    return from_sequences(jnp.asarray(POLICY, jnp.float32), jnp.asarray(REFERENCE, jnp.float32), labels=labels)


def test_defaults_are_the_authors():
    assert make("spin").beta == 0.1  # uclaml/SPIN configs/config*.yaml
    assert (make("selm").beta, make("selm").alpha) == (0.01, 0.001)  # SELM recipes/zephyr-selm
    assert (make("xpo").beta, make("xpo").alpha) == (0.1, 1e-5)  # TRL XPOConfig / OnlineDPOConfig
    assert make("cream").beta == 0.1  # Raibows/CREAM config.py


def test_spin_is_the_authors_loss():
    """Slot 0 is the real (dataset) response, slot 1 the generated one; the reference slot is the opponent."""
    real, generated = POLICY[:, 0], POLICY[:, 1]
    opp_real, opp_generated = REFERENCE[:, 0], REFERENCE[:, 1]
    beta = 0.3
    expected = -log_sigmoid(beta * ((real - generated) - (opp_real - opp_generated)))
    loss, _ = make("spin", beta=beta)(_batch())
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)


@pytest.mark.parametrize("first_wins", [True, False])
def test_xpo_is_trls_loss_with_hard_labels(first_wins):
    """TRL: chosen is the model completion where the judge prefers it; xpo term = alpha * sum log pi(ref completion)."""
    beta, alpha = 0.2, 0.05
    chosen_mask = np.full(len(POLICY), first_wins)
    model_sum, model_on_ref = POLICY[:, 0], POLICY[:, 1]
    ref_on_model, ref_on_ref = REFERENCE[:, 0], REFERENCE[:, 1]
    chosen_ratio = np.where(chosen_mask, model_sum - ref_on_model, model_on_ref - ref_on_ref)
    rejected_ratio = np.where(~chosen_mask, model_sum - ref_on_model, model_on_ref - ref_on_ref)
    expected = -log_sigmoid(beta * (chosen_ratio - rejected_ratio)) + alpha * model_on_ref
    p = np.full(len(POLICY), float(first_wins), np.float32)
    loss, metrics = make("xpo", beta=beta, alpha=alpha)(_batch({"preference": p}))
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["exploration"], (alpha * model_on_ref).mean(), rtol=1e-5)


@pytest.mark.parametrize("first_wins", [True, False])
def test_selm_is_the_authors_optimistic_loss(first_wins):
    """The authors' loss on the judged pair, with the previous iterate's sample (slot 1) as the explored response."""
    beta, alpha = 0.05, 0.01
    ratios = POLICY - REFERENCE
    chosen, rejected = (ratios[:, 0], ratios[:, 1]) if first_wins else (ratios[:, 1], ratios[:, 0])
    expected = -log_sigmoid(beta * (chosen - rejected)) + alpha * beta * (POLICY[:, 1] - REFERENCE[:, 1])
    p = np.full(len(POLICY), float(first_wins), np.float32)
    loss, _ = make("selm", beta=beta, alpha=alpha)(_batch({"preference": p}))
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)


def test_cream_is_the_authors_consistency_regularised_loss():
    """Rank each pair by the policy's own log-ratio and by the previous iterate's; C = mean rescaled Kendall tau."""
    beta = 0.1
    flip = np.where(np.arange(len(POLICY)) % 3 == 0, -1.0, 2.0)[:, None]  # every third pair ranked the other way
    previous = REFERENCE + flip * (POLICY - REFERENCE)
    own, theirs = POLICY - REFERENCE, previous - REFERENCE
    taus = [stats.kendalltau(stats.rankdata(a, method="ordinal"), stats.rankdata(b, method="ordinal"))[0]
            for a, b in zip(own, theirs)]
    consistency = np.mean((np.asarray(taus) + 1) / 2)
    assert 0 < consistency < 1, "the fixture has both agreeing and disagreeing pairs"
    selected = np.argmax(own, axis=1)
    logits = beta * (own[np.arange(len(own)), selected] - own[np.arange(len(own)), 1 - selected])
    expected = consistency * -log_sigmoid(logits) + (1 - consistency) * -log_sigmoid(-logits)
    loss, metrics = make("cream", beta=beta)(_batch({"previous_logps": jnp.asarray(previous, jnp.float32)}))
    np.testing.assert_allclose(loss, expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["consistency"], consistency, rtol=1e-6)


def test_spin_iterations_stop_at_the_data_distribution():
    """Theorem 5.2: with the previous iterate refreshed, the tabular policy converges to p_data."""
    game = tb.make_game(tb.cyclic_game(5, margin=0.4), jnp.array([0.8, -0.3, 0.1, -0.9, 0.4]))
    data = np.array([[0.05, 0.4, 0.3, 0.15, 0.1]])
    final, _ = jax.jit(lambda: tb.train(make("spin"), game, game.log_ref, optax.sgd(1.0), steps=3000,
                                        data=jnp.asarray(data, jnp.float32), inner_steps=100))()
    pi = np.exp(np.asarray(tb.log_policy(final), np.float64))
    assert np.sum(data * np.log(data / pi)) < 1e-5
    assert np.sum(data * np.log(data / np.exp(np.asarray(game.log_ref)))) > 0.1  # it had to move


def test_selfplay_objectives_run_on_the_tabular_engine():
    """XPO, SELM and CREAM get their declared sources and labels from the engine; SPIN without data= is refused."""
    game = tb.make_game(tb.cyclic_game(5, margin=0.4), jnp.array([0.8, -0.3, 0.1, -0.9, 0.4]))
    policies = tb.Policies(game.log_ref, game.log_ref - 0.0, game.log_ref)
    for name in ("xpo", "selm", "cream"):
        loss, _ = make(name)(tb.batch_for(make(name), game, policies))
        assert np.isfinite(float(loss)), name
    with pytest.raises(ValueError, match="spin samples the dataset's responses: pass data="):
        tb.batch_for(make("spin"), game, policies)
    with pytest.raises(ValueError, match="dataset_reset resets generation to prefixes"):
        tb.batch_for(make("dataset_reset"), game, policies)


def test_dataset_reset_is_its_inner_objective_with_the_authors_reset_probability():
    """The wrapper's loss, requirements and strength are the inner's; only the sampling gains the reset."""
    inner = make("xpo", beta=0.3)
    wrapped = make("dataset_reset", inner=inner)
    lp = _batch({"preference": jnp.asarray(RNG.uniform(size=len(POLICY)), jnp.float32)})
    np.testing.assert_allclose(wrapped(lp)[0], inner(lp)[0], rtol=1e-6)
    assert wrapped.sampling.reset == 1.0 and wrapped.sampling.responses == inner.sampling.responses
    assert wrapped.strength_path == "inner.beta" and wrapped.requires == inner.requires
    with pytest.raises(ValueError, match="dataset_reset: the inner objective dpo is offline"):
        make("dataset_reset", inner=make("dpo")).sampling
