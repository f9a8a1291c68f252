"""The on-disk token dataset: a directory of flat token shards, and how to prepare one.

Layout of a prepared directory::

    meta.json            {"format": "stoker-shards", "tokenizer", "vocab_size", "eos_id", "dtype",
                          "splits": {"train": [{"file", "tokens", "documents"}], "val": [...]}}
    train-00000.bin      1024-byte JSON header (tokenizer, vocab size, dtype, token count), then
    val-00000.bin        the tokens as one flat little-endian uint16 (or uint32) array
    tokenizer.json       the trained BPE (only for tokenizer "bpe")

Each split's shards, in order, form one token stream: every document followed by ``eos_id``.
A directory is written under a temporary name and renamed into place once complete, so a crash
never leaves a half-written dataset that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from stoker.spec.errors import StokerError
from stoker.train.tokenizer import (
    BPE_FILE,
    BpeTokenizer,
    Tokenizer,
    TokenizerName,
    train_tokenizer,
)

META_FILE = "meta.json"
FORMAT: Literal["stoker-shards"] = "stoker-shards"
SHARD_FORMAT = "stoker-tokens"
HEADER_BYTES = 1024
DEFAULT_SHARD_TOKENS = 100_000_000
ENCODE_CHUNK_BYTES = 4 << 20
Split = Literal["train", "val"]
SPLITS: tuple[Split, ...] = ("train", "val")


class InvalidShardDir(StokerError):
    """A directory that is not a complete, consistent prepared dataset."""


class ShardDirExists(StokerError):
    """The output directory of ``prepare`` already holds something."""


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    tokens: int = Field(gt=0)
    documents: int = Field(ge=0)


class DatasetMeta(BaseModel):
    """The contents of ``meta.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["stoker-shards"] = FORMAT
    version: Literal[1] = 1
    tokenizer: TokenizerName
    vocab_size: int = Field(gt=0)
    eos_id: int = Field(ge=0)
    dtype: Literal["uint16", "uint32"]
    splits: dict[Split, list[ShardInfo]]
    source: str = ""

    def tokens(self, split: Split) -> int:
        return sum(s.tokens for s in self.splits.get(split, []))

    def documents(self, split: Split) -> int:
        return sum(s.documents for s in self.splits.get(split, []))


def token_dtype(vocab_size: int) -> Literal["uint16", "uint32"]:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


# ---------------------------------------------------------------- reading


def read_meta(shard_dir: Path) -> DatasetMeta:
    """Load and check a prepared directory's ``meta.json`` and the size of every shard."""
    path = shard_dir / META_FILE
    if not shard_dir.is_dir():
        raise InvalidShardDir(f"{shard_dir}: no such directory")
    if not path.is_file():
        raise InvalidShardDir(f"{shard_dir}: not a prepared dataset (no {META_FILE}; "
                              "make one with `stoker data prepare`)")
    try:
        meta = DatasetMeta.model_validate_json(path.read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidShardDir(f"{path}: invalid {where}: {first['msg']}") from None
    itemsize = np.dtype(meta.dtype).itemsize
    for info in (s for split in meta.splits.values() for s in split):
        shard = shard_dir / info.file
        expected = HEADER_BYTES + info.tokens * itemsize
        if not shard.is_file() or shard.stat().st_size != expected:
            raise InvalidShardDir(f"{shard}: missing or truncated (expected {expected} bytes)")
    if meta.tokenizer == "bpe" and not (shard_dir / BPE_FILE).is_file():
        raise InvalidShardDir(f"{shard_dir}: tokenizer 'bpe' but no {BPE_FILE}")
    return meta


def read_header(shard: Path) -> dict[str, object]:
    """The JSON header at the start of a shard file."""
    with shard.open("rb") as f:
        header: dict[str, object] = json.loads(f.read(HEADER_BYTES))
    return header


def open_split(shard_dir: Path, meta: DatasetMeta, split: Split) -> list[np.memmap]:
    """Memory-map every shard of one split, in stream order."""
    return [
        np.memmap(shard_dir / s.file, dtype=np.dtype(meta.dtype).newbyteorder("<"), mode="r",
                  offset=HEADER_BYTES, shape=(s.tokens,))
        for s in meta.splits.get(split, [])
    ]


# ---------------------------------------------------------------- writing


class ShardWriter:
    """Appends documents to one split, cutting a new shard every ``shard_tokens`` tokens."""

    def __init__(self, out_dir: Path, split: Split, tokenizer: Tokenizer,
                 shard_tokens: int) -> None:
        self.out_dir = out_dir
        self.split = split
        self.tokenizer = tokenizer
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.shard_tokens = shard_tokens
        self.shards: list[ShardInfo] = []
        self._pending: list[npt.NDArray[np.integer]] = []
        self._pending_tokens = 0
        self._doc_ends: list[int] = []  # where pending documents end, from the pending start

    def add(self, doc: npt.NDArray[np.integer]) -> None:
        """Append one document and its end-of-document token."""
        eos = np.array([self.tokenizer.eos_id], dtype=self.dtype)
        self._pending += [doc.astype(self.dtype, copy=False), eos]
        self._pending_tokens += len(doc) + 1
        self._doc_ends.append(self._pending_tokens)
        while self._pending_tokens >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> list[ShardInfo]:
        if self._pending_tokens:
            self._flush(self._pending_tokens)
        return self.shards

    def _flush(self, n: int) -> None:
        tokens = np.concatenate(self._pending)
        rest = tokens[n:]
        self._pending = [rest] if len(rest) else []
        self._pending_tokens = len(rest)
        # A document cut across shards counts in the shard where it ends.
        docs = sum(1 for end in self._doc_ends if end <= n)
        self._doc_ends = [end - n for end in self._doc_ends[docs:]]
        name = f"{self.split}-{len(self.shards):05d}.bin"
        write_shard(self.out_dir / name, tokens[:n], self.tokenizer, self.split)
        self.shards.append(ShardInfo(file=name, tokens=n, documents=docs))


def write_shard(path: Path, tokens: npt.NDArray[np.integer], tokenizer: Tokenizer,
                split: Split) -> None:
    header = {
        "format": SHARD_FORMAT, "version": 1, "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size, "dtype": str(tokens.dtype), "tokens": len(tokens),
        "split": split,
    }
    text = json.dumps(header).encode()
    assert len(text) < HEADER_BYTES
    with path.open("wb") as f:
        f.write(text.ljust(HEADER_BYTES - 1) + b"\n")
        f.write(tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes())


# ---------------------------------------------------------------- preparing a corpus


def prepare(
    files: Sequence[Path],
    out: Path,
    tokenizer: TokenizerName = "byte",
    vocab_size: int = 4096,
    val_fraction: float = 0.01,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    *,
    source: str = "",
    force: bool = False,
    progress: bool = True,
) -> DatasetMeta:
    """Tokenize ``files`` (one document each) into a shard directory at ``out``.

    Documents are split between train and val deterministically (see `choose_val`).
    The directory appears at ``out`` only once complete.
    """
    _check_args(files, tokenizer, vocab_size, val_fraction, shard_tokens)
    out = out.expanduser().absolute()
    _check_out(out, force)
    files = sorted(set(files))
    sizes = [f.stat().st_size for f in files]
    val = choose_val(files, sizes, val_fraction)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with _progress_bar(progress) as bar:
            tok = _train(tokenizer, files, sizes, vocab_size, bar)
            writers = {s: ShardWriter(tmp, s, tok, shard_tokens) for s in SPLITS}
            task = bar.add_task("tokenizing", total=sum(sizes))
            for chunk, nbytes in _chunks(files, sizes):
                docs = tok.encode_documents([f.read_bytes() for f in chunk])
                for f, doc in zip(chunk, docs, strict=True):
                    if len(doc):
                        writers["val" if f in val else "train"].add(doc)
                bar.advance(task, nbytes)
        meta = DatasetMeta(
            tokenizer=tok.name, vocab_size=tok.vocab_size, eos_id=tok.eos_id,
            dtype=token_dtype(tok.vocab_size), splits={s: w.close() for s, w in writers.items()},
            source=source,
        )
        if not meta.tokens("train"):
            raise StokerError(f"no tokens: every input file is empty ({len(files)} files)")
        if isinstance(tok, BpeTokenizer):
            tok.save(tmp / BPE_FILE)
        (tmp / META_FILE).write_text(meta.model_dump_json(indent=1))
        tmp.chmod(0o755)  # mkdtemp makes it private
        _publish(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def choose_val(files: Sequence[Path], sizes: Sequence[int], fraction: float) -> set[Path]:
    """The validation documents: in an order fixed by a hash of each file's path relative to
    the corpus root, the first files whose bytes reach ``fraction`` of the corpus.

    Always leaves at least one train document; picks at least one val document when
    ``fraction > 0`` and there are two or more.
    """
    if fraction <= 0 or len(files) < 2:
        return set()
    root = Path(os.path.commonpath([f.parent for f in files]))
    order = sorted(range(len(files)),
                   key=lambda i: hashlib.sha256(str(files[i].relative_to(root)).encode()).digest())
    target = fraction * sum(sizes)
    val: set[Path] = set()
    taken = 0
    for i in order[:-1]:
        if val and taken >= target:
            break
        val.add(files[i])
        taken += sizes[i]
    return val


def _check_args(files: Sequence[Path], tokenizer: str, vocab_size: int, val_fraction: float,
                shard_tokens: int) -> None:
    if not files:
        raise StokerError("no input files")
    if tokenizer not in ("byte", "bpe"):
        raise StokerError(f"--tokenizer: unknown tokenizer {tokenizer!r} (byte or bpe)")
    if tokenizer == "bpe" and not 260 <= vocab_size < 1 << 31:
        raise StokerError(f"--vocab-size: {vocab_size} is out of range (at least 260)")
    if not 0 <= val_fraction < 0.5:
        raise StokerError(f"--val-fraction: {val_fraction} is not in [0, 0.5)")
    if shard_tokens < 1:
        raise StokerError(f"--shard-tokens: {shard_tokens} must be positive")
    for f in files:
        if not f.is_file():
            raise StokerError(f"{f}: not a file")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise StokerError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / META_FILE).is_file():
            raise ShardDirExists(f"--out {out}: directory is not empty and holds no prepared "
                                 "dataset; refusing to replace it")
        if not force:
            raise ShardDirExists(f"--out {out}: already holds a prepared dataset "
                                 "(--force replaces it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StokerError(f"--out {out}: cannot create parent directory: {e.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise StokerError(f"--out {out}: {out.parent} is not writable")


def _publish(tmp: Path, out: Path, replace: bool) -> None:
    """Move the finished directory into place; an existing dataset is swapped out only if asked."""
    try:
        os.rename(tmp, out)  # succeeds if ``out`` is absent or an empty directory
        return
    except OSError:
        if not replace or not out.is_dir():
            raise ShardDirExists(f"{out}: appeared while preparing; left as it is") from None
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "d")
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _train(name: TokenizerName, files: Sequence[Path], sizes: Sequence[int], vocab_size: int,
           bar: Progress) -> Tokenizer:
    if name == "byte":
        return train_tokenizer(name, lambda: [], vocab_size)
    task = bar.add_task("BPE: counting words", total=sum(sizes))

    def read() -> Iterator[bytes]:
        for f, size in zip(files, sizes, strict=True):
            yield f.read_bytes()
            bar.advance(task, size)
        bar.update(task, description="BPE: learning merges")

    tok = train_tokenizer(name, read, vocab_size, n_docs=len(files))
    bar.update(task, description=f"BPE: {tok.vocab_size} tokens")
    return tok


def _chunks(files: Sequence[Path], sizes: Sequence[int]) -> Iterator[tuple[list[Path], int]]:
    """Consecutive groups of files of about ``ENCODE_CHUNK_BYTES`` each, with their size."""
    chunk: list[Path] = []
    total = 0
    for f, size in zip(files, sizes, strict=True):
        chunk.append(f)
        total += size
        if total >= ENCODE_CHUNK_BYTES:
            yield chunk, total
            chunk, total = [], 0
    if chunk:
        yield chunk, total


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
        DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )
