"""Scheduler test helpers: amounts written as before (GPUs, CPUs, bytes) as `Resources`."""

from __future__ import annotations

from collections.abc import Sequence

from stoker.sched import GPU, UNLIMITED, Resources


def _milli(value: float) -> int:
    return UNLIMITED if value >= UNLIMITED else round(value * 1000)


def res(gpus: float = 0, cpus: float = 0, memory: float = 0) -> Resources:
    """(GPUs, CPUs, bytes) over the default resources (gpu, cpu, memory), in their units
    (thousandths of a GPU or CPU, bytes); UNLIMITED stays unlimited."""
    return (_milli(gpus), _milli(cpus), UNLIMITED if memory >= UNLIMITED else int(memory))


INF3 = res(UNLIMITED, UNLIMITED, UNLIMITED)


def gpus(v: Sequence[int]) -> float:
    """The GPUs of ``v`` (a count; UNLIMITED stays as is)."""
    return v[GPU] if v[GPU] >= UNLIMITED else v[GPU] / 1000
