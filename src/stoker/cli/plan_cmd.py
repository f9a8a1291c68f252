"""`stoker plan CFG --nproc N [--device h100] [--set k=v ...] [--json]`: memory per rank and an
estimated step time of a training config's layout, before anything is launched."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from stoker.observe import memory_plan as mp
from stoker.spec import loading
from stoker.spec.errors import ConfigError
from stoker.spec.train import Layout, TrainConfig


@dataclass(frozen=True)
class Target:
    """The device the plan is for: its name, memory per rank, link, peak FLOP/s."""

    key: str
    on_gpu: bool
    memory_bytes: float
    memory_source: str
    link_bytes_per_s: float | None
    peak_flops: float
    peak_source: str


def plan(
    cfg: Path = typer.Argument(..., help="Training config (TOML), as `stoker train` takes it."),
    nproc: int = typer.Option(1, "--nproc", help="Ranks (processes, one device each)."),
    device: str | None = typer.Option(
        None, "--device",
        help="cpu or a known GPU (h100, h200, a100, a100-40gb, b200, l40s, ...); default: the "
             "config's train.device (auto: this machine's GPU, else cpu)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: section.key=value."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as one JSON object."),
) -> None:
    """Estimate each rank's memory (parameters, gradients, optimiser states, activations, FSDP
    transients), the pipeline bubble, the step time and MFU, and warn when the layout will not
    fit the device. Every figure is an estimate: the assumptions are in
    stoker/observe/memory_plan.py and are printed below the table."""
    loaded = loading.load(TrainConfig, cfg, set_)
    if loaded.task.module is not None:
        raise ConfigError(str(cfg), "task.module", "stoker plan estimates the built-in language "
                          "model only, not a [task] model")
    config = with_dataset_vocabulary(loaded, str(cfg))
    layout = config.check_world_size(nproc, str(cfg))
    target = resolve_target(device, config, nproc)
    shape = config.model.shape()
    accum = config.grad_accum_steps(layout.dp)
    memory = mp.estimate_memory(shape, layout, config.parallel, config.train,
                                on_gpu=target.on_gpu, grad_accum=accum,
                                fused_optimizer=fused_optimizer(config, target.on_gpu))
    time = mp.estimate_time(shape, layout, config.parallel, config.train,
                            peak_flops=target.peak_flops, dtype_bytes=memory.dtype_bytes,
                            link_bytes_per_s=target.link_bytes_per_s, grad_accum=accum)
    warnings = fit_warnings(memory, target, nproc)
    if as_json:
        print(json.dumps(plan_record(cfg, config, layout, target, memory, time, accum, warnings),
                         indent=2))
    else:
        show(config, layout, target, memory, time, accum)
    if warnings:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        for line in warnings:
            err.print(f"[yellow]warning:[/] {line}")


def with_dataset_vocabulary(config: TrainConfig, source: str) -> TrainConfig:
    """The config as training will see it: a prepared dataset's tokenizer and vocabulary
    where the config leaves them unset (`stoker.train.data.fit_to_dataset`). A dataset not
    prepared yet leaves the config's (or its preset's) vocabulary, which the table shows."""
    from stoker.train.data import dataset_dir, fit_to_dataset
    from stoker.train.shards import META_FILE

    directory = dataset_dir(config.data)
    if not (directory / META_FILE).is_file():
        return config
    return fit_to_dataset(config, directory, source)


def fused_optimizer(config: TrainConfig, on_gpu: bool) -> bool:
    """As ``train/optim.py`` decides: fused on CUDA unless off, or when forced on."""
    return config.optim.fused == "on" or (config.optim.fused == "auto" and on_gpu)


def resolve_target(device: str | None, config: TrainConfig, nproc: int) -> Target:
    """``--device``, else the config's device; a GPU is looked up in ``DEVICES``."""
    key = (device or config.train.device).lower()
    if key in ("auto", "cuda"):
        key = local_gpu_key(required=key == "cuda")
    if key == "cpu":
        return cpu_target(nproc)
    spec = mp.DEVICES.get(key)
    if spec is None:
        known = ", ".join(["cpu", *mp.DEVICES])
        raise ConfigError("--device", None, f"unknown device {key!r} (known: {known})")
    return gpu_target(spec, config)


def local_gpu_key(required: bool) -> str:
    """This machine's GPU as a ``DEVICES`` key, or "cpu" when there is none (and none is
    required)."""
    import torch

    if not torch.cuda.is_available():
        if required:
            raise ConfigError("train.device", None, "'cuda' but this machine has no GPU: name "
                              "the one to plan for with --device")
        return "cpu"
    import re

    from stoker.observe.peak import GPUS

    name = torch.cuda.get_device_name()
    memory = torch.cuda.get_device_properties(0).total_memory
    table = next((g.name for g in GPUS if re.search(g.pattern, name, re.IGNORECASE)), None)
    same = [d for d in mp.DEVICES.values() if table is not None and d.gpu_name == table]
    if not same:
        raise ConfigError("--device", None, f"this machine's GPU {name!r} is not in the plan's "
                          "table: name a known one with --device")
    return min(same, key=lambda d: abs(d.memory_bytes - memory)).key


def gpu_target(spec: mp.DeviceSpec, config: TrainConfig) -> Target:
    import torch

    from stoker.observe.peak import gpu_peak

    bf16 = mp.compute_bytes(config.parallel, on_gpu=True) == 2
    assert spec.gpu_name is not None
    peak = gpu_peak(spec.gpu_name, torch.bfloat16 if bf16 else torch.float32)
    assert peak is not None, spec.gpu_name
    return Target(spec.key, True, spec.memory_bytes, "per GPU, as the driver reports it",
                  spec.link_bytes_per_s, peak.flops_per_s, peak.source)


def cpu_target(nproc: int) -> Target:
    """The host's memory and measured matmul rate, shared by the ``nproc`` ranks."""
    import torch

    from stoker.observe.peak import measured_peak

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    peak = measured_peak(torch.device("cpu"), torch.float32)
    return Target("cpu", False, total / nproc, f"host RAM / {nproc} ranks", None,
                  peak.flops_per_s / nproc, f"{peak.source} / {nproc} ranks")


def fit_warnings(memory: mp.MemoryEstimate, target: Target, nproc: int) -> list[str]:
    if mp.fits(memory, target.memory_bytes, target.on_gpu):
        return []
    reserve = f" + {fmt(mp.GPU_RESERVE_BYTES)} reserve" if target.on_gpu else ""
    return [f"the estimated peak of {fmt(memory.peak)}{reserve} per rank does not fit "
            f"{target.key}'s {fmt(target.memory_bytes)} ({target.memory_source}): shard more "
            f"(parallel.dp_shard, tp, pp), checkpoint activations or shrink "
            f"train.micro_batch_size"]


def fmt(n: float) -> str:
    from stoker.observe.live import fmt_bytes

    return fmt_bytes(n)


# ---------------------------------------------------------------- output


MEMORY_ROWS: tuple[tuple[str, str, str], ...] = (
    ("params", "parameters", "fp32, this rank's shard (FSDP's shards are the master weights)"),
    ("gradients", "gradients", "fp32, sharded like the parameters"),
    ("optimizer_states", "optimiser states", "AdamW exp_avg + exp_avg_sq, fp32"),
    ("optimizer_temporary", "optimiser temporary", "foreach AdamW step (0 when fused)"),
    ("activations", "activations", "saved for backward, in-flight microbatches + 1 block"),
    ("loss_transient", "loss transient", "cross-entropy backward, fp32 [tokens, vocab]"),
    ("fsdp_unsharded", "FSDP unsharded", "gathered params + one block's unsharded grads"),
    ("ddp_buckets", "DDP buckets", "a second copy of the gradients"),
    ("init_full_model", "init: full model", "fp32, the whole model on each rank before it is cut"),
    ("runtime", "runtime", "CPU: RSS of torch + Stoker, measured constant"),
)


def layout_text(layout: Layout) -> str:
    dims = [f"{n} {getattr(layout, n)}" for n in ("pp", "dp_replicate", "dp_shard", "cp", "tp")
            if getattr(layout, n) > 1]
    return " × ".join(dims) or "one rank"


def show(config: TrainConfig, layout: Layout, target: Target, memory: mp.MemoryEstimate,
         time: mp.TimeEstimate, accum: int) -> None:
    console = Console(highlight=False)
    p = config.parallel
    console.print(f"stoker plan (estimate): {config.model.preset} model, {layout_text(layout)}, "
                  f"{memory.wrapper}, {'bf16' if memory.dtype_bytes == 2 else 'fp32'} compute, "
                  f"activation checkpointing {p.activation_checkpoint}, on {target.key}")
    table = Table(title=f"memory per rank (pipeline rank {memory.pp_rank}, the fullest)"
                  if layout.pp > 1 else "memory per rank")
    table.add_column("part")
    table.add_column("bytes", justify="right")
    table.add_column("what")
    for field, label, what in MEMORY_ROWS:
        value = getattr(memory, field)
        if value:
            table.add_row(label, fmt(value), what)
    table.add_row("peak", fmt(memory.peak), f"runtime + the largest phase: {memory.peak_phase}",
                  style="bold")
    table.add_row("capacity", fmt(target.memory_bytes), target.memory_source)
    console.print(table)
    speed = Table(title="speed (estimate)")
    speed.add_column("figure")
    speed.add_column("value", justify="right")
    bubble_note = " (interleaved figure: an upper bound)" if p.pp > 1 \
        and p.pp_schedule == "zero-bubble" else ""
    speed.add_row("pipeline bubble", f"{time.bubble:.1%}{bubble_note}")
    speed.add_row("step time", f"{time.step_s:.3g} s")
    speed.add_row("  compute", f"{time.compute_s:.3g} s")
    speed.add_row("  exposed communication", f"{time.exposed_comm_s:.3g} s")
    speed.add_row("tokens/s", f"{time.tokens_per_s:,.0f}")
    speed.add_row("MFU", f"{time.mfu:.1%}")
    console.print(speed)
    console.print(f"peak {target.peak_source}; assumed {time.achievable_fraction:.0%} of it "
                  f"achieved; {accum} microbatch{'es' * (accum > 1)} per step; communication "
                  f"within one node at {mp.LINK_EFFICIENCY:.0%} of the link, data-parallel "
                  "traffic overlapped with compute, tp traffic exposed. Assumptions: "
                  "stoker/observe/memory_plan.py.")


def plan_record(cfg: Path, config: TrainConfig, layout: Layout, target: Target,
                memory: mp.MemoryEstimate, time: mp.TimeEstimate, accum: int,
                warnings: list[str]) -> dict[str, object]:
    return {
        "estimate": True,
        "config": str(cfg),
        "model": config.model.preset,
        "nproc": layout.world_size,
        "layout": layout.model_dump(),
        "device": {"key": target.key, "memory_bytes": target.memory_bytes,
                   "memory_source": target.memory_source, "peak_flops": target.peak_flops,
                   "peak_source": target.peak_source,
                   "link_bytes_per_s": target.link_bytes_per_s},
        "grad_accum": accum,
        "memory": memory.as_dict(),
        "time": time.as_dict(),
        "fits": not warnings,
        "warnings": warnings,
    }


def register(app: typer.Typer) -> None:
    """Add `stoker plan` to the top-level app."""
    app.command("plan")(plan)
