"""Recovery time: from a rank's death to the first completed step after resume, in parts.

    .venv/bin/python benchmarks/ckpt_recovery.py [--repeats 2] [--kill-after 25]

The demo config (examples/tiny.toml: the tiny model, FSDP2, 2 CPU ranks) with a checkpoint
every 10 steps and ``--max-restarts 1``. Once step ``--kill-after`` is logged, the script
``kill -9``s rank 1 (its pid from RUN_DIR/heartbeats/) and reads the run's own records:

  detection  the kill -> the surviving rank knows (its "error" event: the collective with the
             dead peer failed, or its "signal" event: elastic's agent, which polls its ranks
             every 0.1 s, saw the death and is stopping the gang)
  teardown   -> the launcher has every rank of the failed gang back (its "failure" event)
  restart    -> the new gang is up, before loading (checkpoint_loaded time - its load time)
  load       picking + verifying the checkpoint, and loading it (checkpoint_loaded)
  first step -> the first step after the resume is logged (metrics.jsonl)

Baseline in the same run: the cold start of the same job (launch -> first step logged).
Goal (issue 3): total <= 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stoker.bench.figures import figure
from stoker.observe.events import read_events
from stoker.train.heartbeat import read_heartbeats

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ["train.steps=40", "checkpoint.interval_steps=10", "train.eval_interval=0",
             "telemetry.live=false", "train.log_interval=100"]
BENCH_QUICK = ["--repeats", "1", "--kill-after", "15"]


def metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(predicate: Any, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended early (exit {proc.returncode})")
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(0.05)


def one_recovery(run: Path, kill_after: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "stoker", "train", str(ROOT / "examples" / "tiny.toml"),
           "--nproc", "2", "--run-dir", str(run), "--max-restarts", "1"]
    for o in OVERRIDES:
        cmd += ["--set", o]
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    try:
        wait_until(lambda: len(metrics(run)) >= 1, 300, proc)
        cold_start = metrics(run)[0]["time"] - started
        wait_until(lambda: any(r["step"] >= kill_after for r in metrics(run)), 300, proc)
        victim = read_heartbeats(run)[1]["pid"]
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"the run failed after the kill (exit {proc.returncode})")
    told = min(e["time"] for e in read_events(run)
               if e["event"] in ("signal", "error") and e["time"] > killed)
    failed = read_events(run, "failure")[0]["time"]
    loaded = next(e for e in read_events(run, "checkpoint_loaded") if e["time"] > killed)
    load = loaded["verify_s"] + loaded["load_s"]
    first = next(r for r in metrics(run) if r["time"] > loaded["time"])
    return {"detection_s": told - killed, "teardown_s": failed - told,
            "restart_s": loaded["time"] - load - failed, "load_s": load,
            "first_step_s": first["time"] - loaded["time"], "total_s": first["time"] - killed,
            "cold_start_s": cold_start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--kill-after", type=int, default=25)
    args = p.parse_args()
    rows = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="ckpt-recovery-") as tmp:
            row = one_recovery(Path(tmp) / "run", args.kill_after)
        rows.append(row)
        print(f"repeat {r}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    result: dict[str, Any] = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    result["total_vs_cold_start"] = result["total_s"] / result["cold_start_s"]
    result["goal_total_s"] = 15.0
    print(json.dumps(result, indent=1))
    figure("recovery / cold start", [r["total_s"] / r["cold_start_s"] for r in rows], "x",
           "lower")
    figure("recovery total", [r["total_s"] for r in rows], "s", "lower")
    figure("restart", [r["restart_s"] for r in rows], "s", "lower")
    figure("cold start", [r["cold_start_s"] for r in rows], "s", "lower")


if __name__ == "__main__":
    main()
