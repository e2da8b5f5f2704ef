"""Tabular preference models: maximum-likelihood Bradley-Terry rewards and GPM embeddings.

The exact counterparts of the preference-model heads of
:mod:`jalign.objectives.preference_models`. A tabular model has one parameter
per action (a reward, or a ``2 * rank`` embedding), and it is fitted to a
preference matrix ``P`` by minimising **the same objective the trainer uses**
(``bt_reward()`` or ``gpm(tau=...)``) on the batch of every ordered pair
``(i, j)``, ``i != j``, with the soft label ``P[i, j]`` and equal
``labels["example_weight"]``: the population cross-entropy

.. math::
    \\mathcal{L} = \\frac{1}{K(K-1)} \\sum_{i \\ne j}
      -P_{ij} \\log \\sigma(z_{ij}) - (1 - P_{ij}) \\log \\sigma(-z_{ij}),

with ``z_ij = r_i - r_j`` (BT) or ``<R v_i, v_j> / tau`` (GPM). Its floor is
the mean binary entropy of ``P``, reached only by a model that reproduces
``P`` exactly. Minimisation is L-BFGS (optax) under ``lax.while_loop``.

A BT model orders the actions, so on a non-transitive ``P`` it gets at least
one pair of every cycle wrong (its best accuracy on a 3-cycle is 2/3; its
maximum-likelihood fit there is all-equal rewards); a rank-``r`` GPM
represents any skew-symmetric logit matrix of rank ``<= 2r``, e.g. every
3-cycle with ``r = 1``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jalign.objectives import LogProbs, bt_reward, gpm
from jalign.objectives.preference_models import skew_product
from jalign.tabular.policies import Array

TIE = 1e-5  # |logit| at or below this is a tie (half right); |P - 1/2| at or below it an undecided pair


@dataclasses.dataclass(frozen=True)
class PreferenceFit:
    """A fitted tabular preference model (a ``[K, K]`` input drops the context axis ``C``).

    Attributes:
      params: ``[C, K]`` rewards (mean 0 per context) or ``[C, K, 2 rank]`` embeddings.
      logits: ``[C, K, K]`` the model's logit of ``P(i ≻ j)`` (skew-symmetric).
      accuracy: ``[C]`` :func:`pairwise_accuracy` of ``logits`` on ``P``.
      logloss: ``[C]`` the objective's loss at ``params`` (population cross-entropy).
      entropy: ``[C]`` the loss's floor, the mean binary entropy of ``P``.
      grad_norm: ``[C]`` gradient norm at ``params`` (convergence check).
    """

    params: Array
    logits: Array
    accuracy: Array
    logloss: Array
    entropy: Array
    grad_norm: Array

    @property
    def probs(self) -> Array:
        """The model's preference matrix ``sigmoid(logits)``."""
        return jax.nn.sigmoid(self.logits)


jax.tree_util.register_dataclass(
    PreferenceFit, data_fields=[f.name for f in dataclasses.fields(PreferenceFit)], meta_fields=[])


def ordered_pairs(num_actions: int) -> tuple[np.ndarray, np.ndarray]:
    """``(first, second)`` indices of every ordered pair ``i != j``, each ``[K (K - 1)]``."""
    return np.nonzero(~np.eye(num_actions, dtype=bool))


def pair_weights(preference: Array, weights: Array | None = None) -> Array:
    """``[..., K, K]`` weights of the ordered pairs: ``weights``, or 1 off the diagonal."""
    if weights is None:
        return jnp.broadcast_to(1.0 - jnp.eye(preference.shape[-1], dtype=jnp.float32), preference.shape)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != preference.shape:
        raise ValueError(f"weights must match the preference matrix; got {weights.shape=}, {preference.shape=}")
    return weights


def preference_batch(preference: Array, scores: Array, weights: Array | None = None) -> LogProbs:
    """The preference-model batch of every ordered pair of actions, with soft labels.

    Args:
      preference: ``[K, K]`` preference matrix.
      scores: ``[K]`` rewards or ``[K, D]`` embeddings, one per action.
      weights: optional ``[K, K]`` weight of each ordered pair (e.g. comparison
        counts; 0 leaves a pair out); equal weights if ``None``.

    Returns:
      ``LogProbs`` with no log-probs, ``scores`` ``[B, 2]`` or ``[B, 2, D]``
      (``B = K (K - 1)``), ``labels["preference"] = P[i, j]`` and
      ``labels["example_weight"]`` the normalised pair weights.
    """
    first, second = ordered_pairs(preference.shape[-1])
    weight = pair_weights(preference, weights)[first, second]
    labels = {"preference": jnp.asarray(preference, jnp.float32)[first, second],
              "example_weight": weight / jnp.sum(weight)}
    return LogProbs(policy=None, mask=None, scores=jnp.stack([scores[first], scores[second]], axis=1),
                    labels=labels)


def pairwise_accuracy(logits: Array, preference: Array, weights: Array | None = None) -> Array:
    """Fraction of decided pairs ``i < j`` (``P_ij != 1/2``) whose logit has the sign of ``P_ij - 1/2``.

    A tie (``|logit| <= TIE``) counts as half right. Undecided pairs, and pairs
    whose ``weights`` are 0 in both orders, are left out, so a model that
    orders every strict preference of ``P`` scores 1. Decided pairs count
    equally.

    Args:
      logits: ``[..., K, K]`` model logits of ``P(i ≻ j)``.
      preference: ``[..., K, K]`` preference matrix.
      weights: optional ``[..., K, K]`` ordered-pair weights (see :func:`preference_batch`).

    Returns:
      ``[...]`` accuracy.
    """
    weights = pair_weights(preference, weights)
    compared = (weights + jnp.swapaxes(weights, -1, -2)) > 0
    upper = jnp.triu(jnp.ones(preference.shape[-2:], bool), k=1)
    decided = upper & compared & (jnp.abs(preference - 0.5) > TIE)
    right = jnp.where(jnp.abs(logits) <= TIE, 0.5, ((logits > 0) == (preference > 0.5)).astype(jnp.float32))
    return jnp.sum(decided * right, axis=(-2, -1)) / jnp.maximum(jnp.sum(decided, axis=(-2, -1)), 1)


def bt_best_accuracy(preference, weights=None, *, max_actions: int = 8) -> np.ndarray:
    """The best :func:`pairwise_accuracy` any Bradley-Terry reward reaches, by enumerating orders.

    A reward's accuracy depends only on the order it puts the actions in (ties
    never help), so this is ``1 - (minimum feedback arc set) / (decided
    pairs)``, found by trying all ``K!`` orders.

    Args:
      preference: ``[K, K]`` or ``[C, K, K]``; ``K <= max_actions``.
      weights: optional ordered-pair weights, as in :func:`pairwise_accuracy`.

    Returns:
      ``[]`` or ``[C]`` float64 best accuracy.
    """
    preference = jnp.asarray(preference, jnp.float32)
    num_actions = preference.shape[-1]
    if num_actions > max_actions:
        raise ValueError(f"enumerating {num_actions}! orders is too many; {preference.shape=}, {max_actions=}")
    ranks = jnp.array(list(itertools.permutations(range(num_actions))), jnp.float32)  # [K!, K]
    logits = ranks[:, :, None] - ranks[:, None, :]  # [K!, K, K]
    logits = jnp.reshape(logits, logits.shape[:1] + (1,) * (preference.ndim - 2) + logits.shape[1:])
    accuracy = pairwise_accuracy(logits, preference[None], None if weights is None else jnp.asarray(weights)[None])
    return np.asarray(jnp.max(accuracy, axis=0), np.float64)


def _minimise(loss, init, *, max_iter: int, tol: float):
    """L-BFGS from ``init`` until ``|grad| < tol`` or ``max_iter`` iterations."""
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    def going(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        grad_norm = optax.tree_utils.tree_norm(optax.tree_utils.tree_get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

    params, _ = jax.lax.while_loop(going, step, (init, solver.init(init)))
    return params


def _binary_entropy(preference: Array, weights: Array) -> Array:
    """Weighted mean over ordered pairs of ``H(P_ij)``: the cross-entropy floor."""
    entropy = jax.scipy.special.entr(preference) + jax.scipy.special.entr(1.0 - preference)  # 0 for hard labels
    return jnp.sum(weights * entropy) / jnp.sum(weights)


def _summary(preference, weights, params, loss, logits_of) -> PreferenceFit:
    value, grad = jax.value_and_grad(loss)(params)
    logits = logits_of(params)
    return PreferenceFit(params=params, logits=logits, accuracy=pairwise_accuracy(logits, preference, weights),
                         logloss=value, entropy=_binary_entropy(preference, weights),
                         grad_norm=jnp.linalg.norm(grad))


def _per_context(fit_one, preference: Array, weights: Array | None, key: Array | None = None, *args) -> PreferenceFit:
    """Applies a ``[K, K]`` fit to every context of ``[K, K]`` or ``[C, K, K]``.

    ``fit_one(preference, weights, key, *args)``; the key is split over
    contexts, ``args`` are shared.
    """
    preference = jnp.asarray(preference, jnp.float32)
    if preference.ndim not in (2, 3) or preference.shape[-1] != preference.shape[-2]:
        raise ValueError(f"preference must be [K, K] or [C, K, K]; got {preference.shape=}")
    weights = pair_weights(preference, weights)
    if preference.ndim == 2:
        return fit_one(preference, weights, key, *args)
    keys = None if key is None else jax.random.split(key, preference.shape[0])
    in_axes = (0, 0, None if key is None else 0) + (None,) * len(args)
    return jax.vmap(fit_one, in_axes=in_axes)(preference, weights, keys, *args)


def _centred(z: Array) -> Array:
    return z - jnp.mean(z)


def _bt_logits(rewards: Array) -> Array:
    return rewards[:, None] - rewards[None, :]


@functools.partial(jax.jit, static_argnames=("max_iter", "tol"))
def _fit_bt_one(preference: Array, weights: Array, key: None, *, max_iter: int, tol: float) -> PreferenceFit:
    objective = bt_reward()
    loss = lambda z: objective(preference_batch(preference, _centred(z), weights))[0]  # noqa: E731
    z = _minimise(loss, jnp.zeros(preference.shape[-1], jnp.float32), max_iter=max_iter, tol=tol)
    return _summary(preference, weights, _centred(z), loss, _bt_logits)


def fit_bt(preference: Array, weights: Array | None = None, *, max_iter: int = 500,
           tol: float = 1e-7) -> PreferenceFit:
    """Maximum-likelihood Bradley-Terry rewards of a preference matrix.

    Minimises ``jalign.objectives.bt_reward()`` on :func:`preference_batch`
    (every ordered pair, soft label ``P_ij``), i.e. the BT cross-entropy

    .. math::
        \\min_r \\sum_{i \\ne j} -P_{ij} \\log \\sigma(r_i - r_j),

    which is convex; the gauge is pinned by fitting ``z`` and returning
    ``r = z - mean(z)``. The minimiser is finite when every ``P_ij`` is in
    ``(0, 1)`` (or the decided pairs are strongly connected); a 3-cycle gives
    all-equal rewards. Hard transitive labels have no finite maximiser: the
    rewards then grow until ``max_iter``.

    Args:
      preference: ``[K, K]`` or ``[C, K, K]`` (one independent fit per context).
      weights: optional ordered-pair weights like ``preference`` (see
        :func:`preference_batch`); 0 leaves a pair, or a padding action, out.
      max_iter, tol: L-BFGS stopping rule (gradient norm).

    Returns:
      :class:`PreferenceFit` with ``params`` the ``[C, K]`` rewards.

    References:
      Bradley & Terry, *Rank analysis of incomplete block designs*, 1952;
      Zermelo 1929 (existence and uniqueness of the maximum-likelihood rewards).
    """
    return _per_context(functools.partial(_fit_bt_one, max_iter=max_iter, tol=tol), preference, weights)


@functools.partial(jax.jit, static_argnames=("rank", "restarts", "max_iter", "tol"))
def _fit_gpm_one(preference: Array, weights: Array, key: Array, tau, init_scale, *, rank: int, restarts: int,
                 max_iter: int, tol: float) -> PreferenceFit:
    objective = gpm(tau=tau)
    loss = lambda v: objective(preference_batch(preference, v, weights))[0]  # noqa: E731
    init = init_scale * jax.random.normal(key, (restarts, preference.shape[-1], 2 * rank), jnp.float32)
    candidates = jax.vmap(lambda v0: _minimise(loss, v0, max_iter=max_iter, tol=tol))(init)
    best = candidates[jnp.argmin(jax.vmap(loss)(candidates))]
    logits_of = lambda v: skew_product(v[:, None], v[None, :]) / tau  # noqa: E731
    return _summary(preference, weights, best, loss, logits_of)


def fit_gpm(preference: Array, rank: int, weights: Array | None = None, *, tau=1.0, restarts: int = 8,
            key: Array | None = None, init_scale=1.0, max_iter: int = 1000, tol: float = 1e-7) -> PreferenceFit:
    """General-preference-model embeddings of a preference matrix, best of several restarts.

    Minimises ``jalign.objectives.gpm(tau=tau)`` on :func:`preference_batch`
    over embeddings ``v`` ``[K, 2 rank]``, with model

    .. math::
        P(i \\succ j) = \\sigma(\\langle R v_i, v_j \\rangle / \\tau),

    ``R`` block-diagonal with ``rank`` blocks ``[[0, -1], [1, 0]]``. The logit
    matrix ``V R V^T / tau`` is any skew-symmetric matrix of rank ``<= 2 rank``,
    so ``rank >= K // 2`` fits every ``P`` with entries in ``(0, 1)`` exactly.
    The problem is non-convex: ``restarts`` L-BFGS runs from
    ``N(0, init_scale^2)`` embeddings (one key per context) and the lowest
    loss is kept. ``tau`` only rescales ``v``.

    Args:
      preference: ``[K, K]`` or ``[C, K, K]`` (one independent fit per context).
      rank: number of 2x2 blocks; the embedding dimension is ``2 rank``.
      weights: optional ordered-pair weights, as in :func:`fit_bt`.
      tau, init_scale: temperature of the objective and scale of the random starts.
      restarts: random starts per context (static).
      key: PRNG key (``PRNGKey(0)`` if ``None``).
      max_iter, tol: L-BFGS stopping rule per start.

    Returns:
      :class:`PreferenceFit` with ``params`` the ``[C, K, 2 rank]`` embeddings.

    References:
      Zhang et al., *General Preference Modeling with Preference
      Representations for Aligning Language Models*, 2024 (the
      skew-symmetric preference embedding).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1; got {rank=}")
    key = jax.random.PRNGKey(0) if key is None else key
    fit_one = functools.partial(_fit_gpm_one, rank=rank, restarts=restarts, max_iter=max_iter, tol=tol)
    return _per_context(fit_one, preference, weights, key, tau, init_scale)
