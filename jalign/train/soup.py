"""SALSA's reference: a weight-space average ("soup") of several checkpoints.

``model.reference_soup`` names local Hugging Face checkpoints (SALSA's
independently fine-tuned SFT models) and ``model.reference_soup_weights``
their mixing weights (uniform when empty). The provider's reference decision
is then ``"soup"``: a frozen model, like the ``"frozen"`` copy, whose
parameters are

.. math::

    \\theta_{ref} = \\sum_i w_i \\theta_i, \\qquad \\sum_i w_i = 1,

so every objective that reads a reference (log-probs, ``ref_kl``,
``policy_kl``, KTO's estimate, ...) reads the soup's. The policy itself
starts from ``model.hf_dir`` / ``model.arch`` as usual.

Each checkpoint is loaded tensor by tensor straight into the reference's
shardings (``load_hf`` with the run's mesh and rules) and added, weighted, to
an fp32 accumulator that lives in those same shardings; one checkpoint is on
device at a time besides the accumulator, and nothing is ever whole on one
device or host.

References:
  Chegini et al., *SALSA: Soup-based Alignment Learning for Stronger
  Adaptation in RLHF*, 2024 (arXiv:2411.01798), abstract and method: the
  reference of PPO's KL penalty is the weight-space average of two
  independently fine-tuned SFT models (the paper's method section, with its
  equation numbers, was not available to check; the uniform default follows
  the midpoint its OpenReview discussion, forum AN6PIiObp0, reports best).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.models import load_hf
from jalign.sharding import state_shardings


def soup_weights(directories: Sequence[str], weights: Sequence[float]) -> tuple[float, ...]:
    """The mixing weights: ``weights`` checked (one per checkpoint, >= 0, summing to 1), or uniform."""
    if len(directories) < 2:
        raise ValueError(f"model.reference_soup needs at least two checkpoints; got {list(directories)}")
    if not weights:
        return (1.0 / len(directories),) * len(directories)
    if len(weights) != len(directories) or min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"model.reference_soup_weights must be {len(directories)} non-negative numbers summing "
                         f"to 1 (one per model.reference_soup checkpoint); got {list(weights)}")
    return tuple(float(w) for w in weights)


def _values(state: nnx.State) -> dict[tuple, Any]:
    """Flat ``path -> array`` of a state (or ``path -> sharding`` of its shardings)."""
    return {path: var.get_value() if isinstance(var, nnx.Variable) else var
            for path, var in nnx.to_flat_state(state)}


def load_soup(directories: Sequence[str], weights: Sequence[float], like: nnx.State, *, mesh, rules: Mapping,
              precision: Mapping[str, str] | None = None) -> nnx.State:
    """The soup of ``directories`` with the structure, dtypes and shardings of ``like``.

    Args:
      directories: local Hugging Face checkpoints of one architecture.
      weights: their mixing weights (empty: uniform).
      like: the policy's trainable-parameter state (the reference slot's
        structure). Parameters that no checkpoint holds (a head the run
        adds) keep ``like``'s values, as a frozen copy of the policy would.
      mesh, rules: the run's mesh and logical-axis rules.
      precision: ``ModelConfig`` overrides the policy was loaded with.

    Raises:
      ValueError: naming the checkpoint and parameter that does not fit.
    """
    weights = soup_weights(directories, weights)
    shardings = _values(state_shardings(like, mesh, rules))
    targets = _values(like)
    total, covered, accumulate = None, None, None
    for directory, weight in zip(directories, weights):
        loaded = _values(nnx.state(load_hf(directory, mesh=mesh, rules=rules, **(precision or {})), nnx.Param))
        for path, value in loaded.items():
            if path not in targets or tuple(value.shape) != tuple(targets[path].shape):
                shape = None if path not in targets else tuple(targets[path].shape)
                raise ValueError(f"model.reference_soup {directory}: parameter {'.'.join(map(str, path))} "
                                 f"{tuple(value.shape)} does not fit the policy's {shape}")
        if covered is None:
            covered = set(loaded)
            into = {p: shardings[p] for p in covered}   # the accumulator lives in the reference's shardings
            total = jax.jit(lambda: {p: jnp.zeros(targets[p].shape, jnp.float32) for p in covered},
                            out_shardings=into)()
            accumulate = jax.jit(lambda acc, new, w: {p: acc[p] + w * jnp.asarray(new[p], jnp.float32) for p in acc},
                                 out_shardings=into, donate_argnums=0)
        elif set(loaded) != covered:
            raise ValueError(f"model.reference_soup {directory}: holds other parameters than {directories[0]}")
        total = accumulate(total, loaded, np.float32(weight))
        del loaded

    def finish(total, own):
        # jnp.copy: a head kept from the policy gets its own buffer (the step donates the policy's).
        return {p: total[p].astype(own[p].dtype) if p in total else jnp.copy(own[p]) for p in own}

    values = jax.jit(finish, out_shardings=shardings)(total, targets)
    return nnx.from_flat_state([(path, var.replace(values[path])) for path, var in nnx.to_flat_state(like)])
