"""PPO with a learned critic: the clipped surrogate and clipped value loss on GAE advantages.

The RLHF form of Schulman et al. 2017 that TRL's ``PPOTrainer`` and the
DR-PO authors' ``Cornell-RL/drpo`` ``src/tldr/drpo.py`` train: per token
``t`` of a sampled response,

- the reward is the KL penalty ``-beta (log pi_old(y_t) - log pi_ref(y_t))``,
  plus the judge's score ``labels["reward"]`` at the last token;
- the critic's value ``V(x, y_<t)`` is ``extras["values"]``, a learned head
  on the policy's hidden state at the position predicting ``y_t``
  (``jalign.train.value_head``), with gradient;
- GAE (Schulman et al. 2016, Eq. 16) gives advantages and returns
  ``R_t = A_t + V_t``; the loss is the clipped surrogate plus ``vf_coef``
  times the clipped value loss.

One update per rollout: ``pi_old`` and ``V_old`` are the current policy and
critic without gradient (the online loop takes one optimizer step per
rollout), so the ratio is 1 and the value clip is at ``V_old = V``; neither
clip binds, and the clipped forms (exact for any ``pi_old``, ``V_old``) are
tested with other values. The authors take 4 epochs per rollout; jalign's
loop does not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import SINGLE, Objective, Requirements
from jalign.objectives.declaration import POLICY, Sampling
from jalign.objectives.policy_gradient import clipped_surrogate
from jalign.objectives.registry import objective
from jalign.objectives.sequence import extra, label, log_ratios, require_reference

VALUES = "values"  # the critic's per-token extra


def _f32(x: Array) -> Array:
    return jnp.asarray(x, jnp.float32)


def masked_whiten(values: Array, weights: Array, *, shift_mean: bool = True) -> Array:
    """``(v - mean) / sqrt(var + 1e-8)`` over the tokens with weight, ``[B, G, T]``; 0 elsewhere.

    The authors' ``whiten`` (``drpo.py``; TRL's ``masked_whiten``): a biased
    variance, and with ``shift_mean=False`` the mean is added back (rewards
    are rescaled, not centred).
    """
    values, weights = _f32(values), _f32(weights)
    count = jnp.maximum(jnp.sum(weights), 1e-12)
    mean = jnp.sum(values * weights) / count
    var = jnp.sum(jnp.square(values - mean) * weights) / count
    whitened = (values - mean) * jax.lax.rsqrt(var + 1e-8)
    return jnp.where(weights > 0, whitened if shift_mean else whitened + mean, 0.0)


def token_rewards(score: Array, token_log_ratio: Array, mask: Array, *, beta) -> Array:
    """``-beta log(pi/pi_ref)`` per token plus the score at each response's last token, ``[B, G, T]``.

    Args:
      score: ``[B, G]`` the judge's reward of each response.
      token_log_ratio: ``[B, G, T]`` ``log pi_old(y_t) - log pi_ref(y_t)``.
      mask: ``[B, G, T]`` response tokens (contiguous from 0).
    """
    mask = _f32(mask)
    is_last = mask * (1.0 - jnp.pad(mask[..., 1:], ((0, 0), (0, 0), (0, 1))))  # [B, G, T]
    return (-beta * _f32(token_log_ratio) + _f32(score)[..., None] * is_last) * mask


def gae(rewards: Array, values: Array, mask: Array, *, gamma, lam) -> tuple[Array, Array]:
    """Generalised advantage estimation per token: ``(advantages, returns)``, both ``[B, G, T]``.

    .. math::
        \\delta_t = r_t + \\gamma V_{t+1} - V_t, \\quad A_t = \\delta_t + \\gamma\\lambda A_{t+1},
        \\quad R_t = A_t + V_t

    with ``V`` and ``A`` zero past each response's last token (the episode
    ends there). Masked positions get 0.

    References:
      Schulman et al., *High-Dimensional Continuous Control Using Generalized
      Advantage Estimation*, 2016, Eq. 16; as the DR-PO authors' ``drpo.py``
      ("6. compute advantages and returns") and TRL's ``PPOTrainer`` loop it.
    """
    mask = _f32(mask)
    rewards, values = _f32(rewards) * mask, _f32(values) * mask
    next_values = jnp.pad(values[..., 1:], ((0, 0), (0, 0), (0, 1)))           # [B, G, T]
    next_mask = jnp.pad(mask[..., 1:], ((0, 0), (0, 0), (0, 1)))
    deltas = rewards + gamma * next_values - values

    def back(carry, step):
        delta, keep = step
        advantage = delta + gamma * lam * keep * carry
        return advantage, advantage

    steps = (jnp.moveaxis(deltas, -1, 0), jnp.moveaxis(next_mask, -1, 0))    # [T, B, G] each
    _, advantages = jax.lax.scan(back, jnp.zeros(deltas.shape[:-1], jnp.float32), steps, reverse=True)
    advantages = jnp.moveaxis(advantages, 0, -1) * mask
    return advantages, (advantages + values) * mask


def clipped_value_loss(values: Array, old_values: Array, returns: Array, *, clip) -> Array:
    """``0.5 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)`` per token, ``[B, G, T]``.

    References:
      The authors' ``drpo.py`` (``vf_losses1``, ``vf_losses2``), as OpenAI's
      ``lm-human-preferences`` and TRL's ``PPOTrainer``.
    """
    values, returns = _f32(values), jax.lax.stop_gradient(_f32(returns))
    old_values = jax.lax.stop_gradient(_f32(old_values))
    clipped = jnp.clip(values, old_values - clip, old_values + clip)
    return 0.5 * jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns))


def _row_weights(lp: LogProbs) -> Array:
    """``[B]`` example weights (padding rows of the loop's batch have 0); 1 without them."""
    weight = lp.labels.get("example_weight")
    return jnp.ones(lp.mask.shape[0], jnp.float32) if weight is None else _f32(weight)


@objective(
    "ppo",
    strength="beta",
    citation="Schulman et al. 2017, Proximal Policy Optimization Algorithms, Eq. 7 and 9 (clipped surrogate "
    "plus value loss), with GAE (Schulman et al. 2016, Eq. 16; 2017, Eq. 11-12) on per-token KL-penalised "
    "rewards as in the DR-PO authors' code (Cornell-RL/drpo src/tldr/drpo.py); defaults from its "
    "RewardHParams/PpoHParams: "
    "beta = kl_coef = 0.05, vf_coef = 0.1, cliprange = cliprange_value = 0.2, gamma = 1, lam = 0.95, "
    "whiten_rewards = True",
    requires=Requirements(responses=SINGLE, reference=True, labels=("reward",), extras=(VALUES,)),
    sampling=Sampling(responses=(POLICY,), labels=("reward",)),
)
class PPO(Objective):
    """PPO with a learned per-token critic, one sample per prompt.

    .. math::
        \\ell = \\frac{1}{N}\\sum_{b,t} \\max\\left(-\\hat A_t \\rho_t,
        -\\hat A_t\\,\\mathrm{clip}(\\rho_t, 1-\\epsilon, 1+\\epsilon)\\right)
        + c_v \\frac{1}{N}\\sum_{b,t} \\tfrac12 \\max\\left((V_t - R_t)^2,
        (\\mathrm{clip}(V_t, V^{old}_t \\pm \\epsilon_v) - R_t)^2\\right)

    ``N`` counts the batch's response tokens (the authors' token means);
    ``A, R = gae(r, V_old)`` of :func:`gae` on :func:`token_rewards`
    (whitened without centring when ``whiten_rewards``), ``\\hat A`` the
    advantages whitened over the batch's tokens. Whitening and ``N`` couple
    the batch's rows: each row's loss is its token sum scaled so that the
    batch mean is the token mean. Needs ``labels["reward"]`` ``[B, 1]``,
    reference log-probs and ``extras["values"]`` ``[B, 1, T]`` with gradient.
    Differences from the authors' code: their critic is a separate model
    initialised from the reward model, jalign's a head on the policy's
    trunk; they take 4 epochs per rollout, jalign one; they divide logits by
    the sampling temperature 0.7 before the log-softmax, jalign does not;
    they score a response without an EOS token -1 (``penalty_reward_value``),
    jalign takes the judge's reward as it is.
    """

    beta: float = 0.05
    vf_coef: float = 0.1
    epsilon: float = 0.2
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = True

    def compute(self, lp: LogProbs):
        mask, rows = _f32(lp.mask), _row_weights(lp)                            # [B, G, T], [B]
        weights = mask * rows[:, None, None]                                    # whitening's token weights
        values = _f32(extra(lp, VALUES))
        old_logp, old_values = jax.lax.stop_gradient(_f32(lp.policy)), jax.lax.stop_gradient(values)
        kl = old_logp - _f32(require_reference(lp))
        rewards = token_rewards(label(lp, "reward"), kl, mask, beta=self.beta)
        rewards = jnp.where(self.whiten_rewards, masked_whiten(rewards, weights, shift_mean=False), rewards)
        advantages, returns = gae(rewards, old_values, mask, gamma=self.gamma, lam=self.lam)
        advantages = masked_whiten(advantages, weights)
        surrogate = clipped_surrogate(lp.policy, old_logp, advantages, epsilon=self.epsilon)
        value_loss = clipped_value_loss(values, old_values, returns, clip=self.value_clip)
        # batch_mean divides by sum(rows); this scale turns its weighted row mean into the token mean.
        scale = jnp.sum(rows) / jnp.maximum(jnp.sum(weights), 1e-12)
        per_token = (surrogate + self.vf_coef * value_loss) * mask
        losses = jnp.sum(per_token, axis=(1, 2)) * scale                       # [B]
        row_tokens = jnp.maximum(jnp.sum(mask, axis=(1, 2)), 1.0)
        metrics = {
            "reward": _f32(label(lp, "reward"))[:, 0],
            "logratio": jax.lax.stop_gradient(log_ratios(lp)[:, 0]),
            "value_loss": jax.lax.stop_gradient(jnp.sum(value_loss * mask, axis=(1, 2)) / row_tokens),
            "value": jax.lax.stop_gradient(jnp.sum(values * mask, axis=(1, 2)) / row_tokens),
            "return": jax.lax.stop_gradient(jnp.sum(returns * mask, axis=(1, 2)) / row_tokens)}
        return losses, metrics
