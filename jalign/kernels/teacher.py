"""A distillation teacher combined from two models' heads, never as ``[N, V]`` logits.

AlignDistil's teacher at token ``t`` extrapolates a DPO model's logits away
from a contrast model's (the reverse-DPO model) by a per-token weight:

.. math::

    z^*_t = z^{dpo}_t + w_t (z^{dpo}_t - z^{c}_t), \\qquad
    w_t = s \\, \\lVert \\pi^{dpo}_t - \\pi^{c}_t \\rVert_1 + 10^{-3},

and the policy is distilled into ``softmax(z^*_t / T)``. Two pieces serve it:

- :func:`total_variation`: ``sum_v |pi_a(v) - pi_b(v)|`` per token, from two
  heads, tile by tile (chunked XLA: one pass for both log-sum-exps, one for
  the sum). It runs on every backend; the teachers are constants, so it has
  no gradient.
- :func:`extrapolated_teacher`: one `Head` whose logits are exactly
  ``((1 + w) z^{dpo} - w z^{c}) / T``: the two heads' hidden states are
  scaled per token and concatenated (with the biases as two extra hidden
  columns), and the two projections stacked, ``[Hd + Hc + 2, V]``. The
  policy's fused log-prob op takes it as its reference head, so
  ``policy_kl`` is ``KL(pi_theta || pi^*)`` with its custom VJP, in every
  implementation (chunked, Pallas TPU, Pallas GPU, sharded) and with no
  ``[N, V]`` buffer. The stacked hidden width is padded to a multiple of 128
  (zero columns meet zero rows) for the Pallas tiles.

A soft-capped head cannot be combined this way (the cap applies to each
model's logits before the combination); :func:`extrapolated_teacher` refuses it.

References:
  Zhang et al., *AlignDistil: Token-Level Language Model Alignment as
  Adaptive Policy Distillation*, ACL 2025; authors' code
  ``songmzhang/AlignDistil``,
  ``OpenRLHF/openrlhf/trainer/aligndistil_offpolicy_trainer.py``
  (``reward_boost_type == "aligndistil"``).
"""

import jax
import jax.numpy as jnp

from jalign.kernels.head import Head, project

DEFAULT_BLOCK_N = 256
DEFAULT_BLOCK_V = 4096
HIDDEN_MULTIPLE = 128


def _vocab_tile(head: Head, hidden, j, bv):
    """fp32 logits ``[bn, bv]`` of vocabulary tile ``j`` (the last one shifted back) and its fresh columns ``[1, bv]``."""
    v = head.weight.shape[1]
    col0 = jnp.minimum(j * bv, v - bv)
    fresh = col0 + jax.lax.broadcasted_iota(jnp.int32, (1, bv), 1) >= j * bv
    w = jax.lax.dynamic_slice_in_dim(head.weight, col0, bv, 1)
    b = jax.lax.dynamic_slice_in_dim(head.bias, col0, bv, 0)
    return project(hidden, w, b, None), fresh


def _block_total_variation(a: Head, b: Head, ha, hb, bv):
    """``[bn]`` total variations of one row block (``ha`` ``[bn, Ha]``, ``hb`` ``[bn, Hb]``)."""
    n_tiles = -(-a.weight.shape[1] // bv)
    rows = ha.shape[0]

    def lse_tile(j, carry):
        out = []
        for (m, s), head, h in zip(carry, (a, b), (ha, hb)):
            z, fresh = _vocab_tile(head, h, j, bv)
            z = jnp.where(fresh, z, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(z, axis=1))
            out.append((m_new, s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[:, None]), axis=1)))
        return tuple(out)

    start = (jnp.full((rows,), -jnp.inf, jnp.float32), jnp.zeros((rows,), jnp.float32))
    (ma, sa), (mb, sb) = jax.lax.fori_loop(0, n_tiles, lse_tile, (start, start))
    lse_a, lse_b = ma + jnp.log(sa), mb + jnp.log(sb)                      # [bn]

    def tv_tile(j, acc):
        za, fresh = _vocab_tile(a, ha, j, bv)
        zb, _ = _vocab_tile(b, hb, j, bv)
        gap = jnp.abs(jnp.exp(za - lse_a[:, None]) - jnp.exp(zb - lse_b[:, None]))  # [bn, bv]
        return acc + jnp.sum(jnp.where(fresh, gap, 0.0), axis=1)

    return jax.lax.fori_loop(0, n_tiles, tv_tile, jnp.zeros((rows,), jnp.float32))


def total_variation(a: Head, b: Head, *, block_n: int = DEFAULT_BLOCK_N, block_v: int = DEFAULT_BLOCK_V):
    """``sum_v |softmax(z_a)_v - softmax(z_b)_v|`` per token ``[N]`` fp32, a constant.

    Args:
      a, b: heads with hidden ``[N, Ha]`` / ``[N, Hb]``, weights ``[Ha, V]`` /
        ``[Hb, V]`` over the same vocabulary, biases ``[V]`` or None.
      block_n, block_v: rows and vocabulary columns per tile; no buffer
        larger than ``[block_n, block_v]`` logits is built.
    """
    n, v = a.hidden.shape[0], a.weight.shape[1]
    if b.hidden.shape[0] != n or b.weight.shape[1] != v:
        raise ValueError(f"total_variation: heads disagree: {a.hidden.shape=} {a.weight.shape=} "
                         f"{b.hidden.shape=} {b.weight.shape=}")
    a, b = a.with_bias(), b.with_bias()
    bn, bv = max(1, min(block_n, n)), min(block_v, v)
    blocks = -(-n // bn)

    def rows(h):                                                           # [N, H] -> [blocks, bn, H]
        return jnp.pad(h, ((0, blocks * bn - n), (0, 0))).reshape(blocks, bn, h.shape[1])

    per_block = jax.lax.map(lambda hs: _block_total_variation(a, b, *hs, bv), (rows(a.hidden), rows(b.hidden)))
    return jax.lax.stop_gradient(per_block.reshape(-1)[:n])


def total_variation_reference(a: Head, b: Head):
    """The naive version over full ``[N, V]`` fp32 logits (tests only)."""
    a, b = a.with_bias(), b.with_bias()
    pa = jax.nn.softmax(project(a.hidden, a.weight, a.bias, None), axis=-1)
    pb = jax.nn.softmax(project(b.hidden, b.weight, b.bias, None), axis=-1)
    return jnp.sum(jnp.abs(pa - pb), axis=-1)


def extrapolated_teacher(dpo: Head, contrast: Head, weight, *, temperature: float = 1.0,
                         softcap: float | None = None) -> Head:
    """The head whose logits are ``((1 + w) z_dpo - w z_contrast) / T`` per token.

    Args:
      dpo, contrast: heads ``[N, Hd]``/``[Hd, V]`` and ``[N, Hc]``/``[Hc, V]``.
      weight: ``[N]`` per-token extrapolation ``w`` (a constant).
      temperature: the distillation temperature ``T``.
      softcap: the models' final-logit soft-cap; must be None.

    Returns:
      ``Head(hidden [N, H'], weight [H', V], bias None)``, ``H' >= Hd + Hc + 2``
      a multiple of 128, in the DPO model's hidden dtype.
    """
    if softcap is not None:
        raise ValueError(f"AlignDistil's teacher combines logits before any soft-cap; models with a final-logit "
                         f"soft-cap ({softcap}) are not supported")
    dpo, contrast = dpo.with_bias(), contrast.with_bias()
    dtype = dpo.hidden.dtype
    w = jax.lax.stop_gradient(jnp.asarray(weight, jnp.float32))[:, None]    # [N, 1]
    keep, remove = (1.0 + w) / temperature, -w / temperature
    hidden = jnp.concatenate([dpo.hidden.astype(jnp.float32) * keep, contrast.hidden.astype(jnp.float32) * remove,
                              keep, remove], axis=1)                          # [N, Hd + Hc + 2]
    stacked = jnp.concatenate([dpo.weight.astype(dtype), contrast.weight.astype(dtype),
                               dpo.bias[None].astype(dtype), contrast.bias[None].astype(dtype)], axis=0)
    pad = -hidden.shape[1] % HIDDEN_MULTIPLE
    hidden = jnp.pad(hidden, ((0, 0), (0, pad))).astype(dtype)
    stacked = jnp.pad(stacked, ((0, pad), (0, 0)))
    return Head(jax.lax.stop_gradient(hidden), jax.lax.stop_gradient(stacked), None)
