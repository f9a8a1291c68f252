"""Stoker's reference model vs a GPT-2 written the plain nanoGPT way: training tokens/s on CPU.

    .venv/bin/python benchmarks/model_efficiency.py [--sizes tiny,gpt2-124m] [--compile both]
        [--repeats 5] [--steps tiny=8,gpt2-124m=2] [--warmup 2] [--before REV]

For each size (a Stoker preset and its batch: ``tiny`` 16 x 128 tokens, ``gpt2-124m`` 2 x 256)
and each compile mode, one process builds

* ``stoker``: ``build_model`` (meta device, ``to_empty``, ``init_weights``; with ``--compile``
  each block compiled on its own, inductor, as ``parallel.compile`` does);
* ``nanogpt``: the GPT-2 below (LayerNorm with bias, GELU MLP of 4 x dim, learned positions,
  one fused qkv linear, ``F.scaled_dot_product_attention``), same dim, layers, heads, vocab,
  sequence and batch, output tied to the embedding iff the preset ties it, blocks compiled the
  same way;
* ``before`` (with ``--before REV``): ``src/stoker/train/model.py`` as it was at git revision REV,
  built and compiled like ``stoker``, so an optimisation is measured against its starting point
  in the same run.

The process runs as a Stoker CPU rank does (``--allocator stoker``: glibc's mmap and trim
thresholds fixed, ``stoker.train.host_alloc``), every arm alike; ``--allocator default`` keeps
glibc's dynamic thresholds. Each arm trains with the same AdamW
(``stoker.train.optim.build_optimizer``, foreach) on fixed random tokens, fp32, in one process
(``--threads`` intra-op threads, 1 by default). After ``--warmup`` steps per arm (compilation
included), ``--repeats`` rounds each run ``--steps`` timed steps of every arm, the arms' order
rotating from round to round so that load on a shared machine hits them alike. Reported:
parameters, training FLOPs per token (6 N + 12 L H Q T, as ``stoker.observe.flops`` counts), median
tokens/s over rounds by wall clock and by process CPU time (on a machine shared with other work,
the CPU-time figure is the steadier one), and the median over rounds of each arm's ratio to
``nanogpt`` in the same round; the last column scales the CPU-time ratio by the FLOPs per token,
i.e. compares work done per second.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from stoker.bench.figures import figure
from stoker.observe.flops import flops_per_token
from stoker.spec.train import PRESETS, ModelShape, OptimConfig, ParallelConfig
from stoker.train.host_alloc import keep_freed_memory
from stoker.train.optim import build_optimizer
from stoker.train.parallelize import build_model

ROOT = Path(__file__).resolve().parents[1]
BATCH = {"tiny": (16, 128), "gpt2-124m": (2, 256)}  # size -> (batch, seq_len)
DEFAULT_STEPS = {"tiny": 8, "gpt2-124m": 2}
CPU = torch.device("cpu")
BENCH_QUICK = ["--sizes", "tiny", "--repeats", "2", "--steps", "tiny=1", "--warmup", "1"]


# ---------------------------------------------------------------------- the nanoGPT-style GPT-2


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, shape: ModelShape, max_seq_len: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(shape.vocab_size, shape.dim)
        self.wpe = nn.Embedding(max_seq_len, shape.dim)
        self.blocks = nn.ModuleList(Block(shape.dim, shape.n_heads)
                                    for _ in range(shape.n_layers))
        self.ln_f = nn.LayerNorm(shape.dim)
        self.head = nn.Linear(shape.dim, shape.vocab_size, bias=False)
        if shape.tie_embeddings:
            self.head.weight = self.wte.weight
        for name, p in self.named_parameters():  # GPT-2 init, residual projections scaled
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * shape.n_layers) if name.endswith("proj.weight") \
                    or name.endswith("down.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def nanogpt_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """6 N + 12 L H Q T with N the weights of every matmul (qkv, proj, up, down, head)."""
    per_block = 4 * shape.dim * shape.dim + 2 * shape.dim * 4 * shape.dim
    n = shape.n_layers * per_block + shape.dim * shape.vocab_size
    return float(6 * n + 12 * shape.n_layers * shape.dim * seq_len)


# ---------------------------------------------------------------------- arms


@dataclass
class Arm:
    name: str
    model: nn.Module
    flops_per_token: float
    optimizer: torch.optim.Optimizer = field(init=False)
    rates: list[float] = field(default_factory=list)  # tokens per wall-clock second
    cpu_rates: list[float] = field(default_factory=list)  # tokens per second of process CPU time

    def __post_init__(self) -> None:
        self.optimizer = build_optimizer(self.model, OptimConfig(), CPU)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())  # a tied weight counted once

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        logits = self.model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def load_model_at(rev: str) -> ModuleType:
    """``src/stoker/train/model.py`` as it was at git revision ``rev``, imported on its own."""
    source = subprocess.run(["git", "show", f"{rev}:src/stoker/train/model.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="stoker-model-")) / "model_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("stoker_model_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_before(module: ModuleType, shape: ModelShape, compile_: bool) -> nn.Module:
    """What ``build_model`` does for strategy "none", with the old module's Transformer."""
    with torch.device("meta"):
        model = module.Transformer(shape)
    model.to_empty(device=CPU)
    model.tie_weights()
    torch.manual_seed(0)
    model.init_weights()
    if compile_:
        for block in model.layers.values():
            block.compile(fullgraph=True)
    assert isinstance(model, nn.Module)
    return model


def build_arms(size: str, compile_: bool, before: ModuleType | None) -> list[Arm]:
    shape = PRESETS[size]
    seq_len = BATCH[size][1]
    stoker = build_model(shape, ParallelConfig(strategy="none", compile=compile_), CPU, seed=0,
                         world_size=1)
    torch.manual_seed(0)
    gpt = GPT(shape, seq_len)
    if compile_:
        for block in gpt.blocks:
            block.compile(fullgraph=True)
    arms = [Arm("stoker", stoker, flops_per_token(shape, seq_len)),
            Arm("nanogpt", gpt, nanogpt_flops_per_token(shape, seq_len))]
    if before is not None:
        arms.append(Arm("before", build_before(before, shape, compile_),
                        flops_per_token(shape, seq_len)))
    return arms


# ---------------------------------------------------------------------- measurement


def measure(size: str, compile_: bool, args: argparse.Namespace, before: ModuleType | None,
            log: Callable[[str], None]) -> list[Arm]:
    batch, seq_len = BATCH[size]
    vocab = PRESETS[size].vocab_size
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, vocab, (batch, seq_len + 1), generator=gen)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    steps = args.steps.get(size, DEFAULT_STEPS[size])
    arms = build_arms(size, compile_, before)
    mode = "compile" if compile_ else "eager"
    for arm in arms:
        start = time.perf_counter()
        for _ in range(args.warmup):
            arm.step(x, y)
        log(f"{size} {mode} {arm.name}: warm-up {time.perf_counter() - start:.1f} s")
    for r in range(args.repeats):
        order = arms[r % len(arms):] + arms[:r % len(arms)]
        for arm in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                arm.step(x, y)
            arm.cpu_rates.append(steps * batch * seq_len / (time.process_time() - cpu_start))
            arm.rates.append(steps * batch * seq_len / (time.perf_counter() - start))
        log(f"{size} {mode} round {r + 1}/{args.repeats}: " + ", ".join(
            f"{a.name} {a.rates[-1]:,.0f} ({a.cpu_rates[-1]:,.0f} cpu)" for a in arms))
    return arms


def parse_steps(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="tiny,gpt2-124m")
    p.add_argument("--compile", choices=("off", "on", "both"), default="both")
    p.add_argument("--repeats", type=int, default=5, help="rounds of timed steps per arm")
    p.add_argument("--steps", type=parse_steps, default={}, help="timed steps per round, by size "
                   f"(default {','.join(f'{k}={v}' for k, v in DEFAULT_STEPS.items())})")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (on a loaded "
                   "machine one thread keeps process CPU time a clean measure)")
    p.add_argument("--before", metavar="REV", default=None,
                   help="also time src/stoker/train/model.py as of this git revision")
    p.add_argument("--allocator", choices=("stoker", "default"), default="stoker",
                   help="stoker: glibc's thresholds as a Stoker CPU rank sets them "
                   "(train/host_alloc.py); default: glibc's own. Every arm runs under it")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.allocator == "stoker" else False
    before = load_model_at(args.before) if args.before else None
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator "
        f"{'as a Stoker CPU rank runs it' if kept else 'glibc defaults'}")
    header = ("size", "compile", "model", "params", "MFLOP/token", "tokens/s", "vs nanogpt",
              "tokens/cpu-s", "vs nanogpt (cpu)", "FLOP/cpu-s vs nanogpt")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|")
    for size in args.sizes.split(","):
        for compile_ in modes:
            arms = measure(size, compile_, args, before, log)
            nano = next(a for a in arms if a.name == "nanogpt")
            for arm in arms:  # ratios paired round by round, so slow drifts in load cancel
                ratio = statistics.median(
                    a / b for a, b in zip(arm.rates, nano.rates, strict=True))
                cpu_ratio = statistics.median(
                    a / b for a, b in zip(arm.cpu_rates, nano.cpu_rates, strict=True))
                row = (size, "on" if compile_ else "off", arm.name, f"{arm.params:,}",
                       f"{arm.flops_per_token / 1e6:.2f}", f"{statistics.median(arm.rates):,.0f}",
                       f"{ratio:.3f}", f"{statistics.median(arm.cpu_rates):,.0f}",
                       f"{cpu_ratio:.3f}",
                       f"{cpu_ratio * arm.flops_per_token / nano.flops_per_token:.3f}")
                print("| " + " | ".join(row) + " |", flush=True)
            report_figures(f"{size} {'compile' if compile_ else 'eager'}", arms, nano)


def report_figures(prefix: str, arms: list[Arm], nano: Arm) -> None:
    """Each arm's rates per round, and each arm's ratios to nanogpt's in the same round."""
    flops = {arm.name: arm.flops_per_token / nano.flops_per_token for arm in arms}
    for arm in arms:
        name = f"{prefix} {arm.name}"
        figure(f"{name} tokens/s", arm.rates, "tokens/s", "higher")
        figure(f"{name} tokens/cpu-s", arm.cpu_rates, "tokens/cpu-s", "higher")
        if arm is nano:
            continue
        figure(f"{name} / nanogpt", [a / b for a, b in zip(arm.rates, nano.rates, strict=True)],
               "x", "higher")
        cpu_ratios = [a / b for a, b in zip(arm.cpu_rates, nano.cpu_rates, strict=True)]
        figure(f"{name} / nanogpt cpu", cpu_ratios, "x", "higher")
        figure(f"{name} flop / nanogpt cpu", [r * flops[arm.name] for r in cpu_ratios], "x",
               "higher")


if __name__ == "__main__":
    main()
