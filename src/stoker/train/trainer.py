"""The step loop of one rank: all training state in one object, one optimizer step at a time.

    Trainer(cfg, run_dir, dist, shard_dir, resume=None).run()
        -> "completed" | "preempted" | "interrupted" | "aborted"

Each step: ``accum`` micro-batches of forward+backward (gradients synchronised on the last one
only under DDP; under pipeline parallelism each micro-batch is one run of the pipeline
schedule, and the last stage's loss is shared with the other stages), gradient clipping, the
loss guard, AdamW, LR schedule. The step's numbers stay on the device: only on a log step
(every ``train.log_interval`` steps, the first and the last) does one all_gather bring the
pending steps' numbers from every rank (`step_log.py`), with the agreed stop and time-based
checkpoint, so that between log steps the host runs ahead of the device. Rank 0 writes
metrics.jsonl (one record per step), summary.json, feeds the ``[telemetry] sinks``
(`stoker.observe.sinks`: TensorBoard, W&B, MLflow) and draws the display.

Around the steps (issue 3): the state (``state_dict()``) is checkpointed by `Checkpointer` every
``checkpoint.interval_*`` and at the end, and restored at the start from ``resume`` or, after a
restart, from the run's newest checkpoint; a heartbeat feeds the hang watchdog; SIGTERM or
SIGUSR1 (preemption) and SIGINT stop all ranks together at a step boundary, after a synchronous
checkpoint. ``stoker profile RUN_DIR`` or the config's ``[profile]`` schedule run torch.profiler
on every rank over the same steps (`profiling.py`: a request is taken on log steps only).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from stoker.observe.events import EventLog
from stoker.observe.flops import flops_per_token
from stoker.observe.live import Display, make_display
from stoker.observe.metrics import (
    ATTEMPT_KEY,
    MetricsWriter,
    RunStats,
    StepTimer,
    attempt_history,
    last_attempt,
    latest_per_step,
    peak_memory_bytes,
    read_metrics,
)
from stoker.observe.peak import Peak, peak_flops, trusted_mfu
from stoker.observe.sinks import open_sinks
from stoker.observe.straggler import StragglerDetector
from stoker.spec.errors import ConfigError, StokerError
from stoker.spec.train import TrainConfig
from stoker.train import faults
from stoker.train.checkpoint import Checkpointer, config_hash, nested_optimizer_state
from stoker.train.ckpt_layout import read_run_meta
from stoker.train.context_parallel import ContextParallel
from stoker.train.data import Batch, TokenLoader
from stoker.train.distributed import DistInfo, barrier
from stoker.train.exitcodes import EXIT_PREEMPTED
from stoker.train.guards import LossGuard, Verdict
from stoker.train.heartbeat import Heartbeat
from stoker.train.optim import build_optimizer, build_scheduler, clip_grad_norm_, schedule_fn
from stoker.train.parallel_dims import ParallelDims
from stoker.train.parallelize import (
    autocast_context,
    build_model,
    parallelize_units,
    resolve_dtype,
    uses_fsdp,
)
from stoker.train.profile_request import (
    NO_ASK,
    ProfileAsk,
    profiles_root,
    stamp_name,
    take_request,
)
from stoker.train.profiling import Capture, Plan, started_event
from stoker.train.restarts import attempt
from stoker.train.resume_check import check_fits, run_meta, schedule_changes
from stoker.train.step_log import Agreed, LoggedStep, PendingStep, gather_steps
from stoker.train.task import (
    Task,
    TaskBatch,
    TaskLoader,
    build_task,
    collate_fn,
    flops_per_sample,
    forward,
    fsdp_units,
    loss_and_metrics,
)
from stoker.train.task import build_model as build_task_model

if TYPE_CHECKING:  # torch.distributed.pipelining (1.6 s at load 9): imported only with pp > 1
    from stoker.train.pipeline import Pipeline

EXIT_INTERRUPTED = 130
REPEAT_SIGNAL_GRACE_S = 2.0  # a repeat within this window is the same signal, delivered twice
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOP_INTERRUPT, STOP_PREEMPT = 1, 2  # what a rank was asked to do, agreed as the max over ranks
OK = Verdict("ok")


def exit_code(status: str) -> int:
    """A rank's exit code for the status `Trainer.run` returned."""
    return {"completed": 0, "preempted": EXIT_PREEMPTED}.get(status, EXIT_INTERRUPTED)


class StopRequest:
    """The first SIGINT, SIGTERM or SIGUSR1 asks to stop after the current step (SIGTERM and
    SIGUSR1 mean preemption: checkpoint, then exit 75). A repeat after the grace period (on
    ``clock``, monotonic seconds): SIGINT aborts the step (KeyboardInterrupt); SIGTERM/SIGUSR1 end
    the process at once."""

    def __init__(self, events: EventLog | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.signal: str | None = None
        self.events = events
        self.clock = clock
        self._at = 0.0

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def kind(self) -> int:
        """0: none, STOP_INTERRUPT (SIGINT) or STOP_PREEMPT (SIGTERM, SIGUSR1)."""
        if self.signal is None:
            return 0
        return STOP_INTERRUPT if self.signal == "SIGINT" else STOP_PREEMPT

    def install(self) -> Callable[[], None]:
        """Handle the stop signals; returns a function that puts the old handlers back."""
        sigs = (signal.SIGINT, *PREEMPT_SIGNALS)
        old = {sig: signal.signal(sig, self._handle) for sig in sigs}

        def restore() -> None:
            for sig, handler in old.items():
                signal.signal(sig, handler)

        return restore

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = self.clock()
        name = signal.Signals(signum).name
        if self.events is not None:
            self.events.emit("signal", signal=name, repeat=self.signal is not None)
        if self.signal is None:
            self.signal = name
            self._at = now
        elif now - self._at > REPEAT_SIGNAL_GRACE_S:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


class Trainer:
    """Model, optimizer, scheduler, data position and step of one rank, and the loop over them."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, dist_info: DistInfo,
                 shard_dir: Path | None, display: Display | None = None,
                 resume: str | None = None, restart_schedule: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.dist = dist_info
        self.device = dist_info.device
        t = cfg.train
        # A user task (`task.py`) in place of the language model: its throughput and FLOPs
        # count samples where the language model's count tokens.
        self.task: Task | None = build_task(cfg) if cfg.task.module is not None else None
        self.shape = cfg.model.shape()
        self.dims = ParallelDims.build(cfg.parallel.layout(dist_info.world_size), self.device)
        self.accum = cfg.grad_accum_steps(self.dims.dp_size)
        self.tokens_per_step = t.global_batch_size * (t.seq_len if self.task is None else 1)
        self.shard_dir = shard_dir
        self.flops_per_token = flops_per_token(self.shape, t.seq_len)
        self.peak = self._peak()  # before the loader's threads or the model's memory exist
        self.train_loader = self._loader("train")
        if isinstance(self.train_loader, TokenLoader):
            assert shard_dir is not None
            check_vocab(self.shape.vocab_size, self.train_loader.vocab_size, shard_dir)

        self.pipeline: Pipeline | None = None
        self.model: nn.Module
        if self.task is not None:
            model = build_task_model(self.task, t.seed)
            assert isinstance(self.train_loader, TaskLoader)
            self.flops_per_token = flops_per_sample(
                self.task, self.train_loader.first_batch(), t.micro_batch_size) or 0.0
            self.model = parallelize_units(model, fsdp_units(self.task, model), cfg.parallel,
                                           self.dims, self.device)
        elif self.dims.pp_enabled:
            from stoker.train.pipeline import build_pipeline

            self.pipeline = build_pipeline(self.shape, cfg.parallel, self.dims, self.device,
                                           t.seed, token_loss)
            self.model = self.pipeline.model  # this rank's stages, under full-model names
        else:
            self.model = build_model(self.shape, cfg.parallel, self.device, t.seed,
                                     dist_info.world_size, dims=self.dims)
        called = self.pipeline.parts if self.pipeline is not None else [self.model]
        self.cp = (ContextParallel.apply(called, self.dims, t.seq_len, self.shape, self.device,
                                         resolve_dtype(cfg.parallel, self.device))
                   if self.dims.cp_enabled else None)
        self.fsdp = uses_fsdp(cfg.parallel, self.dims)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.steps)
        self.schedule_start = 0  # the step the LR schedule began at (--restart-schedule)
        self.restart_schedule = restart_schedule
        self.step = 0
        self.after_step: list[Callable[[Trainer, dict[str, Any]], None]] = []

        self.events = EventLog(run_dir, dist_info.rank)
        self.resume = resume
        self.checkpointer = Checkpointer(run_dir, cfg.checkpoint, rank=dist_info.rank,
                                         world_size=dist_info.world_size, device=self.device,
                                         config_hash=config_hash(cfg), events=self.events)
        self.heartbeat = Heartbeat(run_dir, dist_info.rank, t.hang_timeout_s, self.events)
        self.guard = (LossGuard(t.loss_guard, t.loss_spike_factor, t.loss_spike_window)
                      if t.loss_guard != "off" else None)
        self.samples_file = (run_dir / "samples" / f"rank-{dist_info.rank:05d}.jsonl"
                             if cfg.telemetry.sample_ids else None)

        self._warned_peak = False
        self.stop = StopRequest(self.events)
        self.stop_agreed = 0  # the largest stop kind asked of any rank: all stop after this step
        self.pending: list[PendingStep] = []  # steps not yet logged (see step_log.py)
        self.capture: Capture | None = None  # torch.profiler, while it runs (profiling.py)
        self.timer = StepTimer(self.device)
        self.stats = RunStats()
        straggler = cfg.straggler
        self.straggler = (StragglerDetector(straggler, dist_info.world_size)
                          if straggler.enabled and dist_info.is_main else None)
        self.display = display or make_display(dist_info.is_main, cfg.telemetry.live,
                                               t.log_interval)
        self.run_attempt = run_attempt(run_dir / cfg.telemetry.metrics_file)
        self.writer = (MetricsWriter(run_dir / cfg.telemetry.metrics_file)
                       if dist_info.is_main else None)
        self.sinks = open_sinks(cfg, run_dir, self.events) if dist_info.is_main else None
        self.val_loader = self._val_loader()

    # ------------------------------------------------------------------ state (for checkpoints)

    def state_dict(self, nested_optimizer: bool = False) -> dict[str, Any]:
        """Everything a resume needs but the RNG states (`Checkpointer` keeps each rank's). Model
        and optimizer come as (sharded) DCP state dicts keyed by full-model parameter names;
        the rest is the same on every rank. The optimizer state is flat (one key per parameter
        and setting, so that ranks holding different pipeline stages agree on every key);
        ``nested_optimizer`` gives the nested form that checkpoints written before pipeline
        parallelism hold, to load them."""
        flat = StateDictOptions(flatten_optimizer_state_dict=not nested_optimizer)
        state = {
            "model": get_model_state_dict(self.model),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=flat),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "loader": self.train_loader.state_dict(),
        }
        if self.guard is not None:
            state["loss_guard"] = self.guard.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state["model"])
        nested = "param_groups" in state["optimizer"]
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                 options=StateDictOptions(flatten_optimizer_state_dict=not nested))
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.train_loader.load_state_dict(state["loader"])
        if self.guard is not None and "loss_guard" in state:
            self.guard.load_state_dict(state["loss_guard"])

    def restore(self) -> int | None:
        """Load the checkpoint to start from, if any: after a restart the run's newest, else
        (or when the run has none yet) ``resume`` ("auto" or a path). Returns its step."""
        sources = ["auto"] if attempt() > 0 else []
        if self.resume and self.resume not in sources:
            sources.append(self.resume)
        for where in sources:
            path = self.checkpointer.locate(where)
            if path is not None:
                check_fits(path, self.cfg)
                state = self.state_dict(nested_optimizer_state(path))
                step = self.checkpointer.load(state, path)
                self.load_state_dict(state)
                self._adopt_schedule(read_run_meta(path), step)
                return step
        return None

    def _adopt_schedule(self, meta: dict[str, Any], step: int) -> None:
        """After a load: the LR schedule is the config's, at the checkpoint's position (its
        step) or, with ``restart_schedule`` when the schedule changed, starting over there.
        A change is said once, on the console and in events.jsonl."""
        self.schedule_start = int(meta.get("schedule_start", 0))
        changes = schedule_changes(meta, self.cfg)
        if changes and self.restart_schedule:
            self.schedule_start = step
        if changes or self.schedule_start:
            self._set_schedule()
        if changes and self.dist.is_main:
            how = (f"the new schedule starts over at step {step} (--restart-schedule)"
                   if self.restart_schedule else
                   f"it goes on from step {step} of the new schedule (--restart-schedule "
                   f"starts it over there)")
            self.display.message(f"resume: LR schedule changed ({', '.join(changes)}): {how}")
            self.events.emit("schedule_changed", step=step, changes=changes,
                             restarted=self.restart_schedule)

    def _set_schedule(self) -> None:
        """The config's schedule (and peak lr), begun at ``schedule_start``, at the
        scheduler's current position."""
        fn = schedule_fn(self.cfg.optim, self.cfg.train.steps, self.schedule_start)
        sched, groups = self.scheduler, self.optimizer.param_groups
        sched.lr_lambdas = [fn] * len(groups)
        sched.base_lrs = [self.cfg.optim.lr] * len(groups)
        for group, base in zip(groups, sched.base_lrs, strict=True):
            group["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [group["lr"] for group in groups]  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ the step

    def train_step(self, poison: bool = False) -> PendingStep:
        """One optimizer step over ``accum`` micro-batches; its numbers stay on the device.
        ``poison`` makes the loss NaN (the loss guard's tests inject it via STOKER_FAULT)."""
        if not self.model.training:
            self.model.train()
        timer = self.timer
        timer.start()
        losses, sample_ids = [], []
        metrics: list[dict[str, torch.Tensor]] = []  # a task's, per micro-batch
        for i in range(self.accum):
            with timer.phase("data_wait"):
                batch = next(self.train_loader).to(self.device, non_blocking=True)
            with (timer.phase("fwd_bwd"), self._grad_sync(i == self.accum - 1),
                  self._loss_parallel()):
                if i == 0:
                    faults.fire("fwd_bwd", self.step + 1, self.dist.rank)  # tests only
                if self.pipeline is not None:
                    assert isinstance(batch, Batch)  # a task has no pipeline (spec refuses pp)
                    loss = self._pipeline_step(self.pipeline, batch.inputs, batch.targets,
                                               poison)
                else:
                    loss = self._batch_loss(batch, metrics)
                    if poison:
                        loss = loss * float("nan")
                    (loss / self.accum).backward()
                losses.append(loss.detach())
            if self.samples_file is not None:
                sample_ids += batch.sample_ids.tolist()
        self._log_samples(self.step + 1, sample_ids)
        loss_mean = self.dims.share_loss(torch.stack(losses).mean())
        with timer.phase("optim"):
            grad_norm = clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip,
                                        pp_group=self.dims.pp_group)
            lr = self.optimizer.param_groups[0]["lr"]
            self.checkpointer.staged()  # an async save may still be copying the weights
            verdict, skipped = self._guarded_update(loss_mean, grad_norm)
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return PendingStep(self.step + 1, loss_mean, grad_norm, skipped, lr, timer.stop(),
                           time.time(), verdict, metrics=mean_metrics(metrics))

    def _guarded_update(self, loss: torch.Tensor,
                        grad_norm: torch.Tensor) -> tuple[Verdict | None, torch.Tensor | None]:
        """The optimizer step, unless the loss guard rejects it. Without a spike check, a fused
        optimizer drops a non-finite step on the device (its ``found_inf``, as under
        GradScaler) and the verdict is read at the log step; otherwise the guard judges the
        rank-averaged loss and the global gradient norm here, on the host."""
        if self.guard is None:
            self.optimizer.step()
            return OK, None
        if self.guard.spike_factor == 0 and self.optimizer.defaults.get("fused"):
            # The global norm is the same on every rank, and a non-finite loss on any rank
            # makes it non-finite: every rank skips the same steps without talking.
            skipped = (~torch.isfinite(grad_norm)).float()
            self.optimizer.found_inf = skipped  # type: ignore[attr-defined]
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf  # type: ignore[attr-defined]
            return None, skipped
        both = self.dims.dp_mean(torch.stack([loss.float(), grad_norm.float()]))
        verdict = self.guard.check(*both.tolist())
        if verdict.ok:
            self.optimizer.step()
        return verdict, None

    def _batch_loss(self, batch: Batch | TaskBatch,
                    metrics: list[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """One micro-batch's loss: the language model's, or the task's (its metrics go to
        ``metrics``)."""
        if isinstance(batch, Batch):
            return self._loss(batch.inputs, batch.targets)
        assert self.task is not None
        with self._autocast():
            output = forward(self.task, self.model, batch.data)
        loss, values = loss_and_metrics(self.task, output, batch.data)
        if metrics is not None:
            metrics.append(values)
        return loss

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss over this rank's tokens (under cp, its part of each sequence)."""
        inputs, targets = self._own_tokens(inputs, targets)
        with self._autocast():
            logits = self.model(inputs)
        return token_loss(logits, targets)

    def _own_tokens(self, inputs: torch.Tensor,
                    targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of each sequence: all of it, or under cp its chunks."""
        if self.cp is None:
            return inputs, targets
        return self.cp.shard(inputs), self.cp.shard(targets)

    def _pipeline_step(self, pipeline: Pipeline, inputs: torch.Tensor, targets: torch.Tensor,
                       poison: bool) -> torch.Tensor:
        """One micro-batch through the pipeline schedule, forward and backward. Each pipeline
        micro-batch's loss is scaled so the summed gradients are those of the mean loss over
        the step. Returns the loss on the last stage, 0 on the others."""
        scale = (float("nan") if poison else 1.0) / (self.accum * pipeline.n_microbatches)
        inputs, targets = self._own_tokens(inputs, targets)
        with self._autocast():
            loss = pipeline.step(inputs, targets, scale)
        return loss if loss is not None else torch.zeros((), device=self.device)

    def _eval_loss(self, batch: Batch | TaskBatch) -> torch.Tensor:
        """The loss of one val micro-batch: under pp on the last stage, 0 on the others."""
        if self.pipeline is None or not isinstance(batch, Batch):
            return self._batch_loss(batch)
        inputs, targets = self._own_tokens(batch.inputs, batch.targets)
        with self._autocast():
            logits = self.pipeline.forward(inputs)
        if logits is None:
            return torch.zeros((), device=self.device)
        return token_loss(logits, targets)

    def _autocast(self) -> AbstractContextManager[object]:
        return autocast_context(self.cfg.parallel, self.device, fsdp=self.fsdp)

    def _loss_parallel(self) -> AbstractContextManager[object]:
        """Under tensor parallelism the logits stay vocab-sharded: the loss (forward and
        backward) runs on the shards."""
        return loss_parallel() if self.dims.tp_enabled else nullcontext()

    def _grad_sync(self, sync: bool) -> AbstractContextManager[object]:
        """DDP all-reduces on the last micro-batch only. FSDP2 reduce-scatters every micro-batch
        so that gradients stay sharded (unsharded accumulation would cost a full model copy)."""
        if not sync and isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return nullcontext()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over ``train.eval_steps`` global batches of the val split (the same ones
        every time), averaged over ranks."""
        loader = self.val_loader
        if loader is None:
            raise StokerError("no val split to evaluate on (train.eval_interval = 0, or the "
                              "split is too small)")
        loader.reset()
        self.model.eval()
        total = torch.zeros((), device=self.device)
        n = self.cfg.train.eval_steps * self.accum
        for _ in range(n):
            batch = next(loader).to(self.device, non_blocking=True)
            with self._loss_parallel():
                total += self._eval_loss(batch)
        loader.close()
        self.dims.dp_mean(self.dims.share_loss(total))
        return float(total) / n

    # ------------------------------------------------------------------ the loop

    def step_once(self) -> list[dict[str, Any]]:
        """A training step and periodic eval; on a log step, the records of the steps since
        the last one (the ``after_step`` hooks see each); then the loss guard's rollback and
        the checkpoint, if due."""
        fault = faults.fire("step", self.step + 1, self.dist.rank)  # tests only
        self.heartbeat.beat(self.step + 1, started=True)
        pending = self.train_step(poison=fault == "nan")
        self.step += 1
        t = self.cfg.train
        if self.val_loader is not None and (self.step % t.eval_interval == 0
                                            or self.step == t.steps):
            pending.eval_loss = self.evaluate()
        self.pending.append(pending)
        records: list[dict[str, Any]] = []
        agreed: Agreed | None = None
        if self._log_due():
            records, agreed = self._log()
        if any(r.get("guard") == "rollback" for r in records):
            self._roll_back()
        self.heartbeat.beat(self.step)
        self._checkpoint(agreed)
        if self.capture is not None:
            self._capture_step(self.capture)
        if agreed is not None and agreed.profile[0]:
            self._start_on_demand(agreed.profile)
        return records

    def _log_due(self) -> bool:
        """Every ``train.log_interval`` steps, the last step, the first of each attempt, and
        every step-based checkpoint's step (so that every committed step has its record, even
        if the run is killed before its next log step)."""
        t, every = self.cfg.train, self.cfg.checkpoint.interval_steps
        return (self.step % t.log_interval == 0 or self.step >= t.steps
                or not self.stats.records or bool(every and self.step % every == 0))

    def _log(self) -> tuple[list[dict[str, Any]], Agreed]:
        """The pending steps' records, written and shown; every rank learns the agreed stop."""
        ask, time_due = self._profile_ask(), self.checkpointer.time_due()
        with self.timer.gathering():
            logged, agreed = gather_steps(self.pending, self.stop.kind, time_due,
                                          peak_memory_bytes(self.device), self.dist.world_size,
                                          self.device, ask)
        self.pending = []
        self.stop_agreed = agreed.stop
        metrics = self._task_metrics([s.pending for s in logged])
        records = [self._record(s, agreed.peak_mem_bytes, m)
                   for s, m in zip(logged, metrics, strict=True)]
        if self.straggler is not None and records:
            self._score_stragglers(self.straggler, logged, records[-1])
        for record in records:
            if "guard" in record and self.dist.is_main:
                self.events.emit("loss_guard", step=record["step"], action=record["guard"],
                                 reason=record["guard_reason"])
            self.stats.add(record)
            if self.writer is not None:
                self.writer.write(record)
            if self.sinks is not None:
                self.sinks.log(record)
            self.display.update(record)
            for hook in self.after_step:
                hook(self, record)
        return records, agreed

    # ------------------------------------------------------------------ profiling

    def _profile_ask(self) -> tuple[int, int, int]:
        """On a log step, rank 0 takes RUN_DIR/profile.request, unless a capture runs (then the
        request waits for its end; a ``[profile]`` schedule without end refuses it)."""
        if not self.dist.is_main:
            return NO_ASK
        if self.capture is not None:
            if self.capture.endless and take_request(self.run_dir, self.events) is not None:
                self.events.emit("profile_refused", step=self.step,
                                 reason="the [profile] schedule (repeat = 0) is capturing")
            return NO_ASK
        ask = take_request(self.run_dir, self.events)
        return ask.encode() if ask is not None else NO_ASK

    def _start_on_demand(self, numbers: tuple[int, int, int]) -> None:
        """Every rank, after the log step that agreed on rank 0's request."""
        ask = ProfileAsk.decode(numbers)
        if ask is None or self.capture is not None:
            return
        out = profiles_root(self.run_dir) / ask.dir_name
        self._start_capture(Plan.on_demand(ask), lambda first, last: out)

    def _start_configured(self) -> None:
        """The ``[profile]`` schedule, from this attempt's first step. Its windows' directories
        carry rank 0's start time (broadcast once) and their first step."""
        if not self.cfg.profile.enabled:
            return
        root, stamp = profiles_root(self.run_dir), stamp_name(agreed_time(self.device))
        self._start_capture(Plan.of_config(self.cfg.profile),
                            lambda first, last: root / f"{stamp}-step{first:06d}")

    def _start_capture(self, plan: Plan, dir_for: Callable[[int, int], Path]) -> None:
        if self.dist.is_main:
            started_event(self.events, dir_for, plan, self.step, self.dist.world_size)
        self.capture = Capture(plan, self.step, dir_for, self.dist.rank, self.device,
                               self.events)

    def _capture_step(self, capture: Capture) -> None:
        with self.heartbeat.paused():  # a window's end writes its trace
            capture.step()
        if capture.finished:
            self._end_capture()

    def _end_capture(self) -> None:
        """Stop the profiler (a window cut short by the run's end is written as it is)."""
        capture, self.capture = self.capture, None
        if capture is None:
            return
        try:
            with self.heartbeat.paused():
                capture.stop()
        except Exception as e:  # a trace not written does not fail the run
            self.events.emit("profile_error", step=self.step,
                             error=f"{type(e).__name__}: {e}"[:2000])

    def _checkpoint(self, agreed: Agreed | None) -> None:
        """Save when due: every interval (async), at the end and on a stop (synchronous).
        Time-based saves and stops are agreed on log steps only."""
        final = self.step >= self.cfg.train.steps
        due = self.checkpointer.decide(self.step, time_due=bool(agreed and agreed.time_due),
                                       stop_requested=bool(self.stop_agreed), final=final)
        if not due.save:
            self.checkpointer.poll()
            return
        with self.heartbeat.paused():
            self.checkpointer.save(self.step, self.state_dict(), sync=final or due.stop,
                                   meta=run_meta(self.cfg, self.schedule_start))

    def _roll_back(self) -> None:
        """Back to the last committed checkpoint; the data goes on from here, so the batches
        since that checkpoint (the bad one included) are not trained on again."""
        position = self.train_loader.state_dict()
        with self.heartbeat.paused():
            path = self.checkpointer.locate("auto")
            if path is None:  # nothing to go back to: the bad update was skipped, carry on
                if self.dist.is_main:
                    self.events.emit("loss_guard_no_checkpoint", step=self.step)
                return
            state = self.state_dict(nested_optimizer_state(path))
            step = self.checkpointer.load(state, path)
        self.load_state_dict(state)
        self.train_loader.load_state_dict(position)
        self.display.message(f"loss guard: rolled back to step {step}")

    def _log_samples(self, step: int, ids: list[int]) -> None:
        if self.samples_file is None:
            return
        self.samples_file.parent.mkdir(parents=True, exist_ok=True)
        with self.samples_file.open("a") as f:
            f.write(json.dumps({"step": step, "rank": self.dist.rank, "ids": ids}) + "\n")

    def run(self) -> str:
        """Train to ``train.steps``; returns "completed", "preempted" (SIGTERM/SIGUSR1: stopped
        at a step boundary after a checkpoint), "interrupted" (SIGINT, likewise) or "aborted"
        (a second SIGINT, mid-step)."""
        restore_signals = self.stop.install()
        started = time.time()
        status = "failed"
        try:
            resumed = self.restore()
            if self.dist.is_main:
                self.events.emit("start", attempt=attempt(), run_attempt=self.run_attempt,
                                 world_size=self.dist.world_size,
                                 step=self.step, resumed=resumed is not None)
            self.display.start(self.cfg.train.steps, self.step)
            self.heartbeat.start()
            self._start_configured()
            while self.step < self.cfg.train.steps:
                self.step_once()
                if self.stop_agreed:
                    break
            done = self.step >= self.cfg.train.steps  # a stop on the last step changes nothing
            status = {0: "completed", STOP_INTERRUPT: "interrupted",
                      STOP_PREEMPT: "preempted"}[0 if done else self.stop_agreed]
        except KeyboardInterrupt:
            status = "aborted"
        except Exception as e:
            self.events.emit("error", step=self.step, error=f"{type(e).__name__}: {e}"[:2000])
            raise
        finally:
            self._end_capture()
            self.heartbeat.stop()
            self.train_loader.close()
            if status != "failed":
                self.checkpointer.close()
            self._finish(status, time.time() - started)
            restore_signals()
        return status

    # ------------------------------------------------------------------ telemetry

    def _task_metrics(self, steps: list[PendingStep]) -> list[dict[str, float]]:
        """A task's metrics of each logged step, averaged over the ranks (one all_reduce
        per log step, only for a task that returns metrics)."""
        if not steps or not steps[0].metrics:
            return [{} for _ in steps]
        names = sorted(steps[0].metrics)
        values = torch.stack([torch.stack([(s.metrics or {})[k] for k in names])
                              for s in steps])
        rows = self.dims.dp_mean(values.to(self.device, torch.float64)).tolist()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _record(self, logged: LoggedStep, peak_mem_bytes: int,
                task_metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """A step's JSON record, from every rank's numbers. For a task, the ``tokens`` keys
        count samples (so every reader of them works) and ``samples_per_s`` says so."""
        p, times = logged.pending, logged.times
        tps = self.tokens_per_step / times.step_time_s
        flops_per_rank = self.dims.flops_per_rank(self.flops_per_token, self.tokens_per_step)
        record: dict[str, Any] = {
            "step": p.step,
            ATTEMPT_KEY: self.run_attempt,
            "loss": sum(logged.losses) / len(logged.losses),
            "lr": p.lr,
            "grad_norm": logged.grad_norm,
            "tokens": self.tokens_per_step,
            "tokens_per_s": tps,
            "tokens_per_s_per_device": tps / self.dist.world_size,
            "mfu": self._mfu(flops_per_rank / times.step_time_s),
            "step_time_s": times.step_time_s,
            "data_wait_s": times.data_wait_s,
            "fwd_bwd_s": times.fwd_bwd_s,
            "optim_s": times.optim_s,
            **({} if math.isnan(times.compute_s) else
               {"compute_s": times.compute_s, "comm_s": times.comm_s}),
            "peak_mem_bytes": peak_mem_bytes,
            "rank_step_times": logged.step_times,
            "time": p.wall_time,
        }
        verdict = p.verdict
        if logged.skipped and self.guard is not None:
            loss = record["loss"]
            verdict = Verdict(self.guard.action, f"loss is {loss}" if not math.isfinite(loss)
                              else f"grad norm is {logged.grad_norm}")
        if verdict is not None and not verdict.ok:
            record["guard"], record["guard_reason"] = verdict.action, verdict.reason
        if p.eval_loss is not None:
            record["eval_loss"] = p.eval_loss
        if self.task is not None:
            record["samples"], record["samples_per_s"] = self.tokens_per_step, tps
            if task_metrics:
                record["task"] = task_metrics
        return record

    def _score_stragglers(self, detector: StragglerDetector, logged: list[LoggedStep],
                          record: dict[str, Any]) -> None:
        """Rank 0: the log step's straggler scores into its record; a rank flagged or cleared
        is an event and a line on the display."""
        for s in logged:
            detector.add(s.step_times, s.sections)
        verdict = detector.score()
        record["straggler"] = verdict.record
        record["straggler_relative_min"] = min(verdict.record["relative"])
        record["straggler_individual_min"] = min(verdict.record["individual"])
        step = record["step"]
        for rank, section, score, steps in verdict.flagged:
            self.events.emit("straggler", rank=rank, step=step, section=section,
                             score=round(score, 3), steps=steps)
            self.display.message(f"straggler: rank {rank} at step {step}, {section} "
                                 f"{score:.2f} of the fastest rank for {steps} log steps")
        for rank, score in verdict.cleared:
            self.events.emit("straggler_cleared", rank=rank, step=step, score=round(score, 3))
            self.display.message(f"straggler cleared: rank {rank} at step {step}")

    def _finish(self, status: str, wall_time_s: float) -> None:
        """summary.json, over the whole run: every attempt's steps (each step once, from its
        latest attempt) and wall time, not only this attempt's."""
        records, history = self._whole_run(status, wall_time_s)
        summary = {
            "status": status,
            "steps_planned": self.cfg.train.steps,
            "world_size": self.dist.world_size,
            "layout": self.dims.layout.model_dump(),
            "wall_time_s": sum(a["wall_time_s"] for a in history),
            "attempt": self.run_attempt,
            "attempt_wall_time_s": wall_time_s,
            **RunStats.of(records).summary(),
            "attempts": history,
            "flops_per_token": self.flops_per_token,
            **({"flops_per_sample": self.flops_per_token} if self.task is not None else {}),
            "peak_flops": self.peak.flops_per_s,
            "peak_source": self.peak.source,
            "run_dir": str(self.run_dir),
        }
        if self.stop.signal:
            summary["signal"] = self.stop.signal
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.writer is not None:
            self.writer.close()
        if self.sinks is not None:
            self.sinks.close()
        self.display.finish(summary)

    def _mfu(self, achieved_flops_per_s: float) -> float:
        """Never above 1 (`trusted_mfu`); a measured peak a step beat is raised and saved."""
        mfu, peak = trusted_mfu(achieved_flops_per_s, self.peak)
        if peak != self.peak:
            self.peak = peak
            self._save_peak(peak)
        elif mfu == 1.0 and not self._warned_peak and self.dist.is_main:
            self._warned_peak = True
            self.display.message(f"MFU: a step ran faster than the peak ({peak.source}); "
                                 f"MFU is reported as at most 100%")
        return mfu

    def _whole_run(self, status: str, wall_time_s: float
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Each step's latest record, and every attempt (`attempt_history`). Rank 0 reads
        them from the run dir; the other ranks know this attempt only."""
        mine = self.stats.records
        current = {"attempt": self.run_attempt, "status": status, "wall_time_s": wall_time_s,
                   "first_step": mine[0]["step"] if mine else None,
                   "last_step": mine[-1]["step"] if mine else None}
        if self.writer is None:
            return mine, [current]
        everything = read_metrics(self.writer.path)
        try:
            known = json.loads((self.run_dir / "summary.json").read_text()).get("attempts", [])
        except (OSError, ValueError, AttributeError):
            known = []
        known = [a for a in known if isinstance(a, dict) and a.get("attempt") != self.run_attempt]
        return latest_per_step(everything), attempt_history(everything, known, current)

    def _peak(self) -> Peak:
        """The MFU denominator: ``telemetry.peak_flops`` or the device's, found by rank 0 while
        the other ranks wait (a CPU calibration must not compete with them for cores). A
        measured peak is kept in RUN_DIR/peak.json: a restarted or resumed run reuses it, so
        its MFU keeps the same denominator and its restart skips the calibration."""
        if self.cfg.telemetry.peak_flops:
            return Peak(self.cfg.telemetry.peak_flops, "config: telemetry.peak_flops")
        dtype = resolve_dtype(self.cfg.parallel, self.device)
        cache = self.run_dir / "peak.json"
        key = f"{self.device.type} {dtype}"
        try:
            saved = json.loads(cache.read_text())
            if saved["key"] == key:
                return Peak(float(saved["flops_per_s"]), str(saved["source"]))
        except (OSError, ValueError, KeyError):
            pass
        barrier()
        peak = peak_flops(self.device, dtype)
        barrier()
        self._save_peak(peak)
        return peak

    def _save_peak(self, peak: Peak) -> None:
        """RUN_DIR/peak.json, for a measured peak (rank 0)."""
        if not (self.dist.is_main and peak.source.startswith("measured")):
            return
        dtype = resolve_dtype(self.cfg.parallel, self.device)
        cache = self.run_dir / "peak.json"
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": f"{self.device.type} {dtype}",
                                   "flops_per_s": peak.flops_per_s, "source": peak.source}))
        tmp.replace(cache)

    # ------------------------------------------------------------------ setup helpers

    def _loader(self, split: str) -> TokenLoader | TaskLoader:
        t = self.cfg.train
        if self.task is not None:
            dataset = self.task.dataset(split)
            if dataset is None:
                raise StokerError(f"task.module: the task has no {split!r} dataset")
            return TaskLoader(dataset, collate_fn(self.task), split, t.global_batch_size,
                              t.micro_batch_size, dp_rank=self.dims.dp_rank,
                              dp_size=self.dims.dp_size, seed=t.seed)
        assert self.shard_dir is not None
        return TokenLoader(self.shard_dir, split, t.seq_len, t.global_batch_size,  # type: ignore[arg-type]
                           t.micro_batch_size, dp_rank=self.dims.dp_rank,
                           dp_size=self.dims.dp_size, seed=t.seed,
                           prefetch=self.cfg.data.prefetch,
                           pin_memory=self.device.type == "cuda")

    def _val_loader(self) -> TokenLoader | TaskLoader | None:
        """The val split's loader, or None when eval is off or the split is too small."""
        if self.cfg.train.eval_interval == 0:
            return None
        try:
            return self._loader("val")
        except StokerError as e:
            self.display.message(f"eval off: {e}")
            return None


def mean_metrics(per_micro_batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    """A task's metrics over a step's micro-batches (device tensors)."""
    if not per_micro_batch or not per_micro_batch[0]:
        return None
    return {k: torch.stack([m[k] for m in per_micro_batch]).mean() for k in per_micro_batch[0]}


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the tokens (on vocab-sharded logits under tensor parallelism)."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    return loss.full_tensor() if isinstance(loss, DTensor) else loss


def run_attempt(metrics: Path) -> int:
    """This start's attempt number for the metrics records: one more than the run dir's
    newest, and at least the control plane's attempt (``STOKER_JOB_ATTEMPT``, from 1), so the
    numbers only grow across restarts, resumes and control-plane retries."""
    job = os.environ.get(faults.JOB_ATTEMPT_ENV, "")
    return max(last_attempt(metrics) + 1, int(job) if job.isdigit() else 1)


def agreed_time(device: torch.device) -> int:
    """Rank 0's clock (unix seconds), on every rank: one broadcast."""
    now = torch.tensor([time.time()], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(now, src=0)
    return int(now.item())


def check_vocab(model_vocab: int, data_vocab: int, shard_dir: Path) -> None:
    if data_vocab > model_vocab:
        raise ConfigError(None, "model.vocab_size", f"{model_vocab} is smaller than the dataset's "
                          f"vocabulary ({data_vocab} tokens in {shard_dir})")
