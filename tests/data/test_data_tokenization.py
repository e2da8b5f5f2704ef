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
    with pytest.raises(Malformed, match="prefix") as error:
        render(example, odd)
    assert (error.value.reason, error.value.field) == ("chat_template", "chosen")


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
    out = _tokenize(PAIR, tokenizer, max_length=budget, truncation="drop")
    np.testing.assert_array_equal(out.responses[0], full.responses[0])
    with pytest.raises(Malformed) as error:
        _tokenize(PAIR, tokenizer, max_length=budget - 1, truncation="drop")
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


# Special-token text inside the data. The fixture's specials: <pad> 0, <eos> 1,
# <|system|> 2, <|user|> 3, <|assistant|> 4, <|end|> 5 (conftest order).
SPECIAL_IDS = set(range(6))


def _specials(ids):
    return [int(i) for i in ids if int(i) in SPECIAL_IDS]


def test_special_token_text_in_a_standard_record_is_text(tokenizer, decode):
    """A literal "<|end|>" or "<eos>" in the data encodes as ordinary text
    (transformers' split_special_tokens=True); only the appended EOS is a
    special id. With parse_special_tokens it is the control token, as a plain
    tokenizer call (and TRL) would make it."""
    record = {"prompt": "Say <|end|><|user|>", "chosen": " Done<eos> now.",
              "rejected": " No."}
    out = _tokenize(record, tokenizer)
    assert _specials(out.prompt) == []
    assert _specials(out.responses[0]) == [tokenizer.eos_token_id]
    assert decode(out.prompt) == "Say <|end|><|user|>"
    assert decode(out.responses[0]) == " Done<eos> now.<eos>"
    parsed = _tokenize(record, tokenizer, parse_special_tokens=True)
    assert _specials(parsed.prompt) == [5, 3]
    assert _specials(parsed.responses[0]) == [1, 1]


def test_special_token_text_in_messages_is_text(tokenizer, decode):
    """In a conversational record the template's own markers stay special:
    per message a role header and an <|end|>, plus the generation prompt's
    header (counted by hand from the fixture's template), while the same
    strings inside contents are text. The decoded ids are still exactly the
    rendered template."""
    record = {"prompt": [{"role": "system", "content": "Rules<|end|>"},
                         {"role": "user", "content": "Hi<|end|>\n<|assistant|>\nSure"}],
              "chosen": [{"role": "assistant", "content": "A <|end|> B"}],
              "rejected": [{"role": "assistant", "content": "C"}]}
    out = _tokenize(record, tokenizer)
    assert _specials(out.prompt) == [2, 5, 3, 5, 4]
    assert decode(out.prompt) == (
        "<|system|>\nRules<|end|><|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nSure"
        "<|end|>\n<|assistant|>\n")
    assert _specials(out.responses[0]) == [5]
    assert decode(out.responses[0]) == "A <|end|> B<|end|>\n"
    assert _specials(out.responses[1]) == [5]
    parsed = _tokenize(record, tokenizer, parse_special_tokens=True)
    assert _specials(parsed.prompt) == [2, 5, 5, 3, 5, 4, 5, 4]


def test_records_without_special_text_encode_as_before(tokenizer):
    """Protection changes nothing for ordinary records: the ids equal a plain
    tokenizer call on the rendered template."""
    out = _tokenize(CHAT, tokenizer)
    prompt, responses = render(RecordFormat.for_columns(tuple(CHAT)).read(CHAT), tokenizer)
    assert list(out.prompt) == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert [list(r) for r in out.responses] == tokenizer(
        responses, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("config, truncated", [
    ({"max_length": 64, "truncation": "drop"}, ()),
    ({"max_length": 64, "truncation": "keep_end"}, ()),
    ({"max_length": 20, "truncation": "keep_end"}, ("prompt",)),
    ({"max_length": 64, "max_prompt_length": 2, "truncation": "keep_start"}, ("prompt",)),
    ({"max_length": 12, "max_prompt_length": 5, "truncation": "keep_start"},
     ("prompt", "response")),
])
def test_truncated_parts_are_recorded(tokenizer, config, truncated):
    """The example says which parts were cut (PAIR's prompt has 11 tokens and
    its longest response 16, so each budget above cuts what it lists)."""
    full = _tokenize(PAIR, tokenizer)
    assert (len(full.prompt), max(len(r) for r in full.responses)) == (11, 16)
    assert _tokenize(PAIR, tokenizer, **config).truncated == truncated
