"""Sequence log-probs with tokens and vocabulary sharded over a mesh.

Tokens are split over the data axes and the vocabulary (weight columns,
bias) over the tensor axis. Each device runs the fused op on its
``[N / data, H] x [H, V / tensor]`` piece; the per-token running statistics
are then merged across the vocabulary shards with `pmax`/`psum`
(`_online.combine`), so the log-sum-exp, entropy and KL are exact. In the
backward pass the hidden-state gradient is summed over vocabulary shards and
the weight gradient over token shards.
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jalign.kernels import api


def sharded_sequence_logprobs(hidden, weight, targets, mask, *, mesh,
                              vocab_axis="tensor", token_axes=("data", "fsdp"),
                              bias=None, softcap=None, ref_hidden=None,
                              ref_weight=None, ref_bias=None, extras=(),
                              top_k=None, impl="auto", block_n=None,
                              block_v=None, interpret=False):
    """`api.sequence_logprobs` under `jax.shard_map` on ``mesh``.

    Args:
        hidden: ``[N, H]``, N divisible by the product of ``token_axes``.
        weight: ``[H, V]``, V divisible by the size of ``vocab_axis``.
        targets, mask: ``[N]``. mesh: a `jax.sharding.Mesh`.
        vocab_axis: mesh axis over which the vocabulary is split.
        token_axes: mesh axes over which tokens are split (axes missing from
            the mesh are ignored).
        Other arguments: as `api.sequence_logprobs` (not "naive"). With
            ``interpret=True`` only the forward values are meaningful (the
            Pallas interpreter needs ``check_vma=False``, under which
            `shard_map` transposes replicated cotangents differently).
        The mesh's axes should be `AxisType.Auto` (or the inputs already
            sharded as the specs above).
    Returns:
        `api.TokenLogProbs` with ``[N]`` fields sharded over ``token_axes``.
    """
    token_axes = tuple(a for a in token_axes if a in mesh.axis_names)
    api._check_args(hidden, weight, targets, mask, bias, ref_hidden,
                    ref_weight, extras, top_k)
    if hidden.ndim != 2:
        raise ValueError(f"flatten tokens first: need hidden [N, H]; got "
                         f"{hidden.shape=}")
    n_vocab_shards = mesh.shape[vocab_axis]
    if weight.shape[1] % n_vocab_shards:
        raise ValueError(f"V={weight.shape[1]} not divisible by "
                         f"{n_vocab_shards} {vocab_axis!r} shards")
    impl = api.resolve_impl(impl)
    if impl == "naive":
        raise ValueError("the sharded op has no naive implementation")
    with_ref = "ref_kl" in extras
    cfg = api._Config(impl, api._block_sizes(impl, block_n, block_v), softcap,
                      top_k, tuple(extras), with_ref, interpret,
                      vocab_axis=vocab_axis, token_axes=token_axes)
    tok = token_axes or None
    zeros_v = jnp.zeros(weight.shape[1:], jnp.float32)
    bias = zeros_v if bias is None else bias
    ref = (ref_hidden, ref_weight,
           zeros_v if ref_bias is None else ref_bias) if with_ref else ()
    ref_specs = (P(tok, None), P(None, vocab_axis), P(vocab_axis))

    def local(h, w, b, t, m, *ref_args):
        offset = jax.lax.axis_index(vocab_axis) * w.shape[1]
        rh, rw, rb = ref_args if with_ref else (None, None, None)
        return api.fused_logprobs(h, w, b, rh, rw, rb, t - offset, m, cfg)

    names = ("logprobs",) + tuple(e for e in extras)
    out = jax.shard_map(
        local, mesh=mesh,
        in_specs=(P(tok, None), P(None, vocab_axis), P(vocab_axis), P(tok),
                  P(tok)) + (ref_specs if with_ref else ()),
        out_specs={k: P(tok) for k in names},
        # Pallas' interpreter trips over its own varying-axes checks; the
        # gradient psums of the backward pass assume check_vma=True, so
        # interpret mode is for forward values only.
        check_vma=not interpret,
    )(hidden, weight, bias, targets.astype(jnp.int32), mask, *ref)
    return api.TokenLogProbs(**out)
