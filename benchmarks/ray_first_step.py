"""Submit -> first training step: the Ray executor against the local executor, same job, same run.

    python benchmarks/ray_first_step.py [--repeats 3] [--ranks 2]

A Ray cluster of ``--ranks`` worker nodes of 1 CPU each (and a head with none) on 127.0.0.1
(`ray.cluster_utils.Cluster`), and two `stoker server` processes: one with the local executor
(this machine, ``--ranks`` CPU slots), one with ``executor = "ray"``. The same tiny training job
(``--ranks`` ranks of 1 CPU, 4 steps) is submitted to each in turn, local first, ``--repeats``
times. Each run is split into parts from timestamps the system writes itself:

- admission: submit -> the STARTING transition (queueing and a scheduling cycle);
- Ray only: reservation (the placement group ready) and actor start (rank 0's actor
  answering), from the executor's log line; preparation (dataset + resolved config, run once by
  rank 0's actor), from rank 0's log;
- Ray only: rank launch, from the preparation's end to rank 0's process start (Ray running the
  ranks' start calls once the preparation's result is ready), from rank 0's log;
- rank start-up to training: up to the trainer's ``start`` event (interpreter and torch
  import, the c10d rendezvous, model build, checkpoint restore); on the local executor
  everything from the STARTING transition, which includes `stoker train`'s own preparation
  (dataset, resolved config) and the elastic launcher's rendezvous;
- first step: the ``start`` event -> step 1's record in metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on 127.0.0.1 only; before import

from stoker.bench.figures import figure
from stoker.server.process import ServerProcess, kill_jobs
from stoker.spec.loading import to_toml

TOKENS = {"STOKER_ADMIN_TOKEN": "bench-admin", "STOKER_TOKEN": "bench"}
BENCH_QUICK = ["--repeats", "1"]
TRAIN: dict[str, Any] = {
    "model": {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2,
              "ffn_hidden": 128},
    "data": {"dataset": "stdlib", "tokenizer": "byte"},
    "parallel": {"strategy": "fsdp"},
    "train": {"name": "first-step", "steps": 4, "global_batch_size": 8, "micro_batch_size": 2,
              "seq_len": 32, "eval_interval": 0},
    "checkpoint": {"interval_steps": 100},
    "telemetry": {"live": False},
}
COMMON = """
[scheduler]
interval = 0.2
[flavors.cpu]
[admin]
token_env = "STOKER_ADMIN_TOKEN"
[tenants.bench]
token_env = "STOKER_TOKEN"
queues = ["bench"]
[queues.bench.quotas.cpu]
"""
LOCAL = COMMON + """
[autodetect]
cpu_slots = {ranks}
"""
RAY = 'executor = "ray"\n' + COMMON + """
[ray]
address = "{address}"
shared_dir = "{shared}"
"""
RESERVED = re.compile(r"job (\d+) attempt \d+: reserved in ([\d.]+) s, rank 0's actor up in "
                      r"([\d.]+) s")
PREPARED = re.compile(r"preparation ended \(exit code 0\) after ([\d.]+) s")
STARTED = re.compile(r"attempt \d+ rank 0 started (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3})")


def until(what: str, probe: Any, timeout: float = 600.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def one_run(server: ServerProcess, jobs: Path, ray: bool, ranks: int) -> dict[str, float]:
    client = server.client(TOKENS["STOKER_TOKEN"])
    submitted = time.time()
    job = client.submit({"name": "first-step", "queue": "bench", "ranks": ranks,
                         "resources": {"cpus": 1}, "train_config": "t.toml"}, TRAIN)["id"]
    run = jobs / str(job) / "run"
    until("the job to end", lambda: client.job(job)["state"] in ("SUCCEEDED", "FAILED"))
    view = client.job(job)
    assert view["state"] == "SUCCEEDED", view["reason"]
    starting = next(e["at"] for e in view["events"] if e["to_state"] == "STARTING")
    start = next(r["time"] for r in records(run / "events.jsonl") if r["event"] == "start")
    first = next(r["time"] for r in records(run / "metrics.jsonl") if r.get("step") == 1)
    parts = {"admission": starting - submitted, "first step": first - start,
             "total": first - submitted}
    rest = start - starting
    if ray:
        found = [m for m in RESERVED.finditer(server.log.read_text()) if int(m[1]) == job]
        parts["reservation"], parts["actor start"] = float(found[-1][2]), float(found[-1][3])
        log = (jobs / str(job) / "logs" / "rank-0.log").read_text()
        parts["preparation"] = float(PREPARED.findall(log)[-1])
        stamp, fraction = STARTED.findall(log)[-1]
        began = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + float(f"0.{fraction}")
        parts["rank start-up to training"] = start - began
        parts["rank launch"] = (rest - parts["reservation"] - parts["actor start"]
                                - parts["preparation"] - parts["rank start-up to training"])
    else:
        parts["rank start-up to training"] = rest
    return parts


ORDER = ("admission", "reservation", "actor start", "preparation", "rank launch",
         "rank start-up to training", "first step", "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    TRAIN["train"]["global_batch_size"] = 2 * args.ranks
    from ray.cluster_utils import Cluster

    results: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="stoker-bench-") as tmp:
        root = Path(tmp)
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "temp_dir": str(root / "ray")})
        servers: list[ServerProcess] = []
        try:
            for i in range(args.ranks):
                cluster.add_node(num_cpus=1, labels={"stoker/node": f"n{i}"})
            cluster.wait_for_nodes()
            (root / "local.toml").write_text(LOCAL.format(ranks=args.ranks))
            (root / "ray.toml").write_text(RAY.format(address=cluster.address,
                                                      shared=root / "shared"))
            local = ServerProcess(root / "local", root / "local.toml", env=TOKENS).start()
            servers.append(local)
            on_ray = ServerProcess(root / "ray-state", root / "ray.toml", env=TOKENS).start(120)
            servers.append(on_ray)
            (root / "t.toml").write_text(to_toml(TRAIN))
            for i in range(args.repeats):
                for name, server, jobs in (("local", local, root / "local" / "jobs"),
                                           ("ray", on_ray, root / "shared" / "jobs")):
                    parts = one_run(server, jobs, name == "ray", args.ranks)
                    results[name].append(parts)
                    print(f"repeat {i + 1} {name}: " + ", ".join(
                        f"{k} {parts[k]:.3f} s" for k in ORDER if k in parts), flush=True)
        finally:
            for server in servers:
                server.stop()
            kill_jobs(root / "local")
            cluster.shutdown()
    print(f"\nmedians of {args.repeats}, {args.ranks} ranks:")
    print("| part | local s | Ray s |\n|---|---:|---:|")
    for part in ORDER:
        cells = [statistics.median(r[part] for r in results[n]) if part in results[n][0]
                 else None for n in ("local", "ray")]
        print(f"| {part} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
    ratio = statistics.median(r["total"] for r in results["ray"]) / statistics.median(
        r["total"] for r in results["local"])
    print(f"Ray / local, submit -> first step: {ratio:.2f}x")
    pairs = list(zip(results["ray"], results["local"], strict=True))
    figure("ray / local", [r["total"] / x["total"] for r, x in pairs], "x", "lower")
    for name in ("ray", "local"):
        figure(f"{name} total", [r["total"] for r in results[name]], "s", "lower")
        figure(f"{name} first step", [r["first step"] for r in results[name]], "s", "lower")
    figure("ray reservation", [r["reservation"] for r in results["ray"]], "s", "lower")


if __name__ == "__main__":
    sys.exit(main())
