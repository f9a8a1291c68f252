"""Keep a CPU rank's freed activation memory in the process instead of faulting it in every step.

glibc's malloc serves a block above its mmap threshold (dynamic, 128 KiB to 32 MiB) with a fresh
``mmap`` and returns the heap's top to the kernel once more than twice that is free. A training
step on CPU allocates and frees its activations every step, so each step touches thousands of
new pages again (page faults and zeroing: about 6,000 faults a step for the ``tiny`` model).
With both thresholds fixed high, freed blocks are reused as a caching allocator would (PyTorch's
CUDA allocator keeps device memory the same way; its CPU launcher ``torch.backends.xeon.run_cpu``
swaps in jemalloc or tcmalloc for the same reason). The peak memory is unchanged; what a step
freed stays resident for the next one.

Left alone where the user already chose (glibc's malloc thresholds in the environment, or another
allocator in ``LD_PRELOAD``), on a libc other than glibc, and for devices other than the CPU.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # larger blocks (a big model's weights) are still mapped on their own
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; whether it was done."""
    if platform.libc_ver()[0] != "glibc" or _user_chose():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _user_chose() -> bool:
    """Thresholds set in the environment, or another allocator preloaded (jemalloc, tcmalloc)."""
    return (any(name in os.environ for name in _GLIBC_VARIABLES)
            or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
            or "malloc" in os.environ.get("LD_PRELOAD", ""))


_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                    "MALLOC_MMAP_MAX_")
