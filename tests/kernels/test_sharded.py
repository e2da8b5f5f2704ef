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


SCORING_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    import numpy as np
    from flax import nnx
    sys.path.insert(0, {here!r})
    from kernel_problems import FIELDS
    from jalign.kernels import reference_logprobs, Head
    from jalign.models.decoder import OutputProjection
    from jalign.models.scoring import Responses, kernel_sharding, token_logprobs

    P = jax.sharding.PartitionSpec
    auto = (jax.sharding.AxisType.Auto,) * 3
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=auto)
    rules = (("batch", ("data", "fsdp")), ("act_vocab", "tensor"))
    extras = FIELDS[1:]
    k = jax.random.split(jax.random.key(0), 7)
    shape = (3, 2, 5)  # 30 tokens: padded to a multiple of the 4 token shards

    def problem(v):
        return dict(h=jax.random.normal(k[0], shape + (16,)),
                    w=3.0 * jax.random.normal(k[1], (16, v)) / 4.0,
                    b=jax.random.normal(k[2], (v,)),
                    rh=jax.random.normal(k[3], shape + (16,)),
                    rw=3.0 * jax.random.normal(k[4], (16, v)) / 4.0,
                    t=jax.random.randint(k[5], shape, 0, v),
                    m=jax.random.bernoulli(k[6], 0.7, shape))

    def scored(p, impl, active):
        def f(h, w, b):
            own = Responses(h, OutputProjection(w, b, 20.0), p["m"])
            ref = Responses(p["rh"], OutputProjection(p["rw"], None, 20.0), p["m"])
            if not active:
                return token_logprobs(own, p["t"], extras=extras, kl_to=ref, impl=impl, top_k=4)
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nnx.logical_axis_rules(rules):
                assert kernel_sharding(p["w"].shape[1]) is not None
                return token_logprobs(own, p["t"], extras=extras, kl_to=ref, impl=impl, top_k=4)
        return f

    def loss(fn):
        def f(*args):
            out = fn(*args)
            return jnp.sum(out.logprobs + 0.5 * out.entropy - out.ref_kl)
        return f

    def naive(p):
        flat = lambda x: x.reshape(-1, x.shape[-1])
        got = reference_logprobs(Head(flat(p["h"]), p["w"], p["b"]), p["t"].reshape(-1), p["m"].reshape(-1),
                                 ref=Head(flat(p["rh"]), p["rw"]), softcap=20.0, extras=extras, top_k=4)
        return {{f: v.reshape(shape) for f, v in got.items()}}

    assert kernel_sharding(64) is None  # no mesh: the plain op
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        assert kernel_sharding(64) is None  # no rules: the plain op
    with nnx.logical_axis_rules(rules):
        assert kernel_sharding(64) is None
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nnx.logical_axis_rules(rules):
        assert kernel_sharding(64)["vocab_axis"] == "tensor"
        assert kernel_sharding(64)["token_axes"] == ("data", "fsdp")
        assert kernel_sharding(63)["vocab_axis"] is None  # 63 columns: the vocabulary is replicated

    rep = jax.sharding.NamedSharding(mesh, P())
    for v in (64, 63):
        p = jax.device_put(problem(v), rep)
        args = (p["h"], p["w"], p["b"])
        want = naive(p)
        got = jax.jit(scored(p, "chunked", True))(*args)
        assert "sdy.manual_computation" in jax.jit(scored(p, "chunked", True)).lower(*args).as_text()
        for f in FIELDS:
            np.testing.assert_allclose(getattr(got, f), want[f], rtol=1e-5, atol=1e-5, err_msg=(v, f))
        want_g = jax.grad(loss(scored(p, "naive", False)), argnums=(0, 1, 2))(*args)
        got_g = jax.jit(jax.grad(loss(scored(p, "chunked", True)), argnums=(0, 1, 2)))(*args)
        for g, w in zip(got_g, want_g):
            err = np.max(np.abs(g - w)) / np.max(np.abs(w))
            assert err < 1e-5, (v, err)
    print("scoring ok")
""")


def test_scoring_shards_the_op_under_an_active_mesh_and_rules():
    """`token_logprobs` inside an abstract 2x2x2 mesh with the batch/act_vocab rules runs the op
    under `shard_map`: 30 tokens (padded to the 4 token shards), V=64 split over tensor and V=63
    replicated (63 % 2 != 0); every output of the chunked op equals `reference_logprobs` on the
    unsharded arrays (1e-5) and its gradients of hidden/weight/bias equal naive autodiff (the
    Pallas kernels under `shard_map` are checked above). With no mesh or no rules
    `kernel_sharding` is None (the plain op)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c",
                           SCORING_SCRIPT.format(here=here)],
                          env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "scoring ok" in proc.stdout
