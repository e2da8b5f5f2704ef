"""The tiny locally trained tokenizer and the local AutoTokenizer loader."""

import pytest

from jalign.models.tokenizer import IM_END, IM_START, load_tokenizer, train_tiny_tokenizer

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog",
         "hello there, general kenobi", "preference alignment in jax"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tiny_tokenizer(TEXTS, 300, out)
    return out


def test_round_trip_and_special_ids(tokenizer_dir):
    """Reloaded with AutoTokenizer from disk: decode(encode(s)) == s, fixed special ids."""
    tok = load_tokenizer(tokenizer_dir)
    assert len(tok) <= 300
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 3)
    for text in TEXTS + ["unseen text: ünïcode ✓"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # Training merged frequent pairs: a seen word takes fewer tokens than bytes.
    assert len(tok("hello", add_special_tokens=False)["input_ids"]) < len("hello")


def test_chat_template(tokenizer_dir):
    """The ChatML template renders the string written out by hand; markers are single ids."""
    tok = load_tokenizer(tokenizer_dir)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert text == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids(IM_START)) == 2
    assert ids.count(tok.eos_token_id) == 2
    assert tok.decode(ids) == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\nhello{IM_END}\n"


def test_errors(tmp_path):
    """Too small a vocabulary and a missing directory are rejected clearly."""
    with pytest.raises(ValueError, match="vocab_size"):
        train_tiny_tokenizer(TEXTS, 100, tmp_path)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing")
