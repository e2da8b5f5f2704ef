"""Self-play and exploratory online objectives: SPIN, SELM, XPO, CREAM.

Like the objectives of :mod:`jalign.objectives.online`, each is a pure
function of a :class:`LogProbs` batch whose sampling declaration says where
its responses come from:

- SPIN: response 0 is the dataset's own response to the prompt (the
  ``"data"`` source, the SFT target), response 1 a sample of the previous
  iterate, which also fills the reference slot;
- SELM: a policy sample against a previous-iterate sample, judged, with the
  previous iterate as reference and an optimism term on its sample;
- XPO: a policy sample against a reference sample, judged, with an
  exploration term on the reference's sample;
- CREAM: two policy samples ranked by the policy's own implicit reward (the
  model is its own judge), the DPO label softened by how often the previous
  iterate ranks them the same way;
- ``dataset_reset``: DR-PO's reset around any online objective, whose
  responses are then generated from prefixes of the dataset's responses.

Labels: ``"preference"`` ``[B]`` (the judge's P(y_0 ≻ y_1)) for SELM and
XPO; ``"previous_logps"`` ``[B, G]`` for CREAM.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, Objective, Requirements, Wrapper, batch_mean, static_field
from jalign.objectives.declaration import DATA, POLICY, PREVIOUS, REFERENCE, Sampling
from jalign.objectives.margin import PAIRED_WITH_REFERENCE, MarginObjective
from jalign.objectives.metrics import reference_pairwise_metrics
from jalign.objectives.online import OnlineDPO
from jalign.objectives.pairwise import dpo_loss
from jalign.objectives.registry import objective
from jalign.objectives.sequence import label, log_ratios, pair_margin, policy_logps, reference_logps

PAIRED_PREFERENCE = Requirements(responses=PAIR, reference=True, labels=("preference",))


def _soft_dpo(obj, lp: LogProbs) -> tuple[Array, Array]:
    """Online DPO's loss ``[B]`` on the judged pair, and the ``[B, 2]`` log-ratios."""
    ratios = log_ratios(lp)
    p = jnp.asarray(label(lp, "preference"), jnp.float32)
    return dpo_loss(pair_margin(ratios), beta=obj.beta, label_smoothing=1.0 - p), ratios


@objective(
    "spin",
    strength="beta",
    citation="Chen et al. 2024, Self-Play Fine-Tuning Converts Weak Language Models to Strong Language "
    "Models, Sec. 4 (L_SPIN with the logistic loss); the authors' uclaml/SPIN spin/alignment/trainer.py "
    "spin_loss, loss_type='sigmoid', beta = 0.1 (configs/config*.yaml)",
    requires=PAIRED_WITH_REFERENCE,
    sampling=Sampling(responses=(DATA, PREVIOUS), reference=PREVIOUS),
)
class SPIN(MarginObjective):
    """SPIN: tell the dataset's response from the previous iterate's own.

    .. math::
        -\\log\\sigma\\left(\\lambda \\log\\frac{\\pi(y)}{\\pi_t(y)} - \\lambda \\log\\frac{\\pi(y')}{\\pi_t(y')}\\right),
        \\quad y \\sim p_{data}(\\cdot|x),\\ y' \\sim \\pi_t(\\cdot|x)

    Response 0 is the dataset's response (the ``"data"`` source), response 1
    a sample of the previous iterate ``pi_t``, which also fills the reference
    slot (``reference="previous"``); ``beta`` is the paper's ``lambda``. The
    population loss is minimised at ``pi = p_data`` when ``pi_t = p_data``
    (the paper's Theorem 5.2), the fixed point of the iteration. Default
    ``beta = 0.1``: the authors' configs for every iteration. Needs pairs
    (data first) and reference log-probs; no judge.
    """

    beta: float = 0.1

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return dpo_loss(margin, beta=self.beta)


@objective(
    "selm",
    strength="beta",
    citation="Zhang et al. 2024, Self-Exploring Language Models: Active Preference Elicitation for Online "
    "Alignment, the SELM objective (DPO plus the optimism term); the authors' shenao-zhang/SELM "
    "scripts/selm_trainer.py optimistic_dpo_loss, beta = 0.01 and alpha = 0.001 "
    "(recipes/zephyr-selm/selm_config_full.yaml)",
    requires=PAIRED_PREFERENCE,
    sampling=Sampling(responses=(POLICY, PREVIOUS), labels=("preference",), reference=PREVIOUS),
)
class SELM(Objective):
    """SELM: online DPO with the optimism term on the previous iterate's sample.

    .. math::
        -p\\log\\sigma(\\beta h) - (1 - p)\\log\\sigma(-\\beta h)
        + \\alpha\\beta\\log\\frac{\\pi(y')}{\\pi_t(y')},
        \\quad y \\sim \\mathrm{sg}(\\pi),\\ y' \\sim \\pi_t

    ``h`` is the pair's log-ratio margin against the previous iterate ``pi_t``
    (the reference slot: in the authors' iterations the model the iteration
    starts from is both the DPO reference and the sampler of the explored
    response), ``p = labels["preference"]`` the judge's P(y ≻ y'). The
    authors rank their ``pi_t`` response against the dataset's pair; here it
    is judged against a policy sample, as in online DPO. Minimising
    ``alpha beta log pi(y')/pi_t(y')`` over responses the previous iterate
    already favours moves mass away from them: the optimism bonus.
    Defaults: the authors' Zephyr recipe (``beta = 0.01``, ``alpha = 0.001``;
    their Llama-3 recipe uses ``alpha = 0.0001``).
    """

    beta: float = 0.01
    alpha: float = 0.001

    def compute(self, lp: LogProbs):
        losses, ratios = _soft_dpo(self, lp)
        optimism = self.alpha * self.beta * ratios[:, 1]
        metrics = {**reference_pairwise_metrics(lp, self.beta), "optimism": jax.lax.stop_gradient(optimism)}
        return losses + optimism, metrics


@objective(
    "xpo",
    strength="beta",
    citation="Xie et al. 2024, Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for "
    "Sample-Efficient RLHF, Algorithm 1 (DPO plus alpha times the log-likelihood of reference samples); "
    "TRL XPOTrainer._compute_losses, defaults alpha = 1e-5 (XPOConfig) and beta = 0.1 (OnlineDPOConfig)",
    requires=PAIRED_PREFERENCE,
    sampling=Sampling(responses=(POLICY, REFERENCE), labels=("preference",)),
)
class XPO(Objective):
    """XPO: online DPO on a policy sample against a reference sample, plus the exploration term.

    .. math::
        -p\\log\\sigma(\\beta h) - (1 - p)\\log\\sigma(-\\beta h) + \\alpha \\log\\pi(\\tilde y),
        \\quad y \\sim \\mathrm{sg}(\\pi),\\ \\tilde y \\sim \\pi_{ref}

    Response 0 is the policy's sample, response 1 (``tilde y``) the
    reference's; ``p = labels["preference"]`` is the judge's P(y_0 ≻ y_1)
    (TRL takes the hard label ``p in {0, 1}``; the soft label is its
    expectation). Minimising ``alpha log pi(tilde y)`` lowers the likelihood
    of what the reference already says, pushing the policy to explore.
    Defaults are TRL's (``alpha = 1e-5``, ``beta = 0.1``).
    """

    beta: float = 0.1
    alpha: float = 1e-5

    def compute(self, lp: LogProbs):
        losses, _ = _soft_dpo(self, lp)
        exploration = self.alpha * policy_logps(lp)[:, 1]
        metrics = {**reference_pairwise_metrics(lp, self.beta), "exploration": jax.lax.stop_gradient(exploration)}
        return losses + exploration, metrics


def kendall_consistency(first: Array, second: Array) -> Array:
    """``[B]`` Kendall's tau of two rankings of each prompt's pair, rescaled to [0, 1].

    For two responses tau is +1 when both rewards order the pair the same way
    and -1 otherwise, so ``(tau + 1) / 2`` is 1 or 0; ties count as agreement
    when both are tied. ``first``, ``second``: ``[B, 2]`` rewards.
    """
    a = jnp.sign(pair_margin(jnp.asarray(first, jnp.float32)))
    b = jnp.sign(pair_margin(jnp.asarray(second, jnp.float32)))
    return (a == b).astype(jnp.float32)


@objective(
    "cream",
    strength="beta",
    citation="Wang et al. 2024, CREAM: Consistency Regularized Self-Rewarding Language Models, the consistency "
    "regularised DPO objective; the authors' Raibows/CREAM sft_dpo_trainer.py (consistency_avg) and "
    "cal_consistency.py (Kendall tau rescaled to [0, 1]), beta = 0.1 (config.py)",
    requires=Requirements(responses=PAIR, reference=True, labels=("previous_logps",)),
    sampling=Sampling(responses=(POLICY, POLICY), labels=("previous_logps",)),
)
class CREAM(Objective):
    """CREAM: the policy judges its own pair; the previous iterate's agreement softens the label.

    .. math::
        r(y) = \\mathrm{sg}\\log\\frac{\\pi(y)}{\\pi_{ref}(y)}, \\quad
        r_t(y) = \\log\\frac{\\pi_t(y)}{\\pi_{ref}(y)}, \\quad
        C = \\mathrm{mean}_x \\frac{\\tau(r, r_t) + 1}{2},

    .. math::
        \\ell = -C\\log\\sigma(\\beta h_{+-}) - (1 - C)\\log\\sigma(-\\beta h_{+-})

    where the pair ``(y_+, y_-)`` is the policy's two samples ordered by its
    own implicit reward ``r`` (the policy is the judge), ``h_{+-}`` their
    log-ratio margin, ``tau`` Kendall's rank correlation between the
    policy's ranking and the previous iterate's (``labels["previous_logps"]``)
    and ``C`` its batch mean (the authors' ``consistency_avg``; weighted by
    ``labels["example_weight"]`` when given). With two responses per prompt
    tau is +-1. In the paper the two rankings come from the iterates at the
    start of this iteration and of the one before; here from the live
    policy and the previous iterate (refreshed every
    ``online.iteration_steps``). No external judge labels the pair.
    """

    beta: float = 0.1

    def compute(self, lp: LogProbs):
        ratios = log_ratios(lp)
        own = jax.lax.stop_gradient(ratios)
        previous = jnp.asarray(label(lp, "previous_logps"), jnp.float32) - jax.lax.stop_gradient(
            reference_logps(lp))
        agree = kendall_consistency(own, previous)
        consistency = batch_mean(agree, lp.labels.get("example_weight"))
        orientation = jnp.where(pair_margin(own) >= 0, 1.0, -1.0)
        margin = orientation * pair_margin(ratios)
        losses = dpo_loss(margin, beta=self.beta, label_smoothing=1.0 - consistency)
        metrics = {"consistency": jnp.broadcast_to(consistency, losses.shape),
                   "rewards/margin": jax.lax.stop_gradient(self.beta * margin)}
        return losses, metrics


@objective(
    "dataset_reset",
    strength=None,
    citation="Chang et al. 2024, Dataset Reset Policy Optimization for RLHF (DR-PO), the dataset reset; the "
    "authors' roll-in (Cornell-RL/tril utils/logit_processors.py RollinProcessor, used by Cornell-RL/drpo "
    "src/tldr/drpo.py with reset probability beta = 1.0)",
    requires=PAIRED_PREFERENCE,
)
class DatasetReset(Wrapper):
    """DR-PO's dataset reset around any online objective: generation starts inside the dataset's responses.

    With probability ``probability`` per prompt, the responses the inner
    objective declares are generated from the state ``(x, y_{<h})``: the
    prompt plus the first ``h`` tokens of the prompt record's completion
    (the offline preferred response), ``h`` uniform in ``1 .. len(y) - 1``,
    as the authors' roll-in draws it; otherwise from ``x``. The rolled-in
    tokens are part of the prompt the objective conditions on and are not
    trained on (the authors mask them out of the loss); the judge reads the
    whole response ``y_{<h}`` plus the continuation. The loss is the inner
    objective's: the authors optimise PPO with a learned critic (GAE) on a
    reward model's score, so DR-PO itself is ``dataset_reset(inner=ppo())``
    (:class:`jalign.objectives.ppo.PPO`, with their defaults). Needs
    prompt-completion data.
    Default ``probability = 1.0``: the authors' ``beta`` in ``drpo.py``.
    """

    inner: Objective = dataclasses.field(default_factory=OnlineDPO)
    probability: float = static_field(1.0)

    @property
    def requires(self) -> Requirements:
        return self.inner.requires

    @property
    def sampling(self) -> Sampling:
        inner = self.inner.sampling
        if inner is None:
            raise ValueError(f"dataset_reset: the inner objective {self.inner.name} is offline; the reset changes "
                             "where an online objective's responses are generated from")
        return dataclasses.replace(inner, reset=self.probability)

    def compute(self, lp: LogProbs):
        return self.inner.per_example(lp)
