"""What rank 0 shows while training: a rich live progress display on a terminal, plain periodic
lines otherwise, and a summary table at the end. Other ranks show nothing."""

from __future__ import annotations

import math
import sys
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class Display(Protocol):
    def start(self, total_steps: int, first_step: int) -> None: ...
    def update(self, record: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


def make_display(is_main: bool, live: bool, log_interval: int) -> Display:
    """Live on a terminal when ``telemetry.live``; plain lines when stdout is not a terminal."""
    if not is_main:
        return NullDisplay()
    if live and sys.stdout.isatty():
        return LiveDisplay()
    return PlainDisplay(log_interval)


def fmt_count(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.0f}ms" if s >= 0.01 else f"{s * 1e3:.2f}ms"


def unit(rec: dict[str, Any]) -> str:
    """What the ``tokens`` keys count: samples for a user task (`stoker.train.task`)."""
    return "samples" if "samples_per_s" in rec else "tok"


def step_line(rec: dict[str, Any]) -> str:
    """One step's numbers as a single line (the plain display and the live one share it)."""
    parts = [
        f"loss {rec['loss']:.4f}",
        f"lr {rec['lr']:.2e}",
        f"gnorm {rec['grad_norm']:.2f}",
        f"{fmt_count(rec['tokens_per_s'])} {unit(rec)}/s "
        f"({fmt_count(rec['tokens_per_s_per_device'])}/dev)",
        f"mfu {rec['mfu'] * 100:.2f}%",
        f"step {fmt_ms(rec['step_time_s'])} (data {rec['data_wait_s'] / rec['step_time_s']:.1%})",
        f"mem {fmt_bytes(rec['peak_mem_bytes'])}",
    ]
    if "eval_loss" in rec:
        parts.append(f"eval {rec['eval_loss']:.4f}")
    parts += [f"{name} {value:.4g}" for name, value in rec.get("task", {}).items()]
    if flagged := stragglers(rec):
        parts.append(f"straggler: rank {flagged}")
    return " | ".join(parts)


def stragglers(rec: dict[str, Any]) -> str:
    """The ranks flagged as stragglers at this record ("" when none, or not a log step)."""
    return ",".join(str(r) for r in (rec.get("straggler") or {}).get("flagged", []))


class Eta:
    """Remaining time from the median of the recent step times (robust to one slow step)."""

    def __init__(self, total_steps: int) -> None:
        self.total = total_steps
        self.recent: list[float] = []

    def update(self, step: int, step_time_s: float) -> float:
        self.recent = [*self.recent[-19:], step_time_s]
        ordered = sorted(self.recent)
        return ordered[len(ordered) // 2] * (self.total - step)


class NullDisplay:
    def start(self, total_steps: int, first_step: int) -> None:
        pass

    def update(self, record: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


class PlainDisplay:
    """A line every ``log_interval`` steps (and the first and last), for logs and pipes."""

    def __init__(self, log_interval: int) -> None:
        self.console = Console(highlight=False, soft_wrap=True)
        self.log_interval = log_interval
        self.eta = Eta(0)

    def start(self, total_steps: int, first_step: int) -> None:
        self.eta = Eta(total_steps)

    def update(self, record: dict[str, Any]) -> None:
        step = record["step"]
        eta = self.eta.update(step, record["step_time_s"])
        due = step % self.log_interval == 0 or step in (1, self.eta.total)
        if not (due or "eval_loss" in record):
            return
        self.console.print(f"step {step}/{self.eta.total} | {step_line(record)} | "
                           f"eta {fmt_duration(eta)}")

    def message(self, text: str) -> None:
        self.console.print(text)

    def finish(self, summary: dict[str, Any]) -> None:
        self.console.print(summary_table(summary))


class LiveDisplay:
    """A progress bar with step, loss, tokens/s, MFU and ETA, redrawn in place."""

    def __init__(self) -> None:
        self.console = Console()
        self.progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss [bold cyan]{task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("MFU {task.fields[mfu]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("[bold red]{task.fields[straggler]}"),
            console=self.console,
        )
        self.task = self.progress.add_task("train", total=1, loss="-", tps="-", mfu="-", eta="?",
                                           straggler="")
        self.eta = Eta(0)

    def start(self, total_steps: int, first_step: int) -> None:
        self.eta = Eta(total_steps)
        self.progress.update(self.task, total=total_steps, completed=first_step)
        self.progress.start()

    def update(self, record: dict[str, Any]) -> None:
        eta = self.eta.update(record["step"], record["step_time_s"])
        self.progress.update(
            self.task, completed=record["step"], loss=f"{record['loss']:.4f}",
            tps=fmt_count(record["tokens_per_s"]), mfu=f"{record['mfu'] * 100:.2f}%",
            eta=fmt_duration(eta),
        )
        if "straggler" in record:
            flagged = stragglers(record)
            self.progress.update(self.task, straggler=f"straggler rank {flagged}" if flagged
                                 else "")
        if "eval_loss" in record:
            self.message(f"step {record['step']}: {step_line(record)}")

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def finish(self, summary: dict[str, Any]) -> None:
        self.progress.stop()
        self.console.print(summary_table(summary))


def summary_table(summary: dict[str, Any]) -> Table:
    """The end-of-run table: outcome, loss, speed, where the time went, memory."""
    table = Table(title=f"run {summary.get('status', '?')}", show_header=False,
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str]] = [
        ("steps", f"{summary.get('steps_completed', 0)}/{summary.get('steps_planned', '?')}"),
        ("wall time", fmt_duration(summary.get("wall_time_s", float("nan")))),
    ]
    if "loss_first" in summary:
        rows += [
            ("loss", f"{summary['loss_first']:.4f} -> {summary['loss_last']:.4f}"),
            ("samples/s" if "flops_per_sample" in summary else "tokens/s",
             f"{fmt_count(summary['tokens_per_s_median'])} "
             f"({fmt_count(summary['tokens_per_s_per_device_median'])} per device)"),
            ("MFU", f"{summary['mfu_median'] * 100:.2f}% of {fmt_count(summary['peak_flops'])}"
                    f"FLOP/s ({summary['peak_source']})"),
            ("step time", f"{fmt_ms(summary['step_time_median_s'])} median: data "
                          f"{summary['data_wait_fraction']:.1%}, fwd+bwd "
                          f"{summary['fwd_bwd_fraction']:.1%}, optim "
                          f"{summary['optim_fraction']:.1%}"),
            ("peak memory", fmt_bytes(summary["peak_mem_bytes"])),
        ]
    if "eval_loss_last" in summary:
        rows.append(("eval loss", f"{summary['eval_loss_last']:.4f} "
                                  f"(best {summary['eval_loss_best']:.4f})"))
    attempts = summary.get("attempts") or []
    if len(attempts) > 1:
        rows.append(("attempts", f"{len(attempts)} (steps and wall time are the whole run's)"))
    rows.append(("run dir", str(summary.get("run_dir", ""))))
    for key, value in rows:
        table.add_row(key, value)
    return table
