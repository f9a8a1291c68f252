"""`stoker profile RUN_DIR [--steps N] [--memory] [--stack] [--gzip] [--wait]`: torch.profiler on
every rank of a running training, for its next N steps, without a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from stoker.spec.errors import StokerError

POLL_S = 0.2


class NotTaken(StokerError):
    """The run ended, or refused the request, before any trace was written."""

    exit_code = 1


def profile_cmd(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A running training's run dir."),
    steps: int = typer.Option(3, "--steps", help="Steps to record (after one warmup step)."),
    memory: bool = typer.Option(
        False, "--memory", help="Also memory: CUDA's allocator history (rank-R.memory.pickle, "
                                "for pytorch.org/memory_viz); on CPU the profiler's memory "
                                "timeline (rank-R.memory.json)."),
    stack: bool = typer.Option(False, "--stack", help="Record Python stacks (bigger traces)."),
    gzip: bool = typer.Option(False, "--gzip", help="Write rank-R.json.gz."),
    wait: bool = typer.Option(False, "--wait", help="Wait for every rank's trace; print them."),
    timeout: float = typer.Option(600.0, "--timeout", help="With --wait: give up after this "
                                                           "many seconds."),
) -> None:
    """Ask a running training (`stoker train`, torchrun, the control plane) to profile its
    next N steps on every rank: RUN_DIR/profiles/<stamp>/rank-R.json, Chrome/Perfetto traces
    (open in ui.perfetto.dev). The request is RUN_DIR/profile.request; rank 0 takes it on its
    next log step (train.log_interval) and every rank starts after the same step. Events
    profile_started and profile_done go to RUN_DIR/events.jsonl. Exit codes: 0 asked (with
    --wait: written), 1 the run ended or refused before writing, 2 bad input or not running."""
    from stoker.train.profile_request import ProfileAsk, profiles_root, request_profile

    ask = request_profile(run_dir, ProfileAsk(steps, int(time.time()), memory, stack, gzip))
    out = profiles_root(run_dir) / ask.dir_name
    console = Console(highlight=False)
    if not wait:
        console.print(f"asked {run_dir} to profile {steps} step{'s' * (steps > 1)}: traces will "
                      f"appear in {out}/ (rank-R.json), after the run's next log step",
                      soft_wrap=True)
        return
    done = wait_for_traces(run_dir, out, timeout)
    for path in sorted(Path(f) for e in done for f in e["files"]):
        console.print(str(path), soft_wrap=True)
    warn = Console(stderr=True, highlight=False)
    for e in sorted(done, key=lambda e: int(e.get("rank", 0))):
        for key in ("trace_error", "memory_error"):
            if key in e:
                warn.print(f"rank {e.get('rank')}: {key.replace('_', ' ')}: "
                           f"{str(e[key]).splitlines()[0][:200]}", soft_wrap=True)


def wait_for_traces(run_dir: Path, out: Path, timeout: float) -> list[dict[str, Any]]:
    """Every rank's ``profile_done`` for ``out``, once all are in events.jsonl."""
    from stoker.observe.events import read_events
    from stoker.train.profile_request import REQUEST_FILE
    from stoker.train.run_dir import lock_holder

    deadline = time.monotonic() + timeout
    while True:
        running = bool(lock_holder(run_dir))  # before the events: a run that ends in between
        events = [e for e in read_events(run_dir) if e.get("dir") == str(out)]
        done = [e for e in events if e["event"] == "profile_done"]
        started = [e for e in events if e["event"] == "profile_started"]
        refused = [e for e in events if e["event"] == "profile_refused"]
        if refused:
            raise NotTaken(f"{run_dir} refused the request: {refused[0].get('reason')}")
        if started and len(done) >= int(started[0]["world_size"]):
            return done
        if not running:
            (run_dir / REQUEST_FILE).unlink(missing_ok=True)
            raise NotTaken(f"{run_dir}: the run ended before " + (
                f"every rank wrote its trace ({len(done)} did, in {out})" if started
                else "it took the request"))
        if time.monotonic() > deadline:
            raise NotTaken(f"{run_dir}: no trace after {timeout:g} s (a request is taken on "
                           f"log steps only: train.log_interval)")
        time.sleep(POLL_S)


def register(app: typer.Typer) -> None:
    app.command("profile")(profile_cmd)
