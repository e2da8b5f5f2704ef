"""Fixtures for the data tests: a tiny byte-level BPE tokenizer with a chat
template, built here with the ``tokenizers`` library so these tests do not
depend on ``jalign.models.tokenizer``."""

import pathlib

import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

DATA_DIR = pathlib.Path(__file__).parents[2] / "experiments" / "data"

# Role headers and the end-of-turn marker are single special tokens.
SPECIAL_TOKENS = ["<pad>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>",
                  "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="session")
def tokenizer():
    """A 400-token byte-level BPE trained on the shipped tiny data files."""
    texts = [p.read_text() for p in sorted(DATA_DIR.glob("*.jsonl"))]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>",
        chat_template=CHAT_TEMPLATE)


@pytest.fixture
def decode(tokenizer):
    """Token ids -> text, special tokens included."""
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)
