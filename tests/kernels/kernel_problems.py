"""Random problems and comparisons shared by the kernel tests.

The reference for every number is `reference_logprobs` (impl "naive"): full
``jax.nn.log_softmax(hidden @ W + b)`` logits, extras from their closed forms
over the whole vocabulary, gradients from plain autodiff.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jalign.kernels import sequence_logprobs

ALL_EXTRAS = ("entropy", "ref_kl", "policy_kl", "topk_mass", "topk_entropy",
              "log_prob_sq_sum")
FIELDS = ("logprobs",) + ALL_EXTRAS


def make_problem(seed, n, h, v, *, dtype=jnp.float32, scale=1.0, bias=True,
                 ref=True, mask="ragged"):
    """Inputs for `sequence_logprobs`; logits have magnitude about ``scale``.

    mask: "ragged" (random), "none" (all valid), "empty" (all masked) or an
    int (that many leading valid tokens).
    """
    k = jax.random.split(jax.random.key(seed), 8)
    norm = lambda key, shape, s: (s * jax.random.normal(key, shape)).astype(
        dtype)
    prob = {"hidden": norm(k[0], (n, h), 1.0),
            "weight": norm(k[1], (h, v), scale / np.sqrt(h)),
            "targets": jax.random.randint(k[2], (n,), 0, v)}
    if mask == "ragged":
        prob["mask"] = jax.random.bernoulli(k[3], 0.6, (n,))
    elif mask == "none":
        prob["mask"] = jnp.ones((n,), bool)
    elif mask == "empty":
        prob["mask"] = jnp.zeros((n,), bool)
    else:
        prob["mask"] = jnp.arange(n) < mask
    if bias:
        prob["bias"] = norm(k[4], (v,), scale * 0.3)
    if ref:
        prob["ref_hidden"] = norm(k[5], (n, h), 1.0)
        prob["ref_weight"] = norm(k[6], (h, v), scale / np.sqrt(h))
    return prob


def run(prob, impl, **kw):
    """Jitted `sequence_logprobs` on a problem dict (all extras if a ref
    exists)."""
    extras = ALL_EXTRAS if "ref_hidden" in prob else ("entropy",)
    kw = {"extras": extras, "top_k": 4, "impl": impl, **kw}
    return _run(prob, **kw)


@functools.partial(jax.jit, static_argnames=(
    "impl", "extras", "top_k", "softcap", "block_n", "block_v", "interpret"))
def _run(prob, **kw):
    p = dict(prob)
    return sequence_logprobs(p.pop("hidden"), p.pop("weight"),
                             p.pop("targets"), p.pop("mask"), **p, **kw)


def log_prob_sq_sum_reference(prob, *, softcap=None):
    """``log sum_v softmax(z)_v^2`` per token, 0 where masked, from full
    fp32 logits of the inputs upcast to fp32: `jax.nn` directly, not the
    kernels (nor their naive implementation)."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    z = jnp.dot(f32(prob["hidden"]), f32(prob["weight"]),
                precision=jax.lax.Precision.HIGHEST)
    if "bias" in prob:
        z = z + f32(prob["bias"])
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    logp = jax.nn.log_softmax(z)
    return jnp.where(prob["mask"], jax.nn.logsumexp(2.0 * logp, axis=-1),
                     0.0)


def mixed_precision_problem(seed, n, h, v):
    """bf16 hidden states (policy and reference) with fp32 weights and bias:
    bf16 compute with fp32 master parameters."""
    prob = make_problem(seed, n, h, v, scale=4.0)
    for key in ("hidden", "ref_hidden"):
        prob[key] = prob[key].astype(jnp.bfloat16)
    return prob


def mixed_precision_reference(prob):
    """Log-probs ``[N]`` (0 where masked) of `mixed_precision_problem`: the
    weight rounded to bf16 (the compute dtype), then fp32 products and sums
    with `jax.nn` directly (bf16 products are exact in fp32)."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    z = jnp.dot(f32(prob["hidden"]), f32(prob["weight"].astype(jnp.bfloat16)),
                precision=jax.lax.Precision.HIGHEST) + prob["bias"]
    logp = jax.nn.log_softmax(z)
    picked = jnp.take_along_axis(logp, prob["targets"][:, None], axis=1)[:, 0]
    return jnp.where(prob["mask"], picked, 0.0)


def assert_mixed_precision(impl, **kw):
    """`mixed_precision_problem` through ``impl``: log-probs equal
    `mixed_precision_reference` (1e-4), every extra is finite, and the
    gradients come back in each operand's dtype (hidden bf16, weight and bias
    fp32)."""
    prob = mixed_precision_problem(11, 37, 16, 203)
    out = run(prob, impl, **kw)
    np.testing.assert_allclose(np.asarray(out.logprobs),
                               np.asarray(mixed_precision_reference(prob)),
                               rtol=1e-4, atol=1e-4)
    for f in FIELDS:
        assert np.all(np.isfinite(np.asarray(getattr(out, f)))), f
    args = (prob["hidden"], prob["weight"], prob["bias"])
    grads = jax.grad(weighted_loss(impl, prob, **kw), argnums=(0, 1, 2))(*args)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.float32,
                                        jnp.float32]
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)


def assert_outputs_close(got, want, *, rtol, atol):
    """Every requested field of two `TokenLogProbs` within tolerance."""
    for f in FIELDS:
        w = getattr(want, f)
        if w is None:
            assert getattr(got, f) is None, f
            continue
        np.testing.assert_allclose(np.asarray(getattr(got, f)),
                                   np.asarray(w), rtol=rtol, atol=atol,
                                   err_msg=f)


def weighted_loss(impl, prob, **kw):
    """Scalar mixing every differentiable output, for gradient tests."""
    def loss(hidden, weight, bias):
        out = run({**prob, "hidden": hidden, "weight": weight, "bias": bias},
                  impl, **kw)
        total = jnp.sum(0.7 * out.logprobs) + jnp.sum(0.4 * out.entropy)
        if out.ref_kl is not None:
            total -= jnp.sum(1.3 * out.ref_kl)
        if out.policy_kl is not None:
            total += jnp.sum(0.9 * out.policy_kl)
        return total
    return loss


def assert_grads_close(impl, prob, *, rtol, softcap=None, **kw):
    """Gradients (hidden, weight, bias) of `weighted_loss` vs naive.

    Compared in max-norm relative to the largest naive gradient entry.
    ``kw`` (tile sizes, interpret) goes to ``impl`` only.
    """
    args = (prob["hidden"], prob["weight"], prob["bias"])
    kw["softcap"] = softcap
    want = jax.grad(weighted_loss("naive", prob, softcap=softcap),
                    argnums=(0, 1, 2))(*args)
    got = jax.grad(weighted_loss(impl, prob, **kw), argnums=(0, 1, 2))(*args)
    for name, g, w in zip(("hidden", "weight", "bias"), got, want):
        assert g.dtype == w.dtype, name
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert np.all(np.isfinite(g)), name
        err = np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-30)
        assert err <= rtol, f"{name}: relative max error {err:.2e} > {rtol}"
