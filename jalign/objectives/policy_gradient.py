"""Policy-gradient baselines with a reward: REINFORCE, RLOO, GRPO and PPO-clip without a value model.

Each one is online: its responses are a group of ``G`` samples per prompt from
the current policy (``G = 1`` for REINFORCE), each labelled with a judge's
scalar reward ``labels["reward"]`` ``[B, G]``. ``G`` is a static
hyperparameter (RLOO's ``k``, GRPO's ``group_size``) that the declaration
resolves on the instance, so the online loop and the tabular engine draw that
many.

One update per rollout. The behaviour policy of PPO's and GRPO's importance
ratio ``pi_theta / pi_old`` is the policy that sampled the batch; the online
loop takes one optimizer step per rollout (PPO's epochs and GRPO's
``num_iterations`` = 1, TRL's default), so ``pi_old`` is the current policy
without gradient: the ratio is 1 in value and its gradient is that of
``log pi``. The clipped surrogate (:func:`clipped_surrogate`) is exact for any
``pi_old`` and tested so; with one update per rollout clipping never binds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jalign.objectives.batch import Array, LogProbs
from jalign.objectives.core import LIST, SINGLE, Objective, Requirements, static_field
from jalign.objectives.declaration import POLICY, Sampling
from jalign.objectives.registry import objective
from jalign.objectives.sequence import label, lengths, log_ratios, masked_sum, policy_logps, require_reference


def _f32(x: Array) -> Array:
    return jnp.asarray(x, jnp.float32)


def kl_shaped_reward(reward: Array, log_ratio: Array, *, beta) -> Array:
    """The sequence reward with the KL penalty folded in: ``r - beta log(pi/pi_ref)``, ``[B, G]``.

    The RLHF reward ``R(x, y) = r(x, y) - beta log pi(y|x)/pi_ref(y|x)`` of Ahmadian et al. 2024, as TRL's
    ``RLOOTrainer`` folds the sequence KL into it.
    """
    return _f32(reward) - beta * _f32(log_ratio)


def leave_one_out_advantage(rewards: Array) -> Array:
    """``R_i - 1/(k-1) sum_{j != i} R_j`` within each group: ``[B, k] -> [B, k]`` (``k >= 2``).

    Ahmadian et al. 2024, *Back to Basics* (RLOO's baseline), as TRL's ``RLOOTrainer`` computes it.
    """
    rewards = _f32(rewards)
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"a leave-one-out baseline needs k >= 2 responses per prompt; got {rewards.shape=}")
    others = (jnp.sum(rewards, axis=1, keepdims=True) - rewards) / (k - 1)
    return rewards - others


def group_normalised_advantage(rewards: Array, *, eps: float = 1e-4) -> Array:
    """GRPO's outcome advantage ``(r_i - mean(r)) / (std(r) + eps)`` within each group, ``[B, G]``.

    Shao et al. 2024, Sec. 4.1.2 (outcome supervision). The standard deviation is the unbiased one
    plus ``eps = 1e-4``, as TRL's ``GRPOTrainer`` computes it (a group of equal
    rewards then has advantage 0, not 0/0).
    """
    rewards = _f32(rewards)
    g = rewards.shape[1]
    if g < 2:
        raise ValueError(f"a group-normalised advantage needs G >= 2 responses per prompt; got {rewards.shape=}")
    centred = rewards - jnp.mean(rewards, axis=1, keepdims=True)
    std = jnp.sqrt(jnp.sum(jnp.square(centred), axis=1, keepdims=True) / (g - 1))
    return centred / (std + eps)


def clipped_surrogate(logp: Array, old_logp: Array, advantage: Array, *, epsilon) -> Array:
    """PPO's clipped surrogate per token, as a loss (its negative).

    .. math::
        \\ell_t = -\\min\\left(\\rho_t A, \\mathrm{clip}(\\rho_t, 1 - \\epsilon, 1 + \\epsilon) A\\right),
        \\quad \\rho_t = \\exp(\\log\\pi_\\theta(y_t) - \\log\\pi_{old}(y_t))

    Args:
      logp: ``[B, G, T]`` log pi_theta per token (with gradient).
      old_logp: ``[B, G, T]`` log pi_old per token (a constant).
      advantage: ``[B, G]`` or ``[B, G, T]`` advantages (constants).
      epsilon: the clip range.

    Returns:
      ``[B, G, T]`` float32 losses.

    References:
      Schulman et al., *Proximal Policy Optimization Algorithms*, 2017, Eq. 7.
    """
    advantage = jax.lax.stop_gradient(_f32(advantage))
    if advantage.ndim == 2:
        advantage = advantage[..., None]
    ratio = jnp.exp(_f32(logp) - jax.lax.stop_gradient(_f32(old_logp)))
    clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
    return -jnp.minimum(ratio * advantage, clipped * advantage)


def k3_kl(logp: Array, ref_logp: Array) -> Array:
    """GRPO's per-token KL estimator ``pi_ref/pi - log(pi_ref/pi) - 1`` (>= 0), ``[B, G, T]``.

    Shao et al. 2024, Eq. 4 (Schulman's unbiased "k3" estimator of KL(pi || pi_ref)).
    The log-ratio is clipped at +/-40 before the exponential so that extreme
    log-ratios give a large finite loss instead of inf.
    """
    delta = jnp.clip(_f32(ref_logp) - _f32(logp), -40.0, 40.0)
    return jnp.exp(delta) - delta - 1.0


def _token_mean(values: Array, lp: LogProbs) -> Array:
    """``1/|o_i| sum_t`` per response: ``[B, G, T] -> [B, G]``."""
    return masked_sum(values, lp) / lengths(lp)


def _reward_metrics(reward: Array, log_ratio: Array) -> dict[str, Array]:
    return {"reward": jnp.mean(reward, axis=1), "logratio": jax.lax.stop_gradient(jnp.mean(log_ratio, axis=1))}


GROUP_WITH_REWARD = Requirements(responses=LIST, reference=True, labels=("reward",))


@objective(
    "reinforce",
    strength="beta",
    citation="Williams 1992 REINFORCE, as the RLHF baseline of Ahmadian et al. 2024, Back to Basics: "
    "Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs (KL penalty in the "
    "reward); beta = 0.05 as TRL's RLOOConfig",
    requires=Requirements(responses=SINGLE, reference=True, labels=("reward",)),
    sampling=Sampling(responses=(POLICY,), labels=("reward",)),
)
class REINFORCE(Objective):
    """REINFORCE on the KL-shaped reward, without a baseline: one sample per prompt.

    .. math::
        \\ell = -\\mathrm{sg}\\left(r(x, y) - \\beta \\log\\frac{\\pi(y|x)}{\\pi_{ref}(y|x)}\\right) \\log \\pi(y|x),
        \\quad y \\sim \\mathrm{sg}(\\pi)

    Its expected gradient is the gradient of ``E_pi[r] - beta KL(pi || ref)``,
    whose maximiser is ``pi ∝ ref exp(r / beta)``. Ahmadian et al.'s
    "REINFORCE with baseline" subtracts a moving average of past rewards, which
    is state across steps; a pure objective has none, so that variant is RLOO's
    (:class:`RLOO`, the baseline from the other samples of the same prompt).
    Needs ``labels["reward"]`` ``[B, 1]`` and reference log-probs.
    """

    beta: float = 0.05

    def compute(self, lp: LogProbs):
        ratio = log_ratios(lp)
        shaped = kl_shaped_reward(label(lp, "reward"), ratio, beta=self.beta)
        losses = -jax.lax.stop_gradient(shaped[:, 0]) * policy_logps(lp)[:, 0]
        return losses, _reward_metrics(_f32(label(lp, "reward")), ratio)


@objective(
    "rloo",
    strength="beta",
    citation="Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization for Learning "
    "from Human Feedback in LLMs (REINFORCE Leave-One-Out), transcribed from TRL's RLOOTrainer (the paper's "
    "equation was not read here); k = 2 and beta = 0.05 as TRL's RLOOConfig",
    requires=GROUP_WITH_REWARD,
    sampling=Sampling(responses=(POLICY,), labels=("reward",), group="k"),
)
class RLOO(Objective):
    """RLOO: REINFORCE with each sample's baseline the mean reward of the prompt's other ``k - 1`` samples.

    .. math::
        \\ell = -\\frac{1}{k}\\sum_{i=1}^{k} \\mathrm{sg}\\left(R(y_i) - \\frac{1}{k-1}\\sum_{j \\ne i} R(y_j)\\right)
        \\log \\pi(y_i|x), \\quad R(y) = r(x, y) - \\beta \\log\\frac{\\pi(y|x)}{\\pi_{ref}(y|x)}

    with ``y_1..y_k ~ sg(pi)``. The baseline does not depend on ``y_i``, so
    the expected gradient is REINFORCE's: that of ``E_pi[r] - beta KL(pi || ref)``.
    ``k`` is static (it sets the batch's shape). Needs ``labels["reward"]``
    ``[B, k]`` and reference log-probs.
    """

    beta: float = 0.05
    k: int = static_field(2)

    def compute(self, lp: LogProbs):
        ratio = log_ratios(lp)
        advantage = leave_one_out_advantage(kl_shaped_reward(label(lp, "reward"), ratio, beta=self.beta))
        losses = -jnp.mean(jax.lax.stop_gradient(advantage) * policy_logps(lp), axis=1)
        return losses, {**_reward_metrics(_f32(label(lp, "reward")), ratio),
                        "advantage_abs": jnp.mean(jnp.abs(advantage), axis=1)}


@objective(
    "grpo",
    strength="beta",
    citation="Shao et al. 2024, DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language "
    "Models, Eq. 3 (clipped objective with the KL of Eq. 4) and Sec. 4.1.2 (group-normalised outcome "
    "advantage); beta = 0.04, 64 outputs per question and one update per exploration stage from Sec. 4.2; "
    "epsilon (not stated there) = 0.2 as Schulman et al. 2017 and TRL's GRPOConfig",
    requires=GROUP_WITH_REWARD,
    sampling=Sampling(responses=(POLICY,), labels=("reward",), group="group_size"),
)
class GRPO(Objective):
    """GRPO: PPO's clipped surrogate with a group-normalised advantage and a per-token KL penalty.

    .. math::
        \\ell = -\\frac{1}{G}\\sum_{i=1}^{G}\\frac{1}{|o_i|}\\sum_{t}\\left[\\min\\left(\\rho_{i,t}\\hat A_i,
        \\mathrm{clip}(\\rho_{i,t}, 1-\\epsilon, 1+\\epsilon)\\hat A_i\\right)
        - \\beta\\left(\\frac{\\pi_{ref}}{\\pi} - \\log\\frac{\\pi_{ref}}{\\pi} - 1\\right)_{i,t}\\right],
        \\quad \\hat A_i = \\frac{r_i - \\mathrm{mean}(r)}{\\mathrm{std}(r)}

    ``rho = pi_theta / pi_old`` with ``pi_old`` the sampling policy (one
    update per rollout, see the module docstring; DeepSeekMath-RL itself
    takes "a single update following each exploration stage", Sec. 4.2).
    ``group_size`` is static.
    Needs ``labels["reward"]`` ``[B, G]`` and reference log-probs.
    """

    beta: float = 0.04
    epsilon: float = 0.2
    group_size: int = static_field(64)

    def compute(self, lp: LogProbs):
        reward = _f32(label(lp, "reward"))
        advantage = group_normalised_advantage(reward)
        surrogate = clipped_surrogate(lp.policy, jax.lax.stop_gradient(lp.policy), advantage, epsilon=self.epsilon)
        kl = k3_kl(lp.policy, require_reference(lp))
        per_response = _token_mean(surrogate + self.beta * kl, lp)
        return jnp.mean(per_response, axis=1), {
            **_reward_metrics(reward, log_ratios(lp)), "kl": jax.lax.stop_gradient(jnp.mean(_token_mean(kl, lp), 1))}


@objective(
    "ppo_clip",
    strength="beta",
    citation="Schulman et al. 2017, Proximal Policy Optimization Algorithms, Eq. 7 (epsilon = 0.2, Sec. 6.1), "
    "with the leave-one-out advantage of the KL-shaped reward of Ahmadian et al. 2024 in place of a value "
    "model; k = 2 and beta = 0.05 as TRL's RLOOConfig",
    requires=GROUP_WITH_REWARD,
    sampling=Sampling(responses=(POLICY,), labels=("reward",), group="k"),
)
class PPOClip(Objective):
    """PPO-clip without a value model: the clipped surrogate with a leave-one-out baseline advantage.

    .. math::
        \\ell = -\\frac{1}{k}\\sum_{i}\\frac{1}{|y_i|}\\sum_t \\min\\left(\\rho_{i,t} A_i,
        \\mathrm{clip}(\\rho_{i,t}, 1-\\epsilon, 1+\\epsilon) A_i\\right), \\quad
        A_i = R(y_i) - \\frac{1}{k-1}\\sum_{j\\ne i} R(y_j)

    with ``R`` the KL-shaped reward of :class:`RLOO`. The advantage is one
    sequence-level value for every token of a response (no critic, no GAE).
    ``rho`` is to the sampling policy (one update per rollout). ``k`` is
    static. Needs ``labels["reward"]`` ``[B, k]`` and reference log-probs.
    """

    beta: float = 0.05
    epsilon: float = 0.2
    k: int = static_field(2)

    def compute(self, lp: LogProbs):
        ratio = log_ratios(lp)
        advantage = leave_one_out_advantage(kl_shaped_reward(label(lp, "reward"), ratio, beta=self.beta))
        surrogate = clipped_surrogate(lp.policy, jax.lax.stop_gradient(lp.policy), advantage, epsilon=self.epsilon)
        return jnp.mean(_token_mean(surrogate, lp), axis=1), _reward_metrics(_f32(label(lp, "reward")), ratio)
