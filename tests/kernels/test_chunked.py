"""The chunked XLA op against full logits (`reference_logprobs`)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jalign.kernels import TokenLogProbs, resolve_impl, sequence_logprobs
from kernel_problems import (assert_grads_close, assert_mixed_precision,
                             assert_outputs_close, make_problem, run)

# Small tiles so that every shape below spans several row and column blocks
# with ragged edges (V and N not multiples of the tiles). Most tests share
# the shape CANON so that jit compilations are reused across tests.
TILES = {"block_n": 16, "block_v": 64}
CANON = (37, 16, 203)


@pytest.mark.parametrize("shape,softcap", [
    (CANON, None), ((64, 16, 64), 30.0), ((5, 8, 300), None)])
def test_values_match_full_logits(shape, softcap):
    """fp32 values of all outputs equal log_softmax(h @ W + b) within 1e-5
    relative (naive full-logits implementation)."""
    prob = make_problem(sum(shape), *shape, scale=3.0)
    want = run(prob, "naive", softcap=softcap)
    got = run(prob, "chunked", softcap=softcap, **TILES)
    assert_outputs_close(got, want, rtol=1e-5, atol=1e-5)


def test_grads_match_full_logits():
    """Gradients of logprobs + entropy + ref_kl for hidden, weight and bias
    equal autodiff through soft-capped full logits (naive) within 1e-5."""
    prob = make_problem(7, *CANON, scale=3.0)
    assert_grads_close("chunked", prob, rtol=1e-5, softcap=20.0, **TILES)


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_extreme_logits(scale):
    """Logits of magnitude 1e3-1e4: values within 1e-5 relative and finite
    gradients matching autodiff of the naive log_softmax. Gradient tolerance
    2e-7 * scale: an fp32 logit of size `scale` carries an absolute rounding
    error of ~6e-8 * scale, which moves every probability (in both
    implementations) by that relative amount, and policy_kl's gradient
    p (log p - log q - KL) multiplies two factors that each carry it."""
    prob = make_problem(3, *CANON, scale=scale)
    want = run(prob, "naive")
    got = run(prob, "chunked", **TILES)
    assert_outputs_close(got, want, rtol=1e-5, atol=1e-5 * scale * 1e-2)
    assert_grads_close("chunked", prob, rtol=2e-7 * scale, **TILES)


def test_bf16_inputs():
    """bf16 hidden/weight: the fused op and the naive one both multiply in
    bf16 with fp32 accumulation, so values agree to 1e-4 relative; gradients
    (cast to bf16 like the inputs) to 1e-2 of the largest entry."""
    prob = make_problem(11, *CANON, dtype=jnp.bfloat16, scale=4.0)
    want = run(prob, "naive")
    got = run(prob, "chunked", **TILES)
    assert_outputs_close(got, want, rtol=1e-4, atol=1e-4)
    assert_grads_close("chunked", prob, rtol=1e-2, **TILES)


@pytest.mark.parametrize("impl", ["chunked", "naive"])
def test_bf16_hidden_with_fp32_weight(impl):
    """bf16 compute with fp32 parameters: the fused op and the naive one
    multiply in hidden's dtype (the weight cast to bf16), equal to fp32 math
    on the bf16-rounded weight; gradients in each operand's dtype."""
    assert_mixed_precision(impl, **({"block_n": 8, "block_v": 16}
                                    if impl == "chunked" else {}))


@pytest.mark.parametrize("mask", ["none", "empty", 1, 17])
def test_masks(mask):
    """Masked positions are 0; valid ones equal the naive values whatever the
    number of valid tokens (including none and a single one)."""
    prob = make_problem(5, *CANON, mask=mask)
    want = run(prob, "naive")
    got = run(prob, "chunked", **TILES)
    assert_outputs_close(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got.logprobs)[~np.asarray(prob["mask"])] == 0)


def test_leading_dims_jit_and_vmap():
    """[B, T, H] inputs, jit and vmap give the naive values reshaped."""
    prob = make_problem(2, 24, 8, 90)
    want = run(prob, "naive")
    batched = {k: (x.reshape(2, 3, 4, *x.shape[1:]) if x.shape[0] == 24
                   else x) for k, x in prob.items()}
    got = jax.jit(lambda p: run(p, "chunked", **TILES))(batched)
    chex.assert_shape(got.logprobs, (2, 3, 4))
    flat = jax.tree.map(lambda x: x.reshape(-1), got)
    assert_outputs_close(flat, want, rtol=1e-5, atol=1e-6)
    mapped = jax.vmap(lambda p: run(p, "chunked", **TILES),
                      in_axes=({k: (None if k in ("weight", "bias",
                                                  "ref_weight") else 0)
                                for k in batched},))(batched)
    assert_outputs_close(jax.tree.map(lambda x: x.reshape(-1), mapped),
                         want, rtol=1e-5, atol=1e-6)


def test_check_grads_finite_differences():
    """Reverse-mode gradients of the fused op agree with finite differences
    of the op itself (jax.test_util.check_grads)."""
    prob = make_problem(9, 6, 4, 40, scale=2.0, mask="none")

    def loss(h, w):
        out = run({**prob, "hidden": h, "weight": w}, "chunked", **TILES)
        return jnp.sum(out.entropy + out.logprobs)

    check_grads(loss, (prob["hidden"], prob["weight"]), order=1,
                modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def test_no_gradient_to_reference():
    """The reference head is a constant: its gradient is exactly zero."""
    prob = make_problem(4, 12, 8, 70)
    g = jax.jit(jax.grad(lambda rh: jnp.sum(run(
        {**prob, "ref_hidden": rh}, "chunked").ref_kl)))(prob["ref_hidden"])
    assert np.all(np.asarray(g) == 0)


def test_tdpo_sequential_kl_matches_full_logits():
    """TDPO's sequential KL (sum over response tokens of KL(pi_ref || pi))
    and the TDPO2 loss built on it equal the values from full logits:
    sum_v softmax(z_ref) (log_softmax(z_ref) - log_softmax(z)) computed here
    directly with jax.nn, independent of the kernels."""
    b, t, h, v, beta, alpha = 2, 12, 8, 130, 0.1, 0.5
    prob = make_problem(21, 2 * b * t, h, v)
    out = run(prob, "chunked", **TILES)
    dot = lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)
    z = dot(prob["hidden"], prob["weight"]) + prob["bias"]
    zr = dot(prob["ref_hidden"], prob["ref_weight"])
    logq = jax.nn.log_softmax(zr)
    kl_full = jnp.sum(jnp.exp(logq) * (logq - jax.nn.log_softmax(z)), -1)
    logp_full = jnp.take_along_axis(jax.nn.log_softmax(z),
                                    prob["targets"][:, None], 1)[:, 0]
    logr_full = jnp.take_along_axis(logq, prob["targets"][:, None], 1)[:, 0]
    mask = prob["mask"].reshape(2, b, t)

    def tdpo2(logp, logr, kl):  # chosen = group 0, rejected = group 1
        seq = lambda x: jnp.sum(jnp.where(mask, x.reshape(2, b, t), 0), -1)
        ratio, seq_kl = seq(logp - logr), seq(kl)
        margin = beta * (ratio[0] - ratio[1]) - alpha * (
            seq_kl[1] - jax.lax.stop_gradient(seq_kl[0]))
        return -jnp.mean(jax.nn.log_sigmoid(margin)), seq_kl

    loss, seq_kl = tdpo2(out.logprobs, logr_full, out.ref_kl)
    loss_full, seq_kl_full = tdpo2(logp_full, logr_full, kl_full)
    np.testing.assert_allclose(seq_kl, seq_kl_full, rtol=1e-5)
    np.testing.assert_allclose(loss, loss_full, rtol=1e-5)


def test_auto_picks_chunked_on_cpu_and_outputs_are_pytrees():
    """On CPU "auto" is the chunked op; unrequested extras are None leaves."""
    assert resolve_impl("auto") == {"tpu": "pallas_tpu", "gpu": "pallas_gpu"
                                    }.get(jax.default_backend(), "chunked")
    prob = make_problem(1, 8, 4, 20, ref=False)
    out = jax.jit(sequence_logprobs)(prob["hidden"], prob["weight"],
                                     prob["targets"], prob["mask"])
    assert isinstance(out, TokenLogProbs) and out.entropy is None
    assert len(jax.tree.leaves(out)) == 1


@pytest.mark.parametrize("kwargs,match", [
    ({"extras": ("bogus",)}, "unknown extras"),
    ({"extras": ("ref_kl",)}, "needs ref_hidden"),
    ({"extras": ("topk_mass",)}, "top_k"),
    ({"impl": "cuda"}, "impl must be"),
    ({"block_v": 0}, "block_v"),
])
def test_bad_arguments_raise(kwargs, match):
    """Invalid options raise ValueError naming the problem."""
    prob = make_problem(1, 8, 4, 20, ref=False, bias=False)
    with pytest.raises(ValueError, match=match):
        sequence_logprobs(prob["hidden"], prob["weight"], prob["targets"],
                          prob["mask"], **kwargs)


def test_bad_shapes_raise():
    """Mismatched shapes raise ValueError with the shapes in the message."""
    prob = make_problem(1, 8, 4, 20, ref=False, bias=False)
    with pytest.raises(ValueError, match="weight.shape"):
        sequence_logprobs(prob["hidden"], prob["weight"].T, prob["targets"],
                          prob["mask"])
    with pytest.raises(ValueError, match="targets.shape"):
        sequence_logprobs(prob["hidden"], prob["weight"], prob["targets"][1:],
                          prob["mask"])
    with pytest.raises(ValueError, match="ref_weight=None"):
        sequence_logprobs(prob["hidden"], prob["weight"], prob["targets"],
                          prob["mask"], ref_hidden=prob["hidden"])


@pytest.mark.slow
@settings(max_examples=20, deadline=None, derandomize=True)
@given(n=st.integers(1, 40), v=st.integers(4, 200), seed=st.integers(0, 99),
       block_v=st.sampled_from([16, 64]))
def test_random_shapes(n, v, seed, block_v):
    """Random N, V, tile width and ragged mask (hypothesis): values equal the
    naive full-logits values within 1e-5."""
    prob = make_problem(seed, n, 8, v, scale=3.0)
    assert_outputs_close(run(prob, "chunked", block_n=16, block_v=block_v),
                         run(prob, "naive"), rtol=1e-5, atol=1e-5)


def test_banned_tokens_with_infinite_bias():
    """A -inf bias bans tokens: logprobs and entropy stay finite and equal
    the full-logits values (entropy via jax.scipy.special.entr, 0 log 0 = 0),
    and so do the gradients of the entropy."""
    prob = make_problem(8, 20, 8, 90, ref=False)
    prob["bias"] = prob["bias"].at[::3].set(-jnp.inf)
    prob["targets"] = (prob["targets"] // 3) * 3 + 1  # targets not banned
    out = run(prob, "chunked", **TILES)
    logp = jax.nn.log_softmax(jnp.dot(
        prob["hidden"], prob["weight"],
        precision=jax.lax.Precision.HIGHEST) + prob["bias"])
    want = jnp.sum(jax.scipy.special.entr(jnp.exp(logp)), -1)
    np.testing.assert_allclose(out.entropy, jnp.where(prob["mask"], want, 0),
                               rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda h: jnp.sum(run({**prob, "hidden": h}, "chunked",
                                          **TILES).entropy))(prob["hidden"])
    assert np.all(np.isfinite(np.asarray(grad)))
