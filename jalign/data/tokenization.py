"""Tokenisation of examples: chat templates, length budget, truncation.

The prompt is encoded once and each response separately, so the trainer can
encode the shared prompt once for all ``G`` responses.

- Standard (string) records: the prompt is encoded with the tokenizer's
  special tokens (e.g. BOS, if its post-processor adds one); each response
  is encoded without them and, with ``add_eos``, ends with the EOS token.
- Conversational records: the prompt is the chat template applied to the
  prompt messages with the generation prompt; a response is the rest of the
  template applied to prompt + response messages (the template's own
  end-of-turn tokens end it). Both are encoded without extra special tokens.

Truncation policies, for a budget of ``max_length`` tokens of prompt plus the
longest response (and at most ``max_prompt_length`` prompt tokens):

- ``"drop"``: nothing is cut; a longer example is ``too_long``.
- ``"keep_end"``: the prompt is cut from the left (the tokens next to the
  response stay); responses are never cut. ``too_long`` if the longest
  response leaves no room for one prompt token.
- ``"keep_start"``: the prompt is cut from the left to ``max_prompt_length``,
  then responses are cut from the right to fit. ``too_long`` if the prompt
  leaves no room for one response token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jalign.data.formats import Example
from jalign.data.validation import Malformed

TRUNCATIONS = ("drop", "keep_end", "keep_start")


@dataclasses.dataclass(frozen=True)
class Tokenization:
    """The length budget and truncation policy.

    Attributes:
      max_length: most tokens of prompt plus the longest response.
      max_prompt_length: most prompt tokens (``None``: only ``max_length``).
      truncation: one of ``TRUNCATIONS``.
      add_eos: end standard-style responses with the EOS token.
    """

    max_length: int = 1024
    max_prompt_length: int | None = None
    truncation: str = "drop"
    add_eos: bool = True

    def __post_init__(self):
        if self.truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {TRUNCATIONS}; got "
                             f"{self.truncation!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2; got {self.max_length}")
        if self.max_prompt_length is not None and not (
                1 <= self.max_prompt_length < self.max_length):
            raise ValueError("max_prompt_length must be in [1, max_length); "
                             f"got {self.max_prompt_length}")


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    """One example as token ids, unpadded.

    Attributes:
      index: the record's index in its source.
      prompt: int32 ``[P]`` prompt ids.
      responses: ``G`` int32 arrays ``[R_g]`` of response ids.
      labels: as in :class:`jalign.data.formats.Example`.
      reference_logprobs: ``G`` float32 arrays ``[R_g]``: per-token reference
        log-probs of each response, when precomputed once before training.
    """

    index: int
    prompt: np.ndarray
    responses: tuple[np.ndarray, ...]
    labels: dict[str, Any]
    reference_logprobs: tuple[np.ndarray, ...] | None = None


def render(example: Example, tokenizer: Any) -> tuple[str, list[str]]:
    """The prompt text and response texts, chat template applied if needed."""
    if not example.conversational:
        return example.prompt, list(example.responses)
    prompt = tokenizer.apply_chat_template(
        example.prompt, tokenize=False, add_generation_prompt=True)
    responses = []
    for response in example.responses:
        full = tokenizer.apply_chat_template(example.prompt + response,
                                             tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                "the chat template does not render the prompt (with the "
                "generation prompt) as a prefix of prompt + response; "
                f"prompt: {prompt!r}, full: {full!r}")
        responses.append(full[len(prompt):])
    return prompt, responses


def tokenize(example: Example, index: int, tokenizer: Any,
             config: Tokenization) -> TokenizedExample:
    """Encodes and truncates one example; raises ``Malformed`` if too long."""
    prompt_text, response_texts = render(example, tokenizer)
    standard = not example.conversational
    prompt = tokenizer(prompt_text, add_special_tokens=standard)["input_ids"]
    responses = tokenizer(response_texts, add_special_tokens=False)["input_ids"]
    if standard and config.add_eos and tokenizer.eos_token_id is not None:
        responses = [r + [tokenizer.eos_token_id] for r in responses]
    prompt, responses = _truncate(prompt, responses, example.response_fields,
                                  config)
    if example.kind == "paired" and responses[0] == responses[1]:
        raise Malformed("identical_responses", "rejected", "chosen and "
                        f"rejected are identical after truncation to "
                        f"{len(responses[0])} tokens")
    return TokenizedExample(
        index=index,
        prompt=np.asarray(prompt, np.int32),
        responses=tuple(np.asarray(r, np.int32) for r in responses),
        labels=example.labels)


def _truncate(prompt: list[int], responses: list[list[int]],
              fields: tuple[str, ...], config: Tokenization):
    """Applies the truncation policy; see the module docstring."""
    longest = max(range(len(responses)), key=lambda g: len(responses[g]))
    num_prompt, num_response = len(prompt), len(responses[longest])
    max_prompt = config.max_prompt_length or config.max_length
    if config.truncation == "drop":
        if num_prompt > max_prompt:
            raise Malformed("too_long", "prompt", f"prompt has {num_prompt} "
                            f"tokens > max_prompt_length {max_prompt}")
        if num_prompt + num_response > config.max_length:
            raise Malformed("too_long", fields[longest], f"{num_prompt} prompt "
                            f"+ {num_response} response tokens > max_length "
                            f"{config.max_length}")
        return prompt, responses
    if config.truncation == "keep_end":
        keep = min(max_prompt, config.max_length - num_response)
        if keep < min(num_prompt, 1):
            raise Malformed("too_long", fields[longest], f"response has "
                            f"{num_response} tokens, leaving no room for the "
                            f"prompt within max_length {config.max_length}")
        return prompt[max(num_prompt - keep, 0):], responses
    prompt = prompt[max(num_prompt - max_prompt, 0):]
    room = config.max_length - len(prompt)
    if room < 1:
        raise Malformed("too_long", "prompt", f"prompt has {len(prompt)} tokens, "
                        f"leaving no room for a response within max_length "
                        f"{config.max_length}")
    return prompt, [r[:room] for r in responses]
