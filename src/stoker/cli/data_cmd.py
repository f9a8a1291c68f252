"""`stoker data prepare GLOB --out DIR`: text files to token shards; `stoker data info DIR`."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import cast

import typer
from rich.console import Console
from rich.table import Table

from stoker.spec.errors import StokerError

data_app = typer.Typer(help="Prepare and inspect token datasets.", no_args_is_help=True)


@data_app.command("prepare")
def prepare_cmd(
    patterns: list[str] = typer.Argument(
        ..., metavar="GLOB...",
        help="Text files or glob patterns, one document per file ('**' recurses; quote it).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to create with the shards."),
    tokenizer: str = typer.Option("byte", "--tokenizer", help="byte (vocab 256) or bpe."),
    vocab_size: int = typer.Option(4096, "--vocab-size", help="BPE vocabulary size."),
    val_fraction: float = typer.Option(0.01, "--val-fraction",
                                       help="Share of the corpus (by bytes) held out for eval."),
    shard_tokens: int = typer.Option(100_000_000, "--shard-tokens", help="Tokens per shard."),
    force: bool = typer.Option(False, "--force", help="Replace an existing prepared dataset."),
) -> None:
    """Tokenize text files into flat token shards with a train/val split."""
    from stoker.train.shards import prepare
    from stoker.train.tokenizer import TokenizerName

    if tokenizer not in ("byte", "bpe"):
        raise StokerError(f"--tokenizer: unknown tokenizer {tokenizer!r} (byte or bpe)")
    files = [f for f in expand(patterns) if not f.is_relative_to(out.absolute())]
    if not files:
        raise StokerError(f"every file {' '.join(patterns)!r} matches lies inside --out {out}")
    start = time.perf_counter()
    meta = prepare(files, out, cast(TokenizerName, tokenizer), vocab_size, val_fraction,
                   shard_tokens, source=" ".join(patterns), force=force)
    elapsed = time.perf_counter() - start
    Console().print(
        f"{out}: {meta.tokens('train') + meta.tokens('val'):,} tokens from {len(files)} files, "
        f"tokenizer {meta.tokenizer} (vocab {meta.vocab_size}), {elapsed:.1f} s",
        highlight=False,
    )
    _print_splits(out)


@data_app.command("info")
def info_cmd(shard_dir: Path = typer.Argument(..., help="A prepared dataset directory.")) -> None:
    """Show a prepared dataset's tokenizer and splits."""
    from stoker.train.shards import read_meta

    meta = read_meta(shard_dir)
    Console().print(f"{shard_dir}: tokenizer {meta.tokenizer}, vocab {meta.vocab_size}, "
                    f"eos {meta.eos_id}, {meta.dtype}; source: {meta.source or '?'}",
                    highlight=False)
    _print_splits(shard_dir)


def expand(patterns: list[str]) -> list[Path]:
    """The files the patterns match, sorted; each pattern must match at least one file."""
    files: set[Path] = set()
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            raise StokerError(f"{pattern}: is a directory; give files or a glob such as "
                              f"'{pattern.rstrip('/')}/**/*.txt'")
        matches = [Path(m) for m in glob.glob(os.path.expanduser(pattern), recursive=True)]
        matched = [m for m in matches if m.is_file()]
        if not matched:
            raise StokerError(f"no files match {pattern!r}")
        files.update(m.absolute() for m in matched)
    return sorted(files)


def _print_splits(shard_dir: Path) -> None:
    from stoker.train.shards import SPLITS, read_meta

    meta = read_meta(shard_dir)
    table = Table("split", "documents", "tokens", "shards")
    for split in SPLITS:
        table.add_row(split, f"{meta.documents(split):,}", f"{meta.tokens(split):,}",
                      str(len(meta.splits.get(split, []))))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
