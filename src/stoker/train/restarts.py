"""The launcher's restart loop: run the gang; when a rank fails, record why, and start the whole
gang again, which resumes from the latest committed checkpoint; at most ``max_restarts`` times.

Each attempt is one elastic launch with no restarts of its own: when a rank dies, elastic tears
the gang down and reports every failed rank with its exit code or signal
(``ChildFailedError``). That report is what goes to RUN_DIR/events.jsonl as the cause, and it
lets a preempted gang (exit code 75) stop instead of being restarted. Ranks learn their attempt
number from ``STOKER_ATTEMPT`` (under plain torchrun, from ``TORCHELASTIC_RESTART_COUNT``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stoker.observe.events import EventLog
from stoker.train.exitcodes import EXIT_HANG, EXIT_PREEMPTED, describe

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

ATTEMPT_ENV = "STOKER_ATTEMPT"
NOT_RESTARTED = (0, 2, 130, EXIT_PREEMPTED)  # done, user error, interrupted, preempted


def attempt() -> int:
    """This rank's attempt number: 0 for the first start, k after k restarts."""
    value = os.environ.get(ATTEMPT_ENV) or os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0
    return int(value)


@dataclass(frozen=True)
class RankFailure:
    rank: int
    exitcode: int  # negative: killed by that signal
    pid: int
    cause: str
    message: str = ""
    stopped: bool = False  # still running when the launcher began stopping the gang

    @property
    def torn_down(self) -> bool:
        """Ended by the launcher's signal because another rank failed (SIGTERM, or SIGKILL
        after the failure grace), not a cause itself. A rank that ends with a code of its own
        meanwhile (its watchdog's hang) still tells its story."""
        return self.exitcode == -signal.SIGTERM or (self.stopped
                                                    and self.exitcode == -signal.SIGKILL)


@dataclass(frozen=True)
class AttemptResult:
    code: int  # the launcher's exit code for this attempt
    failures: list[RankFailure] = field(default_factory=list)  # the likeliest cause first


def rank_failures(err: ChildFailedError, stopped: Collection[int] = ()) -> list[RankFailure]:
    """Every failed rank of an elastic launch, the likeliest root cause first: a rank killed
    by a signal other than the launcher's, then a hang, then the earliest error. ``stopped``:
    the pids the launcher stopped because another rank had failed (never the cause)."""
    found = [RankFailure(rank, f.exitcode, f.pid, describe(f.exitcode), _message(f.message),
                         f.pid in stopped)
             for rank, f in err.failures.items()]
    stamp = {rank: f.timestamp for rank, f in err.failures.items()}

    def order(f: RankFailure) -> tuple[int, float]:
        kind = 3 if f.torn_down else 0 if f.exitcode < 0 else 1 if f.exitcode == EXIT_HANG else 2
        return kind, stamp[f.rank]

    return sorted(found, key=order)


def supervise(launch_once: Callable[[int], AttemptResult], max_restarts: int,
              events: EventLog) -> int:
    """Run attempts until one ends without a failure or the restarts are used up; returns the
    exit code of the last attempt. Failures and restarts are recorded with their causes."""
    for n in range(max_restarts + 1):
        if n:
            events.emit("restart", attempt=n, max_restarts=max_restarts)
        started = time.time()
        result = launch_once(n)
        if result.code in NOT_RESTARTED:
            return result.code
        root = result.failures[0] if result.failures else None
        events.emit("failure", attempt=n, exit_code=result.code,
                    cause=root.cause if root else describe(result.code),
                    rank=root.rank if root else None,
                    message=root.message if root else "", ran_s=round(time.time() - started, 3),
                    ranks=[{"rank": f.rank, "exitcode": f.exitcode, "pid": f.pid,
                            "cause": f.cause, "torn_down": f.torn_down}
                           for f in result.failures],
                    restarts_left=max_restarts - n)
    return result.code


def _message(message: str | dict[str, object]) -> str:
    """The one-line reason from elastic's failure message (a dict when the rank wrote an
    error file: its "message" is the exception)."""
    text = str(message.get("message", message)) if isinstance(message, dict) else str(message)
    if text.startswith("To enable traceback"):  # elastic's placeholder when no error file
        return ""
    text = text.strip().splitlines()[-1] if text.strip() else ""
    return text if len(text) < 1000 else text[:1000] + "..."
