"""Trace analysis of a profile dir (``stoker analyze``): torch.profiler's Chrome traces, one per
rank (RUN_DIR/profiles/<stamp>/rank-R.json[.gz]), read with the standard library.

HolisticTraceAnalysis is not used: it expects GPU (kineto) traces with rank info and reports
on GPU kernels only, and most of Stoker's traces are CPU/gloo ones. The rules:

* **Windows.** Each ``ProfilerStep#N`` event of the rank's main thread (the thread that holds
  them) is one step; its duration is the step time.
* **Timeline.** On a trace with GPU events (``kernel``/``gpu_memcpy``/``gpu_memset``) the GPU's
  events, every stream together; otherwise the main thread's operators (``cpu_op``, and
  user annotations whose name is a collective's).
* **Sections**, by name, in this priority (an interval covered by two goes to the first):
  communication (``gloo:``, ``nccl``, ``c10d::``, ``_c10d_functional::``,
  ``record_param_comms``, ``ProcessGroup``; and a user annotation naming a collective, e.g.
  FSDP's ``FSDP::all_gather``, where no operator runs inside it: the wait), memory copy
  (``gpu_memcpy``/``gpu_memset``, names with ``copy``/``Memcpy``/``Memset``), computation
  (every other event of the timeline), idle (the step's time covered by none: Python
  between operators, sleeps, the GPU waiting).
  Each is the measure of a union of intervals clipped to the window, so the four sum to the
  step time up to float rounding: within ``TOLERANCE_US`` per step.
* **Overlap**: communication anywhere in the trace (gloo's own threads, NCCL kernels on any
  stream) that runs while the timeline computes (CPU: its computation section; GPU: its
  compute kernels), as a share of all communication time.
* **Top operators** by self time (the event's duration less its direct children's, per
  thread), over every thread and rank.
* **Slowest rank**: the one with the most step time not spent in communication (the rank the
  others wait for: a slow rank computes or idles while the others wait in collectives); for
  each section, the rank with the most and how much more it has than the rank with the least.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stoker.spec.errors import StokerError

TOLERANCE_US = 1.0  # per step: the sections' sum vs the step's duration
SECTIONS = ("computation", "communication", "memcpy", "idle")
COMM = re.compile(r"^(gloo:|nccl|c10d::|_c10d_functional::)|record_param_comms|ProcessGroup"
                  r"|ncclDevKernel|ncclKernel", re.IGNORECASE)
WAITS = re.compile(r"all_?gather|reduce_?scatter|all_?reduce|broadcast|all_?to_?all|barrier"
                   r"|rs_wait|wait_tensor", re.IGNORECASE)
COPY = re.compile(r"copy|Memcpy|Memset", re.IGNORECASE)
GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
OP_CATS = {"cpu_op", *GPU_CATS}
TRACE_NAME = re.compile(r"rank-(\d+)\.json(\.gz)?$")

Interval = tuple[float, float]


class AnalysisError(StokerError):
    """A profile dir that cannot be analysed: missing, without traces, unreadable."""


# ---------------------------------------------------------------------- intervals


def union(spans: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def measure(spans: list[Interval]) -> float:
    return sum(b - a for a, b in spans)


def intersect(x: list[Interval], y: list[Interval]) -> list[Interval]:
    """Of two unions (sorted, disjoint)."""
    out, i, j = [], 0, 0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            out.append((a, b))
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(x: list[Interval], y: list[Interval]) -> list[Interval]:
    """x less y, both unions."""
    out: list[Interval] = []
    j = 0
    for a, b in x:
        while j < len(y) and y[j][1] <= a:
            j += 1
        k, start = j, a
        while k < len(y) and y[k][0] < b:
            if y[k][0] > start:
                out.append((start, y[k][0]))
            start = max(start, y[k][1])
            k += 1
        if start < b:
            out.append((start, b))
    return out


def clip(spans: list[Interval], lo: float, hi: float) -> list[Interval]:
    return [(max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi]


# ---------------------------------------------------------------------- one rank


@dataclass
class Kind:
    comm: list[Interval]
    copy: list[Interval]
    every: list[Interval]  # the timeline's events, all kinds


def kind_of(e: dict[str, Any]) -> str:
    name, cat = str(e.get("name", "")), e.get("cat")
    if COMM.search(name):
        return "communication"
    if cat in ("gpu_memcpy", "gpu_memset") or COPY.search(name):
        return "memcpy"
    return "computation"


def load(path: Path) -> dict[str, Any]:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        trace = json.loads(raw)
    except (OSError, ValueError, EOFError) as e:
        raise AnalysisError(f"{path}: not a readable trace ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise AnalysisError(f"{path}: not a Chrome trace (no traceEvents list)")
    return trace


def is_op(e: dict[str, Any]) -> bool:
    """An operator, kernel or copy of a timeline; a collective's annotation (gloo's) too."""
    cat = e.get("cat")
    return (e.get("ph") == "X" and "dur" in e and "ts" in e
            and (cat in OP_CATS or (cat == "user_annotation"
                                    and bool(COMM.search(str(e.get("name", "")))))))


def analyse_rank(path: Path, rank: int) -> dict[str, Any]:
    trace = load(path)
    events = [e for e in trace["traceEvents"] if isinstance(e, dict)]
    info = trace.get("distributedInfo") or {}
    if isinstance(info, dict) and isinstance(info.get("rank"), int):
        rank = info["rank"]
    steps = sorted((e for e in events if e.get("ph") == "X"
                    and str(e.get("name", "")).startswith("ProfilerStep#")),
                   key=lambda e: float(e["ts"]))
    if not steps:
        raise AnalysisError(f"{path}: no ProfilerStep# events (not a torch.profiler trace "
                            f"of training steps)")
    main = steps[0].get("tid")
    ops = [e for e in events if is_op(e)]
    gpu = any(e.get("cat") in GPU_CATS for e in ops)
    timeline = [e for e in ops if (e.get("cat") in GPU_CATS if gpu else e.get("tid") == main)]

    def spans(evs: list[dict[str, Any]]) -> list[Interval]:
        return union([(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in evs])

    by_kind = {k: spans([e for e in timeline if kind_of(e) == k]) for k in SECTIONS[:3]}
    # A collective's annotation (FSDP::all_gather) is communication where no operator of
    # the timeline runs inside it: the wait for the collective's work.
    waits = [] if gpu else spans([e for e in events if e.get("ph") == "X" and "dur" in e
                                  and e.get("cat") == "user_annotation"
                                  and e.get("tid") == main and not is_op(e)
                                  and WAITS.search(str(e.get("name", "")))])
    others = union(by_kind["computation"] + by_kind["memcpy"])
    comm = union(by_kind["communication"] + subtract(waits, others))
    comm_any = union(comm + spans([e for e in ops if kind_of(e) == "communication"]))
    every = union(spans(timeline) + comm)
    comm_or_copy = union(comm + by_kind["memcpy"])
    compute_region = by_kind["computation"] if gpu else subtract(every, comm_or_copy)
    windows = []
    total = dict.fromkeys(SECTIONS, 0.0)
    total_wall = comm_total = comm_overlap = 0.0
    for s in steps:
        lo, hi = float(s["ts"]), float(s["ts"]) + float(s["dur"])
        wall = hi - lo
        c, cc, ev = (measure(clip(x, lo, hi)) for x in (comm, comm_or_copy, every))
        row = {"computation": ev - cc, "communication": c, "memcpy": cc - c, "idle": wall - ev}
        comm_w = clip(comm_any, lo, hi)
        comm_total += measure(comm_w)
        comm_overlap += measure(intersect(comm_w, clip(compute_region, lo, hi)))
        windows.append({"step": s["name"], "wall_us": wall, **{f"{k}_us": v
                                                               for k, v in row.items()}})
        total_wall += wall
        for k in SECTIONS:
            total[k] += row[k]
    return {"rank": rank, "file": str(path), "timeline": "gpu" if gpu else "cpu main thread",
            "steps": windows, "wall_us": total_wall,
            **{f"{k}_us": v for k, v in total.items()},
            "comm_total_us": comm_total, "comm_overlapped_us": comm_overlap,
            "overlap_pct": 100 * comm_overlap / comm_total if comm_total else 0.0,
            "_self": self_times(ops)}


def self_times(ops: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Operator name -> [self time in µs, calls]: duration less direct children's, per thread
    (GPU streams: each kernel is its own)."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    lanes: dict[tuple[Any, Any], list[dict[str, Any]]] = defaultdict(list)
    for e in ops:
        lanes[(e.get("pid"), e.get("tid"))].append(e)
    for lane in lanes.values():
        lane.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        selves = [float(e["dur"]) for e in lane]
        stack: list[tuple[float, int]] = []  # (end, index) of the open parents
        for i, e in enumerate(lane):
            ts, dur = float(e["ts"]), float(e["dur"])
            while stack and stack[-1][0] <= ts:
                stack.pop()
            if stack:
                selves[stack[-1][1]] -= dur
            stack.append((ts + dur, i))
        for e, mine in zip(lane, selves, strict=True):
            acc = out[str(e["name"])]
            acc[0] += mine
            acc[1] += 1
    return out


# ---------------------------------------------------------------------- the dir


def traces_in(profile_dir: Path) -> list[tuple[int, Path]]:
    if not profile_dir.exists():
        raise AnalysisError(f"no such profile dir: {profile_dir}")
    if not profile_dir.is_dir():
        raise AnalysisError(f"not a directory: {profile_dir}")
    found = [(int(m.group(1)), p) for p in sorted(profile_dir.iterdir())
             if (m := TRACE_NAME.search(p.name))]
    if not found:
        raise AnalysisError(f"{profile_dir}: no traces (rank-R.json or rank-R.json.gz); "
                            f"they are in RUN_DIR/profiles/<stamp>/")
    return found


def analyse(profile_dir: Path, top: int = 15) -> dict[str, Any]:
    ranks = [analyse_rank(p, r) for r, p in traces_in(profile_dir)]
    ranks.sort(key=lambda r: int(r["rank"]))
    ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for r in ranks:
        for name, (us, n) in r.pop("_self").items():
            ops[name][0] += us
            ops[name][1] += n
    top_ops = [{"name": k, "self_us": v[0], "calls": int(v[1])}
               for k, v in sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]]
    return {"dir": str(profile_dir), "tolerance_us": TOLERANCE_US, "ranks": ranks,
            "slowest": slowest(ranks), "top_ops": top_ops}


def slowest(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    def own(r: dict[str, Any]) -> float:
        return float(r["wall_us"]) - float(r["communication_us"])

    worst = max(ranks, key=own)
    best = min(ranks, key=own)
    sections = {}
    for k in ("wall", *SECTIONS):
        hi = max(ranks, key=lambda r: float(r[f"{k}_us"]))
        lo = min(ranks, key=lambda r: float(r[f"{k}_us"]))
        sections[k] = {"rank": hi["rank"], "us": hi[f"{k}_us"],
                       "over_least_us": float(hi[f"{k}_us"]) - float(lo[f"{k}_us"]),
                       "least_rank": lo["rank"]}
    return {"rank": worst["rank"], "own_us": own(worst),
            "over_fastest_us": own(worst) - own(best), "fastest_rank": best["rank"],
            "sections": sections}
