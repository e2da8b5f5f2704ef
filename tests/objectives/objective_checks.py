"""Checks the objective family tests share: tracing over hyperparameters, gradient targets."""

import jax
import numpy as np


def assert_grid_matches_loop(loss, grid, lp):
    """``loss(hyperparameters..., lp)``: jit equals eager, and one vmapped call over the grid equals
    one jitted call per grid point. ``grid`` is a tuple of equal-length hyperparameter arrays."""
    jitted = jax.jit(loss)
    first = [values[0] for values in grid]
    np.testing.assert_allclose(jitted(*first, lp), loss(*first, lp), rtol=1e-6)
    one_by_one = np.stack([jitted(*point, lp) for point in zip(*grid)])
    vmapped = jax.jit(jax.vmap(loss, in_axes=(0,) * len(grid) + (None,)))(*grid, lp)
    np.testing.assert_allclose(vmapped, one_by_one, rtol=1e-6)


def assert_gradient_reaches_policy_only(total_loss, lp):
    """``total_loss(lp)`` (a scalar): zero gradient to the reference, finite non-zero to the policy."""
    grad = jax.jit(jax.grad(total_loss))(lp)
    assert np.all(np.asarray(grad.reference) == 0.0)
    assert np.all(np.isfinite(grad.policy)) and np.any(grad.policy != 0.0)
