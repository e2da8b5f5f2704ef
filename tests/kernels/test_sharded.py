"""The sharded op on 8 simulated CPU devices against full logits.

pytest imports jax once per process, so the check runs in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 set before jax starts.
The numbers come from `reference_logprobs` on the unsharded arrays.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    import numpy as np
    sys.path.insert(0, {here!r})
    from kernel_problems import FIELDS, make_problem, run
    from jalign.kernels import sharded_sequence_logprobs

    assert jax.device_count() == 8
    auto = (jax.sharding.AxisType.Auto,) * 3
    mesh = jax.make_mesh((2, 1, 4), ("data", "fsdp", "tensor"),
                         axis_types=auto)
    prob = make_problem(0, 48, 16, 96, scale=3.0)
    extras = FIELDS[1:]

    def sharded(h, w, b, impl, **kw):
        return sharded_sequence_logprobs(
            h, w, prob["targets"], prob["mask"], mesh=mesh, bias=b,
            softcap=20.0, ref_hidden=prob["ref_hidden"],
            ref_weight=prob["ref_weight"], extras=extras, top_k=4,
            impl=impl, **kw)

    def naive(h, w, b):
        return run({{**prob, "hidden": h, "weight": w, "bias": b}}, "naive",
                   softcap=20.0)

    def loss(fn):
        def f(h, w, b):
            out = fn(h, w, b)
            return jnp.sum(out.logprobs + 0.5 * out.entropy - out.ref_kl)
        return f

    args = (prob["hidden"], prob["weight"], prob["bias"])
    want = naive(*args)
    want_g = jax.grad(loss(naive), argnums=(0, 1, 2))(*args)
    chunked = lambda h, w, b: sharded(h, w, b, "chunked", block_n=8,
                                      block_v=8)
    pallas = lambda h, w, b: sharded(h, w, b, "pallas_tpu", block_n=8,
                                     block_v=128, interpret=True)
    for impl, fn in [("chunked", chunked), ("pallas_tpu", pallas)]:
        got = jax.jit(fn)(*args)
        for f in FIELDS:
            np.testing.assert_allclose(getattr(got, f), getattr(want, f),
                                       rtol=1e-5, atol=1e-5, err_msg=f)
    got_g = jax.jit(jax.grad(loss(chunked), argnums=(0, 1, 2)))(*args)
    for g, w in zip(got_g, want_g):
        err = np.max(np.abs(g - w)) / np.max(np.abs(w))
        assert err < 1e-5, err
    print("sharded ok")
""")


def test_sharded_matches_full_logits_on_8_devices():
    """Tokens over (data=2), vocabulary over (tensor=4): values of every
    output (log_prob_sq_sum's cross-shard (m, s0, s2) merge included) equal
    the naive full-logits computation (1e-5) for the chunked op and the
    Pallas TPU kernel in interpret mode; gradients of hidden/weight/bias
    through the chunked op too. (Every implementation
    shares that backward pass; the interpreter cannot run it under
    check_vma, see `sharded_sequence_logprobs`.)"""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(here=here)],
                          env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "sharded ok" in proc.stdout
