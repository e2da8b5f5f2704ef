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

Special-token text inside the data (a literal ``"<|im_end|>"`` in a
response) is encoded as ordinary text, never as the control token, unless
``Tokenization.parse_special_tokens`` says so. A tokenizer call parses it by
default, in transformers and in TRL's trainers (``DPOTrainer.tokenize_row``
calls ``tokenizer(features["prompt"], add_special_tokens=False)``), so a
record could end a turn or forge a role header; we pass transformers'
``split_special_tokens=True`` for text from the data. Conversational records
keep the template's own special tokens: special-token text in message
contents is swapped for placeholders before the template runs and encoded as
text afterwards (the rendered text around it is encoded in pieces, so merges
across those points may differ; records without such text are encoded whole,
as before).

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
import functools
import re
from typing import Any, Literal, Sequence, get_args

import numpy as np

from jalign.data.formats import Example
from jalign.data.validation import Malformed

Truncation = Literal["drop", "keep_end", "keep_start"]
TRUNCATIONS = get_args(Truncation)


@dataclasses.dataclass(frozen=True)
class Tokenization:
    """The length budget and truncation policy.

    These defaults are the only ones: the trainer's ``DataSection`` takes its
    ``max_length`` and ``truncation`` defaults from here, because the data
    layer is used without the trainer and the trainer always goes through it.
    They are TRL's ``DPOConfig`` defaults (``max_length=1024``,
    ``truncation_mode="keep_end"``), so data prepared for TRL fits the same
    way: the prompt's start gives way and a response is never cut (one that
    alone overflows the budget is ``too_long``, never silently shortened).

    Attributes:
      max_length: most tokens of prompt plus the longest response.
      max_prompt_length: most prompt tokens (``None``: only ``max_length``).
      truncation: one of ``TRUNCATIONS``.
      add_eos: end standard-style responses with the EOS token.
      parse_special_tokens: encode special-token text found in the data
        (``"<|im_end|>"``) as the special token; by default it is text.
    """

    max_length: int = 1024
    max_prompt_length: int | None = None
    truncation: Truncation = "keep_end"
    add_eos: bool = True
    parse_special_tokens: bool = False

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
      truncated: the parts cut to fit the budget: ``"prompt"``,
        ``"response"`` (any of them), or neither.
    """

    index: int
    prompt: np.ndarray
    responses: tuple[np.ndarray, ...]
    labels: dict[str, Any]
    reference_logprobs: tuple[np.ndarray, ...] | None = None
    truncated: tuple[str, ...] = ()


def render(example: Example, tokenizer: Any) -> tuple[str, list[str]]:
    """The prompt text and response texts, chat template applied if needed.

    Raises:
      Malformed: ``chat_template`` if the template fails on the messages or
        does not render the prompt as a prefix of prompt + response.
    """
    if not example.conversational:
        return example.prompt, list(example.responses)
    prompt = _apply_template(tokenizer, example.prompt, "prompt",
                             add_generation_prompt=True)
    responses = []
    for field, response in zip(example.response_fields, example.responses):
        full = _apply_template(tokenizer, example.prompt + response, field)
        if not full.startswith(prompt):
            raise Malformed(
                "chat_template", field, "the chat template does not render "
                "the prompt (with the generation prompt) as a prefix of "
                f"prompt + response; prompt: {prompt!r}, full: {full!r}")
        responses.append(full[len(prompt):])
    return prompt, responses


def _apply_template(tokenizer: Any, messages: list, field: str, **kwargs) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as e:  # pylint: disable=broad-except  # the template is code
        raise Malformed("chat_template", field, "the chat template failed: "
                        f"{type(e).__name__}: {e}") from None
    if not isinstance(text, str):
        raise Malformed("chat_template", field, "the chat template returned "
                        f"{type(text).__name__}, not text")
    return text


def tokenize(example: Example, index: int, tokenizer: Any,
             config: Tokenization) -> TokenizedExample:
    """Encodes and truncates one example; raises ``Malformed`` if it cannot."""
    if example.prompts is not None:
        return _tokenize_joint(example, index, tokenizer, config)
    pattern = None if config.parse_special_tokens else _special_pattern(tokenizer)
    if example.conversational and pattern and _mentions(example, pattern):
        prompt, responses = _encode_protected(example, tokenizer, pattern)
    else:
        prompt_text, response_texts = render(example, tokenizer)
        split = {"split_special_tokens": True} if (
            pattern and not example.conversational) else {}
        standard = not example.conversational
        prompt = _encode(tokenizer, [prompt_text], "prompt",
                         add_special_tokens=standard, **split)[0]
        responses = _encode(tokenizer, response_texts, example.response_fields,
                            add_special_tokens=False, **split)
    if not example.conversational and config.add_eos and (
            tokenizer.eos_token_id is not None):
        responses = [r + [tokenizer.eos_token_id] for r in responses]
    for field, response in zip(example.response_fields, responses):
        if not response:
            raise Malformed("empty_response", field, "the response encodes to "
                            "no tokens")
    prompt, responses, truncated = _truncate(prompt, responses,
                                             example.response_fields, config)
    if example.kind == "paired" and responses[0] == responses[1]:
        raise Malformed("identical_responses", "rejected", "chosen and "
                        f"rejected are identical after truncation to "
                        f"{len(responses[0])} tokens")
    return TokenizedExample(
        index=index,
        prompt=np.asarray(prompt, np.int32),
        responses=tuple(np.asarray(r, np.int32) for r in responses),
        labels=example.labels, truncated=truncated)


def _tokenize_joint(example: Example, index: int, tokenizer: Any,
                    config: Tokenization) -> TokenizedExample:
    """A joint record (one instruction per response): ids and ``instruction_length``.

    The token prefix the two encoded instructions share is the prompt (the
    trainer encodes it once); each response slot holds the rest of its own
    instruction, then its response. ``labels["instruction_length"]`` ``[2]``
    counts those instruction tokens, which an objective conditions on but
    does not score. Identical instructions give 0: an ordinary pair.
    """
    pattern = None if config.parse_special_tokens else _special_pattern(tokenizer)
    split = {"split_special_tokens": True} if pattern else {}
    prompts = _encode(tokenizer, list(example.prompts), ("prompt_chosen", "prompt_rejected"),
                      add_special_tokens=True, **split)
    responses = _encode(tokenizer, list(example.responses), example.response_fields,
                        add_special_tokens=False, **split)
    if config.add_eos and tokenizer.eos_token_id is not None:
        responses = [r + [tokenizer.eos_token_id] for r in responses]
    for field, response in zip(example.response_fields, responses):
        if not response:
            raise Malformed("empty_response", field, "the response encodes to no tokens")
    shared = 0
    while shared < min(map(len, prompts)) and prompts[0][shared] == prompts[1][shared]:
        shared += 1
    starts = [len(p) - shared for p in prompts]
    slots = [p[shared:] + r for p, r in zip(prompts, responses)]
    prompt, slots, truncated = _truncate(prompts[0][:shared], slots, example.response_fields, config)
    for field, slot, start in zip(example.response_fields, slots, starts):
        if len(slot) <= start:
            raise Malformed("too_long", field, f"truncation to max_length {config.max_length} "
                            f"left none of its tokens after {start} instruction tokens")
    labels = {**example.labels, "instruction_length": np.asarray(starts, np.float32)}
    return TokenizedExample(index=index, prompt=np.asarray(prompt, np.int32),
                            responses=tuple(np.asarray(s, np.int32) for s in slots),
                            labels=labels, truncated=truncated)


def _encode(tokenizer: Any, texts: list[str], fields: str | Sequence[str],
            **kwargs) -> list[list[int]]:
    """Token ids of ``texts``; a tokenizer failure is the record's ``invalid_text``."""
    if not texts:
        return []
    try:
        return [list(ids) for ids in tokenizer(texts, **kwargs)["input_ids"]]
    except Exception as e:  # pylint: disable=broad-except  # Rust / Python tokenizers
        field = fields if isinstance(fields, str) else ", ".join(fields)
        raise Malformed("invalid_text", field, "the tokenizer rejected the "
                        f"text: {type(e).__name__}: {e}") from None


@functools.lru_cache(maxsize=16)
def _special_pattern(tokenizer: Any) -> re.Pattern | None:
    """A regex matching the tokenizer's special-token strings, longest first."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials = {t.content for t in decoder.values() if getattr(t, "special", False)}
    specials |= set(getattr(tokenizer, "all_special_tokens", ()))
    specials = sorted((t for t in specials if t), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, specials))) if specials else None


def _mentions(example: Example, pattern: re.Pattern) -> bool:
    messages = example.prompt + [m for r in example.responses for m in r]
    return any(pattern.search(m["content"]) for m in messages)


def _encode_protected(example: Example, tokenizer: Any, pattern: re.Pattern):
    """Prompt and response ids of a conversational example whose contents hold
    special-token text: that text is replaced by placeholders for the template
    and encoded as text (``split_special_tokens``)."""
    texts = [m["content"] for m in example.prompt] + [
        m["content"] for r in example.responses for m in r]
    mark = next((chr(c) for c in range(0xE000, 0xF900)
                 if not any(chr(c) in t for t in texts)), None)
    if mark is None:
        raise Malformed("invalid_text", "prompt", "every private-use character "
                        "occurs in the messages; none is free as a placeholder")
    literals: list[str] = []

    def hide(match: re.Match) -> str:
        literals.append(match.group())
        return f"{mark}{len(literals) - 1}{mark}"

    def protect(messages: list) -> list:
        return [{**m, "content": pattern.sub(hide, m["content"])} for m in messages]

    hidden = dataclasses.replace(
        example, prompt=protect(example.prompt),
        responses=tuple(protect(r) for r in example.responses))
    prompt_text, response_texts = render(hidden, tokenizer)
    fields = ("prompt",) + example.response_fields
    ids = []
    for field, text in zip(fields, [prompt_text] + response_texts):
        pieces = text.split(mark)  # text, index, text, index, ..., text
        if len(pieces) % 2 == 0 or not all(i.isdigit() and int(i) < len(literals)
                                           for i in pieces[1::2]):
            raise Malformed("chat_template", field, "the chat template altered "
                            "the message contents; cannot keep their "
                            "special-token text apart")
        encoded = _encode(tokenizer, pieces[0::2], field, add_special_tokens=False)
        literal = _encode(tokenizer, [literals[int(i)] for i in pieces[1::2]],
                          field, add_special_tokens=False, split_special_tokens=True)
        ids.append([t for k, piece in enumerate(encoded)
                    for t in piece + (literal[k] if k < len(literal) else [])])
    return ids[0], ids[1:]


def _truncate(prompt: list[int], responses: list[list[int]],
              fields: tuple[str, ...], config: Tokenization):
    """Applies the truncation policy (see the module docstring); returns the
    ids and the parts that were cut."""
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
        return prompt, responses, ()
    if config.truncation == "keep_end":
        keep = min(max_prompt, config.max_length - num_response)
        if keep < min(num_prompt, 1):
            raise Malformed("too_long", fields[longest], f"response has "
                            f"{num_response} tokens, leaving no room for the "
                            f"prompt within max_length {config.max_length}")
        cut = ("prompt",) if num_prompt > keep else ()
        return prompt[max(num_prompt - keep, 0):], responses, cut
    cut = ("prompt",) if num_prompt > max_prompt else ()
    prompt = prompt[max(num_prompt - max_prompt, 0):]
    room = config.max_length - len(prompt)
    if room < 1:
        raise Malformed("too_long", "prompt", f"prompt has {len(prompt)} tokens, "
                        f"leaving no room for a response within max_length "
                        f"{config.max_length}")
    cut += ("response",) if num_response > room else ()
    return prompt, [r[:room] for r in responses], cut
