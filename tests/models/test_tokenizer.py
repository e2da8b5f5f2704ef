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


def test_tiny_tokenizer_for_a_data_file_trains_once_per_content(tmp_path, monkeypatch):
    """The tokenizer of a file's lines equals `train_tiny_tokenizer` on those lines; it is trained again
    only when the file's bytes or the vocabulary size change (training calls counted)."""
    from jalign.models import tokenizer as module

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(TEXTS) + "\n\n")
    direct = train_tiny_tokenizer(TEXTS, 300, tmp_path / "direct")
    calls = []
    train = module.train_tiny_tokenizer
    monkeypatch.setattr(module, "train_tiny_tokenizer", lambda *a: calls.append(a) or train(*a))
    out = module.tiny_tokenizer_for(data, 300, tmp_path / "tok")
    assert out == str(tmp_path / "tok") and len(calls) == 1
    assert load_tokenizer(out).get_vocab() == direct.get_vocab()
    assert module.tiny_tokenizer_for(data, 300, tmp_path / "tok") == out and len(calls) == 1
    module.tiny_tokenizer_for(data, 290, tmp_path / "tok")
    data.write_text("\n".join(TEXTS[:2]))
    module.tiny_tokenizer_for(data, 290, tmp_path / "tok")
    assert [c[1] for c in calls] == [300, 290, 290] and calls[2][0] == TEXTS[:2]
