"""Soak: the demo model trained on the control plane while faults are injected (issue 13).

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--fault-interval 300] [--faults K]
                                        [--steps N] [--backoff 5] [--seed 0] [--json OUT]
                                        [--reference DIR]

A real ``stoker server`` (`ServerProcess`) with local nodes, periodic health checks on (so a
node a failure suspects is cordoned, and returns after passing a later check) and the test-only
fault hook enabled, runs the demo config (examples/tiny.toml: the tiny model, FSDP2, 2 CPU
ranks of gloo) as one job with ``max_restarts`` to spare. Faults are drawn at exponential
intervals of mean ``--fault-interval`` seconds over the planned ``--minutes`` (over the
reference's wall time with ``--steps``; ``--faults K``: exactly K, evenly spread over the run)
and each is injected once the job has trained as far as that moment is into the planned run
(fault at 40% of the minutes: once the job passed 40% of its steps), so every fault falls due
however fast the machine runs the soak against its calibration; in turn:

  kill  ``kill -9`` of one rank (its pid from the process table)
  hang  ``SIGSTOP`` of one rank: its peer's heartbeat watchdog (``train.hang_timeout_s``)
        ends the gang as hung
  node  the whole job on its node dies at once (SIGKILL to every process of the run: the
        launcher, its warm ranks' zygote, the ranks and their clients), as when a machine is
        lost

The baseline, in the same invocation and first: the same config trained uninterrupted by
``stoker train`` (the command the control plane runs). ``--minutes`` sets the number of steps:
a 30-step calibration run measures the step time. ``--reference DIR`` reuses an earlier
invocation's reference instead (its ``train.toml`` and ``run/``, kept in the run's temporary
directory; the soak then trains that config). Reported: the job's state, its goodput (the
API's ``goodput`` object: productive over allocated rank-seconds, and where the rest went),
faults injected, restarts, whether every ``checkpoint_committed`` checkpoint verifies (its
manifest and checksums) and every resume loaded a committed one, and whether every step's loss
equals the reference's. The issue's goal: goodput >= 95% over 30 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from _fault_timeline import timelines
from stoker.bench.figures import figure
from stoker.server.process import ServerProcess, kill_jobs
from stoker.spec.loading import to_toml
from stoker.train.ckpt_layout import list_steps, step_dir
from stoker.train.ckpt_manifest import MANIFEST, TornCheckpoint, verify
from stoker.train.warm import is_rank

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.toml"
KINDS = ("kill", "hang", "node")
RANKS = 2
HANG_TIMEOUT_S = 10.0
NODES = 4
BENCH_QUICK = ["--steps", "50", "--faults", "1", "--backoff", "1"]
CLUSTER = f"""
[flavors.cpu]
{"".join(f'''
[[nodes]]
name = "n{i}"
flavor = "cpu"
cpus = {RANKS}
memory = "8GiB"
''' for i in range(NODES))}
[tenants.soak]
token_env = "STOKER_TOKEN_SOAK"
queues = ["q"]
[queues.q.quotas.cpu]
cpus = {RANKS}
[health]
periodic = true
periodic_interval = "2m"
light_interval = "10m"
passes_to_return = 1
[isolation]
fault_injection = true
pass_env = ["PYTHONPATH"]  # the job's `stoker train` is the Stoker that runs this script
"""


@dataclass
class Report:
    minutes: float
    steps: int
    state: str = ""
    reason: str = ""
    faults: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    attempts: int = 0
    goodput: dict[str, Any] = field(default_factory=dict)
    committed: int = 0
    torn: list[str] = field(default_factory=list)
    resumed_from: list[int] = field(default_factory=list)
    resumed_uncommitted: list[int] = field(default_factory=list)
    losses_equal: bool = False
    steps_done: int = 0
    mismatched_steps: list[int] = field(default_factory=list)
    reference_s: float = 0.0
    soak_s: float = 0.0
    timeline: list[dict[str, Any]] = field(default_factory=list)  # per fault, `_fault_timeline`
    state_dir: str = ""


def train_config(steps: int) -> dict[str, Any]:
    """The demo config (its dataset cached in the job's own directory, as the server wants)."""
    cfg = tomllib.loads(EXAMPLE.read_text())
    cfg["train"].update(steps=steps, eval_interval=0, hang_timeout_s=HANG_TIMEOUT_S)
    cfg["checkpoint"] = {"interval_minutes": 0.1, "keep_last": 100_000}
    cfg["telemetry"] = {"live": False}
    return cfg


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> loss, the last record of each step (a resumed run repeats a few)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def run_events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


def train_alone(cfg: dict[str, Any], work: Path) -> Path:
    """``stoker train`` uninterrupted, as the control plane would run it: its run dir."""
    work.mkdir(parents=True)
    (work / "train.toml").write_text(to_toml(cfg))
    run = work / "run"
    subprocess.run([sys.executable, "-m", "stoker", "train", str(work / "train.toml"),
                    "--nproc", str(RANKS), "--run-dir", str(run), "--resume", "auto"],
                   check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return run


def step_time(tmp: Path) -> float:
    """Seconds per step of the demo job, from a 30-step run (its first 5 steps left out)."""
    run = train_alone(train_config(30), tmp / "calibrate")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records if r.get("step", 0) > 5 and "step_time_s" in r]
    return float(sum(times) / len(times))


def absolute_pythonpath() -> str:
    """$PYTHONPATH with each entry absolute: the job runs in its own directory, where a relative
    ``src`` would silently leave it on the installed Stoker instead of the one under test."""
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return os.pathsep.join(str(Path(e).resolve()) for e in entries if e)


def fault_times(seconds: float, interval: float, count: int | None,
                rng: random.Random) -> list[float]:
    """Offsets into the run: exponential gaps of mean ``interval``, or ``count`` evenly."""
    if count is not None:
        return [seconds * (i + 1) / (count + 1) for i in range(count)]
    out, t = [], rng.expovariate(1 / interval)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(1 / interval)
    return out


def fault_steps(times: list[float], span: float, steps: int) -> list[int]:
    """The step each fault waits for: as far into the run's steps as it is into ``span``."""
    return [min(steps - 1, max(1, round(steps * t / span))) for t in times]


def processes_of(run_dir: Path) -> list[psutil.Process]:
    """The live processes of the run on this machine: every one with ``--run-dir RUN`` on its
    command line (the launcher, its warm ranks' zygote, its ranks and their clients)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status", "name"]):
        argv = p.info["cmdline"] or []
        if "--run-dir" in argv and p.info["status"] != "zombie":
            where = argv.index("--run-dir") + 1
            if where < len(argv) and Path(argv[where]) == run_dir:
                found.append(p)
    return found


def ranks_of(run_dir: Path) -> list[psutil.Process]:
    """The live rank processes of the run (`stoker.train.warm.is_rank`)."""
    return [p for p in processes_of(run_dir)
            if is_rank(p.info["cmdline"], p.info["name"], run_dir)]


def committed_since(run_dir: Path, since: float) -> bool:
    return any(e["time"] > since for e in run_events(run_dir, "checkpoint_committed"))


def inject(kind: str, run_dir: Path, rng: random.Random, since: float) -> dict[str, Any]:
    """One fault on the job's ranks, once a full gang is training and a checkpoint was
    committed after ``since`` (the previous fault): faults that fall due while the job is
    restarting wait for it (120 s at most), so each resume has a checkpoint to load."""
    deadline = time.monotonic() + 120
    while len(ranks := ranks_of(run_dir)) < RANKS or not committed_since(run_dir, since):
        if time.monotonic() > deadline:
            return {"kind": kind, "injected": False}
        time.sleep(0.2)
    victim = rng.choice(ranks)
    step = max(losses(run_dir), default=0)
    if kind == "kill":
        victim.send_signal(signal.SIGKILL)
    elif kind == "hang":
        victim.send_signal(signal.SIGSTOP)
    else:  # the node is lost: every process of the job on it
        for p in processes_of(run_dir):
            with suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
    return {"kind": kind, "injected": True, "pid": victim.pid, "after_step": step,
            "time": time.time()}


def soak(server: ServerProcess, cfg: dict[str, Any], report: Report, at_steps: list[int],
         rng: random.Random, progress: Callable[[int, str], None]) -> dict[str, Any]:
    client = server.client("soak")
    job_spec = {"name": "soak", "queue": "q", "ranks": RANKS, "resources": {"cpus": 1},
                "train_config": "train.toml", "max_restarts": len(at_steps) + 5}
    job_id = client.submit(job_spec, cfg)["id"]
    run_dir = server.state_dir / "jobs" / str(job_id) / "run"
    started = time.monotonic()
    pending = list(at_steps)
    while (job := client.job(job_id))["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        done = max(losses(run_dir), default=0)
        if pending and done >= pending[0]:
            pending.pop(0)
            kind = KINDS[len(report.faults) % len(KINDS)]
            last = max((f.get("time", 0.0) for f in report.faults), default=0.0)
            report.faults.append(inject(kind, run_dir, rng, last))
        progress(done, f"{job['state']} faults {len(report.faults)} restarts {job['restarts']}")
        time.sleep(1.0)
    report.soak_s = time.monotonic() - started
    return job


def check_checkpoints(run_dir: Path, report: Report) -> None:
    """Every committed checkpoint verifies. Committed: its ``checkpoint_committed`` event, or
    its manifest (the commit itself: a rank killed between the two leaves no event)."""
    manifests = {step for step in list_steps(run_dir) if (step_dir(run_dir, step) / MANIFEST)
                 .is_file()}
    committed = sorted({e["step"] for e in run_events(run_dir, "checkpoint_committed")}
                       | manifests)
    report.committed = len(committed)
    for step in committed:
        try:
            verify(step_dir(run_dir, step))
        except (TornCheckpoint, OSError) as e:
            report.torn.append(f"step {step}: {e}")
    report.resumed_from = [e["step"] for e in run_events(run_dir, "checkpoint_loaded")]
    report.resumed_uncommitted = [s for s in report.resumed_from if s not in committed]


def compare(run_dir: Path, expected: dict[int, float], report: Report) -> None:
    got = losses(run_dir)
    report.steps_done = len(got)
    report.mismatched_steps = [s for s in expected if got.get(s) != expected[s]]
    report.losses_equal = sorted(got) == sorted(expected) and not report.mismatched_steps


def run(minutes: float, interval: float, count: int | None, seed: int, steps: int | None,
        console: Console, backoff: float = 5.0, reference: Path | None = None) -> Report:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="stoker-soak-"))
    # Calibrated: faults are drawn over the planned minutes, not over the reference's wall
    # time, which a loaded machine stretches.
    planned = steps is None
    if reference is not None:  # an earlier reference run: its own config and losses
        cfg = tomllib.loads((reference / "train.toml").read_text())
        steps = int(cfg["train"]["steps"])
        report = Report(minutes=minutes, steps=steps)
        expected = losses(reference / "run")
        console.print(f"reference: {reference} ({len(expected)} steps)")
    else:
        if steps is None:
            per_step = step_time(tmp)
            steps = max(50, int(minutes * 60 / per_step))
            console.print(f"calibration: {per_step * 1000:.0f} ms/step -> {steps} steps")
        cfg = train_config(steps)
        report = Report(minutes=minutes, steps=steps)
        console.print(f"reference: {steps} steps uninterrupted ...")
        t0 = time.monotonic()
        expected = losses(train_alone(cfg, tmp / "reference"))
        report.reference_s = time.monotonic() - t0
    span = minutes * 60 if planned else report.reference_s
    times = fault_times(span, interval, count, rng)
    at_steps = fault_steps(times, span, steps)
    planned_at = [f"{t:.0f}s (step {s})" for t, s in zip(times, at_steps, strict=True)]
    console.print(f"reference took {report.reference_s:.0f}s; faults at "
                  f"{', '.join(planned_at) or 'none'}")
    (tmp / "cluster.toml").write_text(CLUSTER)
    server = ServerProcess(tmp / "state", tmp / "cluster.toml",
                           env={"STOKER_TOKEN_SOAK": "soak", "PYTHONPATH": absolute_pythonpath()},
                           args=["--interval", "0.5", "--backoff", str(backoff)])
    columns = (TextColumn("soak"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.description}"), TimeElapsedColumn())
    try:
        server.start()
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("", total=steps)
            job = soak(server, cfg, report, at_steps, rng,
                       lambda done, what: bar.update(task, completed=done, description=what))
    finally:
        server.stop()
        kill_jobs(tmp / "state")
    report.state, report.reason = job["state"], job.get("reason") or ""
    report.restarts, report.attempts = job["restarts"], job["attempt"]
    report.goodput = job.get("goodput") or {}
    run_dir = tmp / "state" / "jobs" / str(job["id"]) / "run"
    report.state_dir = str(tmp / "state")
    report.timeline = timelines(tmp / "state", job["id"], report.faults)
    check_checkpoints(run_dir, report)
    compare(run_dir, expected, report)
    return report


def show(report: Report, console: Console) -> None:
    g = report.goodput
    ratio = g.get("ratio")
    lost = {k: round(v, 1) for k, v in (g.get("lost") or {}).items() if v}
    console.print(f"job {report.state} after {report.soak_s:.0f}s ({report.steps} steps; "
                  f"reference {report.reference_s:.0f}s) {report.reason}")
    console.print(f"faults {len(report.faults)} "
                  f"({', '.join(f['kind'] for f in report.faults)}), restarts {report.restarts}")
    console.print(f"goodput {ratio:.1%} (productive {g.get('productive_s', 0):.0f} of "
                  f"{g.get('allocated_s', 0):.0f} rank-s; lost {lost}; goal >= 95%)"
                  if ratio is not None else "goodput: not reported")
    console.print(f"checkpoints committed {report.committed}, torn {len(report.torn)}; "
                  f"resumed from {report.resumed_from} (uncommitted: "
                  f"{report.resumed_uncommitted or 'none'})")
    for row in report.timeline:
        ended = ", ".join(f"{at}s ({code})" for at, code in row["processes"].values())
        console.print(f"  {row['kind']}: seconds after the fault: last step {row['last_step']}, "
                      f"processes ended {ended}, failed {row['failed']}, launched "
                      f"{row['launched']}, training {row['train_start']}, first step "
                      f"{row['first_step']}")
    console.print(f"losses equal the reference's: {report.losses_equal} "
                  f"({report.steps_done} steps, mismatched {report.mismatched_steps[:10]})")


def report_figures(report: Report) -> None:
    ratio = report.goodput.get("ratio")
    if ratio is not None:
        figure("goodput", ratio * 100, "%", "higher")
    if report.reference_s > 0:
        figure("soak / reference", report.soak_s / report.reference_s, "x", "lower")
    figure("soak", report.soak_s, "s", "lower")
    figure("reference", report.reference_s, "s", "lower")
    figure("torn checkpoints", len(report.torn), "checkpoints", "lower")
    figure("loss mismatches", len(report.mismatched_steps), "steps", "lower")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fault-interval", type=float, default=300.0, help="mean, seconds")
    parser.add_argument("--faults", type=int, default=None, help="exactly this many, evenly")
    parser.add_argument("--steps", type=int, default=None, help="instead of calibrating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backoff", type=float, default=5.0,
                        help="the server's first restart delay, seconds (doubles each restart)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--reference", type=Path, default=None,
                        help="an earlier reference's directory (train.toml, run/): reuse it")
    args = parser.parse_args()
    console = Console()
    report = run(args.minutes, args.fault_interval, args.faults, args.seed, args.steps, console,
                 args.backoff, args.reference)
    show(report, console)
    report_figures(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
