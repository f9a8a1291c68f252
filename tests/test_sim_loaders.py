"""Trace loaders: real shared traces, generated Helios/Philly fixtures, and one-line errors."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from stoker.sim.cluster import from_node_list
from stoker.sim.engine import Simulator
from stoker.sim.loaders import detect_format, load_node_list, load_trace
from stoker.sim.policies import resolve
from stoker.spec.errors import ConfigError

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
ALIBABA = TRACES / "alibaba-openb-2023" / "openb_pod_list_default.csv"
TIRESIAS = TRACES / "tiresias" / "60_job.csv"


@pytest.mark.shared_data("traces/alibaba-openb-2023")
def test_alibaba_skip_report_counts_every_row() -> None:
    trace = load_trace(ALIBABA, "alibaba")
    skips = trace.skips
    assert skips.rows == 8152
    assert skips.skipped["CPU-only task (num_gpu == 0)"] == 1088
    # 897 pods were never scheduled; 36 of them are CPU-only and counted as such.
    assert skips.skipped["never scheduled in the trace (no scheduled_time)"] == 861
    assert skips.kept == len(trace.jobs) == 8152 - 1088 - 861
    assert trace.nodes is not None and len(trace.nodes) == 1213
    assert sum(n.gpus for n in trace.nodes) == 6212
    assert trace.jobs[0].arrival == 0.0
    assert all(a.arrival <= b.arrival for a, b in zip(trace.jobs, trace.jobs[1:], strict=False))
    fractional = [j for j in trace.jobs if j.gpu_milli < 1000]
    assert fractional and all(j.gpus == 1 for j in fractional)
    assert skips.notes["fractional GPU request (gpu_milli < 1000)"] == len(
        fractional)


@pytest.mark.shared_data("traces/tiresias/60_job.csv", "traces/tiresias/n32g4.csv")
def test_tiresias_trace_and_cluster() -> None:
    trace = load_trace(TIRESIAS, "tiresias")
    assert len(trace.jobs) == 60 and trace.skips.kept == 60
    assert trace.jobs[1].gpus == 8 and trace.jobs[1].ranks == 1 and trace.jobs[1].multi_node
    nodes = load_node_list(TIRESIAS.parent / "n32g4.csv")
    assert len(nodes) == 32 and {n.gpus for n in nodes} == {4}
    assert nodes[0].labels == (("switch", "s0"),)


@pytest.mark.shared_data("traces/alibaba-openb-2023", "traces/tiresias/60_job.csv",
                         "traces/tiresias/n32g4.csv")
def test_multi_node_gangs_on_the_shared_traces() -> None:
    # Tiresias on n32g4 (4-GPU nodes): the ten 8-GPU jobs become 2 x 4 gangs, the rest stay on
    # one node.
    tiresias = load_trace(TIRESIAS, "tiresias")
    nodes = load_node_list(TIRESIAS.parent / "n32g4.csv")
    cluster = from_node_list(nodes, ["t0"], "test")
    sim = Simulator(cluster, tiresias.jobs, ["t0"] * 60, resolve("fifo", cluster))
    assert len(sim.jobs) == 60 and not sim.skipped
    assert Counter((j.ranks, j.per_rank_gpus) for j in sim.jobs if j.ranks > 1) == {(2, 4): 10}
    # Alibaba: nothing dropped for its size on the full node list; on its nodes of at most 2
    # GPUs, the 44 eight-GPU pods become 4 x 2 gangs and the 15 four-GPU pods 2 x 2.
    alibaba = load_trace(ALIBABA, "alibaba")
    assert alibaba.nodes is not None
    assert not any("more GPUs" in reason for reason in alibaba.skips.skipped)
    small = [n for n in alibaba.nodes if n.gpus <= 2]
    cluster = from_node_list(small, ["t0"], "test")
    sim = Simulator(cluster, alibaba.jobs, ["t0"] * len(alibaba.jobs),
                    resolve("fifo", cluster))
    assert Counter((j.ranks, j.per_rank_gpus) for j in sim.jobs if j.ranks > 1) == {
        (4, 2): 44, (2, 2): 15}


HELIOS_HEADER = ("job_id,user,vc,gpu_num,cpu_num,node_num,state,submit_time,start_time,"
                 "end_time,duration,queue")
HELIOS_ROWS = [
    "1425511,uXBbc,vcJkd,1,1,1,COMPLETED,2020-06-09 18:41:01,2020-06-09 18:41:01,"
    "2020-06-10 04:55:09,36848,0",
    "1425512,uVMrF,vchbv,16,64,2,FAILED,2020-06-09 18:41:27,2020-06-09 18:42:27,"
    "2020-06-09 18:45:36,189,60",
    "1425513,uzqls,vcpDC,0,4,1,COMPLETED,2020-06-09 18:41:28,2020-06-09 18:41:28,"
    "2020-06-09 18:42:00,32,0",
    "1425514,uzqls,vcpDC,2,8,1,CANCELLED,2020-06-09 18:41:30,2020-06-09 18:41:30,"
    "2020-06-09 18:41:30,0,0",
    "1425515,uzqls,vcpDC,3,8,2,COMPLETED,2020-06-09 18:43:01,2020-06-09 18:43:01,"
    "2020-06-09 19:43:01,3600,0",
]


def test_helios(tmp_path: Path) -> None:
    path = tmp_path / "cluster_log.csv"
    path.write_text("\n".join([HELIOS_HEADER, *HELIOS_ROWS]) + "\n")
    trace = load_trace(path, "helios")
    assert trace.skips.rows == 5
    assert trace.skips.skipped == {"CPU-only job (gpu_num == 0)": 1,
                                   "zero or negative duration": 1}
    first, gang, odd = trace.jobs
    assert (first.arrival, first.duration, first.gpus, first.user, first.vc) == (
        0.0, 36848.0, 1, "uXBbc", "vcJkd")
    assert (gang.arrival, gang.ranks, gang.gpus_per_rank) == (26.0, 2, 8)
    assert (odd.ranks, odd.gpus_per_rank) == (3, 1)  # 3 GPUs on 2 nodes: one rank per GPU


def _attempt(start: str | None, end: str | None, machines: list[int]) -> dict[str, object]:
    return {"start_time": start, "end_time": end,
            "detail": [{"ip": f"m{i}", "gpus": [f"gpu{g}" for g in range(n)]}
                       for i, n in enumerate(machines)]}


def test_philly(tmp_path: Path) -> None:
    jobs = [
        {"status": "Pass", "vc": "ee9e8c", "jobid": "application_1", "user": "ce2f4c",
         "submitted_time": "2017-10-07 01:11:39",
         "attempts": [_attempt("2017-10-07 01:12:09", "2017-10-07 01:13:23", [8]),
                      _attempt("2017-10-07 01:13:30", "2017-10-07 02:13:30", [8])]},
        {"status": "Killed", "vc": "ee9e8c", "jobid": "application_2", "user": "aa",
         "submitted_time": "2017-10-07 01:12:39",
         "attempts": [_attempt("2017-10-07 01:20:00", "2017-10-07 01:30:00", [4, 4])]},
        {"status": "Failed", "vc": "b", "jobid": "application_3", "user": "aa",
         "submitted_time": "2017-10-07 01:13:00", "attempts": []},
        {"status": "Pass", "vc": "b", "jobid": "application_4", "user": "aa",
         "submitted_time": "2017-10-07 01:14:00",
         "attempts": [_attempt("2017-10-07 01:15:00", None, [2])]},
        {"status": "Pass", "vc": "b", "jobid": "application_5", "user": "aa",
         "submitted_time": "2017-10-07 01:14:00",
         "attempts": [_attempt("2017-10-07 01:15:00", "2017-10-07 01:16:00", [2, 1])]},
    ]
    path = tmp_path / "cluster_job_log"
    path.write_text(json.dumps(jobs))
    trace = load_trace(path, "philly")
    assert trace.skips.rows == 5
    assert trace.skips.skipped == {
        "no attempt with both start_time and end_time": 1,
        "still running when the trace ended (last attempt has no end_time)": 1,
    }
    first, gang, uneven = trace.jobs
    assert (first.arrival, first.duration, first.gpus, first.vc) == (0.0, 74 + 3600, 8, "ee9e8c")
    assert (gang.arrival, gang.ranks, gang.gpus_per_rank, gang.duration) == (60.0, 2, 4, 600)
    assert (uneven.ranks, uneven.gpus_per_rank) == (3, 1)


def test_generic(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("id,arrival,duration,gpus,ranks,gpu_model,tenant,gpu_milli\n"
                    "a,10,100,8,2,A100|H100,team1,\n"
                    "b,5,50,1,,,team2,500\n"
                    "c,7,0,1,,,team2,\n"
                    "d,7,5,3,2,,team2,\n"
                    "e,x,5,1,,,team2,\n")
    trace = load_trace(path, "generic")
    assert [j.id for j in trace.jobs] == ["b", "a"]
    b, a = trace.jobs
    assert (a.arrival, a.ranks, a.gpus_per_rank, a.gpu_models, a.vc) == (
        5.0, 2, 4, ("A100", "H100"), "team1")
    assert b.gpu_milli == 500 and b.gpu_seconds == 25.0
    assert trace.skips.skipped == {"zero or negative duration": 1,
                                   "gpus is not a multiple of ranks": 1,
                                   "unparseable value in column 'arrival'": 1}


def test_errors_name_file_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_trace(tmp_path / "missing.csv", "generic")
    with pytest.raises(ConfigError, match="unknown trace format 'slurm'"):
        load_trace(tmp_path / "x.csv", "slurm")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,arrival,gpus\na,1,1\n")
    with pytest.raises(ConfigError) as e:
        load_trace(bad, "generic")
    assert str(e.value).startswith(f"{bad}: duration: required column is missing")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_trace(broken, "philly")


@pytest.mark.shared_data("traces/alibaba-openb-2023", "traces/tiresias/60_job.csv")
def test_format_detected_from_the_header_of_shared_traces() -> None:
    assert detect_format(ALIBABA) == "alibaba"
    assert detect_format(TIRESIAS) == "tiresias"
    trace = load_trace(TIRESIAS)
    assert trace.format == "tiresias" and len(trace.jobs) == 60


def test_format_detected_for_every_format(tmp_path: Path) -> None:
    helios = tmp_path / "cluster_log.csv"
    helios.write_text("\n".join([HELIOS_HEADER, *HELIOS_ROWS]) + "\n")
    generic = tmp_path / "jobs.csv"
    generic.write_text("id,arrival,duration,gpus,user\na,0,10,1,u\n")
    philly = tmp_path / "cluster_job_log"
    philly.write_text("\n  [ ]")
    assert [detect_format(p) for p in (helios, generic, philly)] == [
        "helios", "generic", "philly"]
    assert load_trace(helios).format == "helios"


def test_unknown_header_is_one_line_naming_the_file(tmp_path: Path) -> None:
    odd = tmp_path / "odd.csv"
    odd.write_text("job,when,gpus\na,1,1\n")
    with pytest.raises(ConfigError) as e:
        load_trace(odd)
    message = str(e.value)
    assert message.startswith(f"{odd}: unknown trace format: header has gpus,job,when")
    assert "--format" in message and "\n" not in message
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,gpu,model\nn0,8,A100\n")
    with pytest.raises(ConfigError, match="a node list, not a trace"):
        detect_format(nodes)


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.shared_data("traces/alibaba-openb-2023")
def test_alibaba_requests_take_their_times_from_another_list(tmp_path: Path) -> None:
    # The first 300 pods of the shared list, as a requests-only list (no time columns, in
    # reverse order: the join is by name) with one pod the other list does not name.
    with ALIBABA.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [row for _, row in zip(range(300), reader, strict=False)]
    full = _write(tmp_path / "full.csv", header, rows)
    requests = [c for c in header if not c.endswith("_time")]
    extra = dict(rows[0], name="not-in-the-other-list")
    only = _write(tmp_path / "requests.csv", requests, [*rows[::-1], extra])
    expected = load_trace(full, "alibaba")
    trace = load_trace(only, times_from=ALIBABA)
    assert trace.format == "alibaba"
    assert sorted(trace.jobs, key=lambda j: j.id) == sorted(expected.jobs, key=lambda j: j.id)
    assert trace.skips.rows == 301 and trace.skips.kept == expected.skips.kept > 200
    assert trace.skips.skipped == expected.skips.skipped + Counter(
        {f"no times in {ALIBABA} (--times-from)": 1})


@pytest.mark.shared_data("traces/alibaba-openb-2023")
def test_times_from_a_bad_file_is_one_line_naming_it(tmp_path: Path) -> None:
    nodes = ALIBABA.parent / "openb_node_list_gpu_node.csv"
    with pytest.raises(ConfigError, match=r"openb_node_list_gpu_node\.csv: name: required"):
        load_trace(ALIBABA, times_from=nodes)
    twice = tmp_path / "twice.csv"
    twice.write_text("name,creation_time,deletion_time,scheduled_time\np,0,9,1\np,0,9,1\n")
    with pytest.raises(ConfigError, match=r"twice\.csv: name: pod 'p' is listed twice"):
        load_trace(ALIBABA, times_from=twice)
    with pytest.raises(ConfigError, match=r"nowhere\.csv: no such file"):
        load_trace(ALIBABA, times_from=tmp_path / "nowhere.csv")
    with pytest.raises(ConfigError, match="--times-from: only an Alibaba pod list"):
        load_trace(TIRESIAS, "tiresias", times_from=ALIBABA)
