"""`stoker grpo CFG [--run-dir DIR] [--set k=v ...]`: the GRPO recipe (warm-up, then GRPO)
on a synthetic task, in this process."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


def grpo(
    cfg: Path = typer.Argument(..., help="GRPO recipe config (TOML)."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory (default: runs/<run.name>-<timestamp>/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: section.key=value."),
    resume: bool = typer.Option(
        False, "--resume", help="Go on from RUN_DIR/grpo_state.pt (saved after the warm-up and "
        "every grpo.checkpoint_interval steps)."),
    roles: str | None = typer.Option(
        None, "--roles", metavar="trainer=T,rollout=R,reward=W",
        help="Run as processes with roles, here, as a job with roles runs on the control "
        "plane: T trainer ranks (FSDP2), R rollout workers, W reward workers "
        "(stoker.train.grpo_roles; [roles] sync and max_staleness)."),
) -> None:
    """Train a model from scratch on a verifiable synthetic task: a supervised warm-up on the
    task's format, then GRPO; pass@1 (greedy, exact match) on held-out prompts before and after.

    Prints one line per GRPO step (reward mean±std, exact-match rate, KL, completion length,
    generation tokens/s, time in generation, reward and training; pass@1 on eval steps) and
    writes them to RUN_DIR/grpo.jsonl, the totals to RUN_DIR/grpo_summary.json, the loop's
    state to RUN_DIR/grpo_state.pt (model, reference, optimiser, prompt stream, step).
    """
    from stoker.observe.sinks import check_installed
    from stoker.spec import loading
    from stoker.spec.grpo import GrpoRecipe
    from stoker.train.grpo import run
    from stoker.train.launch import make_run_dir

    recipe = loading.load(GrpoRecipe, cfg, set_)
    check_installed(recipe.telemetry.sinks, str(cfg))
    if roles is not None:
        _run_roles(cfg, set_, run_dir, resume, recipe.run.name, roles)
        return
    rdir = make_run_dir(recipe.run.name, run_dir)
    console = Console(stderr=True, highlight=False)
    console.print(f"stoker grpo: {cfg} -> {rdir}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)

        run(recipe, rdir, resume=resume, log=lambda line: bar.console.print(line, soft_wrap=True),
            progress=progress)
    console.print(f"records: {rdir / 'grpo.jsonl'}  summary: {rdir / 'grpo_summary.json'}")


def _run_roles(cfg: Path, set_: list[str], run_dir: Path | None, resume: bool, name: str,
               roles: str) -> None:
    from stoker.spec.errors import ConfigError
    from stoker.train.grpo import refuse_reuse
    from stoker.train.grpo_roles import ROLES, launch_local
    from stoker.train.launch import make_run_dir

    counts: dict[str, int] = {}
    for part in roles.split(","):
        role, _, n = part.partition("=")
        if role not in ROLES or not n.isdigit() or int(n) < 1 or role in counts:
            raise ConfigError("--roles", None, f"expected trainer=T,rollout=R,reward=W with "
                              f"counts of at least 1, got {roles!r}")
        counts[role] = int(n)
    if set(counts) != set(ROLES):
        raise ConfigError("--roles", None, f"give every role ({', '.join(ROLES)}): {roles!r}")
    rdir = make_run_dir(name, run_dir)
    refuse_reuse(rdir, resume)
    Console(stderr=True, highlight=False).print(
        f"stoker grpo: {cfg} -> {rdir} as {roles} (other ranks' output in {rdir / 'logs'})")
    argv = [str(cfg), "--run-dir", str(rdir), *[a for s in set_ for a in ("--set", s)]]
    code = launch_local(argv, rdir, counts)
    if code != 0:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add `stoker grpo` to the top-level app."""
    app.command("grpo")(grpo)
