"""Every margin objective is its own pure loss of the log-ratio margin, with DPO's metrics.

Independent source: the margin ``h`` is computed here in NumPy from the
batch's token log-probs and mask (sums, or means for ``average=True``), and
the loss side is each paper's pure function (``dpo_loss``, ``ipo_loss``, ...)
called with the hyperparameters written in the table below, not read back
from the objective. The table must list every registered ``MarginObjective``,
so a new one cannot join the base untested.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_batches import batch_for

from jalign.objectives import MarginObjective, make, registered
from jalign.objectives.distributional import discopop_loss, exo_loss
from jalign.objectives.gpo import gpo_loss, slic_loss
from jalign.objectives.online import ipo_regression_loss
from jalign.objectives.pairwise import dpo_loss, ipo_loss
from jalign.objectives.robust import rdpo_loss
from jalign.objectives.weighted import irepo_loss, soft_dpo_loss


def _gpo(f):
    return dict(beta=0.4), lambda h, y: gpo_loss(h, beta=0.4, loss=f)


# name -> (hyperparameters, the pure loss at those hyperparameters as a function of (margin, labels))
MARGIN_LOSSES = {
    "dpo": (dict(beta=0.3, label_smoothing=0.1), lambda h, y: dpo_loss(h, beta=0.3, label_smoothing=0.1)),
    "ipo": (dict(tau=0.2), lambda h, y: ipo_loss(h, tau=0.2)),
    "gpo_logistic": _gpo("logistic"),
    "gpo_hinge": _gpo("hinge"),
    "gpo_squared": _gpo("squared"),
    "gpo_exponential": _gpo("exponential"),
    "gpo_truncated_quadratic": _gpo("truncated_quadratic"),
    "gpo_savage": _gpo("savage"),
    "slic": (dict(delta=0.7), lambda h, y: slic_loss(h, delta=0.7)),
    "exo": (dict(beta=0.3, label_smoothing=0.01), lambda h, y: exo_loss(h, beta=0.3, label_smoothing=0.01)),
    "discopop": (dict(beta=0.3, tau=0.1), lambda h, y: discopop_loss(h, beta=0.3, tau=0.1)),
    "rdpo": (dict(beta=0.3, epsilon=0.2), lambda h, y: rdpo_loss(h, beta=0.3, epsilon=0.2)),
    "soft_dpo": (dict(beta=0.3), lambda h, y: soft_dpo_loss(h, y["preference"], beta=0.3)),
    "irepo": (dict(beta=0.3, eps=0.01), lambda h, y: irepo_loss(h, y["preference"], beta=0.3, eps=0.01)),
    "online_ipo": (dict(tau=0.2), lambda h, y: ipo_regression_loss(h, y["preference"] - 0.5, tau=0.2)),
    "ipo_md": (dict(tau=0.2, mixture=0.3), lambda h, y: ipo_regression_loss(h, y["preference"] - 0.5, tau=0.2)),
    "online_dpo": (dict(beta=0.3), lambda h, y: dpo_loss(h, beta=0.3, label_smoothing=1.0 - y["preference"])),
    "sem_dpo": (dict(beta=0.3), lambda h, y: y["semantic_weight"] * dpo_loss(h, beta=0.3)),
}

CASES = [(name, average) for name in MARGIN_LOSSES for average in (False, True)
         if not average or "average" in registered()[name].__dataclass_fields__]


def _numpy_log_ratios(lp, average):
    """Sequence log-ratios ``[B, 2]`` in float64 NumPy: masked token sums, or means."""
    policy, reference, mask = (np.asarray(x, np.float64) for x in (lp.policy, lp.reference, lp.mask))
    sums = ((policy - reference) * mask).sum(-1)
    return sums / np.maximum(mask.sum(-1), 1.0) if average else sums


def _reward_scale(hyperparameters):
    """The paper's strength (beta, or IPO's tau); SLiC has none, so its reward is the log-ratio."""
    return hyperparameters.get("beta", hyperparameters.get("tau", 1.0))


def test_the_table_lists_every_margin_objective():
    on_base = {name for name, cls in registered().items() if issubclass(cls, MarginObjective)}
    assert on_base == set(MARGIN_LOSSES)


@pytest.mark.parametrize("name,average", CASES)
def test_margin_objective_is_its_loss_of_the_numpy_margin(name, average):
    hyperparameters, loss = MARGIN_LOSSES[name]
    objective = make(name, **hyperparameters, **({"average": True} if average else {}))
    lp = batch_for(objective.requires, seed=11, log_ratio_scale=3.0)
    ratios = _numpy_log_ratios(lp, average)
    h = ratios[:, 0] - ratios[:, 1]
    labels = {key: np.asarray(value, np.float64) for key, value in lp.labels.items()}

    losses, metrics = objective.per_example(lp)
    np.testing.assert_allclose(losses, loss(h, labels), rtol=1e-5, atol=1e-6)
    scale = _reward_scale(hyperparameters)
    np.testing.assert_allclose(metrics["rewards/margin"], scale * h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/chosen"], scale * ratios[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["logratio/rejected"], ratios[:, 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["dpo", "ipo", "online_ipo"])
def test_reward_metrics_follow_a_traced_strength(name):
    """The metrics' reward scale is the declared strength (DPO's beta, IPO's tau), even under vmap."""
    objective = make(name)
    lp = batch_for(objective.requires, seed=12, log_ratio_scale=3.0)
    ratios = _numpy_log_ratios(lp, average=False)
    strengths = jnp.array([0.05, 0.5, 2.0])
    margins = jax.vmap(lambda s: make(name, **{objective.strength_path: s}).per_example(lp)[1]["rewards/margin"])(
        strengths)
    np.testing.assert_allclose(margins, np.asarray(strengths)[:, None] * (ratios[:, 0] - ratios[:, 1]),
                               rtol=1e-5, atol=1e-6)
