"""Online softmax statistics over vocabulary tiles, shared by every fused op.

Every fused implementation (chunked XLA, Pallas TPU, Pallas GPU) walks the
vocabulary in tiles and keeps, per token, a handful of running statistics of
the logits z (and of the reference logits zq):

    m    running max of z                      s0  sum exp(z - m)
    s1   sum exp(z - m) (z - m)                tgt z[target]
    s2   sum exp(2 (z - m))
    mq   running max of zq                     sq0 sum exp(zq - mq)
    u    sum exp(zq - mq) (zq - z)             r   sum exp(z - m) (z - zq)
    topk the k largest z so far

All statistics are kept relative to the running max, so the finalisation is
free of overflow and cancellation at any logit scale (a new max m' rescales
s0 by exp(m - m') and s2 by its square):

    lse      = m + log s0
    entropy  = log s0 - s1 / s0                      (= lse - E_p[z])
    log_prob_sq_sum = log s2 - 2 log s0              (= log sum_v p_v^2)
    ref_kl   = u / sq0 - (lse_q - lse)               (= KL(q || p))
    policy_kl = r / s0 - (lse - lse_q)               (= KL(p || q))

with p the policy's next-token distribution and q the reference's: ``ref_kl``
is KL(ref || pi) (TDPO's direction), ``policy_kl`` KL(pi || ref), the usual
direction of RLHF's KL penalty. Both need the reference statistics.

The functions here are plain `jnp` on per-row vectors ``[n]`` and tiles
``[n, v]`` so that the same code runs inside Pallas kernels and XLA loops;
`combine` merges the statistics of vocabulary shards under `shard_map`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Finite stand-in for -inf: keeps `0 * mask` and `mask - mask` NaN-free.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
EXTRAS = ("entropy", "ref_kl", "policy_kl", "topk_mass", "topk_entropy",
          "log_prob_sq_sum")
# Extras that read the reference head.
REFERENCE_EXTRAS = ("ref_kl", "policy_kl")


class Stats(NamedTuple):
    """Running statistics of one block of tokens; fields are ``[n]`` fp32.

    ``s1`` is None without entropy, ``s2`` without log_prob_sq_sum, ``mq``,
    ``sq0``, ``u``, ``r`` without a reference head and ``topk`` (``[n, width]``,
    ``width >= k``) without top-k extras.
    """

    m: jax.Array
    s0: jax.Array
    tgt: jax.Array
    s1: jax.Array | None = None
    s2: jax.Array | None = None
    mq: jax.Array | None = None
    sq0: jax.Array | None = None
    u: jax.Array | None = None
    r: jax.Array | None = None
    topk: jax.Array | None = None


def row_fields(*, entropy, sq_sum, with_ref):
    """Names of the ``[n]`` fields of `Stats` in use, in `Stats` order."""
    return (("m", "s0", "tgt") + (("s1",) if entropy else ())
            + (("s2",) if sq_sum else ())
            + (("mq", "sq0", "u", "r") if with_ref else ()))


def init(n, *, entropy, sq_sum, with_ref, topk_width):
    """Statistics of an empty vocabulary for ``n`` tokens."""
    zeros = jnp.zeros((n,), jnp.float32)
    low = jnp.full((n,), MASK_VALUE, jnp.float32)
    st = Stats(low, zeros, zeros, s1=zeros if entropy else None,
               s2=zeros if sq_sum else None)
    if with_ref:
        st = st._replace(mq=low, sq0=zeros, u=zeros, r=zeros)
    if topk_width:
        st = st._replace(topk=jnp.full((n, topk_width), MASK_VALUE,
                                       jnp.float32))
    return st


def update(st, z, zq, valid, hit, *, top_k):
    """Folds one tile into the running statistics.

    Args:
        st: `Stats` with ``[n]`` fields.
        z: ``[n, v]`` fp32 policy logits. zq: ``[n, v]`` reference logits or
            None.
        valid: ``[n, v]`` (or broadcastable) bool, columns inside the
            vocabulary and not already counted.
        hit: ``[n, v]`` bool, ``column == target`` (and valid).
        top_k: static int or None.
    Returns:
        The updated `Stats`.
    """
    z = jnp.where(valid, z, MASK_VALUE)
    m = jnp.maximum(st.m, jnp.max(z, axis=1))
    d = z - m[:, None]
    e = jnp.where(valid, jnp.exp(d), 0.0)
    alpha = jnp.exp(st.m - m)
    s0 = alpha * st.s0 + jnp.sum(e, axis=1)
    tgt = st.tgt + jnp.sum(jnp.where(hit, z, 0.0), axis=1)
    new = Stats(m, s0, tgt)
    if st.s1 is not None:
        # e * d is 0 * -inf where a logit is -inf (a banned token).
        ed = jnp.where(e > 0, e * d, 0.0)
        new = new._replace(s1=alpha * (st.s1 + (st.m - m) * st.s0)
                           + jnp.sum(ed, axis=1))
    if st.s2 is not None:
        # e <= 1, so e * e only underflows (for terms that cannot matter).
        new = new._replace(s2=alpha * alpha * st.s2 + jnp.sum(e * e, axis=1))
    if zq is not None:
        zq = jnp.where(valid, zq, MASK_VALUE)
        mq = jnp.maximum(st.mq, jnp.max(zq, axis=1))
        eq = jnp.where(valid, jnp.exp(zq - mq[:, None]), 0.0)
        alpha_q = jnp.exp(st.mq - mq)
        sq0 = alpha_q * st.sq0 + jnp.sum(eq, axis=1)
        u = alpha_q * st.u + jnp.sum(jnp.where(valid, eq * (zq - z), 0.0),
                                     axis=1)
        # Weighted by the policy (e, scaled like s0): where e is 0 the
        # difference may be inf - inf.
        r = alpha * st.r + jnp.sum(jnp.where(e > 0, e * (z - zq), 0.0),
                                   axis=1)
        new = new._replace(mq=mq, sq0=sq0, u=u, r=r)
    if st.topk is not None:
        new = new._replace(topk=merge_topk(st.topk, z, top_k))
    return new


def _varying(x):
    """Mesh axes over which ``x`` varies inside `shard_map`."""
    aval = jax.typeof(x)
    if hasattr(aval, "vma"):
        return aval.vma
    return aval.manual_axis_type.varying


def match_vma(tree, *refs):
    """Marks every leaf of ``tree`` device-varying over the mesh axes that
    any of ``refs`` varies over (inside `shard_map`; a no-op elsewhere).

    Loop carries created with `jnp.zeros` are invariant, while the loop body
    returns values computed from sharded inputs.
    """
    axes = frozenset().union(*(_varying(r) for r in refs if r is not None))

    def cast(x):
        missing = tuple(sorted(axes - _varying(x)))
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree) if axes else tree


def out_struct(shape, dtype, like):
    """`jax.ShapeDtypeStruct` varying over the same mesh axes as ``like``
    (what `pallas_call` needs inside `shard_map`)."""
    if not _varying(like):
        return jax.ShapeDtypeStruct(shape, dtype)
    return jax.ShapeDtypeStruct(
        shape, dtype, manual_axis_type=jax.typeof(like).manual_axis_type)


def merge_topk(run, z, k):
    """The ``k`` largest values of ``run`` and ``z`` per row, ties counted.

    Args:
        run: ``[n, w]`` running top values (``w >= k``; slots past ``k`` stay
            MASK_VALUE). z: ``[n, v]`` tile, invalid entries MASK_VALUE.
    Returns:
        ``[n, w]`` new running top values, in decreasing order.
    """
    slot = jax.lax.broadcasted_iota(jnp.int32, run.shape, 1)

    def step(_, carry):
        out, filled, cr, cz = carry
        top = jnp.maximum(jnp.max(cr, axis=1), jnp.max(cz, axis=1))  # [n]
        eq_r, eq_z = cr == top[:, None], cz == top[:, None]
        count = (jnp.sum(eq_r.astype(jnp.int32), axis=1)
                 + jnp.sum(eq_z.astype(jnp.int32), axis=1))  # [n]
        end = jnp.minimum(filled + count, k)
        put = (slot >= filled[:, None]) & (slot < end[:, None])
        out = jnp.where(put, top[:, None], out)
        cr = jnp.where(eq_r, MASK_VALUE, cr)
        cz = jnp.where(eq_z, MASK_VALUE, cz)
        return out, end, cr, cz

    out = jnp.full(run.shape, MASK_VALUE, jnp.float32)
    filled = jnp.zeros(run.shape[:1], jnp.int32)
    carry = match_vma((out, filled, run, z), run, z)
    return jax.lax.fori_loop(0, k, step, carry)[0]


def _merge(st, vmax, vsum, top_union):
    """Merges statistics of disjoint vocabulary parts.

    ``vmax``/``vsum`` reduce over the parts (keeping shapes broadcastable
    against the fields); ``top_union`` returns all parts' top values of a
    token side by side, ``[..., parts * width]``.
    """
    m = vmax(st.m)
    a = jnp.exp(st.m - m)
    new = Stats(m, vsum(a * st.s0), vsum(st.tgt))
    if st.s1 is not None:
        new = new._replace(s1=vsum(a * (st.s1 + (st.m - m) * st.s0)))
    if st.s2 is not None:
        new = new._replace(s2=vsum(a * a * st.s2))
    if st.mq is not None:
        mq = vmax(st.mq)
        aq = jnp.exp(st.mq - mq)
        new = new._replace(mq=mq, sq0=vsum(aq * st.sq0), u=vsum(aq * st.u),
                           r=vsum(a * st.r))
    if st.topk is not None:
        every = top_union(st.topk)
        new = new._replace(topk=jax.lax.top_k(every, st.topk.shape[-1])[0])
    return new


def combine(st, axis_name):
    """Merges statistics computed on disjoint vocabulary shards (collectives).

    Must run inside `shard_map` with ``axis_name`` the vocabulary axis.
    """
    new = _merge(
        st, lambda x: jax.lax.pmax(x, axis_name),
        lambda x: jax.lax.psum(x, axis_name),
        lambda t: jax.lax.all_gather(t, axis_name, axis=1, tiled=True))
    if new.topk is None:
        return new
    # Equal on every shard; pmax marks it replicated over the axis.
    return new._replace(topk=jax.lax.pmax(new.topk, axis_name))


def combine_splits(st):
    """Merges statistics stacked over vocabulary splits: ``[S, n]`` fields
    (``topk`` ``[S, n, width]``) to ``[n]``."""
    new = _merge(
        st, lambda x: jnp.max(x, axis=0, keepdims=True),
        lambda x: jnp.sum(x, axis=0, keepdims=True),
        lambda t: jnp.moveaxis(t, 0, 1).reshape(1, t.shape[1], -1))
    return jax.tree.map(lambda x: x[0], new)


def finalize(st, *, top_k):
    """Per-token outputs and backward residuals from final statistics.

    Returns:
        dict with ``logprobs``, ``lse`` and, when available, ``entropy``,
        ``log_prob_sq_sum``, ``ref_kl``, ``policy_kl``, ``lse_q``,
        ``topk_mass``,
        ``topk_entropy``; all ``[n]``.
    """
    log_s0 = jnp.log(st.s0)
    lse = st.m + log_s0
    out = {"logprobs": st.tgt - lse, "lse": lse}
    if st.s1 is not None:
        out["entropy"] = log_s0 - st.s1 / st.s0
    if st.s2 is not None:
        out["log_prob_sq_sum"] = jnp.log(st.s2) - 2.0 * log_s0
    if st.mq is not None:
        lse_q = st.mq + jnp.log(st.sq0)
        out["lse_q"] = lse_q
        out["ref_kl"] = st.u / st.sq0 - (lse_q - lse)
        out["policy_kl"] = st.r / st.s0 - (lse - lse_q)
    if st.topk is not None:
        logp = st.topk[:, :top_k] - lse[:, None]
        p = jnp.exp(logp)
        out["topk_mass"] = jnp.sum(p, axis=1)
        out["topk_entropy"] = -jnp.sum(jnp.where(p > 0, p * logp, 0.0),
                                       axis=1)
    return out


def tile_grad(y, zq, valid, hit, res, cot, softcap):
    """Cotangent of the pre-cap logits of one tile.

    With p = softmax(z), q = softmax(zq), H the entropy:
        d logp / dz    = onehot(target) - p
        d entropy / dz = -p (log p + H)
        d KL(q||p) / dz = p - q
        d KL(p||q) / dz = p (log p - log q - KL(p||q))
    and dz / dy = 1 - (z / softcap)^2 under soft-capping.

    Args:
        y: ``[n, v]`` fp32 logits before soft-capping. zq: ``[n, v]`` or None.
        valid, hit: as in `update`; valid also masks inactive rows.
        res: dict of ``[n]`` residuals (``lse``, ``entropy``, ``lse_q``,
            ``policy_kl``).
        cot: dict of ``[n]`` cotangents (``logprobs``, ``entropy``,
            ``ref_kl``, ``policy_kl``), missing keys meaning zero.
    Returns:
        ``[n, v]`` fp32 cotangent of y, zero where not valid.
    """
    z = y if softcap is None else softcap * jnp.tanh(y / softcap)
    logp = z - res["lse"][:, None]
    p = jnp.exp(jnp.minimum(logp, 0.0))
    dz = cot["logprobs"][:, None] * (hit.astype(jnp.float32) - p)
    if "entropy" in cot:
        ent = jnp.where(p > 0, p * (logp + res["entropy"][:, None]), 0.0)
        dz -= cot["entropy"][:, None] * ent
    if "ref_kl" in cot:
        q = jnp.exp(jnp.minimum(zq - res["lse_q"][:, None], 0.0))
        dz += cot["ref_kl"][:, None] * (p - q)
    if "policy_kl" in cot:
        logq = zq - res["lse_q"][:, None]
        term = logp - logq - res["policy_kl"][:, None]
        dz += cot["policy_kl"][:, None] * jnp.where(p > 0, p * term, 0.0)
    if softcap is not None:
        dz *= 1.0 - jnp.square(z / softcap)
    return jnp.where(valid, dz, 0.0)
