"""CSV reading shared by the loaders: required columns checked up front, one-line errors."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from stoker.spec.errors import ConfigError


class BadValue(ValueError):
    """A row's value can't be parsed; the loader skips the row and counts the column."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def open_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), None, "no such file")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "not UTF-8 text") from None


def rows(path: str | Path, required: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Yield each row as a dict with stripped keys, after checking the header."""
    lines = open_text(path).splitlines()
    reader = csv.DictReader(lines, skipinitialspace=True)
    header = [h.strip() for h in reader.fieldnames or []]
    if not header:
        raise ConfigError(str(path), None, "empty file: no CSV header")
    for column in required:
        if column not in header:
            raise ConfigError(str(path), column,
                              f"required column is missing (header: {', '.join(header)})")
    reader.fieldnames = header
    for row in reader:
        yield {k: (v or "").strip() for k, v in row.items() if k is not None}


def number(row: dict[str, str], column: str, default: float | None = None) -> float:
    text = row.get(column, "")
    if text == "" and default is not None:
        return default
    try:
        return float(text)
    except ValueError:
        raise BadValue(column) from None


def integer(row: dict[str, str], column: str, default: int | None = None) -> int:
    value = number(row, column, None if default is None else float(default))
    if value != int(value):
        raise BadValue(column)
    return int(value)


def timestamp(text: str, column: str) -> float:
    """Seconds since the epoch of 'YYYY-MM-DD HH:MM:SS' (naive, read as UTC)."""
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise BadValue(column) from None
