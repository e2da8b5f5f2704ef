"""Objectives robust to noisy preference labels: rDPO and the LCPO wrapper.

Both model a label as flipped (rejected actually preferred) with probability
``epsilon``. rDPO de-biases DPO for a known flip rate; LCPO wraps any pairwise
objective and infers, per example, the posterior probability that its label is
correct (an EM E-step), re-estimating the noise rate as it goes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, Objective, Requirements, Wrapper
from jalign.objectives.margin import PAIRED_WITH_REFERENCE, MarginObjective
from jalign.objectives.pairwise import DPO
from jalign.objectives.registry import objective


def rdpo_loss(margin: Array, *, beta, epsilon=0.1) -> Array:
    """Per-example robust DPO loss, unbiased under label flips with rate ``epsilon``.

    .. math::
        \\hat\\ell_\\epsilon(h) = \\frac{(1 - \\epsilon)\\, \\ell(h) - \\epsilon\\, \\ell(-h)}{1 - 2\\epsilon},
        \\qquad \\ell(h) = -\\log\\sigma(\\beta h)

    Its expectation over flips, ``(1 - eps) l_hat(h) + eps l_hat(-h)``, is the
    clean loss ``l(h)``. It can be negative; it needs ``epsilon < 1/2``.

    Args:
      margin: ``[B]`` log-ratio margin ``h`` of the observed label.
      beta: KL strength.
      epsilon: flip rate of the labels.

    Returns:
      ``[B]`` float32 losses.

    References:
      Chowdhury et al., *Provably Robust DPO: Aligning Language Models with
      Noisy Feedback*, 2024, Sec. 3 (the de-biased loss).
    """
    logits = beta * jnp.asarray(margin, jnp.float32)
    observed = -jax.nn.log_sigmoid(logits)
    flipped = -jax.nn.log_sigmoid(-logits)
    return ((1.0 - epsilon) * observed - epsilon * flipped) / (1.0 - 2.0 * epsilon)


@objective(
    "rdpo",
    strength="beta",
    citation="Chowdhury et al. 2024, Provably Robust DPO: Aligning Language Models with Noisy "
    "Feedback, Sec. 3 (de-biased loss)",
    requires=PAIRED_WITH_REFERENCE,
)
class RDPO(MarginObjective):
    """Robust DPO: DPO de-biased for a known label-flip rate ``epsilon``.

    Unlike cDPO (``dpo(label_smoothing=eps)``), which mixes the two losses with
    positive weights, rDPO subtracts the flipped loss so that its expectation
    under noise is the clean DPO loss. ``epsilon = 0`` is DPO.
    """

    beta: float = 0.1
    epsilon: float = 0.1

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return rdpo_loss(margin, beta=self.beta, epsilon=self.epsilon)


def flip_pairs(lp: LogProbs) -> LogProbs:
    """The same batch with every label flipped: rejected first, chosen second.

    Per-response arrays (policy, mask, reference, extras and labels whose
    axis 1 has size 2) are swapped along the response axis;
    ``labels["preference"]`` becomes ``1 - p``; other labels are unchanged.
    """

    def swap(x):
        return x[:, ::-1]

    labels = {}
    for key, value in lp.labels.items():
        value = jnp.asarray(value)
        if key == "preference":
            labels[key] = 1.0 - value
        elif value.ndim >= 2 and value.shape[1] == 2:
            labels[key] = swap(value)
        else:
            labels[key] = value
    return LogProbs(
        policy=swap(lp.policy),
        mask=swap(lp.mask),
        reference=None if lp.reference is None else swap(lp.reference),
        extras={key: swap(value) for key, value in lp.extras.items()},
        labels=labels,
    )


def label_correct_posterior(loss: Array, flipped_loss: Array, *, noise_rate) -> Array:
    """E-step: posterior probability that each observed label is correct.

    .. math::
        w = \\frac{(1 - \\epsilon) e^{-\\ell}}{(1 - \\epsilon) e^{-\\ell} + \\epsilon e^{-\\ell'}}
          = \\sigma\\Big(\\log\\frac{1 - \\epsilon}{\\epsilon} + \\ell' - \\ell\\Big)

    where the model's preference probability is ``p ∝ exp(-loss)`` (for DPO,
    ``p = sigmoid(beta h)``). A constant for the gradient; ``epsilon = 0``
    gives ``w = 1``.

    Args:
      loss: ``[B]`` inner loss on the observed label.
      flipped_loss: ``[B]`` inner loss on the flipped label.
      noise_rate: prior flip probability ``epsilon``.

    Returns:
      ``[B]`` float32 posteriors in ``[0, 1]``.
    """
    prior_logit = jnp.log1p(-noise_rate) - jnp.log(noise_rate)
    evidence = jnp.asarray(flipped_loss, jnp.float32) - jnp.asarray(loss, jnp.float32)
    return jax.lax.stop_gradient(jax.nn.sigmoid(prior_logit + evidence))


def lcpo_loss(loss: Array, flipped_loss: Array, *, noise_rate) -> Array:
    """Per-example LCPO loss: the E-step posterior mixes the observed and flipped losses.

    .. math::
        \\ell_{LCPO} = w\\, \\ell + (1 - w)\\, \\ell'

    Args:
      loss: ``[B]`` inner loss on the observed label.
      flipped_loss: ``[B]`` inner loss on the flipped label.
      noise_rate: prior flip probability ``epsilon``.

    Returns:
      ``[B]`` float32 losses.

    References:
      Cao et al., *Latent Collective Preference Optimization: A General
      Framework for Robust LLM Alignment*, 2025, Sec. 3 (EM with
      correctness posteriors as adaptive weights).
    """
    w = label_correct_posterior(loss, flipped_loss, noise_rate=noise_rate)
    return w * loss + (1.0 - w) * flipped_loss


@objective(
    "lcpo",
    strength=None,
    citation="Cao et al. 2025, Latent Collective Preference Optimization: A General Framework for "
    "Robust LLM Alignment (arXiv 2509.24159), Sec. 3: EM over label correctness",
    requires=Requirements(responses=PAIR, reference=True),
)
class LCPO(Wrapper):
    """Latent Collective Preference Optimization around any pairwise objective.

    Each label is correct with prior probability ``1 - noise_rate``; the model
    likelihood of a label is ``exp(-inner loss)``. The E-step posterior ``w``
    (a stop-gradient weight) mixes the inner loss on the observed label with
    the inner loss on the flipped label (:func:`flip_pairs`). The M-step for
    the noise rate is ``noise_rate <- mean(1 - w)``: it is the batch mean of
    ``metrics["noise_rate_update"]``; a trainer feeds it back (e.g. as a running
    average) as the traced ``noise_rate``. The paper's per-annotator rates can
    be run as one LCPO per annotator group. ``noise_rate = 0`` is the inner
    objective exactly.

    Requirements, sampling and strength are the inner objective's (it must be
    pairwise); metrics are the inner's on the observed labels plus
    ``correct_prob`` and ``noise_rate_update``.
    """

    inner: Objective = dataclasses.field(default_factory=DPO)
    noise_rate: float = 0.1

    @property
    def requires(self) -> Requirements:
        return self.inner.requires.union(Requirements(responses=PAIR, reference=False), where=self.name)

    @property
    def sampling(self):
        return self.inner.sampling

    def compute(self, lp: LogProbs):
        loss, metrics = self.inner.per_example(lp)
        flipped_loss, _ = self.inner.per_example(flip_pairs(lp))
        losses = lcpo_loss(loss, flipped_loss, noise_rate=self.noise_rate)
        w = label_correct_posterior(loss, flipped_loss, noise_rate=self.noise_rate)
        return losses, {**metrics, "correct_prob": w, "noise_rate_update": 1.0 - w}
