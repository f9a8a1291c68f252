"""The map-reconstruction pipeline end to end, and its model quality table (issue 17, item 3).

    PYTHONPATH=src .venv/bin/python benchmarks/mapping_quality.py [--set KEY=VALUE ...] [--keep DIR]

Runs examples/mapping/pipeline.toml with `stoker pipeline run` into a fresh store (a temporary
directory, so nothing is cached; ``--keep DIR``: a new directory DIR, kept with the store and
the releases), then prints, from the score step's report, per class the
raster IoU and the Chamfer AP at 0.5 / 1.0 / 1.5 m of the trained BEV model and of the
non-learned baseline on the held-out towns, overall and per condition, the survey's change
detection, and each step's wall time with what it processed (frames; samples for a training
step) and its rate per second of that wall time, as the run record has them. ``--set`` goes to
the pipeline (e.g. ``steps.train.params.train.steps=150``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stoker.bench.figures import figure

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "examples" / "mapping" / "pipeline.toml"
BENCH_QUICK = ["--set", "steps.frames.params.drives=2", "--set", "steps.heldout.params.drives=2",
               "--set", "steps.after.params.drives=2", "--set", "steps.train.params.train.steps=60"]


def artifact(run: dict[str, Any], step: str, output: str) -> Path:
    """Where a step's output lies in the run's store (objects/<digest>)."""
    digest = run["steps"][step]["shards"][0]["outputs"][output]["digest"]
    return Path(run["store"]) / "objects" / digest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument("--keep", type=Path, help="run in this new directory, and keep it")
    args = p.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True)  # fails if it exists: the store must start empty
    with (contextlib.nullcontext(str(args.keep.resolve())) if args.keep is not None
          else tempfile.TemporaryDirectory()) as tmp:
        sets = [f"store={tmp}/store", "steps.release.params.releases=" + f"{tmp}/releases",
                *args.sets]
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "stoker", "pipeline", "run", str(PIPELINE),
                               "--json", *[a for s in sets for a in ("--set", s)]],
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"the pipeline failed:\n{done.stderr[-3000:]}")
        wall = time.perf_counter() - started
        run = json.loads(done.stdout)
        report, survey = (json.loads(artifact(run, step, name).read_text())
                          for step, name in (("score", "report"), ("survey", "survey")))
    print(f"pipeline: {wall:.0f} s")
    print("| step | shards | wall s | processed | per s |\n|---|---:|---:|---:|---:|")
    for name, step in run["steps"].items():
        done = [f"{n:g} {unit}" for unit, n in step["processed"].items()]
        rate = [f"{r:.3g}" for r in step["per_s"].values()]
        print(f"| {name} | {len(step['shards'])} | {step['ended'] - step['started']:.1f} | "
              f"{', '.join(done) or '-'} | {', '.join(rate) or '-'} |")
        for unit, r in step["per_s"].items():
            figure(f"{name} {unit}/s", r, f"{unit}/s", "higher")
    for who in ("model", "baseline"):
        o = report[who]["overall"]
        print(f"{who:>8}: mAP {o['mAP']:.3f}")
        for c, ap in o["ap"].items():
            print(f"          {c:<9} IoU {o['iou'][c]:.3f}  AP " +
                  " / ".join(f"{v:.3f}" for v in ap.values()))
        for cond, s in report[who]["by_condition"].items():
            print(f"          {cond:<9} mAP {s['mAP']:.3f}  IoU " +
                  " / ".join(f"{v:.3f}" for v in s["iou"].values()))
        figure(f"{who} mAP", o["mAP"], "AP", "higher")
        for c, v in o["iou"].items():
            figure(f"{who} {c} IoU", v, "IoU", "higher")
    changes = survey["changes"]
    print(f"changes: precision {changes['precision']}, recall {changes['recall']} "
          f"({len(changes['found'])} found, {len(changes['true'])} true)")
    figure("pipeline minutes", wall / 60, "min", "lower")


if __name__ == "__main__":
    main()
