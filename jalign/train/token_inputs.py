"""Inputs the provider computes inside the step, each as its authors construct it.

- KTO's reference point ``labels["kl_estimate"]``: the log-ratio of mismatched
  (prompt, completion) pairs of the batch.
- TGDPO's ``labels["guide_log_ratio"]``: a guide policy's per-token log-ratio
  against the reference.
- SparsePO's masks: the learned mask head ``extras["token_mask_logits"]`` and
  the activation-based ``extras["reference_token_mask"]``, both read from the
  reference model's per-layer hidden states.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jalign.models.layers import param
from jalign.models.scoring import Responses, encode_responses, frozen, token_logprobs

GUIDE_LABEL = "guide_log_ratio"
MASK_EXTRAS = ("token_mask_logits", "reference_token_mask")


def _rotate(batch: dict) -> dict:
    """Row ``b`` keeps its prompt and takes row ``b - 1``'s responses."""
    return {**batch, "response_tokens": jnp.roll(batch["response_tokens"], 1, axis=0),
            "response_mask": jnp.roll(batch["response_mask"], 1, axis=0)}


def mismatched_kl_estimate(policy: Any, reference: Any, batch: dict, *, impl: str = "auto") -> jax.Array:
    """KTO's KL estimate: the mean log-ratio of mismatched prompt/completion pairs, a constant.

    Prompt ``x_b`` is paired with completion ``y_{b-1}`` (TRL's ``KTOTrainer``
    rotates each batch's completions by one); the estimate is the mean over
    pairs of ``log pi(y_{b-1}|x_b) - log pi_ref(y_{b-1}|x_b)``. Pairs with a
    padding row on either side are left out (the KTO authors' HALOs code
    likewise averages over non-empty rows only). The objective clamps it at 0
    (``kto_reference_point``); no gradient flows through it, as in the paper.

    Args:
      policy, reference: decoders.
      batch: a collated batch with ``G = 1`` responses.

    Returns:
      Scalar float32.

    References:
      Ethayarajh et al., *KTO: Model Alignment as Prospect Theoretic
      Optimization*, 2024, Sec. 4.1; TRL ``trl/trainer/kto_trainer.py``
      (``KL_completion_ids``).
    """
    rotated = _rotate(batch)
    own = frozen(encode_responses(policy, rotated))
    ref = frozen(encode_responses(reference, rotated))
    targets = rotated["response_tokens"]
    ratio = (token_logprobs(own, targets, impl=impl).logprobs
             - token_logprobs(ref, targets, impl=impl).logprobs)               # [B, G, R]
    per_row = jnp.sum(ratio * own.target_mask, axis=(1, 2))                    # [B]
    weight = jnp.asarray(batch["labels"]["example_weight"], jnp.float32)
    valid = weight * jnp.roll(weight, 1) * jnp.any(own.target_mask, axis=(1, 2))
    return jax.lax.stop_gradient(jnp.sum(valid * per_row) / jnp.maximum(jnp.sum(valid), 1.0))


def guide_log_ratio(guide: Any, batch: dict, reference_logprobs: jax.Array, *, impl: str = "auto") -> jax.Array:
    """Per-token ``log pi_guide(y_t) - log pi_ref(y_t)`` ``[B, G, R]``, a constant.

    TGDPO's token reward is ``beta`` times this (the objective scales it by
    its own ``beta``, as the authors' trainer does with ``pref_beta``); the
    reference is the trained policy's reference, not a separate one.

    References:
      Zhu et al., *TGDPO*, 2025, Sec. 4; authors' code
      ``dvlab-research/TGDPO``, ``src/llamafactory/train/tgdpo/trainer.py``.
    """
    view = frozen(encode_responses(guide, batch))
    logprobs = token_logprobs(view, batch["response_tokens"], impl=impl).logprobs
    return jax.lax.stop_gradient((logprobs - reference_logprobs) * view.target_mask)


class TokenMaskHead(nnx.Module):
    """SparsePO's learned token mask over a reference model's per-layer hidden states.

    For each layer ``l``: a LayerNorm shared by all layers, a ``Linear(E, 1)``
    and a ReLU; the ``L`` outputs are mixed by a bias-free ``Linear(L, 1)``.
    The mixer's output is ``extras["token_mask_logits"]``; the objective
    applies the final ReLU, so the mask is in ``[0, inf)``. Weights start as
    ``N(0, 0.02)``, biases at 0, the norm at scale 1 and shift 0 (the
    authors' heads get the base model's ``_init_weights``); the authors'
    dropout is off in their default runs and is omitted. With that
    initialisation a model of very few layers can start with every mixer
    weight negative: the ReLU'd mask is then 0 with no gradient (the
    ``mask/density`` metric shows it).

    References:
      Christopoulou et al., *SparsePO*, 2024; authors' code
      ``huawei-noah/HEBO``, ``SparsePO/src/masks/mask_models.py``
      (``SimpleMaskAllLayers``, their default ``mask_model="simple_all"``).
    """

    def __init__(self, num_layers: int, hidden_size: int, *, rngs: nnx.Rngs):
        self.norm_scale = param(rngs, (hidden_size,), ("norm",), jnp.float32, init="ones")
        self.norm_bias = param(rngs, (hidden_size,), ("norm",), jnp.float32, init="zeros")
        self.layer_weight = nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_layers, hidden_size)),
                                      out_sharding=("layers", "embed"), eager_sharding=False)
        self.layer_bias = param(rngs, (num_layers,), ("layers",), jnp.float32, init="zeros")
        self.mixer = nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_layers,)),
                               out_sharding=("layers",), eager_sharding=False)

    def __call__(self, layer_states: jax.Array) -> jax.Array:
        """``[L, B, G, R, E]`` -> ``[B, G, R]`` mask logits (fp32)."""
        x = jnp.asarray(layer_states, jnp.float32)
        x = x - x.mean(-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5)
        x = x * self.norm_scale[...] + self.norm_bias[...]
        per_layer = jax.nn.relu(jnp.einsum("LBGRE,LE->LBGR", x, self.layer_weight[...])
                                + self.layer_bias[...][:, None, None, None])
        return jnp.einsum("LBGR,L->BGR", per_layer, self.mixer[...])


def add_token_mask_head(model: nnx.Module, *, rngs: nnx.Rngs) -> None:
    """Attaches a :class:`TokenMaskHead` sized for ``model`` as ``model.token_mask_head``."""
    model.token_mask_head = TokenMaskHead(model.cfg.num_layers, model.cfg.hidden_size, rngs=rngs)


def trainable_filter(*, lora: bool, heads: tuple[str, ...] = ()):
    """What the optimizer trains: every parameter, or LoRA adapters plus any added heads (by attribute name)."""
    if not lora:
        return nnx.Param
    if heads:
        return nnx.Any(nnx.LoRAParam, *(nnx.All(nnx.Param, nnx.PathContains(head)) for head in heads))
    return nnx.LoRAParam


def learned_token_mask(policy: nnx.Module, reference_view: Responses) -> jax.Array:
    """``[B, G, R]`` mask logits from the policy's head over the reference's layer states; 0 off the mask."""
    logits = policy.token_mask_head(reference_view.layers)
    return logits * reference_view.target_mask


def reference_token_mask(reference_view: Responses) -> jax.Array:
    """SparsePO's activation-based mask in ``[0, 1]``, ``[B, G, R]``, a constant.

    Per layer, the block output's mean over features is min-max rescaled to
    ``[0, 1]`` over each sequence's response tokens (the authors z-normalise
    first, an affine step that min-max undoes); the layers' maps are averaged
    and positions off the response are 0.

    This is a subset of the authors' activation set: they average four groups
    (MLP activations; attention q, k, v and outputs; seven residual-stream
    points per layer; logits), where jalign uses the residual stream at each
    block's output (their ``post_mlp`` points).

    References:
      Christopoulou et al., *SparsePO*, 2024; authors' code
      ``huawei-noah/HEBO``, ``SparsePO/src/trainers/mapo_trainer.py``
      (``apply_activation_mapping("zn_rescale")``).
    """
    mask = reference_view.target_mask                                           # [B, G, R]
    feature_mean = jnp.mean(jnp.asarray(reference_view.layers, jnp.float32), axis=-1)  # [L, B, G, R]
    low = jnp.min(jnp.where(mask, feature_mean, jnp.inf), axis=-1, keepdims=True)
    high = jnp.max(jnp.where(mask, feature_mean, -jnp.inf), axis=-1, keepdims=True)
    scaled = (feature_mean - low) / jnp.maximum(high - low, 1e-6)
    scaled = jnp.where(mask, jnp.clip(scaled, 0.0, 1.0), 0.0)
    return jax.lax.stop_gradient(jnp.mean(scaled, axis=0))
