"""Tokenisation: chat templates, EOS, truncation policies.

Expected texts are written by hand from the fixture's chat template
(``<|role|>\\ncontent<|end|>\\n`` per message); the byte-level tokenizer
decodes ids back to exactly the encoded text, so comparing decoded text
checks the ids. Truncation expectations follow from each policy's definition
applied to the untruncated ids.
"""

import numpy as np
import pytest

from jalign.data import (Malformed, RecordFormat, Tokenization, render,
                         tokenize)

PAIR = {"prompt": "What is the capital of France?",
        "chosen": " The capital of France is Paris.",
        "rejected": " Lyon."}
CHAT = {"prompt": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Sky colour?"}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Green."}]}


def _tokenize(record, tokenizer, **config):
    example = RecordFormat.for_columns(tuple(record)).read(record)
    return tokenize(example, 7, tokenizer, Tokenization(**config))


def test_standard_text_and_eos(tokenizer, decode):
    """Standard records: the prompt as is, each response ends with EOS."""
    out = _tokenize(PAIR, tokenizer)
    assert out.index == 7
    assert decode(out.prompt) == "What is the capital of France?"
    assert [decode(r) for r in out.responses] == [
        " The capital of France is Paris.<eos>", " Lyon.<eos>"]
    assert out.prompt.dtype == np.int32
    assert _tokenize(PAIR, tokenizer, add_eos=False).responses[1][-1] != (
        tokenizer.eos_token_id)


def test_chat_template(tokenizer, decode):
    """Conversational records: prompt with the generation prompt; responses
    are the template's continuation (its end-of-turn marker, no EOS)."""
    out = _tokenize(CHAT, tokenizer)
    assert decode(out.prompt) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nSky colour?<|end|>\n"
        "<|assistant|>\n")
    assert [decode(r) for r in out.responses] == [
        "Blue.<|end|>\n", "Green.<|end|>\n"]


def test_render_matches_template(tokenizer):
    """`render` gives the same split as the hand-written template text."""
    example = RecordFormat.for_columns(tuple(CHAT)).read(CHAT)
    prompt, responses = render(example, tokenizer)
    assert prompt.endswith("<|assistant|>\n")
    assert responses == ["Blue.<|end|>\n", "Green.<|end|>\n"]


def test_template_without_prefix_property_is_an_error(tokenizer):
    """A template that renders the prompt differently with and without a
    response cannot be split into prompt and response ids."""
    odd = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer,
                              eos_token="<eos>",
                              chat_template="{{ messages | length }}")
    example = RecordFormat.for_columns(tuple(CHAT)).read(CHAT)
    with pytest.raises(ValueError, match="prefix"):
        render(example, odd)


def test_keep_end_cuts_prompt_from_the_left(tokenizer):
    """keep_end: the prompt keeps its last max_length - longest tokens;
    responses are whole."""
    full = _tokenize(PAIR, tokenizer)
    longest = max(len(r) for r in full.responses)
    out = _tokenize(PAIR, tokenizer, max_length=longest + 3,
                    truncation="keep_end")
    np.testing.assert_array_equal(out.prompt, full.prompt[-3:])
    for got, want in zip(out.responses, full.responses):
        np.testing.assert_array_equal(got, want)


def test_keep_end_respects_max_prompt_length(tokenizer):
    """keep_end with a prompt cap keeps at most max_prompt_length tokens."""
    full = _tokenize(PAIR, tokenizer)
    out = _tokenize(PAIR, tokenizer, max_length=64, max_prompt_length=2,
                    truncation="keep_end")
    np.testing.assert_array_equal(out.prompt, full.prompt[-2:])


def test_keep_start_cuts_responses_from_the_right(tokenizer):
    """keep_start: prompt cut to max_prompt_length from the left, responses
    to max_length - prompt length from the right."""
    full = _tokenize(PAIR, tokenizer)
    out = _tokenize(PAIR, tokenizer, max_length=6, max_prompt_length=2,
                    truncation="keep_start")
    np.testing.assert_array_equal(out.prompt, full.prompt[-2:])
    np.testing.assert_array_equal(out.responses[0], full.responses[0][:4])
    np.testing.assert_array_equal(out.responses[1], full.responses[1][:4])


def test_drop_keeps_examples_that_fit(tokenizer):
    """drop: an example exactly at the budget is kept whole; one token less
    of budget makes it too long, reported on the longest response."""
    full = _tokenize(PAIR, tokenizer)
    budget = len(full.prompt) + max(len(r) for r in full.responses)
    out = _tokenize(PAIR, tokenizer, max_length=budget)
    np.testing.assert_array_equal(out.responses[0], full.responses[0])
    with pytest.raises(Malformed) as error:
        _tokenize(PAIR, tokenizer, max_length=budget - 1)
    assert (error.value.reason, error.value.field) == ("too_long", "chosen")


@pytest.mark.parametrize("config, message", [
    ({"truncation": "left"}, "truncation"),
    ({"max_length": 1}, "max_length"),
    ({"max_length": 8, "max_prompt_length": 8}, "max_prompt_length"),
])
def test_bad_tokenization_config(config, message):
    """Invalid settings fail at construction."""
    with pytest.raises(ValueError, match=message):
        Tokenization(**config)
