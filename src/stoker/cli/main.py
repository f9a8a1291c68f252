"""`stoker`: one typer app; each command group registers itself from its own module."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from stoker.cli import (
    analyze_cmd,
    bench_cmd,
    config_cmd,
    data_cmd,
    export_cmd,
    grpo_cmd,
    health_cmd,
    job_ops_cmd,
    jobs_cmd,
    pipeline_cmd,
    plan_cmd,
    profile_cmd,
    server_cmd,
    sim_cmd,
    train_cmd,
    usage_cmd,
)
from stoker.spec.errors import StokerError

app = typer.Typer(
    name="stoker",
    help="Stoker: a PyTorch-native training platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (train_cmd, plan_cmd, export_cmd, config_cmd, data_cmd, server_cmd, jobs_cmd,
               sim_cmd, health_cmd, usage_cmd, job_ops_cmd, profile_cmd,
               analyze_cmd, bench_cmd, grpo_cmd, pipeline_cmd):
    module.register(app)


def main() -> None:
    """Run the CLI; a user mistake prints one line and exits 2, never a traceback."""
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(standalone_mode=False)
    except StokerError as e:
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False,
                                   soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        if isinstance(e, _usage_errors()):
            from rich.markup import escape

            message = escape(e.format_message())  # type: ignore[attr-defined]
            Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False,
                                       soft_wrap=True)
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's usage errors: click's own, and those of the copy of click newer typers carry."""
    import click

    kinds: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # an older typer, on click itself
        return tuple(kinds)
    return (*kinds, ClickException)


if __name__ == "__main__":
    main()
