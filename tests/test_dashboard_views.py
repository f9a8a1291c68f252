"""What the dashboard derives: queues' holding over time (exact time-weighted means per bucket) and
nodes grouped by topology domain."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest

from stoker.control.queue_history import held_over_time
from stoker.control.store import AttemptRecord


def held(queue: str, admitted: float, ended: float | None, gpus: float = 0,
         cpus: float = 0, flavor: str = "h100", job: int = 1) -> AttemptRecord:
    return AttemptRecord(job_id=job, hold=1, flavor=flavor, tenant="t", queue=queue,
                         admitted_at=admitted, ranks=1, gpus=gpus, cpus=cpus, ended_at=ended)


def test_each_bucket_gets_the_time_weighted_mean_of_what_was_held() -> None:
    attempts = [held("a", 15, 35, gpus=8, cpus=4),  # half, all, half of 3 buckets
                held("a", 0, None, gpus=2, job=2),  # still held: counts up to now (25)
                held("b", -100, 5, gpus=4, job=3),  # began before the window
                held("b", 41, 50, gpus=4, job=4)]  # after the window: nothing
    got = held_over_time(attempts, start=0, end=40, buckets=4, now=25)
    assert got[("a", "h100", "gpu")] == [2, 4 + 2, 8 + 1, 4]
    assert got[("a", "h100", "cpu")] == [0, 2, 4, 2]
    assert got[("b", "h100", "gpu")] == [2, 0, 0, 0]
    assert ("b", "h100", "cpu") not in got  # it never held a CPU


def test_the_integral_is_kept_whatever_the_buckets() -> None:
    attempts = [held("a", 3.3, 71.9, gpus=8), held("a", 50, 90, gpus=1, flavor="a100"),
                held("a", 10, 20, gpus=3, job=2)]
    exact = 8 * (71.9 - 3.3) + 3 * 10
    for buckets in (1, 7, 100):
        got = held_over_time(attempts, start=0, end=100, buckets=buckets, now=100)
        assert sum(got[("a", "h100", "gpu")]) * 100 / buckets == pytest.approx(exact)
        assert sum(got[("a", "a100", "gpu")]) * 100 / buckets == pytest.approx(40)


def test_nodes_are_grouped_by_their_innermost_topology_domain() -> None:
    from stoker.server.dashboard.routes import topology_groups
    from stoker.spec.api import NodeView

    def node(name: str, zone: str, rack: str, gpus: float) -> NodeView:
        return NodeView(name=name, flavor="h100", labels={"zone": zone, "rack": rack},
                        capacity={"gpu": 8}, allocated={"gpu": gpus}, jobs=[], cordoned=False,
                        cordon_reason="",
                        state="healthy")

    nodes = [node("n1", "b", "r1", 8), node("n2", "a", "r2", 0), node("n3", "a", "r1", 2),
             node("n4", "a", "r1", 4)]
    groups = topology_groups(nodes, ("zone", "rack"))
    assert [(g.path, [n.name for n in g.nodes]) for g in groups] == [
        (("a", "r1"), ["n3", "n4"]), (("a", "r2"), ["n2"]), (("b", "r1"), ["n1"])]
    assert groups[0].allocated == {"gpu": 6} and groups[0].capacity == {"gpu": 16}
    assert [g.path for g in topology_groups(nodes, ())] == [()]


def test_a_ranks_log_tail_keeps_its_own_whole_lines(tmp_path: Path) -> None:
    from stoker.server.logs import read_chunk, read_tail

    (tmp_path / "launcher.log").write_text(
        "".join(f"[rank{i % 2}]: line {i}\n" for i in range(100)) + "[rank1]: half")
    text, end = read_tail(tmp_path, PurePosixPath("launcher.log"), 200, "[rank1]:")
    assert text.endswith("line 97\nline 99\n") and "rank" not in text and "half" not in text
    more, _ = read_chunk(tmp_path, PurePosixPath("launcher.log"), end, 1000)
    assert more == "[rank1]: half"  # the partial line is where the next read starts
    whole, end_all = read_tail(tmp_path, PurePosixPath("launcher.log"), 10_000)
    assert whole.startswith("[rank0]: line 0\n") and end_all == len(whole)


def test_the_runs_notable_events_read_as_sentences(tmp_path: Path) -> None:
    from stoker.control.run_telemetry import read_run_events

    run = tmp_path / "7" / "run"
    run.mkdir(parents=True)
    lines = [{"event": "start", "time": 1.0, "attempt": 0, "step": 0, "world_size": 2,
              "resumed": False},
             {"event": "checkpoint_committed", "time": 2.0, "step": 10},  # the list's, not here
             {"event": "failure", "time": 3.0, "attempt": 0, "exit_code": -9, "rank": 1,
              "cause": "killed", "message": ""},
             {"event": "start", "time": 4.0, "attempt": 1, "step": 10, "world_size": 2,
              "resumed": True},
             {"event": "checkpoint_loaded", "time": 4.5, "step": 10, "config_changed": False},
             {"event": "straggler", "time": 5.0, "rank": 1, "step": 14, "score": 0.41,
              "section": "host", "steps": 3},
             {"event": "start", "attempt": 2}]  # no time: skipped
    (run / "events.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\nnot json\n")
    assert [(e.kind, e.text) for e in read_run_events(tmp_path, 7)] == [
        ("start", "attempt 0 started at step 0, from scratch, 2 ranks"),
        ("failure", "attempt 0 failed on rank 1: killed (exit -9)"),
        ("start", "attempt 1 started at step 10, resuming, 2 ranks"),
        ("checkpoint_loaded", "resumed from the checkpoint of step 10"),
        ("straggler", "rank 1 straggling in host from step 14: 0.41 of the fastest rank's speed")]
    assert read_run_events(tmp_path, 8) == []


def test_the_apis_job_sorts_are_the_stores() -> None:
    from typing import get_args

    from stoker.control.store import JOB_SORTS
    from stoker.server.app import JobSort

    assert get_args(JobSort) == JOB_SORTS
