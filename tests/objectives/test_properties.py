"""Properties every registered objective must have, whatever its formula.

Finite losses and gradients for sequence log-ratios (or preference-model
scores) up to +/-1e4 and for bf16 inputs; float32 losses; no gradient reaching
the reference. Batches are built
from each objective's declared requirements (``random_batches.batch_for``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jalign.objectives import registered

from random_batches import batch_for

NAMES = sorted(registered())


@functools.cache
def _value_and_grad(name):
    objective = registered()[name]()
    return jax.jit(jax.value_and_grad(lambda lp: objective(lp)[0]))


def _assert_finite(name, lp):
    loss, grad = _value_and_grad(name)(lp)
    assert loss.dtype == jnp.float32, f"{name}: loss dtype {loss.dtype}"
    assert np.isfinite(loss), f"{name}: loss {loss}"
    for path, leaf in jax.tree_util.tree_leaves_with_path(grad):
        assert np.all(np.isfinite(np.asarray(leaf, np.float32))), f"{name}: non-finite grad at {path}"
    return grad


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=12, deadline=None, derandomize=True)
@given(scale=st.one_of(st.floats(0.0, 50.0), st.sampled_from([1e2, 1e3, 1e4])), seed=st.integers(0, 2**20))
def test_finite_loss_and_gradients_for_extreme_log_ratios(name, scale, seed):
    """Log-ratios from 0 to 1e4 in both directions keep loss and gradients finite."""
    _assert_finite(name, batch_for(registered()[name]().requires, seed=seed, log_ratio_scale=scale))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=4, deadline=None, derandomize=True)
@given(scale=st.sampled_from([0.5, 20.0, 1e4]), seed=st.integers(0, 2**20))
def test_bf16_inputs_give_finite_float32_loss(name, scale, seed):
    """bf16 log-probs are accumulated in float32: finite loss and gradients."""
    lp = batch_for(registered()[name]().requires, seed=seed, log_ratio_scale=scale, dtype=jnp.bfloat16)
    _assert_finite(name, lp)


@pytest.mark.parametrize("name", [n for n in NAMES if registered()[n]().requires.reference])
def test_no_gradient_reaches_reference_log_probs(name):
    """Reference log-probs are constants: their gradient is exactly zero."""
    grad = _assert_finite(name, batch_for(registered()[name]().requires, seed=7, log_ratio_scale=3.0))
    assert np.all(np.asarray(grad.reference) == 0.0), name
