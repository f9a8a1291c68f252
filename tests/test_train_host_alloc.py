"""A CPU rank keeps the memory a step freed: once warm, a step's blocks of the same size are
reused instead of being faulted in again. Each case runs in a fresh process, since glibc's
thresholds are process-wide."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

STEPS = """
import json, resource, sys, torch
from stoker.train.host_alloc import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():  # a 40 MiB activation (above glibc's largest default threshold) written, then freed
    torch.empty(10 << 20).fill_(1.0)
for _ in range(30):  # the first steps may each take fresh memory before blocks come back
    step()
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": sum(faults), "by_step": faults}))
"""
PAGES = (40 << 20) // 4096  # what one fresh 40 MiB block faults in


def steps(mode: str, **env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True,
                          check=True, env={**clean, **env}, timeout=120)
    return json.loads(done.stdout.splitlines()[-1])


def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    default, kept = steps("default"), steps("keep")
    assert default["faults"] > 15 * PAGES  # glibc maps and unmaps each block: every step faults
    # Reused: most steps fault in nothing (glibc may still place a few blocks afresh).
    assert kept["kept"] and kept["faults"] < default["faults"] / 4, (kept, default)


def test_the_users_own_allocator_settings_are_left_alone() -> None:
    assert not steps("keep", MALLOC_MMAP_THRESHOLD_="131072")["kept"]
    assert not steps("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")["kept"]
