"""Tokenizers: raw bytes (built in, vocab 256) or a byte-level BPE trained on the corpus.

Both turn a document's raw file bytes into token ids and reserve one id, ``eos_id``, that
separates documents in the token stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

TokenizerName = Literal["byte", "bpe"]
BPE_FILE = "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"

TokenArray = npt.NDArray[np.int64]


class Tokenizer(Protocol):
    name: TokenizerName
    vocab_size: int
    eos_id: int

    def encode_documents(self, docs: Sequence[bytes]) -> list[TokenArray]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """One token per byte. The NUL byte, which text files do not contain, separates documents."""

    name: TokenizerName = "byte"
    vocab_size = 256
    eos_id = 0

    def encode_documents(self, docs: Sequence[bytes]) -> list[TokenArray]:
        return [np.frombuffer(doc, dtype=np.uint8).astype(np.int64) for doc in docs]

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")


class BpeTokenizer:
    """A byte-level BPE (GPT-2 style) from the `tokenizers` library; ``eos_id`` is 0."""

    name: TokenizerName = "bpe"

    def __init__(self, tokenizer: object) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        assert isinstance(tokenizer, HfTokenizer)
        self._tok = tokenizer
        self.vocab_size: int = tokenizer.get_vocab_size()
        eos = tokenizer.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(f"BPE tokenizer has no {EOS_TOKEN} token")
        self.eos_id: int = eos

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int,
              length: int | None = None) -> BpeTokenizer:
        from tokenizers import Tokenizer as HfTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HfTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer, length=length)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BpeTokenizer:
        from tokenizers import Tokenizer as HfTokenizer

        return cls(HfTokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        self._tok.save(str(path))

    def encode_documents(self, docs: Sequence[bytes]) -> list[TokenArray]:
        texts = [doc.decode("utf-8", errors="replace") for doc in docs]
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))


def train_tokenizer(
    name: TokenizerName,
    read_docs: Callable[[], Iterable[bytes]],
    vocab_size: int,
    n_docs: int | None = None,
) -> Tokenizer:
    """The byte tokenizer, or a BPE trained on the documents ``read_docs()`` yields."""
    if name == "byte":
        return ByteTokenizer()
    texts = (doc.decode("utf-8", errors="replace") for doc in read_docs())
    return BpeTokenizer.train(texts, vocab_size, length=n_docs)


def load_tokenizer(name: TokenizerName, shard_dir: Path) -> Tokenizer:
    """The tokenizer a shard directory was prepared with."""
    if name == "byte":
        return ByteTokenizer()
    return BpeTokenizer.load(shard_dir / BPE_FILE)
