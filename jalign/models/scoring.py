"""Scoring responses with a decoder: per-token log-probs of G completions per prompt.

The prompt is encoded once per example; the ``G`` responses attend to its
keys. The hidden state that predicts response token 0 is the one at the last
prompt token, so that token is fed as the first completion input rather than
encoded with the prompt. Hidden states go to ``jalign.kernels`` with the
output projection: per-token log-probs (and extras such as entropy or KL to
another head) come back without a ``[tokens, vocab]`` logits tensor. Under a
mesh of several devices (the trainer activates one with its logical-axis
rules around tracing) the op runs per shard: tokens over the mesh axes of the
``batch`` rule, the vocabulary over the axis of ``act_vocab``.

Batches are dicts as ``jalign.data.collate.Collator`` makes them:
``prompt_tokens`` / ``prompt_mask`` ``[B, P]`` (any padding side) and
``response_tokens`` / ``response_mask`` ``[B, G, R]`` (right-padded).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax.core import spmd

from jalign.kernels import Head, TokenLogProbs, resolve_impl, sequence_logprobs, sharded_sequence_logprobs
from jalign.kernels.argmax import greedy_tokens
from jalign.models.decoder import OutputProjection
from jalign.models.layers import logical_to_spec


def completion_inputs(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Splits off the last prompt token as the first completion input.

    Returns:
      ``prompt_body_mask`` ``[B, P]`` (the prompt without its last token),
      ``inputs`` ``[B, G, R]`` (last prompt token, then responses shifted right),
      ``input_mask`` ``[B, G, R]`` and ``target_mask`` ``[B, G, R]`` (response
      tokens that have a predicting position; a row with an empty prompt loses
      its first response token).
    """
    prompt, prompt_mask = batch["prompt_tokens"], batch["prompt_mask"].astype(bool)
    responses, response_mask = batch["response_tokens"], batch["response_mask"].astype(bool)
    positions = jnp.arange(prompt.shape[1])
    last = jnp.max(jnp.where(prompt_mask, positions, -1), axis=1)                 # [B]
    has_prompt = last >= 0
    last_token = jnp.take_along_axis(prompt, jnp.maximum(last, 0)[:, None], axis=1)  # [B, 1]
    body_mask = prompt_mask & (positions[None] != last[:, None])
    b, g, _ = responses.shape
    first = jnp.broadcast_to(last_token[:, None, :], (b, g, 1))
    inputs = jnp.concatenate([first, responses[:, :, :-1]], axis=-1)
    first_valid = jnp.broadcast_to(has_prompt[:, None, None], (b, g, 1))
    input_mask = jnp.concatenate([first_valid, response_mask[:, :, :-1]], axis=-1)
    target_mask = response_mask & input_mask
    return body_mask, inputs, input_mask, target_mask


class Responses(NamedTuple):
    """A decoder's view of a batch's responses.

    Attributes:
      hidden: ``[B, G, R, E]`` final hidden states at the positions predicting
        each response token.
      head: the decoder's output projection.
      target_mask: ``[B, G, R]`` bool, response tokens that have a predicting position.
      layers: ``[L, B, G, R, E]`` every block's output, when asked for; else None.
    """

    hidden: jax.Array
    head: OutputProjection
    target_mask: jax.Array
    layers: jax.Array | None = None


def encode_responses(model: Any, batch: dict, *, layers: bool = False, residual: float = 0.0) -> Responses:
    """Runs ``model`` over each prompt once and its ``G`` responses; no logits.

    With ``layers`` the per-layer states are kept too (one forward: the final
    hidden states are the last layer's after the final norm). A non-zero
    ``residual`` feeds the responses through IFT's temporal residual
    connection (:func:`residual_responses`).
    """
    if residual:
        if layers:
            raise ValueError("encode_responses: per-layer states of the residual-input forward are not served")
        return residual_responses(model, batch, residual)
    body_mask, inputs, input_mask, target_mask = completion_inputs(batch)
    cache = model.encode_prompt(batch["prompt_tokens"], body_mask)
    if not layers:
        hidden = model.forward_completions(cache, inputs, input_mask, return_hidden=True)
        return Responses(hidden, model.output_projection(), target_mask)
    states = model.forward_completions(cache, inputs, input_mask, return_hidden="layers")
    return Responses(model.final_norm(states[-1]), model.output_projection(), target_mask, states)


def residual_responses(model: Any, batch: dict, residual: float) -> Responses:
    """The responses fed through IFT's temporal residual connection (TRC), weight ``residual`` = lambda.

    A first, teacher-forced pass without gradient gives the model's greedy
    prediction ``yhat_t`` of every response token (`jalign.kernels.argmax`, no
    ``[tokens, vocab]`` logits); a second pass, the one returned, feeds each
    response token ``y_t`` as the input embedding

    .. math::  (1 - \\lambda)\\, e(y_t) + \\lambda\\, e(\\hat y_t)

    while prompt tokens (and a row's first response token when its prompt is
    empty: it has no prediction) keep ``e(y_t)``. As in the authors' trainer
    the embedding rows are read from a frozen copy of the table, for the
    prompt too: the input embeddings get no gradient from this pass (a tied
    table still gets its output-projection gradient). The prompt is encoded
    once for both passes.

    References:
      Hua et al., *Intuitive Fine-Tuning*, 2024; authors' code
      TsinghuaC3I/Intuitive-Fine-Tuning, ``src/trainers.py``, the ``'ift'``
      branch of ``get_batch_metrics`` (``get_sample_function(..., 'greedy')``,
      ``inputs_embeds_further``).
    """
    body_mask, inputs, input_mask, target_mask = completion_inputs(batch)
    table = jax.lax.stop_gradient(model.embed[...])                                 # [V, E]
    prompt = batch["prompt_tokens"]
    cache = model.encode_prompt(prompt, body_mask, embeddings=table[prompt])
    teacher_forced = jax.lax.stop_gradient(
        model.forward_completions(jax.tree.map(jax.lax.stop_gradient, cache), inputs, input_mask,
                                  return_hidden=True, embeddings=table[inputs]))   # [B, G, R, E]
    head = model.output_projection()
    flat = teacher_forced.reshape(-1, teacher_forced.shape[-1])
    predicted = greedy_tokens(Head(flat, head.kernel, head.bias)).reshape(inputs.shape)  # yhat_r [B, G, R]
    # Input r >= 1 is response token r - 1: mix in the prediction of that token, where it had one.
    mixed_tokens = jnp.concatenate([inputs[..., :1], predicted[..., :-1]], axis=-1)
    mixes = jnp.concatenate([jnp.zeros_like(target_mask[..., :1]), target_mask[..., :-1]], axis=-1)
    weight = jnp.where(mixes, jnp.asarray(residual, jnp.float32), 0.0)[..., None]    # [B, G, R, 1]
    embeddings = ((1.0 - weight) * table[inputs].astype(jnp.float32)
                  + weight * table[mixed_tokens].astype(jnp.float32))               # [B, G, R, E]
    hidden = model.forward_completions(cache, inputs, input_mask, return_hidden=True, embeddings=embeddings)
    return Responses(hidden, head, target_mask)


def frozen(responses: Responses) -> Responses:
    """The same view with no gradient to hidden states or head (a reference, a judge, a guide)."""
    head = responses.head
    constant = jax.lax.stop_gradient
    return Responses(constant(responses.hidden),
                     OutputProjection(constant(head.kernel), None if head.bias is None else constant(head.bias),
                                      head.softcap),
                     responses.target_mask, None if responses.layers is None else constant(responses.layers))


def kernel_sharding(n_vocab: int) -> dict | None:
    """How the log-prob op is split over the active mesh, or None for the plain op.

    Reads the abstract mesh (``jax.sharding.get_abstract_mesh``) and the
    active flax logical-axis rules, and resolves ``("batch", "act_vocab")``
    like any activation (`layers.logical_to_spec`): tokens over the axes of
    ``batch``, the vocabulary over the axis of ``act_vocab`` when it divides
    ``n_vocab`` (else, or when the rule names several axes, every device holds
    the whole vocabulary). Tokens are padded to their shards, so the mesh size
    stands in for their count. None with no mesh, one device or no rules.

    Returns:
      ``dict(mesh=..., token_axes=(...), vocab_axis=str | None)``.
    """
    mesh = jax.sharding.get_abstract_mesh()
    rules = dict(spmd.get_logical_axis_rules())
    if mesh.empty or mesh.size == 1 or not rules:
        return None
    names = tuple(n if n in rules else None for n in ("batch", "act_vocab"))
    tokens, vocab = logical_to_spec(names, (mesh.size, n_vocab), mesh, rules)
    token_axes = () if tokens is None else (tokens,) if isinstance(tokens, str) else tuple(tokens)
    return dict(mesh=mesh, token_axes=token_axes, vocab_axis=vocab if isinstance(vocab, str) else None)


def token_logprobs(responses: Responses, targets: jax.Array, *, extras: Sequence[str] = (),
                   kl_to: Responses | None = None, impl: str = "auto", top_k: int | None = None) -> TokenLogProbs:
    """Per-token log pi(target) ``[B, G, R]`` and the requested kernel extras.

    Under an active mesh of several devices (see :func:`kernel_sharding`) the
    fused op runs under ``shard_map``, so Pallas kernels run per shard and no
    ``[tokens, vocab]`` buffer exists; ``impl="naive"`` (tests, benchmarks)
    always runs unsharded.

    Args:
      responses: the scored decoder's hidden states and head.
      targets: ``[B, G, R]`` response token ids.
      extras: kernel extras (``jalign.kernels``); ``"ref_kl"`` is KL(kl_to || model),
        ``"policy_kl"`` KL(model || kl_to), per token.
      kl_to: the other model's view, for ``"ref_kl"`` and ``"policy_kl"``; a constant.
      impl: the kernel implementation.
      top_k: k for the top-k extras.
    """
    head = responses.head
    kw = dict(bias=head.bias, softcap=head.softcap, extras=tuple(extras), top_k=top_k, impl=impl)
    if kl_to is not None:
        kw.update(ref_hidden=kl_to.hidden, ref_weight=kl_to.head.kernel, ref_bias=kl_to.head.bias)
    sharding = None if resolve_impl(impl) == "naive" else kernel_sharding(head.kernel.shape[1])
    if sharding is None:
        return sequence_logprobs(responses.hidden, head.kernel, targets, responses.target_mask, **kw)
    return sharded_sequence_logprobs(responses.hidden, head.kernel, targets, responses.target_mask,
                                     **sharding, **kw)


def score(model: Any, batch: dict, *, impl: str = "auto") -> tuple[jax.Array, jax.Array]:
    """Per-token log-probs ``[B, G, R]`` (fp32, 0 off the mask) and the target mask, without gradient."""
    responses = frozen(encode_responses(model, batch))
    out = token_logprobs(responses, batch["response_tokens"], impl=impl)
    return out.logprobs, responses.target_mask
