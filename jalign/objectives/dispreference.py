r"""D2O: alignment from human negatives only, with self-generated responses as anchors.

Duan et al., *Negating Negatives: Alignment with Human Negative Samples via
Distributional Dispreference Optimization*, EMNLP Findings 2024
(arXiv 2403.03419), Sec. 3.2, Eq. 3:

.. math::
    \mathcal{L}_{D^2O} = -\mathbb{E}_{(x, y_l)} \log\sigma\Big(
        \frac{\beta}{K} \sum_{i=1}^{K} \log\frac{\pi_\theta(y_i|x)}{\pi_{r^-}(y_i|x)}
        - \alpha \log\frac{\pi_\theta(y_l|x)}{\pi_{r^+}(y_l|x)}\Big),
    \qquad y_i \sim \pi_r(\cdot|x).

The ``K`` anchors ``y_i`` are sampled from the initial (SFT) model before
training, once per prompt, and ``y_l`` is the human-annotated negative; the
paper's experiments take both references to be that initial model, which is
the one reference jalign serves (``LogProbs.reference``). A batch is a list of
``G = K + 1`` responses per prompt: the ``K`` anchors first and the negative
last. In ranked records (``{"prompt", "responses", "scores"}``) that is the
negative with the lowest score; in a pair, the chosen response is a single
anchor (``K = 1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import LIST, Metrics, Objective, Requirements
from jalign.objectives.registry import objective
from jalign.objectives.sequence import log_ratios


def d2o_loss(anchor_log_ratios: Array, negative_log_ratio: Array, *, beta, alpha) -> Array:
    """Per-example D2O loss.

    .. math::
        \\ell = -\\log\\sigma\\Big(\\frac{\\beta}{K}\\sum_i h_i - \\alpha h_l\\Big)

    Args:
      anchor_log_ratios: ``[B, K]`` sequence log-ratios ``h_i`` of the self-generated anchors.
      negative_log_ratio: ``[B]`` sequence log-ratio ``h_l`` of the human negative.
      beta: weight of the anchors' mean log-ratio.
      alpha: weight of the negative's log-ratio.

    Returns:
      ``[B]`` float32 losses.

    References:
      Duan et al., *Negating Negatives*, 2024, Eq. 3.
    """
    anchors = jnp.mean(jnp.asarray(anchor_log_ratios, jnp.float32), axis=-1)
    return -jax.nn.log_sigmoid(beta * anchors - alpha * jnp.asarray(negative_log_ratio, jnp.float32))


@objective(
    "d2o",
    strength="beta",
    citation="Duan et al. 2024, Negating Negatives: Alignment with Human Negative Samples via Distributional "
    "Dispreference Optimization (arXiv 2403.03419), Eq. 3",
    requires=Requirements(responses=LIST, reference=True),
)
class D2O(Objective):
    """Distributional Dispreference Optimization over ``K`` anchors and one negative.

    Responses ``0..G-2`` are the anchors sampled from the reference model,
    response ``G-1`` the human negative. Defaults ``beta = alpha = 0.1`` are
    the paper's experimental setting (Sec. 4, the same for every method it
    compares, with ``K = 11`` anchors per prompt, a property of the data).
    """

    beta: float = 0.1
    alpha: float = 0.1

    def compute(self, lp: LogProbs) -> tuple[Array, Metrics]:
        ratios = log_ratios(lp)                                                 # [B, G]
        anchors, negative = ratios[:, :-1], ratios[:, -1]                       # [B, K], [B]
        losses = d2o_loss(anchors, negative, beta=self.beta, alpha=self.alpha)
        logits = self.beta * jnp.mean(anchors, axis=-1) - self.alpha * negative
        return losses, {"anchor_log_ratio": jnp.mean(anchors, axis=-1), "negative_log_ratio": negative,
                        "logits": logits, "accuracy": (logits > 0).astype(jnp.float32)}
