"""The CUDA paths, on a GPU machine (skipped without one): bf16 mixed precision, NCCL, CUDA
staging of async checkpoints, the GPU peak table, and `stoker train` on a GPU end to end.

GPU kernels are not bit-for-bit deterministic (atomic adds in the embedding's backward), so
losses are compared with a tolerance here, never exactly as on the CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from stoker.observe.events import read_events
from stoker.observe.peak import gpu_peak, measured_peak, peak_flops
from stoker.spec.train import CheckpointConfig
from stoker.train.checkpoint import Checkpointer, list_steps, step_dir
from stoker.train.ckpt_manifest import verify
from stoker.train.context_parallel import GatheredAttention
from stoker.train.model import causal_attention

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.toml"
CUDA = torch.device("cuda", 0)

# One lone rank (no torchrun): an NCCL group of one, the model under FSDP2 with the default
# mixed precision, and without FSDP under autocast. Prints what it saw as JSON.
PRECISION_SCRIPT = r"""
import json
import torch
import torch.distributed as dist
import torch.nn.functional as F
from stoker.spec.train import PRESETS, ParallelConfig, TrainSection
from stoker.train.distributed import destroy_distributed, init_distributed
from stoker.train.parallelize import autocast_context, build_model, resolve_dtype

shape = PRESETS["tiny"]
out = {}
for strategy in ("fsdp", "none"):
    parallel = ParallelConfig(strategy=strategy)
    info = init_distributed(parallel, TrainSection(device="cuda"))
    seen = {"backend": info.backend, "dtype": str(resolve_dtype(parallel, info.device))}
    if dist.is_initialized():
        seen["group_backend"] = dist.get_backend()
        ones = torch.ones(4, device=info.device)
        dist.all_reduce(ones)
        seen["all_reduce"] = ones.tolist()
    model = build_model(shape, parallel, info.device, 0, 1)
    x = torch.randint(0, shape.vocab_size, (2, 32), device=info.device)
    with autocast_context(parallel, info.device):
        logits = model(x)
    loss = F.cross_entropy(logits.float().flatten(0, 1), x.flatten())
    loss.backward()
    seen["logits"] = str(logits.dtype)
    seen["loss_finite"] = bool(torch.isfinite(loss))
    seen["params"] = sorted({str(p.dtype) for p in model.parameters()})
    seen["grads"] = sorted({str(p.grad.dtype) for p in model.parameters() if p.grad is not None})
    out[strategy] = seen
    destroy_distributed()
print(json.dumps(out))
"""


def test_bf16_mixed_precision_and_a_nccl_group() -> None:
    done = subprocess.run([sys.executable, "-c", PRECISION_SCRIPT], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    fsdp, plain = seen["fsdp"], seen["none"]
    assert fsdp["backend"] == fsdp["group_backend"] == "nccl"
    assert fsdp["all_reduce"] == [1.0] * 4
    for run in (fsdp, plain):  # bf16 compute ("auto" on CUDA), fp32 weights and gradients
        assert run["dtype"] == run["logits"] == "torch.bfloat16", run
        assert run["params"] == run["grads"] == ["torch.float32"], run
        assert run["loss_finite"]
    assert plain["backend"] is None  # strategy "none" on one rank: no process group


@pytest.fixture
def on_gpu() -> Iterator[None]:
    yield
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def test_async_save_stages_cuda_tensors_in_stream_order(tmp_path: Path, on_gpu: None) -> None:
    """The staging copy runs on a side stream after the step's last kernel (a CUDA event) and
    before training changes the tensors again (`staged`)."""
    n = 1 << 22
    weight = torch.zeros(n, device=CUDA)
    torch.cuda._sleep(200_000_000)  # a long kernel queued ahead of the final values
    weight.fill_(7.0)
    state: dict[str, Any] = {"weight": weight, "step": 1}
    ck = Checkpointer(tmp_path, CheckpointConfig(), device=CUDA)
    assert ck.save(1, state) is None  # async: returns at once
    ck.staged()
    weight.fill_(-1.0)  # the optimizer step, once the copy is done
    assert ck.wait() is True
    verify(step_dir(tmp_path, 1))
    buffer = ck._staging.buffer
    assert buffer is not None and buffer["weight"].is_pinned()
    loaded: dict[str, Any] = {"weight": torch.zeros(n, device=CUDA), "step": 0}
    assert ck.load(loaded, step_dir(tmp_path, 1)) == 1
    assert loaded["weight"].device == CUDA
    assert torch.equal(loaded["weight"], torch.full((n,), 7.0, device=CUDA))
    ck.close()


def test_the_gpu_peak_comes_from_the_table_and_bounds_a_measured_one(on_gpu: None) -> None:
    name = torch.cuda.get_device_name(CUDA)
    table = gpu_peak(name, torch.bfloat16)
    peak = peak_flops(CUDA, torch.bfloat16)
    if table is None:  # a GPU the table does not know is measured
        assert peak.source.startswith("measured:"), peak
        return
    assert peak == table
    # A dense matmul never beats the data sheet's dense peak.
    measured = measured_peak(CUDA, torch.bfloat16)
    assert 0 < measured.flops_per_s < table.flops_per_s, (measured, table)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert peak_flops(CUDA, torch.float32).source.endswith(" fp32 dense")
        torch.set_float32_matmul_precision("high")
        assert peak_flops(CUDA, torch.float32).source.endswith(" tf32 dense")
    finally:
        torch.set_float32_matmul_precision(before)


SMALL = ["model.dim=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
         "model.ffn_hidden=128", "train.seq_len=32", "train.global_batch_size=8",
         "train.micro_batch_size=4", "train.eval_interval=0", "telemetry.live=false",
         "checkpoint.interval_steps=4", "train.steps=8"]


def stoker_train(run_dir: Path, *args: str, nproc: int = 1) -> subprocess.CompletedProcess[str]:
    sets = [a for o in SMALL for a in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "stoker", "train", str(EXAMPLE), "--nproc",
                           str(nproc), "--run-dir", str(run_dir), *sets, *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def step_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def test_stoker_train_on_a_gpu_checkpoints_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = stoker_train(run)
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(r["peak_mem_bytes"] > 0 and 0 < r["mfu"] < 1 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    table = gpu_peak(torch.cuda.get_device_name(CUDA), torch.bfloat16)
    if table is not None:  # bf16 by default on CUDA, so the table's bf16 figure
        assert summary["peak_source"] == table.source
    assert list_steps(run) == [4, 8]
    for step in (4, 8):
        verify(step_dir(run, step))  # async saves staged from the GPU, committed

    resumed = tmp_path / "resumed"
    again = stoker_train(resumed, "--resume", str(step_dir(run, 4)))
    assert again.returncode == 0, again.stderr
    assert [e["step"] for e in read_events(resumed, "checkpoint_loaded")] == [4]
    after = step_losses(resumed)
    assert sorted(after) == [5, 6, 7, 8]
    for step, loss in after.items():
        assert loss == pytest.approx(step_losses(run)[step], rel=2e-2), step


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_ranks_train_over_nccl(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = stoker_train(run, nproc=2)
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(len(r["rank_step_times"]) == 2 for r in records)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_context_parallel_chunk_attention_on_cuda_equals_the_cpu_mask(on_gpu: None,
                                                                      dtype: torch.dtype) -> None:
    """A cp chunk's lower-right causal attention: CUDA's kernels (no mask materialised) give
    what the additive mask gives on the CPU, for the first chunk and the last."""
    n, cp = 16, 2
    attend = GatheredAttention(None, (0, 2 * cp - 1), n, torch.arange(4 * n),  # type: ignore[arg-type]
                               torch.float32)
    gen = torch.Generator().manual_seed(0)
    for end in (n, 2 * cp * n):
        q = torch.randn(2, 4, n, 32, generator=gen)
        k, v = (torch.randn(2, 2, end, 32, generator=gen) for _ in range(2))
        expected = causal_attention(q, k, v, attend.mask(end, q))
        on_cuda = [t.to(CUDA, dtype) for t in (q, k, v)]
        got = causal_attention(*on_cuda, attend.mask(end, on_cuda[0]))
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(got.float().cpu(), expected, atol=tol, rtol=tol)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_context_parallel_over_nccl_follows_one_gpu(tmp_path: Path) -> None:
    """cp=2: keys and values all-gathered over NCCL, bf16; the losses are one GPU's."""
    one, two = tmp_path / "one", tmp_path / "cp2"
    assert stoker_train(one).returncode == 0
    done = stoker_train(two, "--set", "parallel.cp=2", nproc=2)
    assert done.returncode == 0, done.stderr
    for step, loss in step_losses(two).items():
        assert loss == pytest.approx(step_losses(one)[step], rel=2e-2), step


def test_the_loss_guard_skips_on_the_device_and_reports_at_the_log_step(tmp_path: Path) -> None:
    """On CUDA the optimizer is fused: a non-finite step is dropped by the optimizer itself,
    with no host sync, and its verdict read at the next log step (every 4 steps here)."""
    run = tmp_path / "run"
    env = {**os.environ, "STOKER_FAULT": "nan@step=3", "STOKER_FAULT_OPT_IN": "1"}
    sets = [a for o in [*SMALL, "train.log_interval=4"] for a in ("--set", o)]
    done = subprocess.run([sys.executable, "-m", "stoker", "train", str(EXAMPLE), "--run-dir",
                           str(run), *sets], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert [r["step"] for r in records if "guard" in r] == [3]
    assert all(math.isfinite(r["loss"]) and r["step_time_s"] > 0
               for r in records if r["step"] != 3)
    (event,) = read_events(run, "loss_guard")
    assert event["step"] == 3 and event["action"] == "skip"
