"""Building blocks of the decoder: parameters, projections, norms, RoPE, MLP.

Logical axis names (the vocabulary of the sharding rule table in
`jalign.sharding`): every parameter carries a tuple of them in its
``out_sharding`` metadata, one name per array dimension.

==========  ============================================================
name        dimension
==========  ============================================================
vocab       vocabulary (embedding rows, output-projection columns)
embed       model width, ``hidden_size``
heads       query heads
kv_heads    key/value heads (grouped-query attention)
head_dim    width of one attention head
mlp         MLP inner width, ``intermediate_size``
norm        the scale/bias vector of a norm (usually replicated)
positions   learned position table rows (GPT-2)
lora        LoRA adapter rank
layers      the leading axis of the stacked blocks' parameters (scanned over)
==========  ============================================================

Activations carry names of their own, so that one rule table can shard a
weight's model dimension over ``fsdp`` while the activations that meet it keep
their batch there (the names of a weight and of an activation never collide
inside one array):

==========  ============================================================
batch       examples (split over the data-parallel axes: data x fsdp)
length      tokens of a sequence
act_embed   model width of the residual stream
act_heads   query heads of attention activations (likewise act_kv_heads)
act_mlp     MLP inner activations
act_vocab   vocabulary of logits (the log-prob kernel shards it)
==========  ============================================================

`constrain` applies them; it is a no-op unless a mesh and logical rules are
active (``jalign.sharding.activate``). Parameters are created with
``eager_sharding=False``: placing them on devices is the sharding layer's job.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd

from jalign.models.config import ModelConfig


def param(rngs: nnx.Rngs | None, shape: tuple[int, ...], names: tuple[str, ...],
          dtype, *, init: str = "normal", fan_in: int = 1) -> nnx.Param:
    """An ``nnx.Param`` with logical axis ``names``; init "normal"|"zeros"|"ones"."""
    if len(shape) != len(names):
        raise ValueError(f"{shape=} and {names=} differ in rank")
    if init == "normal":
        value = jax.random.normal(rngs.params(), shape, dtype) / math.sqrt(fan_in)
    else:
        value = (jnp.zeros if init == "zeros" else jnp.ones)(shape, dtype)
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


# Tuples first, so `--set mesh.rules.batch=data,fsdp` parses to two axes.
MeshAxes = tuple[str, ...] | str | None


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh,
                    rules: Mapping[str, MeshAxes]) -> jax.sharding.PartitionSpec:
    """The PartitionSpec of an array whose dimensions carry logical ``names``.

    A dimension that its mesh axes do not divide is replicated (e.g. 2 KV heads
    on a tensor axis of 4), and no mesh axis is used twice in one array: the
    first dimension that claims it wins.

    Args:
      names: one logical name (or None) per dimension.
      shape: the array's shape, to check divisibility.
      mesh: a ``Mesh`` or ``AbstractMesh`` (its axis sizes).
      rules: logical name -> mesh axis, axes, or None.

    Raises:
      ValueError: a name missing from ``rules`` (listing the known names), or a
        rank mismatch.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match {tuple(shape)=}")
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"no sharding rule for logical axis {name!r}; known: {sorted(rules)}")
        target = rules[name]
        target = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        axes = tuple(a for a in target if a in mesh.shape and a not in used)
        product = math.prod(mesh.shape[a] for a in axes)
        if not axes or product == 1 or size % product:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return jax.sharding.PartitionSpec(*spec)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Constrains activation ``x`` to logical axes ``names``; no-op without a mesh and rules.

    Names map to mesh axes through the active ``nnx.logical_axis_rules`` by
    `logical_to_spec`; names the table lacks are replicated.
    """
    rules = dict(spmd.get_logical_axis_rules())
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not rules:
        return x
    spec = logical_to_spec([n if n in rules else None for n in names], x.shape, mesh, rules)
    if mesh.are_all_axes_explicit:
        return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, spec)


class Projection(nnx.Module):
    """Linear map contracting axes ``in_axes`` into ``out_axes`` (einsum letters).

    The kernel has shape ``in_shape + out_shape`` and is applied as
    ``einsum('...{in},{in}{out}->...{out}')``; e.g. ``in_axes="E", out_axes="NH"``
    maps [B, T, E] to [B, T, N, H]. `jalign.models.lora.add_lora` may attach a
    low-rank path ``lora_scale * (x @ lora_a) @ lora_b`` (absent by default).
    """

    def __init__(self, in_axes: str, out_axes: str, in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...], names: tuple[str, ...], *, bias: bool,
                 dtype, param_dtype, rngs: nnx.Rngs):
        self.in_axes, self.out_axes = in_axes, out_axes
        self.names = names
        self.dtype = dtype
        fan_in = math.prod(in_shape)
        self.kernel = param(rngs, in_shape + out_shape, names, param_dtype, fan_in=fan_in)
        out_names = names[len(in_shape):]
        self.bias = param(rngs, out_shape, out_names, param_dtype, init="zeros") if bias else None
        self.lora_a = self.lora_b = self.lora_scale = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        spec = f"...{self.in_axes},{self.in_axes}{self.out_axes}->...{self.out_axes}"
        y = jnp.einsum(spec, x, self.kernel[...].astype(self.dtype))
        if self.lora_a is not None:
            low = jnp.einsum(f"...{self.in_axes},{self.in_axes}r->...r", x,
                             self.lora_a[...].astype(self.dtype))          # [..., r]
            up = jnp.einsum(f"...r,r{self.out_axes}->...{self.out_axes}", low,
                            self.lora_b[...].astype(self.dtype))
            y = y + (self.lora_scale[...] * up).astype(self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Norm(nnx.Module):
    """RMSNorm (Llama/Gemma) or LayerNorm (GPT-2) over the last axis, fp32 statistics.

    RMSNorm: ``x / rms(x) * (offset + w)``; Gemma uses offset 1 and multiplies
    in fp32, Llama casts back to the compute dtype before the multiply.
    """

    def __init__(self, size: int, cfg: ModelConfig, *, rngs: nnx.Rngs, kind: str | None = None):
        self.kind = kind or cfg.norm
        self.eps, self.offset = cfg.norm_eps, cfg.norm_offset
        init = "zeros" if cfg.norm_offset else "ones"
        self.scale = param(rngs, (size,), ("norm",), cfg.param_dtype, init=init)
        layer = self.kind == "layer"
        self.bias = param(rngs, (size,), ("norm",), cfg.param_dtype, init="zeros") if layer else None

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        if self.kind == "layer":
            x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt((x32 * x32).mean(-1, keepdims=True) + self.eps)
        scale = self.scale[...].astype(jnp.float32) + self.offset
        if self.kind == "layer":
            return (y * scale + self.bias[...].astype(jnp.float32)).astype(dtype)
        if self.offset:
            return (y * scale).astype(dtype)
        return y.astype(dtype) * self.scale[...].astype(dtype)


def rope_frequencies(cfg: ModelConfig) -> jax.Array:
    """Inverse frequencies [head_dim // 2] of RoPE, with linear/llama3 scaling."""
    exponents = jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** exponents)
    if cfg.rope_type == "linear":
        return inv / cfg.rope_factor
    if cfg.rope_type == "llama3":
        wavelen = 2 * jnp.pi / inv
        low_wavelen = cfg.rope_original_max_positions / cfg.rope_low_freq_factor
        high_wavelen = cfg.rope_original_max_positions / cfg.rope_high_freq_factor
        scaled = jnp.where(wavelen > low_wavelen, inv / cfg.rope_factor, inv)
        smooth = ((cfg.rope_original_max_positions / wavelen - cfg.rope_low_freq_factor)
                  / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor))
        smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(medium, smoothed, scaled)
    return inv


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates x [..., T, N, H] by positions [..., T] (HF rotate-half layout), fp32."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq     # [..., T, H/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[..., None, :]    # [..., T, 1, H]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[..., None, :]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], -1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.gelu(x, approximate=name == "gelu_tanh")


class MLP(nnx.Module):
    """Gated (SwiGLU/GeGLU: down(act(gate x) * up x)) or plain (GPT-2) feed-forward."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, m = cfg.hidden_size, cfg.mlp_dim
        kw = dict(bias=cfg.mlp_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.act = cfg.activation
        self.gate_proj = Projection("E", "M", (e,), (m,), ("embed", "mlp"), **kw) if cfg.gated_mlp else None
        self.up_proj = Projection("E", "M", (e,), (m,), ("embed", "mlp"), **kw)
        self.down_proj = Projection("M", "E", (m,), (e,), ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, G, T, E] -> [B, G, T, E]."""
        h = constrain(self.up_proj(x), ("batch", None, "length", "act_mlp"))  # [B, G, T, M]
        if self.gate_proj is not None:
            h = activation(self.act, self.gate_proj(x)) * h
        else:
            h = activation(self.act, h)
        return self.down_proj(h)
