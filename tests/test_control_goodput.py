"""Goodput accounting (`stoker.control.goodput`) against hand counts: a training job's history
with a failure, its steps redone after the restart counted as recomputed; the same history
without telemetry (a command job); a window; records redone after a rollback."""

from __future__ import annotations

import pytest

from stoker.control.goodput import LOSSES, Step, Telemetry, account, holds
from stoker.control.store import EventRecord
from stoker.spec.api import JobState

Q, A, S, R = JobState.QUEUED, JobState.ADMITTED, JobState.STARTING, JobState.RUNNING
F, OK = JobState.FAILED, JobState.SUCCEEDED


def history() -> list[EventRecord]:
    """Submitted at 0, admitted at 10, started at 12, failed at 30 (restart), admitted again
    at 35, started at 36, succeeded at 50; annotations between change nothing."""
    moves = [(0, None, Q), (10, Q, A), (12, A, S), (13, S, R), (28, R, R), (30, R, F),
             (30, F, Q), (35, Q, A), (36, A, S), (37, S, R), (50, R, OK)]
    return [EventRecord(i + 1, 1, at, "failure" if a == b else "transition", a, b, "", "t")
            for i, (at, a, b) in enumerate(moves)]


def steps() -> Telemetry:
    """2 s steps (0.5 s of data wait). Attempt 1 runs steps 1-6 from 14 to 26; its checkpoint
    of step 4 stalled 1 s. Attempt 2 resumes from step 4: steps 5-8 from 38 to 46, then a
    final checkpoint stalls 0.5 s."""
    first = [Step(k, 14 + 2 * k, 2.0, 0.5) for k in range(1, 7)]
    second = [Step(k, 38 + 2 * (k - 4), 2.0, 0.5) for k in range(5, 9)]
    return Telemetry([*first, *second], [(23.0, 1.0), (47.0, 0.5)])


def lost(**given: float) -> dict[str, float]:
    return {reason: given.get(reason, 0.0) for reason in LOSSES}


def test_a_training_job_with_a_failure_matches_the_hand_count() -> None:
    g = account(history(), ranks=2, gpus_per_rank=1.0, telemetry=steps(), now=100.0)
    # Hold 1 (10-30, 20 s): start-up 10-14 = 4; steps 5 and 6 redone = 4; kept steps 1-4:
    # data wait 2, productive 6; checkpoint stall 1; left: 3, lost to the failure.
    # Hold 2 (35-50, 15 s): restart 35-38 = 3; steps 5-8 kept: data wait 2, productive 6;
    # stall 0.5; left: 3.5 (shutdown), other. Every figure x 2 ranks.
    assert g.allocated_s == pytest.approx(70.0)
    assert g.productive_s == pytest.approx(24.0)
    assert g.lost == pytest.approx(lost(startup=8, restart=6, recomputed=8, data_wait=8,
                                        checkpoint_stall=3, failed=6, other=7))
    assert g.productive_s + sum(g.lost.values()) == pytest.approx(g.allocated_s)
    assert g.queued_s == pytest.approx(15.0)  # 0-10 and 30-35, wall seconds
    assert g.gpu_s == pytest.approx(70.0) and g.holds == 2 and g.telemetry
    assert g.ratio == pytest.approx(24 / 70)


def test_a_command_job_productive_is_its_successful_run() -> None:
    g = account(history(), ranks=3, now=100.0)
    # Hold 1: start-up 10-12, failed 12-30; hold 2: restart 35-36, productive 36-50.
    assert g.allocated_s == pytest.approx(3 * 35)
    assert g.productive_s == pytest.approx(3 * 14)
    assert g.lost == pytest.approx(lost(startup=6, restart=3, failed=54))
    assert g.gpu_s == 0.0 and not g.telemetry


def test_a_window_counts_what_falls_inside_it() -> None:
    g = account(history(), ranks=2, telemetry=steps(), now=100.0, since=35.0)
    assert g.holds == 1 and g.queued_s == 0.0
    assert g.allocated_s == pytest.approx(30.0)
    assert g.lost == pytest.approx(lost(restart=6, data_wait=4, checkpoint_stall=1, other=7))


def test_a_hold_still_going_ends_now_and_a_wait_still_going_too() -> None:
    events = history()[:4]  # running since 13
    found, waits = holds(events, now=40.0)
    assert [(h.admitted, h.started, h.ended, h.outcome) for h in found] == [(10, 12, 40, R)]
    assert waits == [(0, 10)]
    g = account(history()[:7], ranks=1, now=33.0)  # failed at 30, queued again since
    assert g.queued_s == pytest.approx(13.0) and g.lost["failed"] == pytest.approx(18.0)


def test_steps_redone_after_a_rollback_are_recomputed() -> None:
    events = history()[:4]
    run = Telemetry([Step(k, 14 + 2 * i, 2.0, 0.0)
                     for i, k in enumerate([1, 2, 3, 2, 3, 4])])
    g = account(events, ranks=1, telemetry=run, now=30.0)
    assert g.lost["recomputed"] == pytest.approx(4.0)  # the first steps 2 and 3
    assert g.productive_s == pytest.approx(8.0)
    # the first step began at 12: start-up 10-12; the hold (10-30) leaves 6 s to "other"
    assert g.lost["startup"] == pytest.approx(2.0) and g.lost["other"] == pytest.approx(6.0)


def test_steps_slowed_by_a_flagged_straggler_lose_what_they_took_beyond_the_usual() -> None:
    events = history()[:4]  # running since 13, admitted at 10
    # 1 s steps from 12 on, except steps 5-7 at 2.5 s
    times = [1.0, 1.0, 1.0, 1.0, 2.5, 2.5, 2.5, 1.0, 1.0, 1.0]
    ends = [12 + sum(times[:i + 1]) for i in range(len(times))]
    run = Telemetry([Step(k + 1, end, t, 0.0)
                     for k, (t, end) in enumerate(zip(times, ends, strict=True))],
                    straggling=[(ends[4] - 0.1, ends[6] + 0.1)])  # flagged over steps 5-7
    g = account(events, ranks=2, telemetry=run, now=30.0)
    assert g.lost["straggler"] == pytest.approx(2 * 3 * 1.5)  # 3 steps, 1.5 s over the usual
    assert g.productive_s == pytest.approx(2 * 10 * 1.0)
    assert g.productive_s + sum(g.lost.values()) == pytest.approx(g.allocated_s)
    unflagged = account(events, ranks=2, telemetry=Telemetry(run.steps), now=30.0)
    assert unflagged.lost["straggler"] == 0 and unflagged.productive_s == pytest.approx(2 * 14.5)


def test_straggler_intervals_run_from_the_first_flag_to_the_last_clear_or_a_new_start() -> None:
    from stoker.control.run_telemetry import straggling

    events = [{"event": "straggler", "time": 5, "rank": 1},
              {"event": "straggler", "time": 6, "rank": 0},
              {"event": "straggler_cleared", "time": 7, "rank": 1},
              {"event": "straggler_cleared", "time": 9, "rank": 0},
              {"event": "straggler", "time": 12, "rank": 1},
              {"event": "start", "time": 20},  # a new attempt: judged anew
              {"event": "straggler", "time": 30, "rank": 1}, {"event": "straggler"}]
    assert straggling(events) == [(5, 9), (12, 20), (30, float("inf"))]
