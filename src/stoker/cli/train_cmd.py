"""`stoker train CFG --nproc N [--run-dir DIR] [--set k=v ...] [--resume auto|PATH]
[--max-restarts R]`: train on N local ranks."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def train(
    cfg: Path = typer.Argument(..., help="Training config (TOML)."),
    nproc: int = typer.Option(
        1, "--nproc", help="Local ranks (processes); 1 also runs as one elastic worker."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory (default: runs/<train.name>-<timestamp>/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: section.key=value."),
    resume: str | None = typer.Option(
        None, "--resume", metavar="auto|PATH",
        help="Start from the run dir's newest committed checkpoint (auto), or from a checkpoint "
             "or run directory."),
    restart_schedule: bool = typer.Option(
        False, "--restart-schedule",
        help="On a resume whose config changes the LR schedule (train.steps, optim.warmup_steps, "
             "...), start the new schedule, warmup included, at the resumed step (default: go "
             "on from that step of the new schedule)."),
    max_restarts: int = typer.Option(
        0, "--max-restarts", min=0,
        help="When a rank dies or hangs, tear the gang down and restart it from the newest "
             "checkpoint, up to this many times."),
) -> None:
    """Validate the config, prepare the data, then run N ranks with torch.distributed.elastic.

    RUN_DIR is locked while the run uses it (RUN_DIR/.lock: a second `stoker train` into it
    is refused, naming the holder's PID), and a RUN_DIR that holds a run (checkpoints or
    metrics) is not started over: continue it with --resume auto.

    Writes RUN_DIR/metrics.jsonl (one JSON object per step), summary.json, config.toml
    (resolved), logs/ (each rank's output), checkpoints/ and events.jsonl (failures, restarts,
    checkpoints). Exit codes: 0 done, 2 bad input, 75 preempted (SIGTERM/SIGUSR1: checkpointed,
    resume with --resume auto), 130 interrupted, other: a rank failed.
    """
    from stoker.train import warm
    from stoker.train.ckpt_find import resolve_resume
    from stoker.train.launch import launch, prepare_run, share_cores
    from stoker.train.quick_exit import quick_exit, running_as

    if resume not in (None, "auto"):  # a bad path is refused before anything is made
        resolve_resume(Path("."), resume, checksums=False)
    share_cores(nproc)
    zygote = warm.start(run_dir)  # imports a rank's modules while this process checks the run
    try:
        config, rdir = prepare_run(cfg, set_, nproc, run_dir, resume=resume, check_fresh=True)
    except BaseException:
        if zygote is not None:
            zygote.close()
        raise
    console = Console(stderr=True, highlight=False)
    start = resolve_resume(rdir, resume, checksums=False) if resume else None
    p = config.parallel
    layout = p.layout(nproc)
    dims = " × ".join(f"{name} {getattr(layout, name)}" for name in
                      ("pp", "dp_replicate", "dp_shard", "cp", "tp") if getattr(layout, name) > 1)
    console.print(f"stoker train: {nproc} rank{'s' * (nproc > 1)}, {config.model.preset} model, "
                  f"strategy {p.strategy}{f' ({dims})' if dims else ''}, "
                  f"{config.train.steps} steps -> {rdir}"
                  + (f", resuming from {start}" if start else ""))
    code = launch(config, rdir, nproc, max_restarts=max_restarts, resume=resume,
                  rank_args=["--restart-schedule"] if restart_schedule else [], zygote=zygote)
    if code == 0:
        console.print(f"metrics: {rdir / config.telemetry.metrics_file}  "
                      f"summary: {rdir / 'summary.json'}")
    if running_as("stoker.__main__"):  # `python -m stoker train`, as the control plane runs it
        quick_exit(code)
    raise SystemExit(code)  # typer.Exit's code is lost when the app runs non-standalone


def register(app: typer.Typer) -> None:
    """Add `stoker train` to the top-level app."""
    app.command("train")(train)
