"""The job's life as a state machine: which transitions exist and which states hold resources.

```
QUEUED -> ADMITTED -> STARTING -> RUNNING -> SUCCEEDED
   ^                                  |----> FAILED (restarts left: back to QUEUED)
   |------------ PREEMPTED <----------|      CANCELLED
```
"""

from __future__ import annotations

from stoker.spec.api import JobState

Q, A, S, R = JobState.QUEUED, JobState.ADMITTED, JobState.STARTING, JobState.RUNNING
SUCCEEDED, FAILED = JobState.SUCCEEDED, JobState.FAILED
PREEMPTED, CANCELLED = JobState.PREEMPTED, JobState.CANCELLED

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    Q: frozenset({A, CANCELLED, FAILED}),  # FAILED: a stored spec that no longer parses
    A: frozenset({S, Q, FAILED, PREEMPTED, CANCELLED}),
    S: frozenset({R, Q, SUCCEEDED, FAILED, PREEMPTED, CANCELLED}),
    R: frozenset({SUCCEEDED, FAILED, PREEMPTED, CANCELLED}),
    PREEMPTED: frozenset({Q}),
    FAILED: frozenset({Q}),
    SUCCEEDED: frozenset(),
    CANCELLED: frozenset(),
}

# States whose jobs hold their admitted resources (their processes may be alive).
ACTIVE: frozenset[JobState] = frozenset({A, S, R})
# States a job never leaves on its own. FAILED leaves only when restarts are left, in the
# same transaction that enters it, so a job seen as FAILED stays FAILED.
TERMINAL: frozenset[JobState] = frozenset({SUCCEEDED, FAILED, CANCELLED})


def check_path(start: JobState, path: tuple[JobState, ...]) -> None:
    """Raise ValueError unless ``start -> path[0] -> path[1] ...`` are all allowed transitions."""
    current = start
    for nxt in path:
        if nxt not in TRANSITIONS[current]:
            raise ValueError(f"transition {current} -> {nxt} is not allowed")
        current = nxt


# A held job's ``not_before`` (`stoker.control.job_ops`): never reached, so the scheduler
# leaves the job alone until a release sets ``not_before`` to the time of the release.
HELD = 1e15


def is_held(not_before: float) -> bool:
    return not_before >= HELD
