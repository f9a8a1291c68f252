"""Step functions for tests/test_pipeline.py. Each appends ``STEP SHARD`` to the file
``params["log"]`` when it runs, so a test can tell which steps ran and which were cached."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from stoker.pipeline import StepContext


def _ran(ctx: StepContext) -> None:
    with open(ctx.params["log"], "a") as f:
        f.write(f"{ctx.step} {ctx.shard}\n")


def _read(path: Any) -> Any:
    if isinstance(path, list):
        return [_read(p) for p in path]
    return json.loads(Path(path).read_text())


def value(ctx: StepContext) -> None:
    """Writes ``params.x`` (and this shard) and the inputs it got, as JSON."""
    _ran(ctx)
    data = {"x": ctx.params.get("x"), "shard": ctx.shard,
            "inputs": {k: _read(v) for k, v in ctx.inputs.items()}}
    ctx.outputs["out"].write_text(json.dumps(data))


def flaky(ctx: StepContext) -> dict[str, float]:
    """Fails on its first ``params.failures`` tries, noting each try's time in ``params.tries``."""
    _ran(ctx)
    tries = Path(ctx.params["tries"])
    with tries.open("a") as f:
        f.write(f"{time.monotonic()}\n")
    if ctx.attempt <= int(ctx.params["failures"]):
        raise RuntimeError(f"try {ctx.attempt} fails")
    ctx.outputs["out"].write_text("ok")
    return {"attempt": ctx.attempt}


def fails_while(ctx: StepContext) -> None:
    """Fails while the file ``params.flag`` exists."""
    _ran(ctx)
    if Path(ctx.params["flag"]).exists():
        raise RuntimeError("the flag is up")
    ctx.outputs["out"].write_text(json.dumps("done"))


def rendezvous(ctx: StepContext) -> dict[str, int]:
    """Writes its pid, then waits until every shard of the step has written its own: it can
    finish only when all the shards run at the same time."""
    _ran(ctx)
    folder = Path(ctx.params["meet"])
    (folder / f"{ctx.shard}.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while len(list(folder.glob("*.pid"))) < ctx.shards:
        if time.monotonic() > deadline:
            raise TimeoutError("the other shards never ran alongside this one")
        time.sleep(0.01)
    (ctx.outputs["out"]).write_text(json.dumps({"shard": ctx.shard, "pid": os.getpid()}))
    ctx.count(ctx.shard + 1, "items")
    return {"pid": os.getpid()}
