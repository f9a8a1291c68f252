"""FLOP accounting against a hand count and against torch's FlopCounterMode; the peak table."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from stoker.observe.flops import (
    attention_flops_per_token,
    flops_per_token,
    matmul_params,
    total_params,
)
from stoker.observe.peak import gpu_peak, peak_flops
from stoker.spec.train import PRESETS, ModelShape, ParallelConfig
from stoker.train.parallelize import build_model

TINY = PRESETS["tiny"]
TERA = 1e12


def test_tiny_hand_count() -> None:
    # tiny: dim 128, 4 layers, 4 heads of 32, 4 kv heads, ffn 344, vocab 256.
    # Per block: q, k, v, o = 4 * 128 * 128 = 65_536; w1, w2, w3 = 3 * 128 * 344 = 132_096.
    # N = 4 * (65_536 + 132_096) + output 128 * 256 = 790_528 + 32_768 = 823_296.
    assert matmul_params(TINY) == 823_296
    # + 9 RMSNorm weights of 128 + the input embedding 256 * 128.
    assert total_params(TINY) == 823_296 + 9 * 128 + 32_768
    # seq 128: 6 * 823_296 + 12 * 4 layers * 4 heads * 32 * 128 = 4_939_776 + 786_432.
    assert attention_flops_per_token(TINY, 128) == 786_432
    assert flops_per_token(TINY, 128) == 5_726_208


def test_tied_output_counts_in_matmuls_once_in_params() -> None:
    tied = TINY.model_copy(update={"tie_embeddings": True})
    assert matmul_params(tied) == matmul_params(TINY)
    assert total_params(tied) == total_params(TINY) - 128 * 256


def test_presets_match_published_sizes() -> None:
    assert total_params(PRESETS["llama-8b"]) == 8_030_261_248  # Llama 3 8B, as Meta counts it
    assert total_params(PRESETS["llama-1b"]) == 1_235_814_400  # Llama 3.2 1B
    assert 123e6 < total_params(PRESETS["gpt2-124m"]) < 125e6


def count(shape: ModelShape, batch: int, seq_len: int, backward: bool) -> dict[str, int]:
    """FLOPs by op that FlopCounterMode sees for one forward (and backward) of the real model."""
    model = build_model(shape, ParallelConfig(strategy="none"), torch.device("cpu"), 0, 1)
    x = torch.randint(0, shape.vocab_size, (batch, seq_len))
    # The fused CPU attention kernel has no FLOP formula in FlopCounterMode: the math backend
    # spells attention out as two bmm (scores and values) that it does count.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model(x)
        if backward:
            logits.sum().backward()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("shape", [
    TINY,
    TINY.model_copy(update={"n_kv_heads": 2, "tie_embeddings": True, "n_layers": 2}),
], ids=["tiny", "gqa-tied"])
def test_flop_count_matches_flop_counter_mode(shape: ModelShape) -> None:
    batch, seq_len = 2, 32
    tokens = batch * seq_len
    forward = count(shape, batch, seq_len, backward=False)
    assert forward["aten.mm"] == 2 * matmul_params(shape) * tokens  # every linear layer
    assert forward["aten.bmm"] * 3 == attention_flops_per_token(shape, seq_len) * tokens
    assert forward.keys() == {"aten.mm", "aten.bmm"}
    # Training: backward is twice the forward, for the linear layers and attention alike.
    training = count(shape, batch, seq_len, backward=True)
    assert training["aten.mm"] == 6 * matmul_params(shape) * tokens
    assert sum(training.values()) == flops_per_token(shape, seq_len) * tokens


def test_gpu_table_lookup_by_device_name() -> None:
    h100 = gpu_peak("NVIDIA H100 80GB HBM3", torch.bfloat16)
    assert h100 is not None
    assert h100.flops_per_s == 989.4 * TERA
    assert h100.source == "table: NVIDIA H100 SXM bf16 dense"
    expected = {  # name as torch.cuda.get_device_name() gives it -> bf16 dense TFLOP/s
        "NVIDIA H100 PCIe": 756.5, "NVIDIA H100 NVL": 835.5, "NVIDIA H200": 989.4,
        "NVIDIA A100-SXM4-40GB": 312.0, "NVIDIA A100 80GB PCIe": 312.0, "NVIDIA L40S": 362.05,
        "NVIDIA L4": 121.0, "NVIDIA A10": 125.0, "NVIDIA GeForce RTX 4090": 165.2,
        "Tesla V100-SXM2-32GB": 125.0,
    }
    for name, tflops in expected.items():
        peak = gpu_peak(name, torch.bfloat16)
        assert peak is not None and peak.flops_per_s == tflops * TERA, name
    assert gpu_peak("NVIDIA A10G", torch.bfloat16) is None  # not "A10": not in the table
    assert gpu_peak("Some Future GPU", torch.bfloat16) is None


def test_gpu_fp32_peak_depends_on_tf32() -> None:
    tf32 = gpu_peak("NVIDIA A100-SXM4-80GB", torch.float32, tf32=True)
    fp32 = gpu_peak("NVIDIA A100-SXM4-80GB", torch.float32, tf32=False)
    assert tf32 is not None and fp32 is not None
    assert (tf32.flops_per_s, tf32.source) == (156 * TERA, "table: NVIDIA A100 tf32 dense")
    assert (fp32.flops_per_s, fp32.source) == (19.5 * TERA, "table: NVIDIA A100 fp32 dense")


def test_cpu_peak_is_measured_once_per_process() -> None:
    peak = peak_flops(torch.device("cpu"), torch.float32)
    assert peak.source == "measured: cpu fp32 matmul"
    assert 0 < peak.flops_per_s < 1e14  # no CPU here does 100 TFLOP/s; load only lowers it
    assert peak_flops(torch.device("cpu"), torch.float32) is peak  # cached


def test_mfu_is_never_above_one() -> None:
    """A step faster than a measured peak (calibrated on a busy machine) raises the peak; a
    table or configured peak stays, the MFU capped at 1."""
    from stoker.observe.peak import Peak, trusted_mfu

    measured = Peak(100.0, "measured: cpu fp32 matmul")
    assert trusted_mfu(50.0, measured) == (0.5, measured)
    mfu, raised = trusted_mfu(180.0, measured)
    assert mfu == 1.0 and raised.flops_per_s == 180.0 and raised.source.startswith("measured")
    assert trusted_mfu(90.0, raised) == (0.5, raised)
    table = Peak(100.0, "table: NVIDIA H100 SXM bf16 dense")
    assert trusted_mfu(180.0, table) == (1.0, table)


def test_cpu_calibration_in_rounds() -> None:
    from stoker.observe.peak import measured_peak

    peak = measured_peak(torch.device("cpu"), torch.float32, rounds=3)
    assert peak.flops_per_s > 1e8 and peak.source == "measured: cpu fp32 matmul"
