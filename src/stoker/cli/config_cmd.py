"""`stoker config show CFG`: print the resolved training config."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.syntax import Syntax

from stoker.spec import loading
from stoker.spec.train import TrainConfig

config_app = typer.Typer(help="Inspect training configs.", no_args_is_help=True)


@config_app.command("show")
def show(
    cfg: Path = typer.Argument(..., help="Training config (TOML)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: section.key=value."),
) -> None:
    """Print the config with every default filled in and every override applied."""
    config = loading.load(TrainConfig, cfg, set_)
    shape = config.model.shape()
    text = loading.to_toml(config.model_dump(by_alias=True))
    console = Console()
    console.print(Syntax(text, "toml", theme="ansi_dark", background_color="default"))
    console.print(f"# resolved model shape: {shape.model_dump()}", style="dim", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
