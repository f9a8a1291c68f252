"""Training data: find (or build) the shard directory, and feed each data-parallel rank its part
of one global, seeded stream of token windows.

The stream. A split's shards form one token sequence of N tokens, cut into W = (N - 1) // T
windows of T + 1 tokens at stride T (T = seq_len), so every token is predicted once per epoch.
Epoch k shifts the windows by a seeded offset (the leftover N - 1 - W*T tokens) and visits them
in a seeded permutation; it lasts E = W - W % G samples (G = global batch), so a step never
spans two epochs and no window appears twice in one step. Global sample g is window
``perm_k[g % E]`` of epoch ``k = g // E``.

The split. Optimizer step s takes global samples [s*G, (s+1)*G). Data-parallel rank r takes the
contiguous block [s*G + r*G/dp, s*G + (r+1)*G/dp) and yields it as micro-batches, so one rank
and N ranks see exactly the same samples in each step.
"""

from __future__ import annotations

import fcntl
import os
import queue
import shutil
import sys
import sysconfig
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console

from stoker.spec.errors import ConfigError, StokerError
from stoker.spec.train import DataConfig, TrainConfig
from stoker.train.shards import (
    InvalidShardDir,
    ShardDirExists,
    Split,
    prepare,
    read_meta,
)
from stoker.train.shards import open_split as _open_split

STDLIB = "stdlib"
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test",
                     "__pycache__"}


# ---------------------------------------------------------------- datasets


def ensure_dataset(data: DataConfig, *, progress: bool = True, source: str | None = None) -> Path:
    """The prepared shard directory ``data`` names; ``stdlib`` is prepared and cached first.

    Any other ``data.dataset`` must be a directory made by `stoker data prepare`. ``source``
    (the config file) is named in the ConfigError of a bad value.
    """
    if data.dataset == STDLIB:
        return _ensure_stdlib(data, progress, source)
    path = dataset_dir(data)
    try:
        meta = read_meta(path)
    except InvalidShardDir as e:
        raise ConfigError(source, "data.dataset", f"{e} (or use \"stdlib\")") from None
    if "tokenizer" in data.model_fields_set and data.tokenizer != meta.tokenizer:
        raise ConfigError(source, "data.tokenizer", f"{data.tokenizer!r}, but {path} was "
                          f"prepared with {meta.tokenizer!r}")
    return path


def fit_to_dataset(cfg: TrainConfig, shard_dir: Path, source: str | None = None) -> TrainConfig:
    """``cfg`` with the prepared dataset's tokenizer and vocabulary where it leaves them unset.

    ``data.tokenizer`` and ``model.vocab_size`` (a preset's vocabulary does not count as set)
    become the dataset's. Set, they must agree with it: the tokenizer is the one it
    was prepared with (`ensure_dataset`), ``model.vocab_size`` holds every token id (larger is
    padding, as GPT-2's 50304), and ``data.bpe_vocab_size`` of a directory made by `stoker data
    prepare` is its BPE's size (stdlib's is what its preparation asks for, and names its cache).
    """
    meta = read_meta(shard_dir)
    data, model = cfg.data, cfg.model
    bpe_given = "bpe_vocab_size" in data.model_fields_set and data.dataset != STDLIB
    if bpe_given and meta.tokenizer == "bpe" and data.bpe_vocab_size != meta.vocab_size:
        raise ConfigError(source, "data.bpe_vocab_size", f"{data.bpe_vocab_size}, but the BPE "
                          f"of {shard_dir} has {meta.vocab_size} tokens")
    if model.vocab_size is not None and model.vocab_size < meta.vocab_size:
        raise ConfigError(source, "model.vocab_size", f"{model.vocab_size} is smaller than the "
                          f"dataset's vocabulary ({meta.vocab_size} tokens in {shard_dir})")
    return cfg.model_copy(update={
        "data": data.model_copy(update={"tokenizer": meta.tokenizer}),
        "model": model.model_copy(update={"vocab_size": model.vocab_size or meta.vocab_size}),
    })


def stdlib_files() -> list[Path]:
    """The running interpreter's standard library ``.py`` files, without tests or packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS]
        files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(f for f in files if f.is_file())


def dataset_dir(data: DataConfig) -> Path:
    """The directory of ``data``'s dataset (for ``stdlib``, its cache entry), prepared or not."""
    if data.dataset == STDLIB:
        return Path(data.cache_dir).expanduser().absolute() / stdlib_key(data)
    return Path(data.dataset).expanduser().absolute()


def stdlib_key(data: DataConfig) -> str:
    """The cache directory name: the corpus depends on the interpreter, the tokens on the
    tokenizer."""
    python = f"{sys.implementation.name}{'.'.join(map(str, sys.version_info[:3]))}"
    tokenizer = "byte" if data.tokenizer == "byte" else f"bpe{data.bpe_vocab_size}"
    return f"stdlib-{python}-{tokenizer}"


def _ensure_stdlib(data: DataConfig, progress: bool, source: str | None) -> Path:
    out = dataset_dir(data)
    cache, key = out.parent, out.name
    if _is_prepared(out):
        return out
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(source, "data.cache_dir",
                          f"cannot create {cache}: {e.strerror}") from None
    with _locked(cache / f".{key}.lock"):
        if _is_prepared(out):  # another process made it while we waited
            return out
        for stale in [*cache.glob(f".{key}.tmp-*"), *([out] if out.exists() else [])]:
            shutil.rmtree(stale, ignore_errors=True)
        files = stdlib_files()
        if progress:
            Console(stderr=True).print(f"preparing dataset 'stdlib': {len(files)} files -> {out}",
                                       highlight=False, soft_wrap=True)
        # ShardDirExists: a process that could not take the lock (e.g. on NFS) won the race.
        with suppress(ShardDirExists):
            prepare(files, out, data.tokenizer, data.bpe_vocab_size, data.val_fraction,
                    source=f"stdlib {sysconfig.get_paths()['stdlib']}", progress=progress)
    read_meta(out)
    return out


def _is_prepared(path: Path) -> bool:
    try:
        read_meta(path)
    except InvalidShardDir:
        return False
    return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- the sample stream


@dataclass(frozen=True)
class Batch:
    """One micro-batch: ``targets`` are ``inputs`` shifted by one token."""

    inputs: torch.Tensor  # int64 [micro_batch, seq_len]
    targets: torch.Tensor  # int64 [micro_batch, seq_len]
    sample_ids: torch.Tensor  # int64 [micro_batch], indices into the global stream

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(self.inputs.to(device, non_blocking=non_blocking),
                     self.targets.to(device, non_blocking=non_blocking),
                     self.sample_ids)


class WindowStream:
    """Maps a global sample index to its window of ``seq_len + 1`` tokens (see module doc)."""

    def __init__(self, shards: list[np.memmap], seq_len: int, global_batch_size: int,
                 seed: int) -> None:
        self.shards = shards
        self.ends = np.cumsum([len(s) for s in shards])
        self.tokens = int(self.ends[-1]) if shards else 0
        self.seq_len = seq_len
        self.n_windows = max(0, (self.tokens - 1) // seq_len)
        self.slack = self.tokens - 1 - self.n_windows * seq_len
        drop = self.n_windows % global_batch_size if self.n_windows >= global_batch_size else 0
        self.epoch_samples = self.n_windows - drop
        self.seed = seed
        self._epoch: tuple[int, int, npt.NDArray[np.int64]] | None = None

    def start(self, sample: int) -> int:
        """The first token of the window of global sample ``sample``."""
        epoch, j = divmod(sample, self.epoch_samples)
        offset, perm = self._epoch_order(epoch)
        return offset + int(perm[j]) * self.seq_len

    def window(self, sample: int) -> npt.NDArray[np.int64]:
        return self.read(self.start(sample), self.seq_len + 1)

    def read(self, start: int, length: int) -> npt.NDArray[np.int64]:
        """Tokens [start, start + length) of the split, across shard boundaries."""
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self.ends, start, side="right"))
        done = 0
        while done < length:
            base = int(self.ends[i - 1]) if i else 0
            lo = start + done - base
            piece = self.shards[i][lo: lo + length - done]
            out[done: done + len(piece)] = piece
            done += len(piece)
            i += 1
        return out

    def _epoch_order(self, epoch: int) -> tuple[int, npt.NDArray[np.int64]]:
        cached = self._epoch  # one tuple, so a reader in another thread never sees half of it
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed % (1 << 64), epoch])
            offset = int(rng.integers(0, self.slack + 1))
            cached = (epoch, offset, rng.permutation(self.n_windows))
            self._epoch = cached
        return cached[1], cached[2]


@dataclass(frozen=True)
class _RankLayout:
    """Which global samples this rank's ``m``-th micro-batch (since ``base``) holds."""

    base: int
    global_batch_size: int
    micro_batch_size: int
    dp_rank: int
    dp_size: int

    @property
    def accum_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    def consumed(self, m: int) -> int:
        """Global samples of the steps whose micro-batches all lie before the ``m``-th."""
        return self.base + (m // self.accum_steps) * self.global_batch_size

    def samples(self, m: int) -> npt.NDArray[np.int64]:
        step, k = divmod(m, self.accum_steps)
        first = (self.base + step * self.global_batch_size
                 + self.dp_rank * (self.global_batch_size // self.dp_size)
                 + k * self.micro_batch_size)
        return np.arange(first, first + self.micro_batch_size, dtype=np.int64)


def _make_batch(stream: WindowStream, layout: _RankLayout, m: int, pin: bool) -> Batch:
    ids = layout.samples(m)
    tokens = np.stack([stream.window(int(g)) for g in ids])
    batch = Batch(torch.from_numpy(np.ascontiguousarray(tokens[:, :-1])),
                  torch.from_numpy(np.ascontiguousarray(tokens[:, 1:])),
                  torch.from_numpy(ids))
    if pin:
        batch = Batch(batch.inputs.pin_memory(), batch.targets.pin_memory(), batch.sample_ids)
    return batch


# ---------------------------------------------------------------- background prefetch


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _produce(stream: WindowStream, layout: _RankLayout, first: int, pin: bool,
             out: queue.Queue[Batch | _Failure], stop: threading.Event) -> None:
    """Fill ``out`` with micro-batches ``first, first+1, ...`` until ``stop`` is set."""
    m = first
    while not stop.is_set():
        item: Batch | _Failure
        try:
            item = _make_batch(stream, layout, m, pin)
        except BaseException as e:
            item = _Failure(e)
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                break
            except queue.Full:
                continue
        if isinstance(item, _Failure):
            return
        m += 1


class _Prefetcher:
    """A daemon thread that keeps ``depth`` micro-batches ready."""

    def __init__(self, stream: WindowStream, layout: _RankLayout, first: int, depth: int,
                 pin: bool) -> None:
        self.queue: queue.Queue[Batch | _Failure] = queue.Queue(maxsize=depth)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=_produce, args=(stream, layout, first, pin, self.queue, self.stop_event),
            name="stoker-data-prefetch", daemon=True,
        )
        self.thread.start()

    def get(self) -> Batch:
        while True:
            try:
                item = self.queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("the data prefetch thread stopped") from None
        if isinstance(item, _Failure):
            raise item.error
        return item

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------- the loader


class TokenLoader:
    """This data-parallel rank's endless iterator of micro-batches from one split.

    ``state_dict()`` records the position in the global stream (rank independent), so
    ``load_state_dict`` resumes exactly, also with another ``dp_size`` or ``micro_batch_size``
    when saved at a step boundary. ``last_wait_s`` is how long the last ``next()`` took (waiting
    for the prefetch thread, or making the batch when ``prefetch=0``); ``total_wait_s`` sums them.
    """

    def __init__(
        self,
        shard_dir: str | Path,
        split: Split,
        seq_len: int,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        prefetch: int = 4,
        *,
        pin_memory: bool = False,
    ) -> None:
        _check_layout(seq_len, global_batch_size, micro_batch_size, dp_rank, dp_size, prefetch)
        self.shard_dir = Path(shard_dir)
        self.meta = read_meta(self.shard_dir)
        self.split: Split = split
        self.vocab_size = self.meta.vocab_size
        self.eos_id = self.meta.eos_id
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.prefetch = prefetch
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self._shards = _open_split(self.shard_dir, self.meta, split)
        self.last_wait_s = 0.0
        self.total_wait_s = 0.0
        self._prefetcher: _Prefetcher | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._set_stream(seed)
        self._seek(0, 0)

    @property
    def accum_steps(self) -> int:
        """Micro-batches per optimizer step on this rank."""
        return self._layout.accum_steps

    @property
    def samples_consumed(self) -> int:
        """Global samples of the steps this rank has fully consumed."""
        return self._layout.consumed(self._consumed)

    def __iter__(self) -> TokenLoader:
        return self

    def __next__(self) -> Batch:
        t0 = time.perf_counter()
        if self.prefetch == 0:
            batch = _make_batch(self.stream, self._layout, self._consumed, self.pin_memory)
        else:
            if self._prefetcher is None:
                self._start_prefetch()
            assert self._prefetcher is not None
            try:
                batch = self._prefetcher.get()
            except BaseException:
                self.close()
                raise
        self.last_wait_s = time.perf_counter() - t0
        self.total_wait_s += self.last_wait_s
        self._consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "samples_consumed": self.samples_consumed,
            "micro_batches_in_step": self._consumed % self.accum_steps,
            "seed": self.stream.seed,
            "split": self.split,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "micro_batch_size": self.micro_batch_size,
            "dp_size": self.dp_size,
            "tokens": self.stream.tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (the saved seed wins over the constructor's)."""
        for key in ("seq_len", "global_batch_size", "tokens"):
            if key in state and state[key] != self.state_dict()[key]:
                raise StokerError(f"data loader state has {key}={state[key]}, but this loader "
                                  f"has {self.state_dict()[key]}: the sample stream would differ")
        micro = int(state.get("micro_batches_in_step", 0))
        if micro and (state.get("dp_size") != self.dp_size
                      or state.get("micro_batch_size") != self.micro_batch_size):
            raise StokerError("data loader state was saved mid-step; it resumes only with the "
                              "same dp_size and micro_batch_size")
        self.close()
        self._set_stream(int(state["seed"]))
        self._seek(int(state["samples_consumed"]), micro)

    def reset(self) -> None:
        """Go back to the start of the stream (e.g. to evaluate on the same val samples)."""
        self.close()
        self._seek(0, 0)

    def close(self) -> None:
        """Stop the prefetch thread; iterating again restarts it where the consumer is."""
        if self._prefetcher is not None:
            self._prefetcher.stop()
            self._prefetcher = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def __enter__(self) -> TokenLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _set_stream(self, seed: int) -> None:
        self.stream = WindowStream(self._shards, self.seq_len, self.global_batch_size, seed)
        if self.stream.n_windows < 1:
            raise StokerError(f"{self.shard_dir}: split {self.split!r} has "
                              f"{self.stream.tokens} tokens, too few for one window of "
                              f"seq_len + 1 = {self.seq_len + 1}")
        if self.split == "train" and self.stream.n_windows < self.global_batch_size:
            raise StokerError(f"{self.shard_dir}: split 'train' has {self.stream.n_windows} "
                              f"windows of {self.seq_len + 1} tokens, fewer than one global "
                              f"batch ({self.global_batch_size})")

    def _seek(self, base: int, micro: int) -> None:
        self._layout = _RankLayout(base, self.global_batch_size, self.micro_batch_size,
                                   self.dp_rank, self.dp_size)
        self._consumed = micro

    def _start_prefetch(self) -> None:
        self._prefetcher = _Prefetcher(self.stream, self._layout, self._consumed, self.prefetch,
                                       self.pin_memory)
        # Stop the thread if the loader is dropped without close().
        self._finalizer = weakref.finalize(self, self._prefetcher.stop_event.set)


def _check_layout(seq_len: int, global_batch_size: int, micro_batch_size: int, dp_rank: int,
                  dp_size: int, prefetch: int) -> None:
    if seq_len < 1 or micro_batch_size < 1 or dp_size < 1 or prefetch < 0:
        raise ValueError("seq_len, micro_batch_size and dp_size must be positive, prefetch >= 0")
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_size})")
    if global_batch_size % (micro_batch_size * dp_size):
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                         f"micro_batch_size × dp_size = {micro_batch_size * dp_size}")
