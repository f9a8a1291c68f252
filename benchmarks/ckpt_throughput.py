"""Checkpoint write throughput vs. this disk's sequential write bandwidth, in the same run.

    .venv/bin/python benchmarks/ckpt_throughput.py [--mb 1024] [--repeats 3] [--dir DIR]

Baseline: ``dd if=/dev/zero of=DIR/dd.bin bs=4M count=N conv=fsync`` of the same byte count.
Checkpoint: one synchronous `Checkpointer.save` of a state dict of that size (model-like fp32
tensors of 1-16 MB each), timed from the call to the committed manifest: DCP serialisation,
write, fsync, per-file CRC-32 (taken as the bytes are written) and the manifest included. Both
alternate ``--repeats`` times; the ratio uses the medians. Goal (issue 3): >= 0.70.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from stoker.bench.figures import figure
from stoker.spec.train import CheckpointConfig
from stoker.train.checkpoint import Checkpointer, step_dir
from stoker.train.ckpt_manifest import read_manifest

BENCH_QUICK = ["--mb", "128", "--repeats", "2"]


def make_state(total_mb: int) -> dict[str, object]:
    """Tensors of 1-16 MB adding up to ``total_mb``, like a model's weights and Adam moments."""
    g = torch.Generator().manual_seed(0)
    tensors, left, i = {}, total_mb << 20, 0
    while left > 0:
        nbytes = min(left, (1 << 20) << (i % 5))
        tensors[f"layers.{i}.weight"] = torch.randn(nbytes // 4, generator=g)
        left -= nbytes
        i += 1
    return {"model": tensors, "step": 1}


def dd_mb_per_s(target: Path, total_mb: int) -> float:
    out = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=4M",
                          f"count={total_mb // 4}", "conv=fsync"],
                         capture_output=True, text=True, check=True).stderr
    target.unlink()
    seconds = float(re.search(r"copied, ([0-9.]+) s", out).group(1))  # type: ignore[union-attr]
    return total_mb / seconds


def ckpt_mb_per_s(root: Path, state: dict[str, object], step: int) -> tuple[float, int]:
    ck = Checkpointer(root, CheckpointConfig(keep_last=1))
    t0 = time.perf_counter()
    ck.save(step, state, sync=True)
    seconds = time.perf_counter() - t0
    nbytes = read_manifest(step_dir(root, step)).total_bytes
    shutil.rmtree(root / "checkpoints")
    return nbytes / (1 << 20) / seconds, nbytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp "
                   "dir under the current directory, so the same disk as runs/)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir or Path.cwd()))
    state = make_state(args.mb)
    dd, ck = [], []
    try:
        for r in range(args.repeats):
            dd.append(dd_mb_per_s(root / "dd.bin", args.mb))
            rate, nbytes = ckpt_mb_per_s(root, state, r + 1)
            ck.append(rate)
            print(f"repeat {r}: dd {dd[-1]:.0f} MB/s, checkpoint {ck[-1]:.0f} MB/s "
                  f"({nbytes / 2**20:.0f} MiB)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"mb": args.mb, "dd_mb_per_s": statistics.median(dd),
              "checkpoint_mb_per_s": statistics.median(ck),
              "ratio": statistics.median(ck) / statistics.median(dd), "goal": 0.70}
    print(json.dumps(result, indent=1))
    figure("checkpoint / dd", [c / d for c, d in zip(ck, dd, strict=True)], "x", "higher")
    figure("checkpoint write", ck, "MB/s", "higher")
    figure("dd write", dd, "MB/s", "higher")


if __name__ == "__main__":
    main()
