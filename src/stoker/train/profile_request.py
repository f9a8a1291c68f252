"""The request file of ``stoker profile RUN_DIR``: what it asks, written atomically by the CLI,
taken by rank 0 of the running training on a log step (`profiling` runs the capture).

Light on purpose (no torch): the CLI checks its input and writes the request quickly.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from stoker.observe.events import EventLog, read_events
from stoker.spec.errors import StokerError
from stoker.train.run_dir import LOCK_FILE, lock_holder

REQUEST_FILE = "profile.request"
PROFILES_DIR = "profiles"
RUN_CONFIG = "config.toml"  # what makes a directory a training run's (the launcher writes it)
STAMP_FORMAT = "%Y%m%d-%H%M%S"  # UTC: the same name on every host
NO_ASK = (0, 0, 0)
_MEMORY, _STACK, _GZIP = 1, 2, 4


@dataclass(frozen=True)
class ProfileAsk:
    """What `stoker profile` asks of a running job. ``stamp`` (unix seconds) names the dir."""

    steps: int
    stamp: int
    memory: bool = False
    with_stack: bool = False
    gzip: bool = False

    def encode(self) -> tuple[int, int, int]:
        """Three numbers for the log step's gather (exact in float64)."""
        flags = _MEMORY * self.memory | _STACK * self.with_stack | _GZIP * self.gzip
        return self.steps, flags, self.stamp

    @classmethod
    def decode(cls, numbers: tuple[int, int, int]) -> ProfileAsk | None:
        steps, flags, stamp = numbers
        if steps < 1:
            return None
        return cls(steps, stamp, bool(flags & _MEMORY), bool(flags & _STACK),
                   bool(flags & _GZIP))

    @property
    def dir_name(self) -> str:
        return stamp_name(self.stamp)


def stamp_name(stamp: int) -> str:
    return time.strftime(STAMP_FORMAT, time.gmtime(stamp))


def profiles_root(run_dir: Path) -> Path:
    return run_dir / PROFILES_DIR


# ---------------------------------------------------------------------- the request file


def write_request(run_dir: Path, ask: ProfileAsk) -> Path:
    """RUN_DIR/profile.request, whole or not at all (a rank never reads half of it)."""
    path = run_dir / REQUEST_FILE
    tmp = run_dir / f".{REQUEST_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({**asdict(ask), "pid": os.getpid()}) + "\n")
    tmp.replace(path)
    return path


def parse_request(text: str) -> ProfileAsk:
    """A request file's content; ValueError, KeyError or TypeError when it is not one."""
    raw = json.loads(text)
    return ProfileAsk(int(raw["steps"]), int(raw["stamp"]), bool(raw.get("memory")),
                      bool(raw.get("with_stack")), bool(raw.get("gzip")))


def take_request(run_dir: Path, events: EventLog) -> ProfileAsk | None:
    """Rank 0, on a log step: the pending request, removed from the run dir. A request that
    cannot be read is removed too, with a ``profile_refused`` event."""
    path = run_dir / REQUEST_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        ask = parse_request(text)
    except (ValueError, KeyError, TypeError) as e:
        events.emit("profile_refused", reason=f"unreadable {REQUEST_FILE}: {e}")
        return None
    if ask.steps < 1:
        events.emit("profile_refused", dir=str(profiles_root(run_dir) / ask.dir_name),
                    reason=f"steps {ask.steps} < 1")
        return None
    return ask


def request_profile(run_dir: Path, ask: ProfileAsk) -> ProfileAsk:
    """`stoker profile`: check the run dir and write the request, its stamp moved on (a
    second at a time) past any profile dir the run has or announced. `StokerError` (one line,
    exit 2) for a bad request or a run dir that is not a running training's."""
    if ask.steps < 1:
        raise StokerError(f"--steps {ask.steps}: must be at least 1")
    if not run_dir.is_dir():
        raise StokerError(f"{run_dir}: no such run dir")
    if not (run_dir / RUN_CONFIG).is_file():
        raise StokerError(f"{run_dir} is not a training run dir (no {RUN_CONFIG})")
    if not lock_holder(run_dir):
        raise StokerError(f"{run_dir} is not running (no process holds {run_dir / LOCK_FILE})")
    if (run_dir / REQUEST_FILE).exists():
        raise StokerError(f"{run_dir} has a profile request not yet taken "
                          f"({run_dir / REQUEST_FILE}): wait for it")
    used = {Path(e.get("dir", "")).name for e in read_events(run_dir, "profile_started")}
    stamp = ask.stamp
    while stamp_name(stamp) in used or (profiles_root(run_dir) / stamp_name(stamp)).exists():
        stamp += 1
    ask = replace(ask, stamp=stamp)
    write_request(run_dir, ask)
    return ask
