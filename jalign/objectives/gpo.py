r"""GPO: offline preference losses as a convex function of the scaled log-ratio margin.

Tang et al. (2024) write every pairwise offline objective as

.. math::
    \mathcal{L}_f(\theta) = \mathbb{E}\left[ f(\beta h) \right], \qquad
    h = \log \frac{\pi_\theta(y_w|x)}{\pi_{ref}(y_w|x)} - \log \frac{\pi_\theta(y_l|x)}{\pi_{ref}(y_l|x)},

for a convex ``f`` (their table of losses from binary classification):

======================= ============================= ====================
registry name           :math:`f(\rho)`               known as
======================= ============================= ====================
gpo_logistic            :math:`\log(1 + e^{-\rho})`   DPO
gpo_hinge               :math:`\max(0, 1 - \rho)`     SLiC (on log-ratios)
gpo_squared             :math:`(\rho - 1)^2`          IPO
gpo_exponential         :math:`e^{-\rho}`
gpo_truncated_quadratic :math:`\max(0, 1 - \rho)^2`
gpo_savage              :math:`1 / (1 + e^{\rho})^2`
======================= ============================= ====================

The equivalences, with the exact scalings (tested in ``test_gpo.py``):

- ``gpo_logistic(beta) == dpo(beta)``.
- ``gpo_squared(beta) == beta**2 * (h - 1/beta)**2``, so with ``beta = 2 tau``
  it is ``4 tau**2 * ipo(tau)``: the same minimiser and gradient direction,
  a loss ``4 tau^2`` times IPO's.
- ``gpo_hinge(beta) == beta * max(0, 1/beta - h) == beta * slic(delta=1/beta)``.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import register_pytree, static_field
from jalign.objectives.margin import PAIRED_WITH_REFERENCE, MarginObjective
from jalign.objectives.registry import objective
from jalign.objectives.sequence import capped_exp


def _logistic(rho: Array) -> Array:
    return jax.nn.softplus(-rho)


def _hinge(rho: Array) -> Array:
    return jax.nn.relu(1.0 - rho)


def _squared(rho: Array) -> Array:
    return jnp.square(rho - 1.0)


def _exponential(rho: Array) -> Array:
    return capped_exp(-rho)


def _truncated_quadratic(rho: Array) -> Array:
    return jnp.square(jax.nn.relu(1.0 - rho))


def _savage(rho: Array) -> Array:
    # 1 / (1 + e^rho)^2 = sigmoid(-rho)^2, through log-sigmoid so e^rho never overflows.
    return jnp.exp(2.0 * jax.nn.log_sigmoid(-rho))


CONVEX_FUNCTIONS: dict[str, Callable[[Array], Array]] = {
    "logistic": _logistic,
    "hinge": _hinge,
    "squared": _squared,
    "exponential": _exponential,
    "truncated_quadratic": _truncated_quadratic,
    "savage": _savage,
}


def gpo_loss(margin: Array, *, beta, loss: str = "logistic") -> Array:
    r"""Per-example GPO loss :math:`f(\beta h)` for the convex function named ``loss``.

    .. math::
        \ell(h) = f(\beta h), \quad f \in \{\text{logistic}, \text{hinge}, \text{squared},
        \text{exponential}, \text{truncated\_quadratic}, \text{savage}\}

    Args:
      margin: ``[B]`` log-ratio margin ``h`` (chosen minus rejected).
      beta: scale of the margin (the regularisation strength).
      loss: name of ``f``, a key of :data:`CONVEX_FUNCTIONS` (static).

    Returns:
      ``[B]`` float32 losses.

    References:
      Tang et al., *Generalized Preference Optimization: A Unified Approach to
      Offline Alignment*, 2024, Sec. 2 (the GPO loss and its table of convex
      functions).
    """
    if loss not in CONVEX_FUNCTIONS:
        raise ValueError(f"unknown GPO loss {loss!r}; valid: {sorted(CONVEX_FUNCTIONS)}")
    return CONVEX_FUNCTIONS[loss](beta * jnp.asarray(margin, jnp.float32))


@register_pytree
class _GPO(MarginObjective):
    """A GPO objective, ``f(beta h)``; subclasses name their convex function ``f``.

    Needs pairs (chosen first) and reference log-probs; ``average``
    length-normalises the log-ratios.
    """

    convex: ClassVar[str] = "logistic"

    beta: float = 0.1
    average: bool = static_field(False)

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return gpo_loss(margin, beta=self.beta, loss=self.convex)


_CITATION = ("Tang et al. 2024, Generalized Preference Optimization: A Unified Approach to "
             "Offline Alignment, Sec. 2, GPO loss E[f(beta * h)] with f = ")


@objective("gpo_logistic", strength="beta", requires=PAIRED_WITH_REFERENCE,
           citation=_CITATION + "log(1 + exp(-x)) (= DPO)")
class GPOLogistic(_GPO):
    r"""GPO with the logistic loss :math:`\log(1 + e^{-\beta h})`; identical to DPO."""

    convex: ClassVar[str] = "logistic"


@objective("gpo_hinge", strength="beta", requires=PAIRED_WITH_REFERENCE,
           citation=_CITATION + "max(0, 1 - x) (= SLiC with delta = 1/beta, times beta)")
class GPOHinge(_GPO):
    r"""GPO with the hinge loss :math:`\max(0, 1 - \beta h)`; ``beta * slic(delta=1/beta)``.

    Also TRL's ``loss_type="hinge"``.
    """

    convex: ClassVar[str] = "hinge"


@objective("gpo_squared", strength="beta", requires=PAIRED_WITH_REFERENCE,
           citation=_CITATION + "(x - 1)^2 (= 4 tau^2 * IPO at beta = 2 tau)")
class GPOSquared(_GPO):
    r"""GPO with the squared loss :math:`(\beta h - 1)^2`; ``4 tau^2 * ipo(tau)`` at ``beta = 2 tau``."""

    convex: ClassVar[str] = "squared"


@objective("gpo_exponential", strength="beta", requires=PAIRED_WITH_REFERENCE,
           citation=_CITATION + "exp(-x)")
class GPOExponential(_GPO):
    r"""GPO with the exponential loss :math:`e^{-\beta h}`.

    The exponential is continued linearly beyond ``-beta h > EXP_CAP`` (see
    :func:`capped_exp`) so extreme margins stay finite.
    """

    convex: ClassVar[str] = "exponential"


@objective("gpo_truncated_quadratic", strength="beta", requires=PAIRED_WITH_REFERENCE,
           citation=_CITATION + "max(0, 1 - x)^2")
class GPOTruncatedQuadratic(_GPO):
    r"""GPO with the truncated quadratic loss :math:`\max(0, 1 - \beta h)^2`."""

    convex: ClassVar[str] = "truncated_quadratic"


@objective("gpo_savage", strength="beta", requires=PAIRED_WITH_REFERENCE,
           citation=_CITATION + "1 / (1 + exp(x))^2")
class GPOSavage(_GPO):
    r"""GPO with the Savage loss :math:`1 / (1 + e^{\beta h})^2 = \sigma(-\beta h)^2`.

    Non-convex in general but listed by the paper; bounded in ``[0, 1]``.
    """

    convex: ClassVar[str] = "savage"


def slic_loss(margin: Array, *, delta) -> Array:
    r"""Per-example SLiC calibration loss on the log-ratio margin.

    .. math::
        \ell(h) = \max(0, \delta - h)

    Args:
      margin: ``[B]`` margin ``h`` (chosen minus rejected log-ratio, or
        log-likelihood when the reference is zero).
      delta: the calibration margin :math:`\delta`.

    Returns:
      ``[B]`` float32 losses.

    References:
      Zhao et al., *SLiC-HF: Sequence Likelihood Calibration with Human
      Feedback*, 2023, the rank calibration term of the SLiC-HF loss.
    """
    return jax.nn.relu(delta - jnp.asarray(margin, jnp.float32))


@objective(
    "slic",
    strength=None,
    citation="Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback, "
    "calibration term max(0, delta - margin); on reference log-ratios as in GPO (Tang et al. 2024)",
    requires=PAIRED_WITH_REFERENCE,
)
class SLiC(MarginObjective):
    r"""SLiC-HF hinge calibration :math:`\max(0, \delta - h)` on the log-ratio margin ``h``.

    .. math::
        \ell = \max\left(0, \delta - \log\frac{\pi_\theta(y_w|x)}{\pi_{ref}(y_w|x)}
                             + \log\frac{\pi_\theta(y_l|x)}{\pi_{ref}(y_l|x)}\right)

    Differences from the paper, on purpose:

    - SLiC-HF calibrates the policy's own log-likelihoods (no reference) and
      adds a regulariser :math:`-\lambda \log \pi_\theta(y_{ref}|x)`. Here the
      margin is on log-ratios, as GPO unifies it; a batch whose reference
      log-probs are all zero gives the paper's reference-free term, and
      ``slic(delta=...) + lam * sft()`` adds the regulariser on the chosen
      response.
    - TRL's ``loss_type="hinge"`` is ``max(0, 1 - beta * h)``: that is
      ``gpo_hinge(beta) == beta * slic(delta=1/beta)``.

    Needs pairs (chosen first) and reference log-probs.
    """

    delta: float = 1.0
    average: bool = static_field(False)

    def margin_loss(self, margin: Array, lp: LogProbs) -> Array:
        return slic_loss(margin, delta=self.delta)
