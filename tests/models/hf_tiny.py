"""Tiny random-weight Hugging Face models (PyTorch, CPU), one per family, and helpers.

Each checkpoint is built with `transformers` from a small config, all
parameters redrawn (norm scales around 1, everything else N(0, 0.3)) so every
weight matters, saved with ``save_pretrained`` to a temp dir (fixtures in conftest.py).
Nothing is downloaded.
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

_COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)

HF_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        **_COMMON, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=16)),
    "mistral": lambda: transformers.MistralConfig(**_COMMON, sliding_window=5),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON),
    "qwen3": lambda: transformers.Qwen3Config(**{**_COMMON, "head_dim": 16}),
    "gemma": lambda: transformers.GemmaConfig(**_COMMON),
    "gemma2": lambda: transformers.Gemma2Config(
        **_COMMON, sliding_window=4, query_pre_attn_scalar=16,
        attn_logit_softcapping=2.0, final_logit_softcapping=5.0),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0),
}
FAMILIES = tuple(HF_CONFIGS)


def build_torch_model(family: str, auto=transformers.AutoModelForCausalLM, **config_changes):
    """A randomised fp32 torch model of ``family`` with eager attention.

    ``auto`` picks the head (``AutoModelForSequenceClassification`` for a
    reward model); ``config_changes`` set config attributes such as ``num_labels``.
    """
    torch.manual_seed(0)
    config = HF_CONFIGS[family]()
    for key, value in config_changes.items():
        setattr(config, key, value)
    model = auto.from_config(config, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name or ".ln_" in name
            offset = 0.0 if family.startswith("gemma") else 1.0
            p.normal_(mean=offset if is_norm and name.endswith("weight") else 0.0, std=0.3)
    return model.eval()


def padded_batch(seed: int = 0, vocab: int = 128, length: int = 12):
    """A [3, length] batch: full row, right-padded row, left-padded row.

    Returns int32 tokens (pads are 0), bool mask, int32 positions counted
    from the first valid token.
    """
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(3, length)).astype(np.int32)
    mask = np.ones((3, length), bool)
    mask[1, length - 4:] = False
    mask[2, :5] = False
    tokens[~mask] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return tokens, mask, positions


def reward_batch(seed: int = 0, vocab: int = 128, pad: int = 0):
    """Prompt/response pairs in jalign's batch layout and as HF sequences.

    Rows have prompt lengths 5, 2, 6 (of P = 6, left-padded) and response
    lengths 4, 6, 1 (of R = 6, right-padded). Real tokens are drawn from
    [3, vocab) so none equals ``pad``. Returns ``(batch, tokens, mask)``:
    the dict {prompt_tokens [B, P], prompt_mask, response_tokens [B, 1, R],
    response_mask} and the same rows as prompt+response, right-padded with
    ``pad`` to [B, P + R] with their mask.
    """
    rng = np.random.default_rng(seed)
    prompt_len, response_len, p, r = (5, 2, 6), (4, 6, 1), 6, 6
    batch = {k: np.full((3, n), pad, np.int32) for k, n in (("prompt_tokens", p), ("response_tokens", r))}
    batch.update(prompt_mask=np.zeros((3, p), bool), response_mask=np.zeros((3, r), bool))
    tokens, mask = np.full((3, p + r), pad, np.int32), np.zeros((3, p + r), bool)
    for i, (n, m) in enumerate(zip(prompt_len, response_len)):
        prompt, response = rng.integers(3, vocab, n), rng.integers(3, vocab, m)
        batch["prompt_tokens"][i, p - n:], batch["prompt_mask"][i, p - n:] = prompt, True
        batch["response_tokens"][i, :m], batch["response_mask"][i, :m] = response, True
        tokens[i, :n + m], mask[i, :n + m] = np.concatenate([prompt, response]), True
    batch["response_tokens"] = batch["response_tokens"][:, None]
    batch["response_mask"] = batch["response_mask"][:, None]
    return batch, tokens, mask


def torch_scores(model, tokens, mask) -> np.ndarray:
    """``logits`` [B, N] of a ``*ForSequenceClassification`` model, which pools the rightmost non-pad token."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long))
    return out.logits.float().numpy()


def torch_logits(model, tokens, mask, positions) -> np.ndarray:
    """fp32 logits [B, T, V] of the torch model with explicit position ids."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(positions, dtype=torch.long))
    return out.logits.float().numpy()


def next_token_logprobs(logits, tokens, mask):
    """log p(tokens[t+1] | <= t) [B, T-1] and its validity mask (both t, t+1 valid)."""
    logits = jnp.asarray(logits, jnp.float32)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    target = jnp.take_along_axis(logp, jnp.asarray(tokens)[:, 1:, None], -1)[..., 0]
    valid = mask[:, 1:] & mask[:, :-1]
    return target, valid


@nnx.jit
def jit_forward(model, tokens, mask):
    """One compiled full forward per model structure: logits [B, T, V]."""
    return model(tokens, mask)
