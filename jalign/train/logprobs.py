"""From a tokenised batch to the objective's ``LogProbs``, through the fused kernels.

The prompt is encoded once per example; the ``G`` responses attend to its
keys. The hidden state that predicts response token 0 is the one at the last
prompt token, so that token is fed as the first completion input rather than
encoded with the prompt. Hidden states go to ``jalign.kernels`` with the
output projection: per-token log-probs (and extras such as entropy or KL to
the reference) come back without a ``[tokens, vocab]`` logits tensor.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jalign.kernels import sequence_logprobs
from jalign.objectives import LogProbs, Objective, Scaled, Sum


def completion_inputs(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Splits off the last prompt token as the first completion input.

    Args:
      batch: ``prompt_tokens`` / ``prompt_mask`` ``[B, P]`` (any padding side),
        ``response_tokens`` / ``response_mask`` ``[B, G, R]`` (right-padded).

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


def response_hidden(model: Any, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Final hidden states at the positions predicting each response token.

    Returns:
      hidden ``[B, G, R, E]`` and the target mask ``[B, G, R]``.
    """
    body_mask, inputs, input_mask, target_mask = completion_inputs(batch)
    cache = model.encode_prompt(batch["prompt_tokens"], body_mask)
    hidden = model.forward_completions(cache, inputs, input_mask, return_hidden=True)
    return hidden, target_mask


def needed_extras(objective: Objective) -> tuple[str, ...]:
    """Per-token extras every term of a (composed) objective requires."""
    if isinstance(objective, Sum):
        return tuple(sorted({e for t in objective.terms for e in needed_extras(t)}))
    if isinstance(objective, Scaled):
        return needed_extras(objective.inner)
    inner = getattr(objective, "inner", None)
    own = tuple(objective.requires.extras)
    return tuple(sorted(set(own) | set(needed_extras(inner) if isinstance(inner, Objective) else ())))


def batch_logprobs(policy: Any, reference: Any | None, batch: dict, *,
                   extras: Sequence[str] = (), impl: str = "auto", top_k: int | None = None) -> LogProbs:
    """The objective's input for one batch.

    Args:
      policy: the trained decoder (``encode_prompt`` / ``forward_completions``
        / ``output_projection``).
      reference: the reference decoder, or ``None`` when the batch carries
        precomputed ``reference_logprobs`` ``[B, G, R]`` (or the objective is
        reference-free).
      batch: a collated batch (``jalign.data.collate.Collator``), plus
        optionally ``reference_logprobs``.
      extras: per-token extras to compute ("entropy", "ref_kl", "topk_mass",
        "topk_entropy"); "ref_kl" needs a reference model.
      impl: the kernel implementation (see ``jalign.kernels``).
      top_k: k for the top-k extras.

    Returns:
      ``LogProbs`` with ``[B, G, R]`` fields and the batch's labels.
    """
    hidden, target_mask = response_hidden(policy, batch)
    targets = batch["response_tokens"]
    head = policy.output_projection()
    ref_logprobs, ref_kwargs = batch.get("reference_logprobs"), {}
    if reference is not None:
        ref_hidden, _ = response_hidden(reference, batch)
        ref_head = reference.output_projection()
        ref_hidden = jax.lax.stop_gradient(ref_hidden)
        ref_out = sequence_logprobs(ref_hidden, jax.lax.stop_gradient(ref_head.kernel), targets, target_mask,
                                    bias=ref_head.bias, softcap=ref_head.softcap, impl=impl)
        ref_logprobs = ref_out.logprobs
        if "ref_kl" in extras:
            ref_kwargs = dict(ref_hidden=ref_hidden, ref_weight=jax.lax.stop_gradient(ref_head.kernel),
                              ref_bias=ref_head.bias)
    elif "ref_kl" in extras:
        raise ValueError("extras 'ref_kl' needs a reference model; the batch has only precomputed log-probs")
    out = sequence_logprobs(hidden, head.kernel, targets, target_mask, bias=head.bias, softcap=head.softcap,
                            extras=tuple(extras), top_k=top_k, impl=impl, **ref_kwargs)
    computed = {name: getattr(out, name) for name in extras}
    mask = target_mask.astype(jnp.float32)
    return LogProbs(
        policy=out.logprobs, mask=mask,
        reference=None if ref_logprobs is None else jax.lax.stop_gradient(ref_logprobs),
        extras=computed, labels=dict(batch.get("labels", {})))
