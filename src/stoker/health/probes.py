"""The single-node probes: device state, a matmul against the expected FLOP/s, and the
checkpoint path's free space and write speed. Each returns a `CheckResult` with its duration.

On a machine without GPUs the same probes run against the CPU: its usable cores, an fp32
matmul, the local disk. The GPU parts (NVML through ``nvidia-ml-py``) run where a driver is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stoker.health.faults import Faults
from stoker.health.result import CheckResult
from stoker.observe.peak import gpu_peak
from stoker.spec.health import CPU_MATMUL_TFLOPS, GPU_MATMUL_FRACTION, HealthConfig

MATMUL_SECONDS = 0.2
_ONE_THREAD = threading.Lock()  # the CPU probe sets torch's (process-wide) thread count
WRITE_BYTES = 16 << 20


def timed(name: str, unit: str, probe: Callable[[], tuple[bool, float | None, float | None, str]]
          ) -> CheckResult:
    """Run ``probe`` (returning passed, value, limit, detail) and time it."""
    start = time.perf_counter()
    passed, value, limit, detail = probe()
    return CheckResult(name, passed, value, limit, unit, time.perf_counter() - start, detail)


# ---------------------------------------------------------------- device state

def device_state(config: HealthConfig, faults: Faults, gpus: int | None = None,
                 cpus: float | None = None) -> CheckResult:
    """GPUs when a driver is present (count, temperature, ECC, remapped rows, throttling),
    else the CPU cores this process may use against what the node claims."""
    def probe() -> tuple[bool, float | None, float | None, str]:
        nvml = _nvml()
        if nvml is None:
            return _cpu_state(cpus)
        try:
            return _gpu_state(nvml, config, faults, gpus)
        finally:
            nvml.nvmlShutdown()
    if faults.has("hot_device"):
        return timed("device", "°C", lambda: (
            False, config.max_gpu_temperature_c + 10, config.max_gpu_temperature_c,
            "injected: device over temperature"))
    return timed("device", "devices", probe)


def _cpu_state(cpus: float | None) -> tuple[bool, float | None, float | None, str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    usable = usable or 0
    if cpus is None:
        return usable > 0, float(usable), 1.0, "cpu cores usable"
    return usable >= cpus, float(usable), float(cpus), "cpu cores usable vs claimed"


def _nvml() -> Any:
    """pynvml, initialised; None where there is no NVIDIA driver (or no nvidia-ml-py)."""
    try:
        import pynvml  # type: ignore[import-untyped]

        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def _gpu_state(nvml: Any, config: HealthConfig, faults: Faults, claimed: int | None
               ) -> tuple[bool, float | None, float | None, str]:
    count = nvml.nvmlDeviceGetCount()
    problems: list[str] = []
    if claimed is not None and count < claimed:
        problems.append(f"{count} GPUs visible, node claims {claimed}")
    for index in range(count):
        problems += [f"gpu {index}: {p}" for p in _gpu_problems(nvml, index, config)]
    return not problems, float(count), float(claimed or count), "; ".join(problems)


# Throttle reasons that mean the hardware is slowing itself down, not the workload.
HW_THROTTLE = {"nvmlClocksThrottleReasonHwSlowdown": "hardware slowdown",
               "nvmlClocksThrottleReasonHwThermalSlowdown": "thermal slowdown",
               "nvmlClocksThrottleReasonHwPowerBrakeSlowdown": "power brake"}


def _gpu_problems(nvml: Any, index: int, config: HealthConfig) -> list[str]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    problems: list[str] = []
    temp = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
    if temp > config.max_gpu_temperature_c:
        problems.append(f"{temp} °C > {config.max_gpu_temperature_c:g}")
    problems += _optional(lambda: _ecc_problems(nvml, handle))
    problems += _optional(lambda: _remap_problems(nvml, handle))
    reasons = _optional_int(lambda: nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))
    problems += [text for flag, text in HW_THROTTLE.items()
                 if reasons & getattr(nvml, flag, 0)]
    return problems


def _ecc_problems(nvml: Any, handle: Any) -> list[str]:
    errors = nvml.nvmlDeviceGetTotalEccErrors(handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                              nvml.NVML_VOLATILE_ECC)
    return [f"{errors} uncorrected ECC errors since boot"] if errors else []


def _remap_problems(nvml: Any, handle: Any) -> list[str]:
    _corr, _uncorr, pending, failure = nvml.nvmlDeviceGetRemappedRows(handle)
    return ((["row remapping pending (reset needed)"] if pending else [])
            + (["row remapping failed"] if failure else []))


def _optional(query: Callable[[], list[str]]) -> list[str]:
    """A query the device may not support (ECC off, no row remapping before Ampere)."""
    try:
        return query()
    except Exception:
        return []


def _optional_int(query: Callable[[], int]) -> int:
    try:
        return int(query())
    except Exception:
        return 0


# ---------------------------------------------------------------- matmul

def matmul(config: HealthConfig, faults: Faults, device: torch.device) -> CheckResult:
    """Best throughput of back-to-back square matmuls over about MATMUL_SECONDS."""
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    limit = _matmul_limit(config, device, dtype)
    slowdown = faults.value("slow_matmul", 1.0)

    def probe() -> tuple[bool, float | None, float | None, str]:
        best = _best_matmul_tflops(device, dtype, slowdown)
        detail = f"injected slowdown x{slowdown:g}" if slowdown != 1.0 else ""
        return best >= limit, best, limit, detail
    return timed("matmul", "TFLOP/s", probe)


def _matmul_limit(config: HealthConfig, device: torch.device, dtype: torch.dtype) -> float:
    if config.min_matmul_tflops is not None:
        return config.min_matmul_tflops
    if device.type == "cuda":
        peak = gpu_peak(torch.cuda.get_device_name(device), dtype)
        if peak is not None:
            return GPU_MATMUL_FRACTION * peak.flops_per_s / 1e12
    return CPU_MATMUL_TFLOPS


def _best_matmul_tflops(device: torch.device, dtype: torch.dtype, slowdown: float) -> float:
    if device.type == "cuda":
        return _best_rate(device, dtype, 8192, 10, slowdown, time.perf_counter)
    # On a CPU: one core, timed by the thread's own CPU time, so the figure is what a core can
    # do, not what other processes leave of it (a loaded but healthy machine passes; a slow or
    # throttled core does not).
    with _ONE_THREAD:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _best_rate(device, dtype, 256, 4, slowdown, time.thread_time)
        finally:
            torch.set_num_threads(threads)


def _best_rate(device: torch.device, dtype: torch.dtype, size: int, reps: int,
               slowdown: float, clock: Callable[[], float]) -> float:
    """TFLOP/s of the best of back-to-back ``reps`` matmuls of ``size``² over MATMUL_SECONDS,
    each timed by ``clock``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    deadline = time.perf_counter() + MATMUL_SECONDS
    while time.perf_counter() < deadline:
        start = clock()
        for _ in range(reps):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = clock() - start
        if elapsed <= 0:
            continue
        if slowdown > 1.0:  # a fault: the device is this much slower than it should be
            time.sleep(elapsed * (slowdown - 1.0))
            elapsed *= slowdown
        best = max(best, reps * 2 * size**3 / elapsed / 1e12)
    return best


# ---------------------------------------------------------------- disk

def disk_free(config: HealthConfig, faults: Faults, path: Path) -> CheckResult:
    """Free space where checkpoints are written."""
    def probe() -> tuple[bool, float | None, float | None, str]:
        path.mkdir(parents=True, exist_ok=True)
        injected = faults.has("fill_disk")
        free = 0 if injected else shutil.disk_usage(path).free
        detail = f"on {path}{' (injected: disk full)' if injected else ''}"
        return free >= config.min_free, free / 2**30, config.min_free / 2**30, detail
    return timed("disk_free", "GiB", probe)


def disk_write(config: HealthConfig, path: Path) -> CheckResult:
    """The speed of a synced write where checkpoints are written."""
    def probe() -> tuple[bool, float | None, float | None, str]:
        path.mkdir(parents=True, exist_ok=True)
        speed = _write_mbps(path)
        return speed >= config.min_write_mbps, speed, config.min_write_mbps, f"to {path}"
    return timed("disk_write", "MB/s", probe)


def _write_mbps(path: Path) -> float:
    block = os.urandom(1 << 20)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".stoker-health-") as f:
        start = time.perf_counter()
        for _ in range(WRITE_BYTES >> 20):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
        elapsed = time.perf_counter() - start
    return WRITE_BYTES / 1e6 / elapsed
