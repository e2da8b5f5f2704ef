r"""f-DPO: DPO under an f-divergence constraint instead of the reverse KL.

With the constraint :math:`\beta D_f(\pi_\theta \| \pi_{ref})`, the optimal
policy satisfies :math:`r(x, y) = \beta f'(\pi(y|x) / \pi_{ref}(y|x)) + \text{const}`
(Wang et al. 2023, from the KKT conditions), and the Bradley-Terry likelihood of the
preferences becomes the f-DPO loss

.. math::
    \mathcal{L} = -\log \sigma\left(\beta f'(u_w) - \beta f'(u_l)\right), \qquad
    u = \frac{\pi_\theta(y|x)}{\pi_{ref}(y|x)} = e^{r}, \; r = \text{log-ratio}.

Only differences of :math:`f'` enter, so each divergence is implemented as
:math:`\psi(r) = f'(e^r) - f'(1)` (zero at the reference), written in a form
that stays finite for log-ratios of +/-1e4:

============== ================================ =========================================
divergence     :math:`f'(u)`                    :math:`\psi(r)` as computed
============== ================================ =========================================
``reverse_kl`` :math:`\log u + 1`               :math:`r` (DPO)
``forward_kl`` :math:`-1/u`                     :math:`-\mathrm{expm1}(-r)`
``js``         :math:`\log\frac{2u}{1+u}`       :math:`\log 2 + \log\sigma(r)`
``alpha``      :math:`(1 - u^{-\alpha})/\alpha` :math:`-\mathrm{expm1}(-\alpha r)/\alpha`
============== ================================ =========================================

The exponentials are :func:`~jalign.objectives.sequence.capped_expm1`: exact up to
an exponent of ``EXP_CAP = 50`` and continued linearly beyond, because the exact
:math:`e^{-r}` overflows float32 for :math:`r < -88`. ``forward_kl`` is the
``alpha = 1`` member of the alpha family, and ``alpha -> 0`` recovers
``reverse_kl``; the paper uses :math:`\alpha \in (0, 1)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import PAIR, Objective, Requirements, static_field
from jalign.objectives.sequence import capped_expm1
from jalign.objectives.metrics import pairwise_metrics
from jalign.objectives.registry import objective
from jalign.objectives.sequence import log_ratios, require_pairs

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")


def f_prime_shifted(log_ratio: Array, *, divergence: str, alpha=0.5) -> Array:
    r""":math:`f'(u) - f'(1)` at :math:`u = e^{r}` for the named divergence.

    Args:
      log_ratio: log-ratios ``r`` of any shape.
      divergence: one of :data:`DIVERGENCES` (static).
      alpha: the alpha-divergence parameter, used only by ``"alpha"``.

    Returns:
      float32 array shaped like ``log_ratio``; zero where ``r = 0``.
    """
    r = jnp.asarray(log_ratio, jnp.float32)
    if divergence == "reverse_kl":
        return r
    if divergence == "forward_kl":
        return -capped_expm1(-r)
    if divergence == "js":
        # log(2u / (1 + u)) = log 2 + log sigmoid(r), finite for any r.
        return jnp.log(2.0) + jax.nn.log_sigmoid(r)
    if divergence == "alpha":
        return -capped_expm1(-alpha * r) / alpha
    raise ValueError(f"unknown f-DPO divergence {divergence!r}; valid: {list(DIVERGENCES)}")


def fdpo_loss(chosen_log_ratio: Array, rejected_log_ratio: Array, *, beta, divergence: str = "reverse_kl",
              alpha=0.5) -> Array:
    r"""Per-example f-DPO loss.

    .. math::
        \ell = -\log\sigma\left(\beta f'\!\left(e^{r_w}\right) - \beta f'\!\left(e^{r_l}\right)\right)

    Args:
      chosen_log_ratio: ``[B]`` log-ratio ``r_w`` of the chosen response.
      rejected_log_ratio: ``[B]`` log-ratio ``r_l`` of the rejected response.
      beta: divergence-regularisation strength.
      divergence: one of :data:`DIVERGENCES` (static).
      alpha: alpha-divergence parameter in ``(0, 1)`` (``"alpha"`` only).

    Returns:
      ``[B]`` float32 losses.

    References:
      Wang et al., *Beyond Reverse KL: Generalizing Direct Preference
      Optimization with Diverse Divergence Constraints*, 2023, the f-DPO
      objective; f' per divergence from its table of f-divergences and the
      authors' reference implementation.
    """
    chosen = f_prime_shifted(chosen_log_ratio, divergence=divergence, alpha=alpha)
    rejected = f_prime_shifted(rejected_log_ratio, divergence=divergence, alpha=alpha)
    return jax.nn.softplus(-beta * (chosen - rejected))


@objective(
    "fdpo",
    strength="beta",
    citation="Wang et al. 2023, Beyond Reverse KL: Generalizing Direct Preference Optimization "
    "with Diverse Divergence Constraints, the f-DPO objective",
    requires=Requirements(responses=PAIR, reference=True),
)
class FDPO(Objective):
    r"""f-DPO: ``-log sigmoid(beta f'(u_w) - beta f'(u_l))`` for a named f-divergence.

    ``divergence`` (static) is one of ``reverse_kl`` (DPO), ``forward_kl``,
    ``js`` (Jensen-Shannon) or ``alpha`` (with hyperparameter ``alpha`` in
    ``(0, 1)``). Needs pairs (chosen first) and reference log-probs;
    ``average`` length-normalises the log-ratios.

    Metrics: the implicit rewards are ``beta * (f'(u) - f'(1))``, the paper's
    reward up to a constant, plus the raw log-ratios.
    """

    beta: float = 0.1
    alpha: float = 0.5
    divergence: str = static_field("reverse_kl")
    average: bool = static_field(False)

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"fdpo: unknown divergence {self.divergence!r}; valid: {list(DIVERGENCES)}")

    def compute(self, lp: LogProbs):
        ratios = log_ratios(lp, average=self.average)
        chosen, rejected = require_pairs(ratios)
        losses = fdpo_loss(chosen, rejected, beta=self.beta, divergence=self.divergence, alpha=self.alpha)
        rewards = self.beta * f_prime_shifted(ratios, divergence=self.divergence, alpha=self.alpha)
        metrics = pairwise_metrics(lp, rewards)
        metrics["logratio/chosen"] = jax.lax.stop_gradient(chosen)
        metrics["logratio/rejected"] = jax.lax.stop_gradient(rejected)
        return losses, metrics
