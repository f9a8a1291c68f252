"""Token shards, tokenizers, the stdlib dataset and the data-parallel TokenLoader."""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from stoker.spec.errors import ConfigError, StokerError
from stoker.spec.train import DataConfig
from stoker.train import data as data_mod
from stoker.train.data import Batch, TokenLoader, ensure_dataset
from stoker.train.shards import (
    HEADER_BYTES,
    DatasetMeta,
    ShardWriter,
    prepare,
    read_header,
    read_meta,
)
from stoker.train.tokenizer import load_tokenizer

STOKER = Path(sys.executable).parent / "stoker"
WORDS = ["def", "return", "self", "import", "class", "lambda", "yield", "größe", "naïve", "→",
         "x", "y", "0", "42", "(", ")", ":", "\n", "    ", "#", "日本"]


def _write_corpus(root: Path, n_files: int = 40) -> dict[Path, str]:
    rng = random.Random(1234)
    docs = {}
    for i in range(n_files):
        path = root / f"dir{i % 3}" / f"doc{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(200, 2000)))
        path.write_text(text, encoding="utf-8")
        docs[path] = text
    (root / "dir0" / "empty.txt").write_text("")
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, str]:
    return _write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def byte_dir(corpus: dict[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "byte"
    files = [*corpus, next(iter(corpus)).parent / "empty.txt"]
    prepare(files, out, "byte", val_fraction=0.1, shard_tokens=7000, progress=False)
    return out


@pytest.fixture(scope="module")
def bpe_dir(corpus: dict[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "bpe"
    prepare(list(corpus), out, "bpe", vocab_size=400, val_fraction=0.1, progress=False)
    return out


def _stream(shard_dir: Path, split: str) -> np.ndarray:
    meta = read_meta(shard_dir)
    parts = [np.fromfile(shard_dir / s.file, dtype=meta.dtype, offset=HEADER_BYTES)
             for s in meta.splits[split]]  # type: ignore[index]
    return np.concatenate(parts).astype(np.int64)


def _documents(shard_dir: Path, split: str) -> list[str]:
    meta = read_meta(shard_dir)
    tok = load_tokenizer(meta.tokenizer, shard_dir)
    tokens = _stream(shard_dir, split)
    assert tokens[-1] == meta.eos_id
    cuts = np.flatnonzero(tokens == meta.eos_id)
    return [tok.decode(doc.tolist()) for doc in np.split(tokens, cuts + 1)[:-1]]


# ---------------------------------------------------------------- prepare


@pytest.mark.parametrize("fixture", ["byte_dir", "bpe_dir"])
def test_prepare_round_trips_every_document_into_one_split(
    fixture: str, corpus: dict[Path, str], request: pytest.FixtureRequest
) -> None:
    shard_dir: Path = request.getfixturevalue(fixture)
    train, val = _documents(shard_dir, "train"), _documents(shard_dir, "val")
    assert val and train
    assert sorted(train + val) == sorted(corpus.values())  # the empty file adds nothing
    meta = read_meta(shard_dir)
    assert meta.documents("train") == len(train) and meta.documents("val") == len(val)
    assert 0.03 < meta.tokens("val") / (meta.tokens("train") + meta.tokens("val")) < 0.3


def test_shard_headers_describe_their_tokens(byte_dir: Path) -> None:
    meta = read_meta(byte_dir)
    assert (meta.tokenizer, meta.vocab_size, meta.dtype, meta.eos_id) == ("byte", 256, "uint16", 0)
    assert len(meta.splits["train"]) > 2
    for split, shards in meta.splits.items():
        for info in shards:
            header = read_header(byte_dir / info.file)
            assert header["tokenizer"] == "byte" and header["vocab_size"] == 256
            assert header["tokens"] == info.tokens and header["split"] == split
            assert header["dtype"] == "uint16"
            size = (byte_dir / info.file).stat().st_size
            assert size == HEADER_BYTES + 2 * info.tokens


def test_bpe_is_trained_on_the_corpus_and_saved(bpe_dir: Path, byte_dir: Path) -> None:
    meta = read_meta(bpe_dir)
    assert meta.tokenizer == "bpe" and 300 < meta.vocab_size <= 400
    assert (bpe_dir / "tokenizer.json").is_file()
    tok = load_tokenizer("bpe", bpe_dir)
    assert tok.decode(tok.encode("def größe():\n    return 42")) == "def größe():\n    return 42"
    # merges learned from the corpus compress it
    assert meta.tokens("train") < read_meta(byte_dir).tokens("train") / 2


def test_split_is_deterministic(corpus: dict[Path, str], tmp_path: Path) -> None:
    metas = [prepare(list(corpus), tmp_path / name, val_fraction=0.1, progress=False)
             for name in ("a", "b")]
    assert metas[0] == metas[1]
    for split in ("train", "val"):
        assert np.array_equal(_stream(tmp_path / "a", split), _stream(tmp_path / "b", split))


def test_prepare_rejects_bad_input_and_changes_nothing(corpus: dict[Path, str],
                                                       tmp_path: Path) -> None:
    files = list(corpus)
    with pytest.raises(StokerError, match="no input files"):
        prepare([], tmp_path / "x", progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(StokerError, match="not empty"):
        prepare(files, tmp_path / "busy", progress=False)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    with pytest.raises(StokerError, match="not a directory"):
        prepare(files, files[0], progress=False)
    with pytest.raises(StokerError, match="--vocab-size"):
        prepare(files, tmp_path / "x", "bpe", vocab_size=100, progress=False)
    assert not (tmp_path / "x").exists()
    prepare(files[:5], tmp_path / "ds", progress=False)
    with pytest.raises(StokerError, match="--force"):
        prepare(files, tmp_path / "ds", progress=False)
    prepare(files, tmp_path / "ds", force=True, progress=False)
    assert read_meta(tmp_path / "ds").documents("train") + read_meta(
        tmp_path / "ds").documents("val") == len(files)


def test_a_crash_while_preparing_leaves_nothing_behind(
    corpus: dict[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real_add = ShardWriter.add

    def crash_on_tenth(self: ShardWriter, doc: np.ndarray) -> None:
        nonlocal calls
        calls += 1
        if calls == 10:
            raise OSError("disk full")
        real_add(self, doc)

    monkeypatch.setattr(ShardWriter, "add", crash_on_tenth)
    with pytest.raises(OSError, match="disk full"):
        prepare(list(corpus), tmp_path / "out", shard_tokens=1000, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_shard_is_not_a_dataset(byte_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(byte_dir, copy)
    shard = copy / read_meta(copy).splits["train"][0].file
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=r"data\.dataset.*truncated"):
        ensure_dataset(DataConfig(dataset=str(copy)))


# ---------------------------------------------------------------- the CLI


def test_cli_prepare(corpus: dict[Path, str], tmp_path: Path) -> None:
    root = next(iter(corpus)).parent.parent
    out = tmp_path / "shards"
    run = subprocess.run([str(STOKER), "data", "prepare", f"{root}/**/*.txt", "--out", str(out),
                          "--val-fraction", "0.2", "--shard-tokens", "5000"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    meta = read_meta(out)
    assert meta.documents("train") + meta.documents("val") == len(corpus)
    assert f"{meta.tokens('train') + meta.tokens('val'):,} tokens" in run.stdout

    bad = subprocess.run([str(STOKER), "data", "prepare", f"{root}/nothing/*.txt", "--out",
                          str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"error: no files match '{root}/nothing/*.txt'"]
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------- ensure_dataset


def test_missing_or_invalid_dataset_names_the_key(tmp_path: Path, byte_dir: Path) -> None:
    with pytest.raises(ConfigError) as e:
        ensure_dataset(DataConfig(dataset=str(tmp_path / "missing")))
    assert e.value.key == "data.dataset" and "no such directory" in str(e.value)
    with pytest.raises(ConfigError) as e:
        ensure_dataset(DataConfig(dataset=str(tmp_path)), source="run.toml")
    assert e.value.key == "data.dataset" and "stoker data prepare" in str(e.value)
    assert str(e.value).startswith("run.toml: data.dataset: ")
    assert ensure_dataset(DataConfig(dataset=str(byte_dir))) == byte_dir
    with pytest.raises(ConfigError) as e:
        ensure_dataset(DataConfig(dataset=str(byte_dir), tokenizer="bpe"))
    assert e.value.key == "data.tokenizer"


def _run_config(tmp_path: Path, shard_dir: Path, **given: str) -> Path:
    """A small run on ``shard_dir``; ``given``: "section.key" = TOML value."""
    lines = {"model": ['preset = "tiny"', "dim = 64", "n_layers = 1", "n_heads = 2",
                       "n_kv_heads = 2"],
             "data": [f'dataset = "{shard_dir}"'],
             "train": ["seq_len = 32", "global_batch_size = 4", "micro_batch_size = 2"]}
    for key, value in given.items():
        section, name = key.split(".")
        lines[section].append(f"{name} = {value}")
    path = tmp_path / "run.toml"
    path.write_text("".join(f"[{s}]\n" + "\n".join(body) + "\n" for s, body in lines.items()))
    return path


def test_a_prepared_dataset_gives_its_tokenizer_and_vocabulary(tmp_path: Path,
                                                               bpe_dir: Path) -> None:
    from stoker.spec import loading
    from stoker.spec.train import TrainConfig
    from stoker.train.launch import prepare_run
    from stoker.train.run_dir import unlock_run_dir

    vocab = read_meta(bpe_dir).vocab_size
    cfg, run_dir = prepare_run(_run_config(tmp_path, bpe_dir), (), 1, tmp_path / "run")
    unlock_run_dir(run_dir)
    assert (cfg.data.tokenizer, cfg.model.shape().vocab_size) == ("bpe", vocab)  # tiny's: 256
    assert loading.load(TrainConfig, run_dir / "config.toml") == cfg  # what the ranks read
    padded, _ = prepare_run(_run_config(tmp_path, bpe_dir, **{"model.vocab_size": "512"}), (),
                            1, tmp_path / "padded")
    unlock_run_dir(tmp_path / "padded")
    assert padded.model.shape().vocab_size == 512  # rows no token uses: allowed


@pytest.mark.parametrize(("key", "value", "words"), [
    ("data.tokenizer", '"byte"', ["'byte'", "'bpe'"]),
    ("model.vocab_size", "300", ["300", "(VOCAB tokens in"]),
    ("data.bpe_vocab_size", "4096", ["4096", "has VOCAB tokens"]),
])
def test_a_config_that_disagrees_with_its_dataset_is_refused(
        tmp_path: Path, bpe_dir: Path, key: str, value: str, words: list[str]) -> None:
    from stoker.train.launch import prepare_run

    config = _run_config(tmp_path, bpe_dir, **{key: value})
    with pytest.raises(ConfigError) as e:
        prepare_run(config, (), 1, tmp_path / "run")
    assert e.value.key == key and str(e.value).startswith(f"{config}: {key}: ")
    vocab = str(read_meta(bpe_dir).vocab_size)
    assert all(w.replace("VOCAB", vocab) in e.value.reason for w in words)  # both values
    assert not (tmp_path / "run").exists()  # refused before anything is made


@pytest.mark.slow
def test_stdlib_dataset_is_prepared_once_even_by_racing_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = ("import sys; from stoker.spec.train import DataConfig; "
            "from stoker.train.data import ensure_dataset; "
            "print(ensure_dataset(DataConfig(cache_dir=sys.argv[1]), progress=False))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1
    path = Path(outs[0])
    assert path.parent == tmp_path and path.name.startswith("stdlib-")
    meta = read_meta(path)
    assert meta.tokenizer == "byte" and meta.tokens("train") > 1_000_000
    assert meta.tokens("val") > 0
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [path.name]

    def no_second_prepare(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepared again")

    monkeypatch.setattr(data_mod, "prepare", no_second_prepare)
    assert ensure_dataset(DataConfig(cache_dir=str(tmp_path))) == path
    text = load_tokenizer("byte", path).decode(_stream(path, "train")[:100_000].tolist())
    assert "import " in text and "def " in text


def test_stdlib_files_are_sorted_and_skip_tests() -> None:
    files = data_mod.stdlib_files()
    assert files == sorted(files) and len(files) > 100
    assert not any({"test", "tests", "site-packages"} & set(f.parts) for f in files)
    assert any(f.name == "os.py" for f in files)


# ---------------------------------------------------------------- TokenLoader

SEQ = 64
G = 8
MB = 2


def _loader(shard_dir: Path, dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
            micro: int = MB, prefetch: int = 2, split: str = "train",
            seq_len: int = SEQ) -> TokenLoader:
    return TokenLoader(shard_dir, split, seq_len, G, micro, dp_rank, dp_size,  # type: ignore[arg-type]
                       seed, prefetch)


def _steps(loader: TokenLoader, n: int) -> Iterator[list[Batch]]:
    """Each step's micro-batches on this rank."""
    it = iter(loader)
    for _ in range(n):
        yield [next(it) for _ in range(loader.accum_steps)]


def _step_ids(loader: TokenLoader, n: int) -> list[list[int]]:
    with loader:
        return [torch.cat([b.sample_ids for b in step]).tolist() for step in _steps(loader, n)]


def test_batches_are_windows_of_the_split(byte_dir: Path) -> None:
    tokens = _stream(byte_dir, "train")
    with _loader(byte_dir) as loader:
        assert loader.vocab_size == 256
        for step in _steps(loader, 3):
            for b in step:
                assert b.inputs.shape == b.targets.shape == (MB, SEQ)
                assert b.inputs.dtype == b.targets.dtype == torch.int64
                assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
                for row, g in zip(b.inputs, b.sample_ids, strict=True):
                    start = loader.stream.start(int(g))
                    assert torch.equal(row, torch.from_numpy(tokens[start: start + SEQ]))


def test_windows_read_across_shard_boundaries(byte_dir: Path) -> None:
    tokens = _stream(byte_dir, "train")
    stream = _loader(byte_dir, prefetch=0).stream
    assert len(stream.shards) > 2 and stream.tokens == len(tokens)
    for end in stream.ends[:-1]:
        assert np.array_equal(stream.read(int(end) - 5, 300), tokens[end - 5: end + 295])


def test_val_split_loader_reads_val_tokens(byte_dir: Path) -> None:
    tokens = _stream(byte_dir, "val")
    with _loader(byte_dir, split="val") as loader:
        b = next(iter(loader))
        start = loader.stream.start(int(b.sample_ids[0]))
        assert torch.equal(b.targets[0], torch.from_numpy(tokens[start + 1: start + SEQ + 1]))


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_ranks_split_each_step_disjointly_and_exactly(byte_dir: Path, dp: int) -> None:
    stream = _loader(byte_dir, seq_len=512).stream
    n_steps = stream.epoch_samples // G + 5  # into the second epoch
    reference = _step_ids(_loader(byte_dir, micro=1, seq_len=512), n_steps)
    micro = G // (dp * 2) if dp < 4 else 1  # some accumulation, whatever the rank count
    per_rank = [_step_ids(_loader(byte_dir, r, dp, micro=micro, seq_len=512), n_steps)
                for r in range(dp)]
    for step in range(n_steps):
        together = [g for r in range(dp) for g in per_rank[r][step]]
        assert together == reference[step] == list(range(step * G, (step + 1) * G))
        starts = [stream.start(g) for g in reference[step]]
        assert len(set(starts)) == G  # no window twice in a step, so never on two ranks


def test_every_window_once_per_epoch_and_epochs_differ(byte_dir: Path) -> None:
    stream = _loader(byte_dir, seq_len=256).stream
    e = stream.epoch_samples
    assert e % G == 0 and stream.n_windows - G < e <= stream.n_windows
    first = [stream.start(g) for g in range(e)]
    second = [stream.start(g) for g in range(e, 2 * e)]
    assert len(set(first)) == len(set(second)) == e
    assert first != second
    assert max(first) + 257 <= stream.tokens


def test_same_seed_same_windows_other_seed_other_windows(byte_dir: Path) -> None:
    def windows(seed: int) -> list[torch.Tensor]:
        with _loader(byte_dir, seed=seed) as loader:
            return [b.inputs for step in _steps(loader, 4) for b in step]

    a, b, c = windows(7), windows(7), windows(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("new_dp", [1, 2, 4])
def test_resume_equals_uninterrupted_also_with_another_dp_size(byte_dir: Path,
                                                               new_dp: int) -> None:
    uninterrupted = _step_ids(_loader(byte_dir, seed=3), 10)
    with _loader(byte_dir, 1, 2, seed=3) as first:  # saved from rank 1 of 2
        list(_steps(first, 6))
        state = json.loads(json.dumps(first.state_dict()))  # survives serialisation
    assert state["samples_consumed"] == 6 * G and state["micro_batches_in_step"] == 0
    resumed = []
    for r in range(new_dp):
        loader = _loader(byte_dir, r, new_dp, seed=999, micro=1)  # the saved seed wins
        loader.load_state_dict(state)
        resumed.append(_step_ids(loader, 4))
    for step in range(4):
        assert [g for r in range(new_dp) for g in resumed[r][step]] == uninterrupted[6 + step]


def test_resume_mid_step_with_the_same_layout(byte_dir: Path) -> None:
    with _loader(byte_dir, 0, 2, micro=1) as whole:
        expected = [int(next(whole).sample_ids[0]) for _ in range(9)]
    with _loader(byte_dir, 0, 2, micro=1) as first:
        got = [int(next(first).sample_ids[0]) for _ in range(6)]
        state = first.state_dict()
    assert state["micro_batches_in_step"] == 2 and state["samples_consumed"] == G
    with _loader(byte_dir, 0, 2, micro=1) as second:
        second.load_state_dict(state)
        got += [int(next(second).sample_ids[0]) for _ in range(3)]
    assert got == expected
    with pytest.raises(StokerError, match="mid-step"):
        _loader(byte_dir, 0, 4, micro=1).load_state_dict(state)
    with pytest.raises(StokerError, match="seq_len"):
        _loader(byte_dir, seq_len=32).load_state_dict(state)


def test_accumulated_micro_batches_equal_the_ranks_blocks(byte_dir: Path) -> None:
    with _loader(byte_dir, micro=2) as one:
        step_one = next(_steps(one, 1))
    halves = []
    for r in range(2):
        with _loader(byte_dir, r, 2, micro=2) as rank:
            halves += next(_steps(rank, 1))
    assert len(step_one) == 4 and len(halves) == 4
    assert torch.equal(torch.cat([b.inputs for b in step_one]),
                       torch.cat([b.inputs for b in halves]))
    assert torch.equal(torch.cat([b.targets for b in step_one]),
                       torch.cat([b.targets for b in halves]))


class GatedDisk:
    """Makes a micro-batch only when the test allows one more, and notes which thread made it."""

    def __init__(self, real: Callable[..., Batch]) -> None:
        self.real = real
        self.made_by: list[str] = []
        self._allowed = 0
        self._cond = threading.Condition()

    def allow(self, n: int) -> None:
        with self._cond:
            self._allowed += n
            self._cond.notify_all()

    def make(self, stream: object, layout: object, m: int, pin: bool) -> Batch:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.made_by) < self._allowed, timeout=120):
                raise RuntimeError("the test never allowed this batch")
            self.made_by.append(threading.current_thread().name)
        return self.real(stream, layout, m, pin)


def test_prefetch_makes_batches_ahead_of_the_consumer(
        byte_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _loader(byte_dir, prefetch=0) as plain:
        expected = [next(plain).sample_ids.tolist() for _ in range(3)]
    disk = GatedDisk(data_mod._make_batch)
    monkeypatch.setattr(data_mod, "_make_batch", disk.make)
    with _loader(byte_dir, prefetch=2) as loader:
        try:
            it = iter(loader)
            disk.allow(3)
            got = [next(it)]
            # While the step computes, the thread makes the next two (the queue's depth) ...
            _wait_for(lambda: len(disk.made_by) == 3, timeout=60)
            # ... so the consumer gets them with the disk stopped: it waits for no disk read.
            got += [next(it), next(it)]
            assert disk.made_by == ["stoker-data-prefetch"] * 3
        finally:
            disk.allow(1_000_000)  # let the thread reach its stop check
    assert [b.sample_ids.tolist() for b in got] == expected
    with _loader(byte_dir, prefetch=0) as loader:  # without the thread: made when asked for
        next(loader)
    assert disk.made_by[-1] == threading.current_thread().name


def test_prefetch_without_thread_gives_the_same_batches(byte_dir: Path) -> None:
    assert _step_ids(_loader(byte_dir, prefetch=0), 5) == _step_ids(_loader(byte_dir), 5)


def _wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "stoker-data-prefetch"]


def test_prefetch_thread_stops_and_errors_reach_the_consumer(
    byte_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = _loader(byte_dir)
    next(iter(loader))
    assert len(_prefetch_threads()) == 1 and _prefetch_threads()[0].daemon
    loader.close()
    assert _prefetch_threads() == []
    next(iter(_loader(byte_dir)))  # dropped without close(): its thread ends too
    gc.collect()
    _wait_for(lambda: not _prefetch_threads())

    real = data_mod._make_batch

    def fail_at_3(stream: object, layout: object, m: int, pin: bool) -> Batch:
        if m == 3:
            raise RuntimeError("bad shard")
        return real(stream, layout, m, pin)  # type: ignore[arg-type]

    monkeypatch.setattr(data_mod, "_make_batch", fail_at_3)
    it = iter(_loader(byte_dir))
    assert [int(next(it).sample_ids[0]) for _ in range(3)] == [0, 2, 4]
    with pytest.raises(RuntimeError, match="bad shard"):
        next(it)
    assert _prefetch_threads() == []


def test_loader_rejects_impossible_layouts(byte_dir: Path, tmp_path: Path,
                                           corpus: dict[Path, str]) -> None:
    with pytest.raises(ValueError, match="divisible"):
        TokenLoader(byte_dir, "train", SEQ, 8, 3)
    with pytest.raises(ValueError, match="dp_rank"):
        TokenLoader(byte_dir, "train", SEQ, 8, 2, dp_rank=2, dp_size=2)
    small = tmp_path / "small"
    prepare([next(iter(corpus))], small, progress=False)
    with pytest.raises(StokerError, match="fewer than one global batch"):
        TokenLoader(small, "train", 512, 64, 8)
    with pytest.raises(StokerError, match="too few for one window"):
        TokenLoader(small, "val", 16, 8, 8)


def test_meta_rejects_a_foreign_file(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text('{"format": "something-else"}')
    with pytest.raises(StokerError, match=r"meta\.json"):
        read_meta(tmp_path)
    assert DatasetMeta.model_fields["format"].default == "stoker-shards"


def test_plan_sizes_the_model_with_the_datasets_vocabulary(tmp_path: Path, bpe_dir: Path) -> None:
    from stoker.cli.plan_cmd import with_dataset_vocabulary
    from stoker.spec import loading
    from stoker.spec.train import TrainConfig

    config = loading.load(TrainConfig, _run_config(tmp_path, bpe_dir), ())
    assert config.model.shape().vocab_size == 256  # tiny's own
    fitted = with_dataset_vocabulary(config, "cfg.toml")
    assert fitted.model.shape().vocab_size == read_meta(bpe_dir).vocab_size
    unprepared = config.model_copy(update={"data": config.data.model_copy(
        update={"dataset": str(tmp_path / "not-yet")})})
    assert with_dataset_vocabulary(unprepared, "cfg.toml") == unprepared
