"""Test-only fault injection, driven by the ``STOKER_FAULT`` environment variable.

Nothing but tests sets it, and it needs a second switch: it is honoured only beside
``STOKER_FAULT_OPT_IN=1``; whenever it is set, ``stoker train`` records a ``fault_injection``
event in RUN_DIR/events.jsonl saying whether it is armed. The control plane drops both from a
job's environment unless the cluster sets ``isolation.fault_injection = true``.
``STOKER_FAULT="kill@step=7,rank=1;nan@step=12"`` is a list of
``ACTION@POINT[,key=value...]`` items separated by ``;``:

points   ``step=N``        the trainer's hook before optimizer step N runs
         ``ckpt_shards``   inside a checkpoint save: this rank's files are written and fsynced,
                           the commit has not begun (pick the save with ``step=N``)
         ``ckpt_manifest`` rank 0, inside a save: every rank's files are written, the manifest
                           is not
         ``fwd_bwd``       inside step N's forward+backward (pick the step with ``step=N``)
actions  ``kill`` SIGKILL itself · ``hang`` sleep forever · ``stop`` SIGSTOP itself (frozen: not
         even its watchdog runs, its SIGTERM waits) · ``exit`` ``os._exit(code)``
         (``code=N``, default 1) · ``raise`` a RuntimeError · ``nan``: ``fire`` returns "nan"
         and the caller poisons the step's loss · ``slow``: sleep ``ms=N`` milliseconds
         (default 100) and go on: a straggler for one step · ``burn``: spin until the
         thread has used ``ms=N`` milliseconds of CPU (default 100): at ``fwd_bwd``, a rank
         whose compute is slow
filters  ``rank=R`` (default: every rank) · ``attempt=A``: the gang's restart count
         (`restarts.attempt`; default 0, so a restarted gang does not fault again)
         · ``node=NAME``: only a rank on that control-plane node (``STOKER_RANK_NODES``, the
         node of each rank of a training job's one launcher, else ``STOKER_NODE``; a plain
         ``stoker train`` is on no node, so never) · ``job_attempt=N``: only in the control
         plane's attempt N (``STOKER_JOB_ATTEMPT``, from 1; the launcher's own restart count
         starts at 0 in every attempt, so without a ``node`` or ``job_attempt`` filter a
         control-plane retry faults again)

Each item fires at most once per process.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from stoker.observe.events import EventLog
from stoker.train.restarts import attempt

ENV = "STOKER_FAULT"
OPT_IN = "STOKER_FAULT_OPT_IN"
NODE_ENV = "STOKER_NODE"  # a rank process's node (one process per rank)
RANK_NODES_ENV = "STOKER_RANK_NODES"  # "n0,n0,n1": each rank's node (one launcher per job)
JOB_ATTEMPT_ENV = "STOKER_JOB_ATTEMPT"  # the control plane's attempt number, from 1
ACTIONS = ("kill", "hang", "stop", "exit", "raise", "nan", "slow", "burn")


@dataclass
class Fault:
    action: str
    point: str
    filters: dict[str, int | str] = field(default_factory=dict)
    fired: bool = False

    def matches(self, point: str, step: int, rank: int, attempt: int) -> bool:
        want: dict[str, int | str | None] = {
            "step": step, "rank": rank, "attempt": attempt, "node": rank_node(rank),
            "job_attempt": job_attempt()}
        f = {"attempt": 0, **self.filters}
        return (not self.fired and point == self.point
                and all(want[k] == v for k, v in f.items() if k in want))


def rank_node(rank: int) -> str | None:
    """The control-plane node this rank runs on; None outside the control plane."""
    nodes = os.environ.get(RANK_NODES_ENV, "").split(",")
    if 0 <= rank < len(nodes) and nodes[rank]:
        return nodes[rank]
    return os.environ.get(NODE_ENV) or None


def job_attempt() -> int | None:
    """The control plane's attempt number; None outside the control plane."""
    value = os.environ.get(JOB_ATTEMPT_ENV)
    return int(value) if value else None


def parse(text: str) -> list[Fault]:
    faults = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        action, _, rest = item.partition("@")
        if action not in ACTIONS or not rest:
            raise ValueError(f"{ENV}: bad item {item!r} (ACTION@POINT[,k=v], actions {ACTIONS})")
        parts = rest.split(",")
        point = "step" if parts[0].startswith("step=") else parts[0]
        pairs = parts if point == "step" else parts[1:]
        faults.append(Fault(action, point, dict(_filter(item, p) for p in pairs)))
    return faults


def _filter(item: str, pair: str) -> tuple[str, int | str]:
    """``key=value``: the value an int, but a node's name for ``node``."""
    key, _, value = (s.strip() for s in pair.partition("="))
    if key == "node":
        if not value:
            raise ValueError(f"{ENV}: bad item {item!r} (node=NAME needs a name)")
        return key, value
    return key, int(value)


_faults: list[Fault] | None = None


def armed() -> bool:
    return bool(os.environ.get(ENV)) and os.environ.get(OPT_IN) == "1"


def active() -> list[Fault]:
    global _faults
    if _faults is None:
        _faults = parse(os.environ.get(ENV, "")) if armed() else []
    return _faults


def announce(events: EventLog) -> None:
    """Record that the hook is set (armed or not) in the run's event log."""
    if os.environ.get(ENV):
        events.emit("fault_injection", spec=os.environ[ENV], armed=armed())


def fire(point: str, step: int, rank: int) -> str | None:
    """Carry out the fault planned for this point, if any; returns "nan" for a loss poison."""
    for fault in active():
        if fault.matches(point, step, rank, attempt()):
            fault.fired = True
            return _act(fault)
    return None


def _act(fault: Fault) -> str | None:
    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    if fault.action == "hang":
        while True:
            time.sleep(3600)
    if fault.action == "exit":
        os._exit(int(fault.filters.get("code", 1)))
    if fault.action == "slow":
        time.sleep(int(fault.filters.get("ms", 100)) / 1000)
        return None
    if fault.action == "burn":
        end = time.thread_time() + int(fault.filters.get("ms", 100)) / 1000
        while time.thread_time() < end:
            pass
        return None
    if fault.action == "raise":
        raise RuntimeError(f"{ENV}: injected failure at {fault.point} {fault.filters}")
    return fault.action
