"""Submit-to-first-training-step latency on the local executor, 2-rank `tiny` job, in parts.

    python benchmarks/control_latency.py [--repeats 3]

Baseline, in the same run: the same command the control plane launches (`stoker train CFG
--nproc 2 --run-dir DIR --resume auto`), started directly. Through the control plane the parts are:
    submit      client sends POST /v1/jobs -> the job is QUEUED in the store
    schedule    QUEUED -> ADMITTED (the reconciler wakes on submit, runs sched.schedule)
    launch      ADMITTED -> STARTING (devices picked, train.toml written; processes start next)
    runtime     STARTING -> the first step begins (interpreter, torch, rendezvous, model, data)
    first step  the first optimizer step itself
The first step's end is read from RUN_DIR/metrics.jsonl (its ``time`` and ``step_time_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stoker.bench.figures import figure
from stoker.server.process import ServerProcess, kill_jobs

TRAIN = {
    "model": {"preset": "tiny"},
    "data": {"dataset": "stdlib", "tokenizer": "byte"},  # cached in the job's work dir
    "parallel": {"strategy": "fsdp"},
    "train": {"name": "latency", "steps": 2, "global_batch_size": 16, "micro_batch_size": 8,
              "seq_len": 128, "eval_interval": 0},
    "checkpoint": {"enabled": False},
    "telemetry": {"live": False},
}
CLUSTER = """
[flavors.cpu]
[autodetect]
cpu_slots = 2
cpu_flavor = "cpu"
[tenants.bench]
token_env = "BENCH_TOKEN"
queues = ["q"]
[queues.q.quotas.cpu]
cpus = 2
"""
PARTS = ("submit", "schedule", "launch", "runtime", "first step")
BENCH_QUICK = ["--repeats", "1"]


def first_step(run_dir: Path, timeout: float = 600) -> tuple[float, float]:
    """(start, end) wall times of the first step, from metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if "step_time_s" in record:
                    return record["time"] - record["step_time_s"], record["time"]
        time.sleep(0.05)
    raise TimeoutError(f"no step in {path}")


def direct(tmp: Path, config: Path, i: int, resume: bool) -> dict[str, float]:
    run_dir = tmp / f"direct-{i}"
    t0 = time.time()
    argv = [sys.executable, "-m", "stoker", "train", str(config), "--nproc", "2",
            "--run-dir", str(run_dir), *(["--resume", "auto"] if resume else [])]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start, end = first_step(run_dir)
    proc.wait()
    return {"runtime": start - t0, "first step": end - start, "total": end - t0}


def through_server(server: ServerProcess, state: Path) -> dict[str, float]:
    job = {"name": "latency", "queue": "q", "ranks": 2, "resources": {"cpus": 1},
           "train_config": "tiny.toml"}
    with server.client("bench-token") as client:
        t0 = time.time()
        job_id = client.submit(job, TRAIN)["id"]
        start, end = first_step(state / "jobs" / str(job_id) / "run")
        events = {e["to_state"]: e["at"] for e in client.job(job_id)["events"]
                  if e["kind"] == "transition"}
        while client.job(job_id)["state"] not in ("SUCCEEDED", "FAILED"):
            time.sleep(0.2)
    return {"submit": events["QUEUED"] - t0, "schedule": events["ADMITTED"] - events["QUEUED"],
            "launch": events["STARTING"] - events["ADMITTED"],
            "runtime": start - events["STARTING"], "first step": end - start, "total": end - t0}


def resume_supported() -> bool:
    out = subprocess.run([sys.executable, "-m", "stoker", "train", "--help"],
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    return "--resume" in out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        config = tmp / "tiny.toml"
        from stoker.spec.loading import to_toml

        config.write_text(to_toml(TRAIN))
        (tmp / "cluster.toml").write_text(CLUSTER)
        resume = resume_supported()
        direct(tmp, config, -1, resume)  # warm-up: prepares the data cache, fills page cache
        flags = ["--interval", "1"] + ([] if resume else ["--no-resume"])
        server = ServerProcess(tmp / "state", tmp / "cluster.toml",
                               env={"BENCH_TOKEN": "bench-token"}, args=flags)
        rows: dict[str, list[dict[str, float]]] = {"direct": [], "server": []}
        try:
            server.start()
            for i in range(args.repeats):  # interleaved, so both see the same machine load
                rows["direct"].append(direct(tmp, config, i, resume))
                rows["server"].append(through_server(server, tmp / "state"))
        finally:
            server.stop()
            kill_jobs(tmp / "state")
    report(rows, args.repeats)


def report(rows: dict[str, list[dict[str, float]]], repeats: int) -> None:
    def med(kind: str, part: str) -> float:
        return statistics.median(r.get(part, 0.0) for r in rows[kind])

    print(f"2-rank tiny job, submit -> first step done, median of {repeats} (seconds)")
    print(f"{'part':<12}{'stoker train':>14}{'via server':>12}")
    for part in (*PARTS, "total"):
        base = med("direct", part) if part in rows["direct"][0] else None
        print(f"{part:<12}{'' if base is None else f'{base:.2f}':>14}"
              f"{med('server', part):>12.2f}")
    ratio = med("server", "total") / med("direct", "total")
    overhead = med("server", "total") - med("direct", "total")
    print(f"via server / direct: {ratio:.2f}x (control-plane overhead {overhead:+.2f} s)")
    print(json.dumps(rows))
    pairs = list(zip(rows["server"], rows["direct"], strict=True))
    figure("server / direct", [s["total"] / d["total"] for s, d in pairs], "x", "lower")
    figure("control-plane overhead", [s["total"] - d["total"] for s, d in pairs], "s", "lower")
    figure("server total", [s["total"] for s in rows["server"]], "s", "lower")
    figure("direct total", [d["total"] for d in rows["direct"]], "s", "lower")


if __name__ == "__main__":
    main()
