"""Preference games: preference matrices, Bradley-Terry rewards, exact expectations.

A preference matrix ``P`` is ``[C, K, K]`` with ``P[c, y, y'] = P(y ≻ y' | c)``
and ``P + P^T = 1`` (so the diagonal is 1/2). It need not be transitive. A
:class:`Game` bundles ``P`` with the reference policy and the context
distribution; it is a pytree, so a batch of games can be ``vmap``ped.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jalign.tabular.policies import Array, context_mean, log_policy


@dataclasses.dataclass(frozen=True)
class Game:
    """A tabular preference game.

    Attributes:
      preference: ``[C, K, K]`` P(y ≻ y' | x).
      log_ref: ``[C, K]`` reference log-probabilities.
      context_probs: ``[C]`` distribution of contexts.
    """

    preference: Array
    log_ref: Array
    context_probs: Array

    @property
    def num_actions(self) -> int:
        return self.log_ref.shape[-1]

    @property
    def num_contexts(self) -> int:
        return self.log_ref.shape[-2]


jax.tree_util.register_dataclass(
    Game, data_fields=["preference", "log_ref", "context_probs"], meta_fields=[])


def make_game(preference: Array, ref_logits: Array, context_probs: Array | None = None) -> Game:
    """Builds a :class:`Game`, adding a context axis to ``[K, K]`` / ``[K]`` inputs.

    Args:
      preference: ``[K, K]`` or ``[C, K, K]`` preference matrix.
      ref_logits: ``[K]`` or ``[C, K]`` reference logits (normalised here).
      context_probs: ``[C]``; uniform if ``None``.
    """
    preference = jnp.asarray(preference, jnp.float32)
    if preference.ndim == 2:
        preference = preference[None]
    log_ref = log_policy(ref_logits)
    if preference.shape[0] != log_ref.shape[0]:
        preference = jnp.broadcast_to(preference, (log_ref.shape[0],) + preference.shape[1:])
    if preference.shape[1:] != (log_ref.shape[1], log_ref.shape[1]):
        raise ValueError(f"preference must be [C, K, K] with K={log_ref.shape[1]}; got {preference.shape=}")
    num_contexts = log_ref.shape[0]
    if context_probs is None:
        context_probs = jnp.full((num_contexts,), 1.0 / num_contexts, jnp.float32)
    return Game(preference, log_ref, jnp.asarray(context_probs, jnp.float32))


def bradley_terry(rewards: Array, *, scale=1.0) -> Array:
    """Preference matrix of Bradley-Terry rewards: ``P[y, y'] = sigmoid((r_y - r_y') / scale)``.

    Args:
      rewards: ``[..., K]`` rewards.
      scale: temperature of the comparison (may be traced).

    Returns:
      ``[..., K, K]`` preference matrix (transitive).

    References:
      Bradley & Terry, *Rank analysis of incomplete block designs*, 1952.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    return jax.nn.sigmoid((rewards[..., :, None] - rewards[..., None, :]) / scale)


def random_game(key: Array, num_actions: int) -> Array:
    """A random, generally non-transitive preference matrix.

    The strict lower triangle is i.i.d. ``U(0, 1)``, the upper triangle is
    ``1 - P^T`` and the diagonal 1/2: the game of the EGPO paper's numerical
    simulations (Zhou et al. 2025).

    Returns:
      ``[K, K]`` preference matrix with ``P + P^T = 1``.
    """
    lower = jnp.tril(jax.random.uniform(key, (num_actions, num_actions)), k=-1)
    return lower + jnp.triu(1.0 - lower.T, k=1) + 0.5 * jnp.eye(num_actions)


def cyclic_game(num_actions: int, *, margin=0.4) -> Array:
    """A generalised rock-paper-scissors game: action ``y`` beats ``y + 1 (mod K)``.

    ``P[y, y+1] = 1/2 + margin``, ``P[y+1, y] = 1/2 - margin``, all other
    pairs 1/2. For odd ``K`` no action beats every other, so the Nash
    equilibrium is mixed.

    Returns:
      ``[K, K]`` non-transitive preference matrix with ``P + P^T = 1``.
    """
    beats_next = jnp.roll(jnp.eye(num_actions), 1, axis=1)
    return 0.5 + margin * (beats_next - beats_next.T)


def check_preference(preference: Array, *, atol=1e-5) -> None:
    """Raises ``ValueError`` unless ``0 <= P <= 1`` and ``P + P^T = 1``."""
    preference = jnp.asarray(preference)
    skew = jnp.max(jnp.abs(preference + jnp.swapaxes(preference, -1, -2) - 1.0))
    if skew > atol or jnp.min(preference) < 0 or jnp.max(preference) > 1:
        raise ValueError(f"not a preference matrix: max |P + P^T - 1| = {float(skew):.2e}, "
                         f"range [{float(jnp.min(preference)):.3f}, {float(jnp.max(preference)):.3f}]")


def win_probs(preference: Array, log_opponent: Array) -> Array:
    """``P(y ≻ pi') = sum_y' P(y ≻ y') pi'(y')`` for every action: ``[C, K]``."""
    return jnp.einsum("cyz,cz->cy", preference, jnp.exp(log_opponent))


def preference_prob(game: Game, log_pi: Array, log_opponent: Array) -> Array:
    """``P(pi ≻ pi') = E_x E_{y~pi, y'~pi'}[P(y ≻ y')]``: a scalar."""
    per_context = jnp.sum(jnp.exp(log_pi) * win_probs(game.preference, log_opponent), axis=-1)
    return context_mean(per_context, game.context_probs)
