"""The tabular engine: objectives on softmax policies, one compiled program per figure.

:func:`batch_for` builds the batch an objective needs from a policy in a
:class:`~jalign.tabular.games.Game`:

- objectives with a :class:`~jalign.objectives.online.Sampling` declaration
  get their response slots, reference slot and oracle labels (``preference``,
  ``win_prob``, ``previous_logps``) from the declared sources, as exact
  expectations or samples;
- every other objective (DPO, IPO, SFT, KTO, listwise, ...) is offline: it
  gets chosen-first pairs from a ``[C, K, K]`` distribution ``data`` (an
  offline dataset, or :func:`~jalign.tabular.feeding.labelled_pairs` of some
  policy) with ``labels["preference"]`` from ``P``, or single responses /
  lists from a ``[C, K]`` / ``[C, K, ..., K]`` distribution, with any extra
  labels the caller passes.

:func:`train` runs ``steps`` optimizer steps under ``lax.scan``. Every
argument except the static ones is a traced pytree, so ``jax.vmap`` over
seeds, hyperparameters (inside the objective or the optimizer's learning
rate) and games, then ``jax.jit``, compiles a whole figure into one program.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jalign.objectives import LogProbs, Objective
from jalign.objectives.declaration import DATA, EXTRAPOLATED, MIXTURE, POLICY, PREVIOUS, REFERENCE, UNIFORM, Sampling
from jalign.tabular import feeding
from jalign.tabular.games import Game, win_probs
from jalign.tabular.policies import Array, geometric_mixture, log_policy, uniform


class Policies(NamedTuple):
    """The log-policies a batch can be drawn from, each ``[C, K]``.

    ``current`` carries the gradient; the others are constants. ``data`` is
    the dataset's response distribution (a ``"data"`` source: SPIN's SFT
    target), ``None`` unless an objective samples from it.
    """

    current: Array
    previous: Array
    extrapolated: Array
    data: Array | None = None


def sampling_of(objective: Objective) -> Sampling | None:
    """The objective's sampling declaration, or ``None`` for offline objectives."""
    return objective.sampling


def source_logps(source: str, objective: Objective, game: Game, policies: Policies) -> Array:
    """Log-probs ``[C, K]`` (without gradient) of a declared sampling source."""
    current = jax.lax.stop_gradient(policies.current)
    if source == POLICY:
        return current
    if source == REFERENCE:
        return game.log_ref
    if source == MIXTURE:
        return geometric_mixture(current, game.log_ref, sampling_of(objective).mixture)
    if source == PREVIOUS:
        return jax.lax.stop_gradient(policies.previous)
    if source == EXTRAPOLATED:
        return jax.lax.stop_gradient(policies.extrapolated)
    if source == UNIFORM:
        return uniform(game.num_contexts, game.num_actions)
    if source == DATA:
        return policies.data
    raise ValueError(f"unknown sampling source {source!r}")


def _online_distribution(objective: Objective, game: Game, policies: Policies):
    """Response distribution, labels and reference slot of an online objective."""
    sampling = sampling_of(objective)
    logps = {s: source_logps(s, objective, game, policies) for s in sampling.sources()}
    rho = game.context_probs
    slots = [jnp.exp(logps[s]) for s in sampling.responses]
    if len(slots) == 1:
        distribution = rho[:, None] * slots[0]
        expand = [lambda a: a]
    else:
        distribution = rho[:, None, None] * slots[0][:, :, None] * slots[1][:, None, :]
        num_actions = game.num_actions
        expand = [lambda a: jnp.broadcast_to(a[:, :, None], a.shape + (num_actions,)),
                  lambda a: jnp.broadcast_to(a[:, None, :], a.shape[:1] + (num_actions,) + a.shape[1:])]
    labels = {}
    if "preference" in sampling.labels:
        labels["preference"] = game.preference
    if "win_prob" in sampling.labels:
        wins = win_probs(game.preference, logps[sampling.opponent])
        labels["win_prob"] = jnp.stack([e(wins) for e in expand], axis=-1)
    if "previous_logps" in sampling.labels:
        previous = jax.lax.stop_gradient(policies.previous)
        labels["previous_logps"] = jnp.stack([e(previous) for e in expand], axis=-1)
    return distribution, labels, logps[sampling.reference]


def batch_for(objective: Objective, game: Game, policies: Policies, *, data: Array | None = None,
              labels: Mapping[str, Array] | None = None, key: Array | None = None,
              batch_size: int | None = None) -> LogProbs:
    """The exact population batch (``key is None``) or a sampled mini-batch for ``objective``.

    Args:
      objective: any objective; online ones declare ``sampling``.
      game: the preference game (``P``, reference, contexts).
      policies: current (with gradient), previous and extrapolated log-policies.
      data: for an online objective with a ``"data"`` source, the ``[C, K]``
        conditional distribution of the dataset's response to each context;
        for offline objectives, a ``[C, K, K]`` chosen-first pair distribution
        (``labels["preference"]`` is then ``P``), a ``[C, K]`` response or
        ``[C, K, ..., K]`` listwise distribution, or a function of the current
        log-policy (no gradient) returning one: an offline objective fed on-policy
        pairs, e.g. ``lambda lp: labelled_pairs(P, lp, lp, rho)``.
      labels: extra offline labels indexed like ``data`` (see ``feeding.per_response``).
      key, batch_size: draw ``batch_size`` i.i.d. examples instead of the population.
    """
    if sampling_of(objective) is not None:
        if sampling_of(objective).reset:
            raise ValueError(f"{objective.name} resets generation to prefixes of the dataset's responses; a tabular "
                             "response is one action, with no prefix to reset to")
        if DATA in sampling_of(objective).sources():
            if data is None:
                raise ValueError(f"{objective.name} samples the dataset's responses: pass data=, the [C, K] "
                                 "distribution of the dataset's response to each context")
            policies = policies._replace(data=jnp.log(jnp.asarray(data, jnp.float32)))
        distribution, labels, log_reference = _online_distribution(objective, game, policies)
    elif data is None:
        raise ValueError(f"{objective.name} is offline: pass data=, a distribution over responses, pairs or lists")
    else:
        if callable(data):
            data = data(jax.lax.stop_gradient(policies.current))
        pair_labels = {"preference": game.preference} if data.ndim == 3 else {}
        distribution, labels, log_reference = data, {**pair_labels, **(labels or {})}, game.log_ref
    if key is None:
        return feeding.exact_batch(policies.current, log_reference, distribution, labels=labels)
    return feeding.sampled_batch(key, policies.current, log_reference, distribution, batch_size, labels=labels)


def loss_and_grad(objective: Objective, game: Game, logits: Array, policies: Policies, **batch_kwargs):
    """``(loss, grad)`` of the objective's (exact or sampled) loss w.r.t. the logits."""

    def loss_fn(theta):
        current = log_policy(theta)
        batch = batch_for(objective, game, policies._replace(current=current), **batch_kwargs)
        return objective(batch)[0]

    return jax.value_and_grad(loss_fn)(logits)


def sampling_sources(objective: Objective) -> tuple[str, ...]:
    """Every source an objective's declaration uses (``()`` for offline objectives)."""
    sampling = sampling_of(objective)
    return () if sampling is None else sampling.sources()


def _step_grads(objective, game, optimizer, logits, opt_state, previous, batch_kwargs):
    """Gradient of one step; extragradient objectives first take the half-step."""
    policies = Policies(log_policy(logits), log_policy(previous), log_policy(logits))
    if EXTRAPOLATED in sampling_sources(objective):
        _, half_grads = loss_and_grad(objective, game, logits, policies, **batch_kwargs)
        half_updates, _ = optimizer.update(half_grads, opt_state, logits)
        half = optax.apply_updates(logits, half_updates)
        policies = policies._replace(extrapolated=log_policy(half))
    return loss_and_grad(objective, game, logits, policies, **batch_kwargs)


def train(objective: Objective, game: Game, logits: Array, optimizer: optax.GradientTransformation, *,
          steps: int, data: Array | None = None, labels: Mapping[str, Array] | None = None,
          key: Array | None = None, batch_size: int | None = None,
          inner_steps: int = 1, record: Callable[[Array], Mapping[str, Array]] | None = None):
    """Optimises softmax logits on an objective for ``steps`` steps under ``lax.scan``.

    The previous iterate (for ``"previous"`` sources: SPPO, INPO) is refreshed
    to the current policy every ``inner_steps`` steps. ``"extrapolated"``
    sources (EGPO) take an optimizer half-step from the current logits with
    the current policy as opponent (its optimizer state is discarded), then the
    real step uses the gradient at the current logits against the half-step policy.

    Args:
      objective: the objective (a pytree; its hyperparameters may be traced).
      game: the preference game.
      logits: ``[C, K]`` initial logits.
      optimizer: an optax transformation (its learning rate may be traced).
      steps: number of steps (static).
      data: offline distribution over responses, pairs or lists (or a function of
        the current log-policy returning one), for offline objectives; the
        ``[C, K]`` dataset response distribution for a ``"data"`` source (SPIN).
      labels: extra offline labels indexed like ``data``.
      key: PRNG key: sample mini-batches of ``batch_size``; ``None`` for exact populations.
      inner_steps: steps per previous-iterate refresh (static).
      record: ``log_pi [C, K] -> {name: scalar}`` evaluated after every step.

    Returns:
      ``(final_logits, history)``: history maps ``"loss"`` and the recorded
      names to ``[steps]`` arrays.
    """
    logits = jnp.asarray(logits, jnp.float32)
    sample = key is not None
    if sample and batch_size is None:
        raise ValueError("sampled training (key=...) needs batch_size")
    carry0 = (logits, optimizer.init(logits), logits, key if sample else jax.random.PRNGKey(0))

    def step(carry, t):
        params, opt_state, previous, rng = carry
        previous = jnp.where(t % inner_steps == 0, params, previous)
        rng, sub = jax.random.split(rng)
        batch_kwargs = {"data": data, "labels": labels, "key": sub if sample else None, "batch_size": batch_size}
        loss, grads = _step_grads(objective, game, optimizer, params, opt_state, previous, batch_kwargs)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        history = {"loss": loss, **(record(log_policy(params)) if record else {})}
        return (params, opt_state, previous, rng), history

    (final, *_), history = jax.lax.scan(step, carry0, jnp.arange(steps))
    return final, history
