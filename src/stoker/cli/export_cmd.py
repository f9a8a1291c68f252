"""`stoker export RUN_DIR [--step N] --to model.safetensors`: one model file for inference;
`--format hf --to DIR`: a Hugging Face Llama directory (config.json, model.safetensors)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def export_cmd(
    source: Path = typer.Argument(..., metavar="RUN_DIR",
                                  help="A run directory, or one of its checkpoint directories."),
    to: Path = typer.Option(..., "--to", help="The safetensors file to write (--format hf: "
                                              "the directory)."),
    step: int | None = typer.Option(None, "--step",
                                    help="Export this step's checkpoint (default: the newest "
                                         "committed one)."),
    dtype: str = typer.Option("keep", "--dtype", help="keep, fp32, bf16 or fp16."),
    fmt: str = typer.Option("safetensors", "--format",
                            help="safetensors (Stoker's parameter names, one file) or hf "
                                 "(config.json and model.safetensors that "
                                 "transformers' LlamaForCausalLM.from_pretrained loads)."),
) -> None:
    """Consolidate a sharded checkpoint's model into one safetensors file or an HF directory."""
    from stoker.train.export import export

    done = export(source, to, step, dtype, fmt)
    Console().print(f"{done.path}: step {done.step}, {done.tensors} tensors, "
                    f"{done.parameters:,} parameters, {done.bytes / 1e6:.1f} MB "
                    f"(from {done.checkpoint})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
