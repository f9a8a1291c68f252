"""`stoker train CFG --nproc N [--run-dir DIR] [--set k=v ...]`: train on N local ranks."""

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
) -> None:
    """Validate the config, prepare the data, then run N ranks with torch.distributed.elastic.

    Writes RUN_DIR/metrics.jsonl (one JSON object per step), summary.json, config.toml
    (resolved) and logs/ (each rank's output).
    """
    from stoker.train.launch import launch, prepare_run

    config, rdir = prepare_run(cfg, set_, nproc, run_dir)
    console = Console(stderr=True, highlight=False)
    p = config.parallel
    console.print(f"stoker train: {nproc} rank{'s' * (nproc > 1)}, {config.model.preset} model, "
                  f"strategy {p.strategy}, {config.train.steps} steps -> {rdir}")
    code = launch(config, rdir, nproc)
    if code == 0:
        console.print(f"metrics: {rdir / config.telemetry.metrics_file}  "
                      f"summary: {rdir / 'summary.json'}")
    raise SystemExit(code)  # typer.Exit's code is lost when the app runs non-standalone


def register(app: typer.Typer) -> None:
    """Add `stoker train` to the top-level app."""
    app.command("train")(train)
