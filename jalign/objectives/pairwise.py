"""DPO and IPO: the two reference pairwise objectives the others are measured against.

Both are functions of the log-ratio margin

.. math::
    h = \\log \\frac{\\pi_\\theta(y_w|x)}{\\pi_{ref}(y_w|x)} - \\log \\frac{\\pi_\\theta(y_l|x)}{\\pi_{ref}(y_l|x)}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import static_field
from jalign.objectives.margin import PAIRED_WITH_REFERENCE, MarginObjective
from jalign.objectives.registry import objective


def dpo_loss(margin: Array, *, beta, label_smoothing=0.0) -> Array:
    """Per-example DPO loss of a log-ratio margin, with conservative label smoothing.

    .. math::
        \\ell(h) = -(1 - \\epsilon) \\log\\sigma(\\beta h) - \\epsilon \\log\\sigma(-\\beta h)

    Args:
      margin: ``[B]`` log-ratio margin ``h`` (chosen minus rejected).
      beta: KL-regularisation strength.
      label_smoothing: probability ``epsilon`` that a label is flipped (cDPO).

    Returns:
      ``[B]`` float32 losses.

    References:
      Rafailov et al., *Direct Preference Optimization*, 2023, Eq. 7;
      Mitchell, *A note on DPO with noisy preferences & relationship to IPO*, 2023 (cDPO).
    """
    logits = beta * jnp.asarray(margin, jnp.float32)
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits) - label_smoothing * jax.nn.log_sigmoid(-logits)


@objective(
    "dpo",
    strength="beta",
    citation="Rafailov et al. 2023, Direct Preference Optimization, Eq. 7; "
    "label_smoothing > 0 is cDPO (Mitchell 2023, A note on DPO with noisy preferences)",
    requires=PAIRED_WITH_REFERENCE,
)
class DPO(MarginObjective):
    """Direct Preference Optimization: ``-log sigmoid(beta * h)``.

    With ``label_smoothing = eps`` the target is the conservative label
    ``1 - eps`` (cDPO). ``average`` length-normalises the log-ratios.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    average: bool = static_field(False)

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return dpo_loss(margin, beta=self.beta, label_smoothing=self.label_smoothing)


def ipo_loss(margin: Array, *, tau) -> Array:
    """Per-example IPO loss: squared distance of the margin from ``1 / (2 tau)``.

    .. math::
        \\ell(h) = \\left(h - \\frac{1}{2\\tau}\\right)^2

    Args:
      margin: ``[B]`` log-ratio margin ``h``.
      tau: KL-regularisation strength.

    Returns:
      ``[B]`` float32 losses.

    References:
      Azar et al., *A General Theoretical Paradigm to Understand Learning from
      Human Preferences*, 2023, Eq. 17.
    """
    return jnp.square(jnp.asarray(margin, jnp.float32) - 1.0 / (2.0 * tau))


@objective(
    "ipo",
    strength="tau",
    citation="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning "
    "from Human Preferences, Eq. 17",
    requires=PAIRED_WITH_REFERENCE,
)
class IPO(MarginObjective):
    """Identity Preference Optimization: ``(h - 1/(2 tau))^2``.

    The paper's loss uses sequence log-ratios; ``average`` gives the
    length-normalised variant that several libraries use by default.
    """

    tau: float = 0.1
    average: bool = static_field(False)

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return ipo_loss(margin, tau=self.tau)
