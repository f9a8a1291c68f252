"""Sharded, asynchronous, atomically committed checkpoints with torch.distributed.checkpoint.

    RUN_DIR/checkpoints/step-00000120/
        __0_0.distcp, __1_0.distcp, ...   DCP shards: each rank writes its own part
        .metadata                         DCP's global index (written by rank 0)
        rng/rank-00000.pt, ...            every rank's RNG states (torch, CUDA, numpy, python)
        .sums/rank-00000.json, ...        size + CRC-32 of the files each rank wrote
        MANIFEST.json                     the commit record, written last (ckpt_manifest.py)

The state handed to `Checkpointer.save` is a DCP state dict: model and optimizer state from
``torch.distributed.checkpoint.state_dict`` (plain, DDP, FSDP2, tp and pipeline stages alike,
keyed by full-model parameter names, so a checkpoint saved under one layout loads under
another; the optimizer state flat, `nested_optimizer_state` tells the older nested form), plus
small replicated values (scheduler, step, data position as a global sample count) that DCP
stores once. RNG states are per rank and go to
per-rank files.

Async saves (``checkpoint.async``, the default) return at once: a background thread copies the
state into a reused CPU staging buffer while the next step's forward and backward run (they only
read it; `Checkpointer.staged` is the barrier before the optimizer changes it), then runs
``dcp.save`` on the copy over a gloo group of its own, at a lower CPU priority. At most one save
is in flight. (``dcp.async_save`` would block the step loop for the whole copy.) The commit
rides on DCP's own final collective: rank 0's ``finish`` runs only after every rank's
``write_data`` returned (files written and fsynced), so rank 0 writes the manifest there, last,
by write-then-rename; a crash at any instant leaves the previous checkpoint or the new one as
the newest committed one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from pydantic import BaseModel
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import WriteResult

from stoker.observe.events import EventLog
from stoker.spec.train import CheckpointConfig
from stoker.train import faults
from stoker.train.ckpt_find import find_latest as find_latest  # moved; still importable here
from stoker.train.ckpt_find import resolve_resume
from stoker.train.ckpt_interval import AutoInterval, gang_mtbf
from stoker.train.ckpt_layout import RUN_META, STEP_PREFIX, list_steps, step_dir
from stoker.train.ckpt_manifest import (
    MANIFEST,
    DigestingWriter,
    Manifest,
    read_manifest,
    record_rank_files,
    write_manifest,
)
from stoker.train.ckpt_retention import to_delete

WRITER_NICE = 10  # CPU share of a background save's threads when they compete with training


def nested_optimizer_state(path: Path) -> bool:
    """Whether the checkpoint at ``path`` holds the optimizer state in the nested form
    (``param_groups`` as a list of groups, each naming its parameters), as checkpoints written
    before pipeline parallelism do, rather than flat (one key per parameter and setting)."""
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return any(re.fullmatch(r"optimizer\.param_groups\.\d+\.params", key) for key in keys)


def config_hash(cfg: BaseModel) -> str:
    """A short hash of a resolved config, recorded in each manifest."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- RNG states of one rank

def capture_rng(device: torch.device) -> dict[str, Any]:
    """This rank's RNG states, as plain values and tensors (loadable with weights_only)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _rng_name(rank: int) -> str:
    return f"rng/rank-{rank:05d}.pt"


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ---------------------------------------------------------------------- the committing writer

class _DigestingFileSystem(FileSystem):
    """DCP's local file system, digesting every file it writes as the bytes go by."""

    def __init__(self) -> None:
        super().__init__()
        self.digests: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
        with super().create_stream(path, mode) as raw:
            if "w" not in mode:
                yield raw
                return
            stream = DigestingWriter(raw)  # type: ignore[arg-type]
            yield stream
        with self._lock:
            self.digests[Path(path).name] = stream.result()


class _Staging:
    """A CPU copy of the state kept from one async save to the next, so that staging is one
    memcpy rather than an allocation plus a memcpy (pinned on CUDA, where the copy runs on a
    side stream). It is reused only once the previous save has finished."""

    def __init__(self) -> None:
        self.buffer: dict[str, Any] | None = None

    def stage(self, state: dict[str, Any], device: torch.device,
              ready: torch.cuda.Event | None) -> dict[str, Any]:
        """Copy ``state`` into the buffer; on CUDA, on a side stream of the rank's ``device``
        (a new thread starts on device 0), after ``ready`` (the step's last kernel)."""
        if ready is None:
            return self._copy(state)
        with torch.cuda.device(device):
            stream = torch.cuda.Stream(device)
            stream.wait_event(ready)
            with torch.cuda.stream(stream):
                staged = self._copy(state, non_blocking=True)
            stream.synchronize()
        return staged

    def _copy(self, state: dict[str, Any], non_blocking: bool = False) -> dict[str, Any]:
        if self.buffer is not None:
            try:
                return _copy_state_dict(state, self.buffer, non_blocking, type_check=False)
            except Exception:  # the state changed structure or shape: start over
                self.buffer = None
        self.buffer = _create_cpu_state_dict(state, pin_memory=torch.cuda.is_available())
        return _copy_state_dict(state, self.buffer, non_blocking, type_check=False)


class _CommittingWriter(FileSystemWriter):
    """DCP's file writer, plus: checksums taken while writing, this rank's own files, and (rank
    0, in DCP's finish step, after every rank's writes) the manifest, then retention."""

    def __init__(self, path: Path, *, step: int, rank: int, world_size: int, cfg_hash: str,
                 rank_files: dict[str, bytes],
                 on_commit: Callable[[Manifest], None] | None) -> None:
        super().__init__(path, single_file_per_rank=True, sync_files=True, thread_count=2)
        self.fs: _DigestingFileSystem = _DigestingFileSystem()
        self.ckpt_dir = path
        self.step = step
        self.my_rank = rank
        self.world = world_size
        self.cfg_hash = cfg_hash
        self.rank_files = rank_files
        self.on_commit = on_commit

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Any:
        fut = super().write_data(plan, planner)
        results: list[WriteResult] = fut.wait()
        names = [r.storage_data.relative_path for r in results]
        for name, data in self.rank_files.items():
            target = self.ckpt_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            names.append(name)
        record_rank_files(self.ckpt_dir, self.my_rank, names, known=self.fs.digests)
        faults.fire("ckpt_shards", self.step, self.my_rank)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        super().finish(metadata, results)
        faults.fire("ckpt_manifest", self.step, self.my_rank)
        manifest = write_manifest(self.ckpt_dir, self.step, self.world, self.cfg_hash)
        if self.on_commit is not None:
            self.on_commit(manifest)


# ---------------------------------------------------------------------- the checkpointer

@dataclass(frozen=True)
class Decision:
    """What every rank does at the end of a step (the same on all ranks)."""

    save: bool
    stop: bool


@dataclass
class _InFlight:
    step: int
    future: Future[Any]
    staged: threading.Event  # set once the state is copied: training may change it again
    stall_s: float
    started: float
    deleted: list[int]
    typical: bool  # made the configured way (not an async run's forced synchronous save)
    since_last_s: float  # from the previous save's start (or the attempt's) to this one's
    interval_s: float  # the time-based interval in force when it was started (0: none)


class Checkpointer:
    """Saves and loads one run's checkpoints from inside each rank.

    Every rank calls every method in the same order (they contain collectives).
    """

    def __init__(self, run_dir: Path, cfg: CheckpointConfig, *, rank: int = 0,
                 world_size: int = 1, device: torch.device | None = None,
                 config_hash: str = "", events: EventLog | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.device = device or torch.device("cpu")
        self.config_hash = config_hash
        self.events = events or EventLog(run_dir, rank)
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed:  # a lone process: DCP says so on every call, from its own threads
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        # Own gloo groups: the background writer's collectives must never interleave with the
        # training collectives, nor with the choice of checkpoint to load.
        self.io_group = dist.new_group(backend="gloo") if distributed else None
        self.ctl_group = dist.new_group(backend="gloo") if distributed else None
        self._in_flight: _InFlight | None = None
        self._staging = _Staging()
        self.clock = clock  # monotonic seconds, for ``interval_minutes``
        self._last_save = clock()
        self._verify_s = 0.0
        self.last_committed: int | None = None
        # ``interval = "auto"``: rank 0 alone chooses the interval; the ranks agree on its
        # verdict (`time_due`) at log steps.
        self.auto: AutoInterval | None = None
        if cfg.interval == "auto" and cfg.enabled and rank == 0:
            self.auto = AutoInterval(cfg, gang_mtbf(cfg))
            self.events.emit("checkpoint_interval", reason="start", **self.auto.current.fields())

    # -------------------------------------------------------------- when

    @property
    def interval_s(self) -> float:
        """Rank 0's time between saves in seconds (0: none by time): ``interval_minutes``, or
        the current choice of ``interval = "auto"``."""
        if self.auto is not None:
            return self.auto.seconds
        return self.cfg.interval_minutes * 60

    def time_due(self) -> bool:
        """Rank 0's clock says a time-based save (``interval_minutes`` or ``interval =
        "auto"``) is due. The trainer shares this in its log-step collective, so that every
        rank agrees."""
        interval = self.interval_s
        return (interval > 0 and self.rank == 0
                and self.clock() - self._last_save >= interval)

    def decide(self, step: int, *, time_due: bool = False, stop_requested: bool = False,
               final: bool = False) -> Decision:
        """After step ``step``: save now? stop now? ``time_due`` and ``stop_requested`` must be
        the same on every rank (agreed by the caller); step-based saves need no agreement."""
        c = self.cfg
        steps_due = c.interval_steps > 0 and step % c.interval_steps == 0
        save = c.enabled and (steps_due or time_due or stop_requested or final)
        return Decision(save=save, stop=stop_requested)

    # -------------------------------------------------------------- save

    def save(self, step: int, state: dict[str, Any], *, sync: bool = False,
             meta: dict[str, Any] | None = None) -> bool | None:
        """Checkpoint ``state`` (a DCP state dict) as of step ``step``; ``meta``, a small JSON
        object, goes beside it (rank 0's ``stoker.json``: `resume_check.RUN_META`).

        Async (``checkpoint.async``, the default): returns at once. A background thread copies
        the state into a CPU staging buffer, then writes it with DCP over this checkpointer's
        gloo group and commits it. The copy overlaps the next step's forward and backward,
        which only read the state; call `staged` before changing the state in place (before
        ``optimizer.step()``). Unlike ``dcp.async_save``, which copies before returning, this
        leaves the training loop blocked only if the copy outlasts a forward+backward.
        ``sync=True`` (or ``checkpoint.async = false``) returns once the checkpoint is
        committed, with whether it was (None for an async save: `wait` tells later).
        """
        t0 = time.perf_counter()
        since_last_s, interval_s = self.clock() - self._last_save, self.interval_s
        self.wait()
        path = step_dir(self.run_dir, step)
        self._prepare(path)
        deleted: list[int] = []
        writer = _CommittingWriter(
            path, step=step, rank=self.rank, world_size=self.world_size,
            cfg_hash=self.config_hash,
            rank_files=self._rank_files(meta),
            on_commit=(lambda m: deleted.extend(self._retain(m.step)))
            if self.rank == 0 else None)
        started = time.time()
        staged = threading.Event()
        done: Future[Any] = Future()
        if sync or not self.cfg.async_save:
            dcp.save(state, storage_writer=writer, process_group=self.io_group)
            staged.set()
            done.set_result(None)
        else:
            ready = None
            if self.device.type == "cuda":
                ready = torch.cuda.Event()
                ready.record(torch.cuda.current_stream(self.device))
            threading.Thread(target=self._write_in_background, name="stoker-checkpoint",
                             args=(state, ready, writer, staged, done), daemon=True).start()
        self._in_flight = _InFlight(step, done, staged, time.perf_counter() - t0, started,
                                    deleted, typical=not sync or not self.cfg.async_save,
                                    since_last_s=since_last_s, interval_s=interval_s)
        self._last_save = self.clock()
        if sync or not self.cfg.async_save:
            return self.wait()
        return None

    def _rank_files(self, meta: dict[str, Any] | None) -> dict[str, bytes]:
        files = {_rng_name(self.rank): _to_bytes(capture_rng(self.device))}
        if meta is not None and self.rank == 0:
            files[RUN_META] = json.dumps(meta, indent=1).encode()
        return files

    def _write_in_background(self, state: dict[str, Any], ready: torch.cuda.Event | None,
                             writer: _CommittingWriter, staged: threading.Event,
                             done: Future[Any]) -> None:
        try:
            try:
                copy = self._staging.stage(state, self.device, ready)
            finally:
                staged.set()
            if sys.platform == "linux":
                # Yield the CPU to training: Linux nice values are per thread, and the writer
                # threads DCP starts from this one inherit it.
                os.setpriority(os.PRIO_PROCESS, 0, WRITER_NICE)
            dcp.save(copy, storage_writer=writer, process_group=self.io_group)
            done.set_result(None)
        except BaseException as e:
            done.set_exception(e)

    def staged(self) -> None:
        """Block until the in-flight save has copied the state (a no-op when it has): call it
        before changing the saved state in place."""
        job = self._in_flight
        if job is not None and not job.staged.is_set():
            t0 = time.perf_counter()
            job.staged.wait()
            job.stall_s += time.perf_counter() - t0

    def _prepare(self, path: Path) -> None:
        """Clear a leftover directory of the same step (a torn save of an earlier attempt)
        before any rank writes into it."""
        if self.rank == 0 and path.exists():
            self.events.emit("checkpoint_overwrite", step=int(path.name.removeprefix(STEP_PREFIX)),
                             path=str(path), committed=(path / MANIFEST).is_file())
            (path / MANIFEST).unlink(missing_ok=True)
            shutil.rmtree(path)
        if self.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        if self.io_group is not None and self.world_size > 1:
            dist.barrier(group=self.io_group)

    @property
    def in_flight(self) -> int | None:
        """The step of the save still being written (None when there is none)."""
        return None if self._in_flight is None else self._in_flight.step

    def poll(self) -> None:
        """Collect the in-flight save if it has finished (never blocks)."""
        if self._in_flight is not None and self._in_flight.future.done():
            self.wait()

    def wait(self) -> bool | None:
        """Block until the in-flight save, if any, has finished; record the outcome and return
        whether it committed (None: nothing was in flight). A failed save is an event, not an
        exception: the previous checkpoint stays the latest and training may go on."""
        job, self._in_flight = self._in_flight, None
        if job is None:
            return None
        try:
            job.future.result()
        except Exception as e:
            self.events.emit("checkpoint_failed", step=job.step, error=_short(e))
            return False
        self.last_committed = job.step
        if self.rank == 0:
            manifest = read_manifest(step_dir(self.run_dir, job.step))
            self.events.emit("checkpoint_committed", step=job.step, stall_s=job.stall_s,
                             write_s=manifest.created - job.started, bytes=manifest.total_bytes,
                             files=len(manifest.files), deleted=job.deleted,
                             since_last_s=job.since_last_s, interval_s=job.interval_s)
            if self.auto is not None and job.typical:
                chosen = self.auto.measured(job.stall_s)
                self.events.emit("checkpoint_interval", reason="save", step=job.step,
                                 **chosen.fields())
        return True

    def _retain(self, committed_step: int) -> list[int]:
        """Rank 0, right after a commit: remove what the retention policy lets go."""
        steps = list_steps(self.run_dir)
        committed = [s for s in steps if (step_dir(self.run_dir, s) / MANIFEST).is_file()]
        torn = [s for s in steps if s not in committed]
        doomed = to_delete(committed, torn, self.cfg.keep_last, self.cfg.keep_every,
                           in_flight=[committed_step])
        for step in doomed:
            path = step_dir(self.run_dir, step)
            (path / MANIFEST).unlink(missing_ok=True)  # uncommit first: a half-deleted dir is torn
            shutil.rmtree(path, ignore_errors=True)
        return doomed

    # -------------------------------------------------------------- load

    def locate(self, where: str | Path = "auto") -> Path | None:
        """The checkpoint to load: "auto" = the newest good one of this run (None when there is
        none yet), or a path (`resolve_resume`). Rank 0 picks and verifies it, every rank gets
        the same answer. Locate first, then build the state to load into: building an
        optimizer's state dict initialises its state (a zero step), which a fresh run must
        not have."""
        self.wait()
        t0 = time.perf_counter()
        picked: list[str | None] = [None]
        if self.rank == 0:
            found = resolve_resume(self.run_dir, where, self.events)
            picked = [str(found) if found else None]
        if self.ctl_group is not None and self.world_size > 1:
            dist.broadcast_object_list(picked, src=0, group=self.ctl_group)
        self._verify_s = time.perf_counter() - t0
        return None if picked[0] is None else Path(picked[0])

    def load(self, state: dict[str, Any], path: Path) -> int:
        """Load the checkpoint at ``path`` (from `locate`) into ``state`` in place, and this
        rank's RNG states when the world size is the one it was saved with; returns its step."""
        self.wait()
        t0 = time.perf_counter()
        manifest = read_manifest(path)
        dcp.load(state, checkpoint_id=path, process_group=self.io_group)
        rng_file = path / _rng_name(self.rank)
        if rng_file.is_file() and manifest.world_size == self.world_size:
            restore_rng(torch.load(rng_file, weights_only=True), self.device)
        self.last_committed = manifest.step
        self._last_save = self.clock()
        if self.rank == 0:
            self.events.emit("checkpoint_loaded", step=manifest.step, path=str(path),
                             saved_world_size=manifest.world_size, world_size=self.world_size,
                             verify_s=self._verify_s, load_s=time.perf_counter() - t0,
                             config_changed=manifest.config_hash != self.config_hash)
        return manifest.step

    def close(self) -> None:
        """Finish the in-flight save (a run must not end with its last checkpoint half-written)."""
        self.wait()


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) < 2000 else text[:2000] + "..."
