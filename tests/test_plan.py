"""`stoker plan`: the estimator's arithmetic against hand counts and the real model, the CLI as a
user runs it, and the estimate against the measured peak of the same CPU run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stoker.observe import memory_plan as mp
from stoker.observe.flops import total_params
from stoker.spec.train import PRESETS, Layout, ModelShape, ParallelConfig, TrainSection
from stoker.train.model import Transformer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.toml"
TINY = PRESETS["tiny"]
ONE = Layout(pp=1, dp_replicate=1, dp_shard=1, cp=1, tp=1)


def layout(**dims: int) -> Layout:
    return ONE.model_copy(update=dims)


def meta_numel(shape: ModelShape) -> int:
    with torch.device("meta"):
        model = Transformer(shape)
    return sum(p.numel() for p in model.parameters())  # a tied weight is listed once


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_count_is_the_real_models(preset: str) -> None:
    shape = PRESETS[preset]
    counts = mp.param_counts(shape)
    assert counts.total(shape.n_layers) == meta_numel(shape) == total_params(shape)


def test_tiny_by_hand() -> None:
    # dim 128, 4 layers, 4 heads (= kv heads), ffn 344, vocab 256, untied.
    block = 4 * 128 * 128 + 3 * 128 * 344 + 2 * 128
    assert block == 197_888
    total = 256 * 128 + 4 * block + 128 + 256 * 128
    mem = mp.estimate_memory(TINY, ONE, ParallelConfig(strategy="none"), TrainSection(),
                             on_gpu=False, grad_accum=2, runtime_bytes=0)
    assert mem.params_local == total == 857_216
    assert (mem.params, mem.gradients, mem.optimizer_states, mem.optimizer_temporary) == (
        4 * total, 4 * total, 8 * total, 4 * total)
    assert mem.fsdp_unsharded == mem.ddp_buckets == mem.init_full_model == 0
    # Activations of 8 x 128 tokens: per token and layer 4 B x (6 x 128 + 2 x 128 kv + 4 x 344)
    # + 4 B x (4 heads' log-sum-exp + 2 rstd); 4 layers, the embedding's output, the output
    # side (the norm's output, fp32 log-softmax) and one layer of backward working set.
    tokens = 8 * 128
    layer = tokens * (4 * (6 * 128 + 2 * 128 + 4 * 344) + 4 * (4 + 2))
    output = tokens * (4 * 128 + 4 * 256)
    assert mem.activations == 4 * layer + tokens * 4 * 128 + output + layer
    assert mem.loss_transient == tokens * 2 * 4 * 256
    assert mem.peak_phase == "forward+backward"
    assert mem.peak == mem.params + mem.gradients + mem.optimizer_states + mem.activations \
        + mem.loss_transient


def test_fsdp_shards_states_and_gathers_two_blocks() -> None:
    parallel = ParallelConfig(strategy="fsdp")
    one = mp.estimate_memory(TINY, ONE, ParallelConfig(strategy="none"), TrainSection(),
                             on_gpu=False)
    two = mp.estimate_memory(TINY, layout(dp_shard=2), parallel, TrainSection(), on_gpu=False)
    assert two.wrapper == "fsdp"
    assert two.params == one.params / 2 and two.optimizer_states == one.optimizer_states / 2
    counts = mp.param_counts(TINY)
    root = counts.embedding + counts.output + counts.final_norm
    assert two.fsdp_unsharded == 4 * (root + 2 * counts.block) + 4 * counts.block
    assert two.init_full_model == 4 * counts.total(TINY.n_layers)
    # bf16 on a GPU: fp32 shards (the master weights, no other copy), bf16 gathered blocks,
    # bf16 unsharded grads and their fp32 copy for the reduce-scatter.
    gpu = mp.estimate_memory(TINY, layout(dp_shard=2), ParallelConfig(mixed_precision="bf16"),
                             TrainSection(), on_gpu=True)
    assert gpu.params == two.params and gpu.optimizer_temporary == 0  # fused AdamW
    assert gpu.fsdp_unsharded == 2 * (root + 2 * counts.block) + (2 + 4) * counts.block
    # Not resharded after forward: the whole model stays gathered.
    kept = mp.estimate_memory(TINY, layout(dp_shard=2),
                              ParallelConfig(reshard_after_forward=False), TrainSection(),
                              on_gpu=False)
    assert kept.fsdp_unsharded == 4 * counts.total(TINY.n_layers) + 4 * counts.block
    # Nor under a pipeline: each stage's blocks stay gathered over its microbatches.
    piped = mp.estimate_rank_memory(TINY, layout(pp=2, dp_shard=2), ParallelConfig(pp=2),
                                    TrainSection(), 0, on_gpu=False)
    stage = counts.embedding + 2 * counts.block
    assert piped.params_local == stage / 2
    assert piped.fsdp_unsharded == 4 * stage + 4 * counts.block


def test_ddp_keeps_a_second_copy_of_the_gradients() -> None:
    mem = mp.estimate_memory(TINY, layout(dp_replicate=2), ParallelConfig(strategy="ddp"),
                             TrainSection(), on_gpu=False)
    assert mem.wrapper == "ddp" and mem.ddp_buckets == mem.gradients == mem.params


def test_tp_splits_matrices_and_keeps_norms_whole() -> None:
    mem = mp.estimate_memory(TINY, layout(tp=2), ParallelConfig(tp=2), TrainSection(),
                             on_gpu=False)
    counts = mp.param_counts(TINY)
    norms = (2 * TINY.n_layers + 1) * TINY.dim
    assert mem.wrapper == "none"
    assert mem.params_local == (counts.total(TINY.n_layers) - norms) / 2 + norms
    assert mem.init_full_model == 4 * counts.total(TINY.n_layers)  # initialised whole


# ---------------------------------------------------------------- activations


def saved_bytes_per_token(shape: ModelShape, batch: int, seq: int) -> float:
    """What autograd really saves for this model's forward + loss on CPU, fp32."""
    torch.manual_seed(0)
    model = Transformer(shape)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    tokens = torch.randint(0, shape.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(tokens)
        F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in weights) / (batch * seq)


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_layer_activations_are_what_autograd_saves(kv_heads: int) -> None:
    shape = TINY.model_copy(update={"n_kv_heads": kv_heads})
    one, two = (saved_bytes_per_token(shape.model_copy(update={"n_layers": n}), 4, 64)
                for n in (1, 2))
    assert two - one == pytest.approx(mp.layer_activation_bytes(shape, 1, 1, 4), rel=0.01)
    outside = mp.output_activation_bytes(shape, 1, 1, 4) + 4 * shape.dim  # + the embedding's
    assert one - (two - one) == pytest.approx(outside, rel=0.05)


def test_activation_checkpointing_keeps_block_inputs() -> None:
    train = TrainSection()
    tokens = train.micro_batch_size * train.seq_len
    layer = mp.layer_activation_bytes(TINY, tokens, 1, 4)
    block_input = tokens * 4 * TINY.dim

    def acts(mode: str, every: int = 2) -> float:
        return mp.estimate_memory(TINY, ONE, ParallelConfig(
            strategy="none", activation_checkpoint=mode,
            activation_checkpoint_every=every), train, on_gpu=False).activations

    # Full: 4 block inputs instead of 4 blocks, and one block recomputed in backward.
    assert acts("none") - acts("full") == pytest.approx(4 * (layer - block_input) - layer)
    # Every 2nd of 4 blocks (1 and 3) checkpointed.
    assert acts("none") - acts("every_nth") == pytest.approx(2 * (layer - block_input) - layer)


def test_context_parallel_splits_the_sequence() -> None:
    parallel = ParallelConfig(strategy="fsdp", cp=2)
    one = mp.estimate_memory(TINY, ONE, ParallelConfig(strategy="none"), TrainSection(),
                             on_gpu=False)
    cp = mp.estimate_memory(TINY, layout(cp=2), parallel, TrainSection(), on_gpu=False)
    assert cp.wrapper == "fsdp" and cp.params == one.params / 2  # FSDP over dp_shard x cp
    # Half the tokens each, but every attention keeps the other rank's keys and values
    # (gathered), and the rank keeps the additive masks of its two query chunks (fp32).
    train = TrainSection()
    tokens = train.micro_batch_size * train.seq_len / 2
    gathered = tokens * 2 * TINY.n_kv_heads * TINY.head_dim * 4  # fp32 on CPU
    blocks = TINY.n_layers + 1  # and one block's working set in the backward
    chunk = train.seq_len / 4
    mask = (chunk * chunk + chunk * 4 * chunk) * 4  # chunks 0 and 3: [c, c] and [c, 4c]
    assert cp.activations == pytest.approx(one.activations / 2 + blocks * gathered + mask)


# ---------------------------------------------------------------- pipelines


@pytest.mark.parametrize(("schedule", "p", "m", "v", "expected"), [
    ("gpipe", 4, 8, 1, 3 / 11),
    ("1f1b", 4, 8, 1, 3 / 11),
    ("1f1b", 2, 2, 1, 1 / 3),
    ("interleaved-1f1b", 4, 8, 2, 3 / 19),
    ("zero-bubble", 4, 8, 2, 3 / 19),  # reported as interleaved's: an upper bound
    ("1f1b", 1, 1, 1, 0.0),
])
def test_bubble(schedule: str, p: int, m: int, v: int, expected: float) -> None:
    assert mp.bubble_fraction(schedule, p, m, v) == pytest.approx(expected)


def pipeline(schedule: str, m: int = 8, v: int = 1) -> ParallelConfig:
    return ParallelConfig(strategy="none", pp=2, pp_schedule=schedule,
                          pp_microbatches=m, pp_stages_per_rank=v)


def test_in_flight_microbatches_per_schedule() -> None:
    assert [mp.in_flight_chunks(pipeline("1f1b"), r, 8) for r in (0, 1)] == [2, 1]
    assert [mp.in_flight_chunks(pipeline("gpipe"), r, 8) for r in (0, 1)] == [8, 8]
    # Interleaved, 2 ranks x 2 stages: (v-1)p + 2(p-1-r) + 1 chunks.
    assert [mp.in_flight_chunks(pipeline("interleaved-1f1b", v=2), r, 8)
            for r in (0, 1)] == [5, 3]


def test_pipeline_rank_holds_its_layers_and_microbatches() -> None:
    shape = TINY.model_copy(update={"n_layers": 4})
    train = TrainSection(micro_batch_size=8)
    counts = mp.param_counts(shape)
    ranks = [mp.estimate_rank_memory(shape, layout(pp=2), pipeline("1f1b"), train, r,
                                     on_gpu=False, runtime_bytes=0) for r in (0, 1)]
    assert ranks[0].params_local == counts.embedding + 2 * counts.block
    assert ranks[1].params_local == 2 * counts.block + counts.final_norm + counts.output
    assert ranks[0].accumulates and ranks[1].loss_transient > 0 == ranks[0].loss_transient
    assert ranks[0].init_full_model == 4 * counts.total(4)  # every rank seeds the whole model
    # 1F1B: rank 0 holds 2 of the 8 microbatches of 1 sample each, GPipe all 8.
    layer = mp.layer_activation_bytes(shape, 1 * train.seq_len, 1, 4)
    block_in = 4 * shape.dim * train.seq_len
    assert ranks[0].activations == pytest.approx(2 * (2 * layer + block_in) + layer)
    gpipe = mp.estimate_rank_memory(shape, layout(pp=2), pipeline("gpipe"), train, 0,
                                    on_gpu=False)
    assert gpipe.activations == pytest.approx(8 * (2 * layer + block_in) + layer)
    fullest = mp.estimate_memory(shape, layout(pp=2), pipeline("1f1b"), train, on_gpu=False)
    assert fullest.peak == max(r.peak for r in ranks) + mp.CPU_RUNTIME_BYTES


def test_split_layers() -> None:
    assert mp.split_layers(5, ParallelConfig(pp=2)) == [[0, 1, 2], [3, 4]]
    assert mp.split_layers(4, ParallelConfig(pp=2, pp_split=[1])) == [[0], [1, 2, 3]]
    assert mp.rank_stages(1, ParallelConfig(pp=2, pp_stages_per_rank=2)) == [1, 3]


# ---------------------------------------------------------------- time


def test_time_without_bubble_or_communication_runs_at_the_assumed_fraction() -> None:
    time = mp.estimate_time(TINY, ONE, ParallelConfig(strategy="none"), TrainSection(),
                            peak_flops=1e12, dtype_bytes=4, link_bytes_per_s=None)
    assert time.mfu == pytest.approx(mp.ACHIEVABLE_FRACTION)
    assert time.step_s == pytest.approx(time.flops_per_step / (1e12 * mp.ACHIEVABLE_FRACTION))


def test_time_pays_the_bubble_and_tp_traffic() -> None:
    shape = PRESETS["llama-8b"]
    train = TrainSection(global_batch_size=8, micro_batch_size=8, seq_len=4096)
    p = pipeline("1f1b", m=4)
    piped = mp.estimate_time(shape, layout(pp=2), p, train, peak_flops=1e15, dtype_bytes=2,
                             link_bytes_per_s=None)
    assert piped.bubble == pytest.approx(1 / 5)
    assert piped.mfu == pytest.approx(mp.ACHIEVABLE_FRACTION * (1 - 1 / 5))
    tp = mp.estimate_time(shape, layout(tp=8), ParallelConfig(tp=8), train, peak_flops=1e15,
                          dtype_bytes=2, link_bytes_per_s=450e9)
    assert tp.exposed_comm_s > 0 and tp.mfu < mp.ACHIEVABLE_FRACTION


# ---------------------------------------------------------------- the CLI


def stoker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stoker", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def test_cli_table_on_cpu() -> None:
    result = stoker("plan", str(EXAMPLE), "--nproc", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for words in ("estimate", "dp_shard 2", "parameters", "gradients", "optimiser states",
                  "activations", "FSDP unsharded", "runtime", "peak", "pipeline bubble",
                  "step time", "MFU"):
        assert words in out, words
    assert "warning" not in result.stderr


def test_cli_json_warns_when_the_layout_does_not_fit() -> None:
    big = ["model.preset=llama-8b", "train.seq_len=8192", "train.micro_batch_size=2",
           "train.global_batch_size=16"]
    result = stoker("plan", str(EXAMPLE), "--nproc", "8", "--device", "h100", "--json",
                    *sets(big))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["estimate"] is True and plan["fits"] is False
    assert plan["layout"] == {"pp": 1, "dp_replicate": 1, "dp_shard": 8, "cp": 1, "tp": 1}
    assert plan["device"]["key"] == "h100"
    assert plan["memory"]["peak"] > mp.DEVICES["h100"].memory_bytes
    assert plan["memory"]["dtype_bytes"] == 2  # auto: bf16 on a GPU
    assert 0 < plan["time"]["mfu"] <= mp.ACHIEVABLE_FRACTION
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("warning:") and "h100" in warning
    # Full activation checkpointing makes it fit.
    result = stoker("plan", str(EXAMPLE), "--nproc", "8", "--device", "h100", "--json",
                    *sets([*big, "parallel.activation_checkpoint=full"]))
    assert json.loads(result.stdout)["fits"] is True and not result.stderr.strip()


def test_cli_plans_a_pipeline() -> None:
    result = stoker("plan", str(EXAMPLE), "--nproc", "2", "--device", "a100", "--json",
                    *sets(["parallel.pp=2", "parallel.strategy=none"]))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["layout"]["pp"] == 2 and plan["memory"]["pp_rank"] in (0, 1)
    assert plan["time"]["bubble"] == pytest.approx(1 / 3)  # p = m = 2
    assert plan["fits"] is True


@pytest.mark.parametrize(("args", "key"), [
    (["--set", "train.stepz=3"], "train.stepz"),
    (["--nproc", "3"], "train.global_batch_size"),
    (["--nproc", "2", "--set", "parallel.strategy=none"], "parallel.strategy"),
    (["--nproc", "2", "--set", "parallel.tp=2", "--set", "model.n_heads=2",
      "--set", "model.n_kv_heads=1"], "parallel.tp"),
    (["--device", "tpu-v9"], "--device"),
    (["--nproc", "8", "--set", "parallel.pp=8", "--set", "parallel.strategy=none"],
     "parallel.pp"),  # 8 stages, 4 layers
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], key: str) -> None:
    result = stoker("plan", str(EXAMPLE), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert key in line
    assert "Traceback" not in result.stderr + result.stdout


# ---------------------------------------------------------------- estimate vs measured
# Measured: RUN_DIR/metrics.jsonl's peak_mem_bytes, the largest max RSS of the ranks (CPU).
# The errors, with the command, are in docs/benchmarks.md.

RUN = ["train.seq_len=256", "train.steps=3", "train.eval_interval=0",
       "checkpoint.enabled=false", "telemetry.live=false"]
# Of the measured peak RSS. Alone the errors were -3 to -11%; inside the whole suite (same
# commit) they were -19 to -25%: the measured RSS grows with something the estimate does not
# model (suspected: allocator retention and the CPU peak calibration), still to be found.
TOLERANCE = 0.30


@pytest.mark.slow
@pytest.mark.parametrize(("nproc", "overrides"), [
    (1, ["parallel.strategy=none"]),
    (2, []),  # fsdp, dp_shard 2
    (2, ["parallel.tp=2"]),
    (2, ["parallel.cp=2"]),
], ids=["1-rank-none", "2-ranks-fsdp", "2-ranks-tp", "2-ranks-cp"])
def test_estimate_against_measured_peak(tmp_path: Path, nproc: int,
                                        overrides: list[str]) -> None:
    args = [str(EXAMPLE), "--nproc", str(nproc), *sets([*RUN, *overrides])]
    planned = stoker("plan", *args, "--json")
    assert planned.returncode == 0, planned.stderr
    estimate = json.loads(planned.stdout)["memory"]["peak"]
    run_dir = tmp_path / "run"
    trained = stoker("train", *args, "--run-dir", str(run_dir), timeout=600)
    assert trained.returncode == 0, trained.stderr + trained.stdout
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    measured = max(json.loads(line)["peak_mem_bytes"] for line in lines)
    error = (estimate - measured) / measured
    print(f"{nproc} ranks {overrides}: estimate {estimate / 2**20:.0f} MiB, measured "
          f"{measured / 2**20:.0f} MiB, error {error:+.1%}")
    assert abs(error) <= TOLERANCE
