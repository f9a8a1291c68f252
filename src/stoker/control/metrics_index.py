"""A training run's metrics.jsonl, indexed incrementally for the API: which line holds each
step's record, so that a poll reads only the bytes appended since the last one and the records
it returns, never the whole file.

The file is appended by every attempt of the run: a restart or a resume redoes the steps after
its checkpoint, and a loss-guard rollback redoes steps within an attempt. Each step's record is
the one of the highest ``attempt`` (a record without one counts as attempt 0), the later line
among equals, as `observe.metrics.latest_per_step` reads a run.

A step whose record is replaced after a client read it is a *revision*. The index counts them
(``revision`` = ``NONCE:N``, the nonce naming this index, which a restarted server or a rebuilt
index does not share) and keeps, per revision, the step replaced; a client that sends back the
revision it last saw gets the replaced steps again. Memory: 32 bytes per step (step, offset,
length, attempt) plus 8 per revision; a 100,000-step run costs about 3 MiB.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stoker.control.safe_fs import open_beneath

CHUNK = 4 << 20  # bytes read at once while catching up with the file
ATTEMPT_KEY = "attempt"


@dataclass(frozen=True)
class MetricsSlice:
    records: list[dict[str, Any]]  # by step, each step's winning record
    since: int  # the step the records follow (lower than asked when steps were revised)
    next_since: int  # pass as ``since`` next time
    more: bool  # records after next_since are already there (the limit cut them)
    revision: str  # pass back as ``revision`` next time
    last_step: int | None  # the highest step recorded


class MetricsIndex:
    """One metrics file: steps in order with where their winning line is. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nonce = secrets.token_hex(4)
        self._reset()
        self.bytes_read = 0  # all bytes ever read from the file by this index: for tests

    def _reset(self) -> None:
        self._identity: tuple[int, int] | None = None
        self._indexed = 0  # bytes of whole lines indexed so far
        self._steps = array("q")
        self._offsets = array("q")
        self._lengths = array("q")
        self._attempts = array("q")
        self._revised = array("q")  # the step replaced by each revision, in order

    def read(self, root: Path, relative: PurePosixPath, since: int,
             revision: str | None = None, limit: int = 5000,
             fields: Collection[str] | None = None) -> MetricsSlice:
        """The winning records of steps after ``since`` (and of steps revised after
        ``revision``), at most ``limit``. A missing file reads as no record."""
        with self._lock:
            fd = self._open(root, relative)
            if fd is None:
                return MetricsSlice([], since, since, False, self._revision(), None)
            try:
                self._catch_up(fd)
                since = min(since, self._revised_since(revision))
                start = bisect_right(self._steps, since)
                end = min(len(self._steps), start + limit)
                records = self._records(fd, start, end, fields)
            finally:
                os.close(fd)
            last = self._steps[-1] if self._steps else None
            next_since = self._steps[end - 1] if end > start else since
            return MetricsSlice(records, since, next_since, end < len(self._steps),
                                self._revision(), last)

    def tail(self, root: Path, relative: PurePosixPath, count: int) -> list[dict[str, Any]]:
        """The winning records of the last ``count`` steps."""
        with self._lock:
            fd = self._open(root, relative)
            if fd is None:
                return []
            try:
                self._catch_up(fd)
                n = len(self._steps)
                return self._records(fd, max(0, n - count), n, None)
            finally:
                os.close(fd)

    def _open(self, root: Path, relative: PurePosixPath) -> int | None:
        try:
            fd = open_beneath(root, relative)
        except (FileNotFoundError, NotADirectoryError):
            return None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise PermissionError(f"{relative} is not a regular file")
        identity = (info.st_dev, info.st_ino)
        if identity != self._identity or info.st_size < self._indexed:
            # Another file now, or truncated: index it afresh; every step is revised.
            revised = self._revised
            had_steps = bool(self._steps)
            self._reset()
            self._revised = revised
            if had_steps:
                self._revised.append(-(1 << 62))
            self._identity = identity
        return fd

    def _catch_up(self, fd: int) -> None:
        """Index the whole lines appended since the last read."""
        size = os.fstat(fd).st_size
        while self._indexed < size:
            data = os.pread(fd, min(CHUNK, size - self._indexed), self._indexed)
            self.bytes_read += len(data)
            end = data.rfind(b"\n") + 1
            if end == 0:  # a line longer than a chunk, or a torn last line
                if len(data) == CHUNK:
                    data = self._long_line(fd, self._indexed, size)
                    end = len(data)
                if end == 0:
                    return
            position = self._indexed
            for line in data[:end].splitlines(keepends=True):
                self._add(line, position)
                position += len(line)
            self._indexed += end

    def _long_line(self, fd: int, offset: int, size: int) -> bytes:
        parts = []
        while offset < size:
            data = os.pread(fd, min(CHUNK, size - offset), offset)
            self.bytes_read += len(data)
            cut = data.find(b"\n")
            if cut >= 0:
                parts.append(data[:cut + 1])
                return b"".join(parts)
            parts.append(data)
            offset += len(data)
        return b""  # no end of line yet: a torn line, read again next time

    def _add(self, line: bytes, offset: int) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        step, attempt = record.get("step"), record.get(ATTEMPT_KEY, 0)
        if not isinstance(step, int) or not isinstance(attempt, int) \
                or isinstance(step, bool) or isinstance(attempt, bool):
            return
        at = bisect_left(self._steps, step)
        if at < len(self._steps) and self._steps[at] == step:
            if attempt < self._attempts[at]:
                return  # an older attempt's line, written late: not the winner
            self._offsets[at], self._lengths[at], self._attempts[at] = offset, len(line), attempt
            self._revised.append(step)
            return
        if at == len(self._steps):
            self._steps.append(step)
            self._offsets.append(offset)
            self._lengths.append(len(line))
            self._attempts.append(attempt)
        else:  # a step below the last one, never seen: rare (a rollback past a gap)
            self._steps.insert(at, step)
            self._offsets.insert(at, offset)
            self._lengths.insert(at, len(line))
            self._attempts.insert(at, attempt)
            self._revised.append(step)

    def _revision(self) -> str:
        return f"{self._nonce}:{len(self._revised)}"

    def _revised_since(self, revision: str | None) -> int:
        """The step below the lowest step revised after ``revision`` (none: a large number);
        a revision of another index: everything (-1)."""
        if revision is None:
            return 1 << 62
        nonce, _, count = revision.partition(":")
        if nonce != self._nonce or not count.isdigit() or int(count) > len(self._revised):
            return -(1 << 62)
        changed = self._revised[int(count):]
        return min(changed) - 1 if changed else 1 << 62

    def _records(self, fd: int, start: int, end: int, fields: Collection[str] | None
                 ) -> list[dict[str, Any]]:
        """The lines of steps ``start`` to ``end`` (positions), read in contiguous runs."""
        out: list[dict[str, Any]] = []
        i = start
        while i < end:
            j, first = i + 1, self._offsets[i]
            stop = first + self._lengths[i]
            while j < end and self._offsets[j] == stop:
                stop += self._lengths[j]
                j += 1
            block = os.pread(fd, stop - first, first)
            self.bytes_read += len(block)
            for line in block.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # rewritten in place since it was indexed
                    continue
                if not isinstance(record, dict):
                    continue
                if fields is not None:
                    record = {k: record[k] for k in ("step", *fields) if k in record}
                out.append(finite(record))
            i = j
        return out


def finite(record: dict[str, Any]) -> dict[str, Any]:
    """The record with every NaN or infinity (a diverged loss) as None: JSON has neither."""
    return {k: _finite(v) for k, v in record.items()}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return finite(value)
    return value


class MetricsBook:
    """The indexes of the jobs polled lately (``keep`` at most, least recently used dropped)."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._indexes: OrderedDict[tuple[int, float], MetricsIndex] = OrderedDict()

    def index(self, key: tuple[int, float]) -> MetricsIndex:
        with self._lock:
            found = self._indexes.get(key)
            if found is None:
                found = self._indexes[key] = MetricsIndex()
                while len(self._indexes) > self.keep:
                    self._indexes.popitem(last=False)
            else:
                self._indexes.move_to_end(key)
            return found
