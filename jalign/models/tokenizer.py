"""Tokenizers: Hugging Face tokenizers from local directories, and a tiny trained one.

`load_tokenizer` wraps ``transformers.AutoTokenizer.from_pretrained`` for a
local directory (never the hub). `train_tiny_tokenizer` trains a byte-level
BPE on a handful of strings with the `tokenizers` library, wraps it as a
``PreTrainedTokenizerFast`` with special tokens and a ChatML chat template,
saves it and loads it back, so tests and demos run offline;
`tiny_tokenizer_for` does that once for a data file, so an experiment file
only names the tokenizer it wants.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, IM_START, IM_END = "<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, IM_START, IM_END)   # ids 0, 1, 2, 3

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_BYTE_ALPHABET = 256
_FINGERPRINT = "jalign_tiny_tokenizer.json"  # what the saved tokenizer was trained from


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """``AutoTokenizer`` from a local directory; raises if it is not one."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path!s} does not exist")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int,
                         out_dir: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Trains a byte-level BPE of at most ``vocab_size`` tokens, saves it, loads it back.

    Special tokens: ``<|pad|>`` (pad, id 0), ``<|bos|>`` (bos, id 1),
    ``<|im_start|>`` (id 2) and ``<|im_end|>`` (eos, id 3, ends every chat
    turn). Every byte is in the vocabulary, so any text encodes; hence
    ``vocab_size`` must exceed 256 + the 4 special tokens.
    """
    minimum = _BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"{vocab_size=} must be at least {minimum} for a byte-level BPE")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(list(texts), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=PAD, bos_token=BOS,
                                      eos_token=IM_END,
                                      additional_special_tokens=[IM_START])
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(str(out_dir))
    return load_tokenizer(out_dir)


def tiny_tokenizer_for(data_file: str | os.PathLike, vocab_size: int, out_dir: str | os.PathLike) -> str:
    """``out_dir`` holding a `train_tiny_tokenizer` trained on the lines of ``data_file``, trained at most once.

    Each non-blank line is one training text (a JSONL record's text, keys
    included). The file's SHA-256 and ``vocab_size`` are saved beside the
    tokenizer; while they match, the saved tokenizer is reused, and when the
    data or the size change it is trained again. Returns ``out_dir`` as a
    string, the value ``ModelSection.tokenizer`` takes.
    """
    data = pathlib.Path(data_file).read_bytes()
    fingerprint = {"data_sha256": hashlib.sha256(data).hexdigest(), "vocab_size": vocab_size}
    marker = pathlib.Path(out_dir) / _FINGERPRINT
    if not (marker.exists() and json.loads(marker.read_text()) == fingerprint):
        texts = [line for line in data.decode("utf-8").splitlines() if line.strip()]
        train_tiny_tokenizer(texts, vocab_size, out_dir)
        marker.write_text(json.dumps(fingerprint))
    return str(out_dir)
