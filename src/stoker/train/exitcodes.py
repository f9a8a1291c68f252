"""Exit codes of a rank and of ``stoker train``, and what they mean to a supervisor.

=====  ==========================================================================
0      training finished
75     preempted, resumable: a signal (SIGTERM/SIGUSR1) stopped the run at a step
       boundary after a synchronous checkpoint; ``--resume auto`` continues exactly
       (75 is EX_TEMPFAIL in sysexits.h: "temporary failure, retry later")
86     this rank made no progress for ``train.hang_timeout_s`` (hang watchdog)
2      a user mistake (bad config, bad flag): nothing was run
other  a failure; under ``--max-restarts`` the gang is restarted from the latest checkpoint
=====  ==========================================================================
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_PREEMPTED = 75
EXIT_HANG = 86

_MEANING = {
    EXIT_OK: "finished",
    EXIT_PREEMPTED: "preempted (resumable)",
    EXIT_HANG: "hang detected by the watchdog",
    1: "error",
    2: "user error",
}


def describe(code: int) -> str:
    """A short cause for an exit code; negative codes are deaths by signal (as subprocess
    reports them)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code > 128 and code - 128 < 65:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return _MEANING.get(code, f"exit code {code}")
