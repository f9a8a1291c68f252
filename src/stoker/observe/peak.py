"""Peak FLOP/s of the device a rank trains on: the denominator of MFU.

Known GPUs come from a table of dense (no sparsity) tensor-core figures from the vendors' data
sheets. fp32 training counts at the TF32 figure when torch lets matmuls use TF32, else at the
plain fp32 one. A CPU, or a GPU missing from the table, is measured: a short matmul loop in the
training dtype, labelled "measured".
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

import torch

TERA = 1e12


@dataclass(frozen=True)
class Peak:
    flops_per_s: float
    source: str


@dataclass(frozen=True)
class GpuSpec:
    pattern: str  # searched in torch.cuda.get_device_name(), case-insensitive
    name: str
    bf16: float  # dense TFLOP/s; bf16 and fp16 tensor cores run at the same rate
    tf32: float
    fp32: float


# Tried in order, the more specific first ("H100 PCIe" before "H100").
GPUS: tuple[GpuSpec, ...] = (
    GpuSpec(r"\bB200", "NVIDIA B200", 2250.0, 1100.0, 75.0),
    GpuSpec(r"GH200", "NVIDIA GH200", 989.4, 494.7, 66.9),
    GpuSpec(r"\bH200 NVL", "NVIDIA H200 NVL", 835.5, 417.5, 60.0),
    GpuSpec(r"\bH200", "NVIDIA H200 SXM", 989.4, 494.7, 66.9),
    GpuSpec(r"\bH100 NVL", "NVIDIA H100 NVL", 835.5, 417.5, 60.0),
    GpuSpec(r"\bH100 PCIe", "NVIDIA H100 PCIe", 756.5, 378.0, 51.2),
    GpuSpec(r"\bH100", "NVIDIA H100 SXM", 989.4, 494.7, 66.9),
    GpuSpec(r"\bH800", "NVIDIA H800 SXM", 989.4, 494.7, 66.9),
    GpuSpec(r"\bA100", "NVIDIA A100", 312.0, 156.0, 19.5),
    GpuSpec(r"\bA800", "NVIDIA A800", 312.0, 156.0, 19.5),
    GpuSpec(r"\bL40S\b", "NVIDIA L40S", 362.05, 183.0, 91.6),
    GpuSpec(r"\bL40\b", "NVIDIA L40", 181.0, 90.5, 90.5),
    GpuSpec(r"\bL4\b", "NVIDIA L4", 121.0, 60.0, 30.3),
    GpuSpec(r"\bA10\b", "NVIDIA A10", 125.0, 62.5, 31.2),
    GpuSpec(r"RTX 6000 Ada", "NVIDIA RTX 6000 Ada", 364.2, 182.1, 91.1),
    GpuSpec(r"RTX A6000", "NVIDIA RTX A6000", 154.8, 77.4, 38.7),
    GpuSpec(r"RTX 4090", "NVIDIA GeForce RTX 4090", 165.2, 82.6, 82.6),
    GpuSpec(r"RTX 3090", "NVIDIA GeForce RTX 3090", 71.0, 35.6, 35.6),
    # Volta has no bf16 or tf32: the half figure is its fp16 tensor-core rate.
    GpuSpec(r"\bV100-SXM", "NVIDIA V100 SXM2", 125.0, 15.7, 15.7),
    GpuSpec(r"\bV100", "NVIDIA V100 PCIe", 112.0, 14.0, 14.0),
    GpuSpec(r"MI300X", "AMD Instinct MI300X", 1307.4, 653.7, 163.4),
)

CALIBRATION_SECONDS = 0.3
CALIBRATION_ROUNDS = 3  # spread over the calibration: a busy moment spoils one, not the peak


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def tf32_enabled() -> bool:
    """Whether fp32 matmuls may run on TF32 tensor cores."""
    return torch.get_float32_matmul_precision() != "highest"


def gpu_peak(device_name: str, dtype: torch.dtype, tf32: bool = False) -> Peak | None:
    """The table's dense peak for a GPU named as torch.cuda.get_device_name() names it."""
    spec = next((g for g in GPUS if re.search(g.pattern, device_name, re.IGNORECASE)), None)
    if spec is None:
        return None
    if dtype in (torch.bfloat16, torch.float16):
        tflops, kind = spec.bf16, DTYPE_NAMES[dtype]
    elif tf32:
        tflops, kind = spec.tf32, "tf32"
    else:
        tflops, kind = spec.fp32, "fp32"
    return Peak(tflops * TERA, f"table: {spec.name} {kind} dense")


def peak_flops(device: torch.device, dtype: torch.dtype) -> Peak:
    """The device's peak for matmuls in ``dtype``: from the table, or measured once per process."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name, dtype, tf32=dtype == torch.float32 and tf32_enabled())
        if peak is not None:
            return peak
    return measured_peak(device, dtype)


@functools.cache
def measured_peak(device: torch.device, dtype: torch.dtype,
                  rounds: int = CALIBRATION_ROUNDS) -> Peak:
    """Best matmul throughput over about CALIBRATION_SECONDS of back-to-back square matmuls, in
    ``rounds`` rounds with a pause between them: the best of every timed matmul is kept, so a
    busy machine can only lower a few of them."""
    on_gpu = device.type == "cuda"
    size, reps = (4096, 8) if on_gpu else (512, 1)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: first-call allocation and kernel selection
    best = 0.0
    for i in range(rounds):
        if i:
            time.sleep(CALIBRATION_SECONDS / rounds / 2)  # let another process's burst pass
        deadline = time.perf_counter() + CALIBRATION_SECONDS / rounds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            if on_gpu:
                torch.cuda.synchronize(device)
            best = max(best, reps * 2 * size**3 / (time.perf_counter() - start))
    kind = DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))
    where = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    return Peak(best, f"measured: {where} {kind} matmul")


RAISED = ", raised to a training step's own rate"


def trusted_mfu(achieved_flops_per_s: float, peak: Peak) -> tuple[float, Peak]:
    """MFU of a step that ran at ``achieved_flops_per_s``, never above 1, and the peak to use
    from now on. A step faster than a measured peak proves the measurement low (a busy machine
    while calibrating): the step's rate becomes the peak. A table or configured peak is kept,
    and the MFU capped at 1."""
    if achieved_flops_per_s <= peak.flops_per_s:
        return achieved_flops_per_s / peak.flops_per_s, peak
    if peak.source.startswith("measured"):
        source = peak.source if peak.source.endswith(RAISED) else peak.source + RAISED
        return 1.0, Peak(achieved_flops_per_s, source)
    return 1.0, peak
