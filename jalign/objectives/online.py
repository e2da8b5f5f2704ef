"""Online and game-theoretic objectives, each with the sampling it declares.

These objectives are still pure functions of a :class:`LogProbs` batch; what
makes them *online* is where their responses and labels come from. Each one
declares its :class:`~jalign.objectives.declaration.Sampling` at registration
(an instance's ``sampling`` property, which survives composition): the policy
each response slot is drawn from, the policy that fills ``reference``, and the
labels an oracle must provide. The tabular engine
(:mod:`jalign.tabular.engine`) satisfies it with exact expectations or
samples; the LLM trainer with generation and a preference model.

Labels used here besides ``"preference"`` ``[B]`` (P(y_0 ≻ y_1)):

- ``"win_prob"`` ``[B, G]``: P(y_g ≻ y'') for y'' drawn from the declared
  ``opponent`` policy, i.e. the expected win rate of each response. Valid
  random values: U(0, 1).
- ``"previous_logps"`` ``[B, G]``: log pi_t(y_g | x), the sequence log-prob of
  each response under the previous iterate pi_t. Valid random values: any
  finite reals (e.g. N(0, 1) - 5).

Sources (strings, so declarations read plainly): ``"policy"`` (the current
policy, without gradient), ``"reference"``, ``"mixture"`` (the geometric
mixture ``pi^(1-b) ref^b``; ``b`` is the objective's ``mixture``
hyperparameter), ``"previous"`` (the previous iterate pi_t),
``"extrapolated"`` (the policy after an extragradient half-step of this same
objective), ``"uniform"`` (any full-support distribution, uniform in tabular).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, SINGLE, Objective, Requirements
from jalign.objectives.declaration import (  # noqa: F401  (the sources, re-exported for engines)
    EXTRAPOLATED, MIXTURE, POLICY, PREVIOUS, REFERENCE, SOURCES, UNIFORM, Sampling,
)
from jalign.objectives.margin import MarginObjective
from jalign.objectives.metrics import reference_pairwise_metrics
from jalign.objectives.pairwise import dpo_loss
from jalign.objectives.registry import objective
from jalign.objectives.sequence import label, log_ratios, pair_margin, policy_logps, reference_logps

def ipo_regression_loss(margin: Array, target: Array, *, tau) -> Array:
    """IPO's squared regression of a log-ratio margin onto a preference target.

    .. math::
        \\ell = \\left(h - \\frac{t}{\\tau}\\right)^2

    With ``t = p - 1/2`` for a preference probability ``p`` this is the
    expectation over the Bernoulli label of IPO's sampled loss
    ``(h(y_w, y_l) - 1/(2 tau))^2`` up to a constant; with
    ``t = P(y ≻ pi') - P(y' ≻ pi')`` it is IPO's population form.

    Args:
      margin: ``[B]`` log-ratio margin ``h``.
      target: ``[B]`` regression target ``t``.
      tau: KL-regularisation strength.

    Returns:
      ``[B]`` float32 losses.

    References:
      Azar et al., *A General Theoretical Paradigm to Understand Learning from
      Human Preferences*, 2023, Eq. 17 (the sampled loss) and Sec. 5 (the
      population form).
    """
    return jnp.square(jnp.asarray(margin, jnp.float32) - jnp.asarray(target, jnp.float32) / tau)


PAIRED_PREFERENCE = Requirements(responses=PAIR, reference=True, labels=("preference",))
PAIRED_WIN_PROB = Requirements(responses=PAIR, reference=True, labels=("win_prob",))


def _ipo_target(lp: LogProbs) -> Array:
    return jnp.asarray(label(lp, "preference"), jnp.float32) - 0.5


@objective(
    "online_ipo",
    strength="tau",
    citation="Calandriello et al. 2024, Human Alignment of Large Language Models through "
    "Online Preference Optimisation, online IPO (IPO-MD with beta = 0); loss of Azar et al. 2023, Eq. 17",
    requires=PAIRED_PREFERENCE,
    sampling=Sampling(responses=(POLICY, POLICY), labels=("preference",)),
)
class OnlineIPO(MarginObjective):
    """Online IPO: IPO on pairs sampled from the current policy, labelled by the oracle.

    .. math::
        E_{y, y' \\sim \\mathrm{sg}(\\pi)}\\left[\\left(h(y, y') - \\frac{P(y \\succ y') - 1/2}{\\tau}\\right)^2\\right]

    Needs pairs, reference log-probs and ``labels["preference"]``.
    """

    tau: float = 0.1

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return ipo_regression_loss(margin, _ipo_target(lp), tau=self.tau)


@objective(
    "ipo_md",
    strength="tau",
    citation="Calandriello et al. 2024, Human Alignment of Large Language Models through "
    "Online Preference Optimisation, IPO-MD (both responses from the geometric mixture)",
    requires=PAIRED_PREFERENCE,
    sampling=Sampling(responses=(MIXTURE, MIXTURE), labels=("preference",)),
)
class IPOMD(MarginObjective):
    """IPO-MD: online IPO with both responses from ``sg(pi)^(1-b) ref^b`` (``b = mixture``).

    Same loss as :class:`OnlineIPO`; ``mixture = 0`` recovers online IPO. With
    the mixture ``mu = pi^b`` held fixed, the loss's minimiser is
    ``pi ∝ ref exp(P(. ≻ mu) / tau)``, so the stationary point of training with
    a constant ``b`` is the biased fixed point of :class:`NashMD` (with
    ``beta = tau``), not the regularised Nash equilibrium, unless ``b = 0``.
    """

    tau: float = 0.1
    mixture: float = 0.5

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return ipo_regression_loss(margin, _ipo_target(lp), tau=self.tau)


def _contrast_loss(obj, lp: LogProbs):
    win = jnp.asarray(label(lp, "win_prob"), jnp.float32)
    target = win[:, 0] - win[:, 1]
    losses = ipo_regression_loss(pair_margin(log_ratios(lp)), target, tau=obj.beta)
    return losses, {**reference_pairwise_metrics(lp, obj.beta), "win_prob/margin": target}


@objective(
    "nash_md",
    strength="beta",
    citation="Munos et al. 2023, Nash Learning from Human Feedback, Nash-MD; as the online-IPO "
    "loss of Zhou et al. 2025, Extragradient Preference Optimization (EGPO)",
    requires=PAIRED_WIN_PROB,
    sampling=Sampling(responses=(UNIFORM, UNIFORM), labels=("win_prob",), opponent=MIXTURE),
)
class NashMD(Objective):
    """Nash-MD as a regression loss: one gradient step is one mirror-descent step.

    .. math::
        E_{y, y' \\sim \\mu}\\left[\\left(h(y, y') - \\frac{P(y \\succ \\pi^b) - P(y' \\succ \\pi^b)}{\\beta}\\right)^2\\right],
        \\quad \\pi^b \\propto \\mathrm{sg}(\\pi)^{1-b} \\pi_{ref}^b

    ``y, y'`` come from a full-support ``mu`` (uniform in the EGPO paper) and
    ``labels["win_prob"]`` holds each response's win probability against the
    mixture. For softmax logits with uniform ``mu`` over ``K`` actions, an SGD
    step of size ``lr`` gives ``log pi' = (1 - a) log pi + a log ref + (a / beta) P pi^b``
    (up to normalisation) with ``a = 4 lr / K``: Munos et al.'s Nash-MD step
    (mirror descent against ``pi_t^(1 - eta tau) ref^(eta tau)``) with
    ``tau = beta``, ``eta tau = a``, exact when ``mixture = a``. ``mixture = 0``
    is online mirror descent ("online IPO 1" in the EGPO paper).

    Bias of a constant mixture. Munos et al. tie the mixture to the step,
    ``b = eta tau``, and let ``eta`` decrease (``eta = log T / (tau T)`` in their
    last-iterate theorem). The objective sees no step size, so ``mixture`` is
    its own hyperparameter, and with a constant ``b`` the iteration above has,
    for every ``lr``, the fixed point

    .. math::
        \\bar\\pi_b \\propto \\pi_{ref} \\exp\\big(P(\\cdot \\succ \\bar\\pi_b^b) / \\beta\\big),
        \\quad \\bar\\pi_b^b \\propto \\bar\\pi_b^{1-b} \\pi_{ref}^b,

    which is also the fixed point of exact Nash-MD with the constant step
    ``eta = b / beta``. It is the regularised Nash equilibrium
    ``pi* ∝ ref exp(P(. ≻ pi*) / beta)`` only when ``b = 0``; otherwise it is
    the regularised best response to a geometric mixture of itself and the
    reference (the per-step bound ``KL_{t+1} <= (1 - eta tau) KL_t + 2 eta^2``
    of Munos et al.'s theorem only places it within
    ``KL(pi*, pi_bar) <= 2 eta / tau = 2 b / beta^2``).
    :class:`IPOMD` and :class:`NashMDPG` with the same ``b`` stop at the same
    point. The default ``mixture = 0.1`` is therefore not a published setting:
    it is a fixed, moderate mixture for runs (LLM training) where no
    ``lr -> a`` correspondence exists, at the price of that bias. For the
    paper's algorithm on a tabular game set ``mixture = 4 lr / K`` (as
    ``experiments/reproduce/nash_md.py`` does); for the regularised
    equilibrium itself use ``mixture = 0`` or :class:`EGPO`.
    """

    beta: float = 0.1
    mixture: float = 0.1

    def compute(self, lp: LogProbs):
        return _contrast_loss(self, lp)


@objective(
    "egpo",
    strength="beta",
    citation="Zhou et al. 2025, Extragradient Preference Optimization (EGPO): Beyond Last-Iterate "
    "Convergence for Nash Learning from Human Feedback, online-IPO form of the extragradient update",
    requires=PAIRED_WIN_PROB,
    sampling=Sampling(responses=(UNIFORM, UNIFORM), labels=("win_prob",), opponent=EXTRAPOLATED),
)
class EGPO(Objective):
    """EGPO: the Nash-MD regression loss against the extragradient half-step.

    .. math::
        E_{y, y' \\sim \\mu}\\left[\\left(h(y, y') - \\frac{P(y \\succ \\pi_{t+1/2}) - P(y' \\succ \\pi_{t+1/2})}{\\beta}\\right)^2\\right]

    where ``pi_{t+1/2}`` is the policy after one step of the same loss with the
    current policy as opponent; the gradient is taken at the current iterate.
    """

    beta: float = 0.1

    def compute(self, lp: LogProbs):
        return _contrast_loss(self, lp)


@objective(
    "nash_md_pg",
    strength="beta",
    citation="Munos et al. 2023, Nash Learning from Human Feedback, Nash-MD-PG (policy gradient "
    "against the geometric mixture)",
    requires=PAIRED_PREFERENCE,
    sampling=Sampling(responses=(POLICY, MIXTURE), labels=("preference",)),
)
class NashMDPG(Objective):
    """Nash-MD-PG: REINFORCE on the regularised preference against the mixture.

    .. math::
        -E_{y \\sim \\mathrm{sg}(\\pi), y' \\sim \\pi^b}\\left[\\mathrm{sg}\\left(P(y \\succ y') - \\tfrac12
        - \\beta \\log\\frac{\\pi(y)}{\\pi_{ref}(y)}\\right) \\log \\pi(y)\\right]

    Response 0 is from the policy, response 1 from the mixture;
    ``labels["preference"]`` = P(y_0 ≻ y_1). Its gradient is the policy
    gradient of ``P(pi ≻ pi^b) - beta KL(pi, ref)``. With a constant
    ``mixture`` it stops at the biased fixed point described in :class:`NashMD`.
    """

    beta: float = 0.1
    mixture: float = 0.1

    def compute(self, lp: LogProbs):
        advantage = _ipo_target(lp) - self.beta * log_ratios(lp)[:, 0]
        logp = policy_logps(lp)[:, 0]
        losses = -jax.lax.stop_gradient(advantage) * logp
        return losses, {"advantage": jax.lax.stop_gradient(advantage)}


@objective(
    "sppo",
    strength="eta",
    citation="Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment, "
    "Sec. 4 and Algorithm 1 (square loss with log Z replaced by eta/2); eta = 1/beta with the "
    "authors' beta = 0.001 (uclaml/SPPO scripts/pipeline.sh)",
    requires=Requirements(responses=SINGLE, reference=True, labels=("win_prob",)),
    sampling=Sampling(responses=(PREVIOUS,), labels=("win_prob",), opponent=PREVIOUS, reference=PREVIOUS),
)
class SPPO(Objective):
    """SPPO: regress ``log pi(y)/pi_t(y)`` onto ``eta (P(y ≻ pi_t) - 1/2)``.

    .. math::
        E_{y \\sim \\pi_t}\\left[\\left(\\log\\frac{\\pi(y)}{\\pi_t(y)} - \\eta\\left(P(y \\succ \\pi_t) - \\tfrac12\\right)\\right)^2\\right]

    The ``reference`` slot holds the previous iterate pi_t (the declaration's
    ``reference="previous"``); ``labels["win_prob"]`` ``[B, 1]`` is P(y ≻ pi_t).

    ``eta`` is the paper's step size. The authors' code calls its inverse
    ``beta`` (uclaml/SPPO ``sppo/trainer.py``, ``loss_type="sppo"``:
    ``(logits_w - (1/beta)(chosen_probs_win - 0.5))**2`` averaged with the same
    term for ``y_l``), so ``eta = 1 / beta``; :class:`~jalign.objectives.anchored.SPPOHard`
    keeps their ``beta``. Default ``eta = 1000``: the authors' ``BETA="0.001"``
    in ``scripts/pipeline.sh``, which every ``run_sppo_*.sh`` script uses. On a
    pair, the mean of this loss over ``y_w`` and ``y_l`` is exactly their loss.

    The loss is Wu et al.'s regression onto the multiplicative-weights step
    ``pi_{t+1} ∝ pi_t exp(eta P(. ≻ pi_t))``, whose log-ratio is
    ``eta P(y ≻ pi_t) - log Z_t``, with ``log Z_t`` replaced by ``eta / 2``.
    Because ``E_{pi_t} P(y ≻ pi_t) = 1/2``, Jensen gives ``log Z_t >= eta/2``
    (``log Z_t = eta/2 + eta^2 Var_{pi_t}(P)/2 + O(eta^3)``), with equality only
    when ``P(. ≻ pi_t)`` is constant on the support of pi_t. So the loss's
    minimiser over normalised policies is the multiplicative-weights step only
    approximately: it satisfies ``log(pi/pi_t) = eta (P - 1/2) + c pi/pi_t``
    with one constant ``c <= 0`` fixed by normalisation (``c = 0`` exactly when
    ``log Z_t = eta/2``): the largest ratios are pulled down most, where the
    multiplicative-weights step lowers every log-ratio by ``log Z_t - eta/2``.
    """

    eta: float = 1000.0

    def compute(self, lp: LogProbs):
        ratio = log_ratios(lp)[:, 0]
        target = self.eta * (jnp.asarray(label(lp, "win_prob"), jnp.float32)[:, 0] - 0.5)
        return jnp.square(ratio - target), {"logratio": jax.lax.stop_gradient(ratio)}


@objective(
    "inpo",
    strength="tau",
    citation="Zhang et al. 2024, Iterative Nash Policy Optimization: Aligning LLMs with General "
    "Preferences via No-Regret Learning, the INPO loss",
    requires=Requirements(responses=PAIR, reference=True, labels=("preference", "previous_logps")),
    sampling=Sampling(responses=(PREVIOUS, PREVIOUS), labels=("preference", "previous_logps")),
)
class INPO(Objective):
    """INPO: online mirror descent on the regularised game as a pairwise IPO-style loss.

    .. math::
        h_t = \\log\\frac{\\pi(y)}{\\pi(y')} - \\eta\\tau \\log\\frac{\\pi_{ref}(y)}{\\pi_{ref}(y')}
        - (1 - \\eta\\tau) \\log\\frac{\\pi_t(y)}{\\pi_t(y')}, \\qquad
        \\ell = \\left(h_t - \\eta\\left(P(y \\succ y') - \\tfrac12\\right)\\right)^2

    with ``y, y' ~ pi_t``; the expectation over the Bernoulli label of the
    paper's ``(h_t(y_w, y_l) - eta/2)^2``, up to a constant. Its minimiser is
    ``pi ∝ pi_t^(1 - eta tau) ref^(eta tau) exp(eta P(. ≻ pi_t))``.
    """

    tau: float = 0.1
    eta: float = 1.0

    def compute(self, lp: LogProbs):
        step = self.eta * self.tau
        previous = jnp.asarray(label(lp, "previous_logps"), jnp.float32)
        h = (pair_margin(policy_logps(lp)) - step * pair_margin(reference_logps(lp))
             - (1.0 - step) * pair_margin(previous))
        losses = jnp.square(h - self.eta * _ipo_target(lp))
        return losses, {"h": jax.lax.stop_gradient(h)}


@objective(
    "online_dpo",
    strength="beta",
    citation="Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback; "
    "DPO loss of Rafailov et al. 2023, Eq. 7 with the oracle's preference as a soft label",
    requires=PAIRED_PREFERENCE,
    sampling=Sampling(responses=(POLICY, POLICY), labels=("preference",)),
)
class OnlineDPO(MarginObjective):
    """Online DPO: DPO on on-policy pairs labelled by the oracle.

    .. math::
        -p \\log\\sigma(\\beta h) - (1 - p) \\log\\sigma(-\\beta h), \\quad y, y' \\sim \\mathrm{sg}(\\pi)

    the expectation over the oracle's Bernoulli label ``p = P(y_0 ≻ y_1)`` of
    DPO's loss (:func:`dpo_loss` with ``label_smoothing = 1 - p``).
    """

    beta: float = 0.1

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        p = jnp.asarray(label(lp, "preference"), jnp.float32)
        return dpo_loss(margin, beta=self.beta, label_smoothing=1.0 - p)
