"""Small decoder batches and their independent per-token reference: full forwards over full logits.

The reference runs the decoder on each ``prompt + response`` concatenation
(no prompt cache, no fused kernel), takes ``jax.nn.log_softmax`` over the
full vocabulary and picks out each response token's row by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jalign.models import ModelConfig

CFG = ModelConfig("llama", vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64)


def paired_batch():
    """Two prompts (left-padded, one of length 1) with two ragged responses each."""
    prompt = np.array([[0, 5, 6, 7], [0, 0, 0, 9]], np.int32)
    prompt_mask = (np.arange(4)[None] >= np.array([[1], [3]])).astype(np.int32)
    responses = np.array([[[11, 12, 13], [14, 15, 0]], [[16, 0, 0], [17, 18, 19]]], np.int32)
    response_mask = np.array([[[1, 1, 1], [1, 1, 0]], [[1, 0, 0], [1, 1, 1]]], np.int32)
    labels = {"example_weight": np.ones(2, np.float32)}
    return dict(prompt_tokens=prompt, prompt_mask=prompt_mask, response_tokens=responses,
                response_mask=response_mask, labels=labels)


def unpaired_batch():
    """Four rows of one response each; the last row is padding (weight 0, empty), as a short last batch."""
    prompt = np.array([[0, 5, 6, 7], [0, 0, 8, 9], [0, 0, 0, 4], [0, 0, 0, 0]], np.int32)
    prompt_mask = (prompt > 0).astype(np.int32)
    responses = np.array([[[11, 12, 13]], [[14, 15, 0]], [[16, 17, 18]], [[0, 0, 0]]], np.int32)
    response_mask = (responses > 0).astype(np.int32)
    labels = {"example_weight": np.array([1, 1, 1, 0], np.float32),
              "desirable": np.array([[1], [0], [1], [0]], np.float32)}
    return dict(prompt_tokens=prompt, prompt_mask=prompt_mask, response_tokens=responses,
                response_mask=response_mask, labels=labels)


WIDTH = 16  # every reference sequence is right-padded to this, so the forward compiles once


@nnx.jit
def _logits(model, tokens, mask):
    return model(tokens, mask)


def full_sequence_logprobs(model, prompt: np.ndarray, response: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token log pi(response_t) ``[R]`` and the full log-softmax rows ``[R, V]`` of one sequence."""
    sequence = np.concatenate([prompt, response]).astype(np.int32)
    tokens = np.zeros((1, WIDTH), np.int32)
    tokens[0, :len(sequence)] = sequence
    mask = np.arange(WIDTH)[None] < len(sequence)  # causal attention: right padding changes nothing before it
    logits = _logits(model, jnp.asarray(tokens), jnp.asarray(mask))
    logp = np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1), np.float64)
    rows = logp[len(prompt) - 1:len(prompt) - 1 + len(response)]
    return rows[np.arange(len(response)), response], rows


def batch_logprobs_by_hand(model, batch) -> np.ndarray:
    """``[B, G, R]`` per-token log-probs of every response, 0 off the response mask."""
    out = np.zeros(batch["response_tokens"].shape, np.float64)
    for b in range(out.shape[0]):
        prompt = batch["prompt_tokens"][b][batch["prompt_mask"][b] > 0]
        for g in range(out.shape[1]):
            response = batch["response_tokens"][b, g][batch["response_mask"][b, g] > 0]
            if len(prompt) and len(response):
                out[b, g, :len(response)] = full_sequence_logprobs(model, prompt, response)[0]
    return out
