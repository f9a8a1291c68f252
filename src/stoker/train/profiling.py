"""torch.profiler on every rank: on demand (``stoker profile RUN_DIR``) or on the config's
``[profile]`` schedule, one Chrome/Perfetto trace per rank in RUN_DIR/profiles/<stamp>/.

On demand: the CLI writes RUN_DIR/profile.request (`profile_request`: atomically, a temporary
file renamed).
Rank 0 looks for it on log steps only (one failed ``open`` when there is none) and takes it
(reads, deletes); the log step's all_gather (`step_log.gather_steps`) carries rank 0's request
to every rank as three numbers (`ProfileAsk.encode`), so every rank starts the same capture
after the same step: one warmup step (torch.profiler's advice: the first profiled step pays
for the profiler's start), then ``steps`` recorded steps, then the profiler is stopped and
dropped. Outside a capture the step loop pays one attribute test per step and, on log steps,
that ``open`` on rank 0 and three more numbers in the gather.

Output per rank ``r`` (rank-%05d, as RUN_DIR/samples/): ``rank-<r>.json`` (or ``.json.gz``),
with ``--memory`` on CUDA ``rank-<r>.memory.pickle`` (the allocator's history,
``torch.cuda.memory._dump_snapshot``: open it at pytorch.org/memory_viz); on CPU, which has no
allocator history, the trace's own ``[memory]`` events (``profile_memory``), ``rank-<r>.memory.txt``
(the operators that allocated most) and ``rank-<r>.memory.json`` (the profiler's memory
timeline, ``[times, [bytes by category]]``) when torch can build it: its memory profiler
rejects some training graphs (pytorch/pytorch#167838; FSDP's here), which ``profile_done``
then says in ``memory_error``. Events: ``profile_started`` (rank 0: the dir, the steps, the
world size), ``profile_done`` (each rank: the dir and its files), ``profile_refused``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from stoker.observe.events import EventLog
from stoker.spec.train import ProfileConfig
from stoker.train.profile_request import ProfileAsk

# ---------------------------------------------------------------------- one capture


@dataclass(frozen=True)
class Plan:
    """A torch.profiler schedule and what to record."""

    wait: int
    warmup: int
    active: int
    repeat: int  # cycles; 0: until the run ends
    memory: bool
    with_stack: bool
    gzip: bool

    @classmethod
    def on_demand(cls, ask: ProfileAsk) -> Plan:
        return cls(0, 1, ask.steps, 1, ask.memory, ask.with_stack, ask.gzip)

    @classmethod
    def of_config(cls, p: ProfileConfig) -> Plan:
        return cls(p.wait, p.warmup, p.active, p.repeat, p.memory, p.with_stack, p.gzip)

    @property
    def cycle(self) -> int:
        return self.wait + self.warmup + self.active


class Capture:
    """A torch.profiler session of this rank, begun after step ``start_step``. `step` after
    every step; each recorded window is written to ``dir_for(first, last)`` as it ends (or at
    `stop`, cut short). ``finished`` once the schedule has no more cycles."""

    def __init__(self, plan: Plan, start_step: int, dir_for: Callable[[int, int], Path],
                 rank: int, device: torch.device, events: EventLog) -> None:
        self.plan = plan
        self.start_step = start_step
        self.dir_for = dir_for
        self.rank = rank
        self.device = device
        self.events = events
        self.cuda = device.type == "cuda"
        self.written: list[Path] = []
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with warnings.catch_warnings():  # warmup = 0 is the user's choice, said in the docs
            warnings.simplefilter("ignore", UserWarning)
            sched = schedule(wait=plan.wait, warmup=plan.warmup, active=plan.active,
                             repeat=plan.repeat)
        cpu_memory = plan.memory and not self.cuda  # the memory timeline needs all three
        self.prof = profile(activities=activities, schedule=sched, on_trace_ready=self._ready,
                            record_shapes=True, profile_memory=plan.memory,
                            with_stack=plan.with_stack or cpu_memory)
        if plan.memory and self.cuda:
            torch.cuda.memory._record_memory_history(max_entries=100_000)
        self.prof.start()

    @property
    def finished(self) -> bool:
        p = self.plan
        return p.repeat > 0 and self.prof.step_num >= p.repeat * p.cycle

    @property
    def endless(self) -> bool:
        return self.plan.repeat == 0

    def step(self) -> None:
        self.prof.step()

    def stop(self) -> None:
        """End the session; a window being recorded is written as far as it got."""
        try:
            self.prof.stop()
        finally:
            if self.plan.memory and self.cuda:
                torch.cuda.memory._record_memory_history(enabled=None)

    def _window(self) -> tuple[int, int]:
        """The run's steps the window just ended recorded (the loop calls `step` after each)."""
        n, p = self.prof.step_num, self.plan
        cycle = (n - 1) // p.cycle if n else 0
        first = self.start_step + cycle * p.cycle + p.wait + p.warmup + 1
        return first, max(first, self.start_step + n)

    def _ready(self, prof: profile) -> None:
        first, last = self._window()
        out = self.dir_for(first, last)
        out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        trace = out / f"rank-{self.rank:05d}.json{'.gz' * self.plan.gzip}"
        files, errors = [], {}
        try:
            prof.export_chrome_trace(str(trace))
            files.append(trace)
        except Exception as e:  # a trace not written does not stop the training
            errors["trace_error"] = f"{type(e).__name__}: {e}"[:500]
        if self.plan.memory and not self.cuda:
            files.append(self._memory_table(prof, out))
        if self.plan.memory:
            try:
                files.append(self._memory(prof, out))
            except Exception as e:
                errors["memory_error"] = f"{type(e).__name__}: {e}"[:500]
        self.written += files
        self.events.emit("profile_done", dir=str(out), files=[str(f) for f in files],
                         first_step=first, last_step=last,
                         export_s=round(time.monotonic() - started, 3), **errors)

    def _memory_table(self, prof: profile, out: Path) -> Path:
        """CPU: the operators that allocated most (self), from the trace's memory events."""
        path = out / f"rank-{self.rank:05d}.memory.txt"
        path.write_text(prof.key_averages().table(sort_by="self_cpu_memory_usage",
                                                  row_limit=30) + "\n")
        return path

    def _memory(self, prof: profile, out: Path) -> Path:
        """CUDA: the allocator's history. CPU: the profiler's memory timeline, which torch's
        memory profiler cannot always build (it rejects some graphs: FSDP's, for one); the
        trace itself holds the allocations either way ([memory] events, profile_memory)."""
        if self.cuda:
            path = out / f"rank-{self.rank:05d}.memory.pickle"
            torch.cuda.memory._dump_snapshot(str(path))  # type: ignore[no-untyped-call]
            return path
        path = out / f"rank-{self.rank:05d}.memory.json"
        with warnings.catch_warnings():  # deprecated for CUDA's allocator history; CPU has none
            warnings.simplefilter("ignore", FutureWarning)
            prof.export_memory_timeline(str(path), device="cpu")
        return path


def started_event(events: EventLog, dir_for: Callable[[int, int], Path], plan: Plan,
                  after_step: int, world_size: int) -> None:
    """Rank 0's ``profile_started``: where the (first) window goes and which steps it holds."""
    first = after_step + plan.wait + plan.warmup + 1
    last = first + plan.active - 1
    events.emit("profile_started", dir=str(dir_for(first, last)), first_step=first,
                last_step=last, world_size=world_size, schedule=asdict(plan))
