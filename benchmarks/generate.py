"""Sampling with the KV cache vs recomputing the whole sequence each step: same model, same run.

    .venv/bin/python benchmarks/generate.py [--preset tiny] [--batch 8] [--prompt 32]
                                            [--new 128] [--repeats 3]

`stoker.train.generate.generate` (prefill once, then one token per step against the cache)
against the baseline every decoder without a cache is: the training forward
(`Transformer.forward`) over prompt + tokens so far at every step, greedy in both so they
produce the same tokens (checked). One OpenMP thread; the arms alternate, ``--repeats`` times.
Reported: new tokens per second of each, and the ratio cached / recomputed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from stoker.bench.figures import figure
from stoker.spec.train import PRESETS
from stoker.train.generate import Sampling, generate
from stoker.train.model import Transformer

BENCH_QUICK = ["--new", "32", "--repeats", "2"]


def recompute(model: Transformer, prompts: list[list[int]], new: int) -> list[list[int]]:
    seqs = torch.tensor(prompts)
    with torch.inference_mode():
        for _ in range(new):
            seqs = torch.cat([seqs, model(seqs)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seqs[:, len(prompts[0]):].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Transformer(PRESETS[args.preset])
    model.init_weights()
    model.eval()
    vocab = model.shape.vocab_size
    prompts = torch.randint(0, vocab, (args.batch, args.prompt)).tolist()
    greedy = Sampling(max_new_tokens=args.new, temperature=0)
    tokens = args.batch * args.new
    rates: dict[str, list[float]] = {"cached": [], "recomputed": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        cached = generate(model, prompts, greedy)
        rates["cached"].append(tokens / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        baseline = recompute(model, prompts, args.new)
        rates["recomputed"].append(tokens / (time.perf_counter() - t0))
        assert cached == baseline, "the cache changed the tokens"
    ratios = [c / r for c, r in zip(rates["cached"], rates["recomputed"], strict=True)]
    print(f"{args.preset}, batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, "
          f"{args.repeats} repeats (same tokens from both)")
    for arm, values in rates.items():
        print(f"  {arm:10s} {statistics.median(values):10.1f} new tokens/s")
    print(f"  cached / recomputed: {statistics.median(ratios):.2f}x")
    figure("cached / recomputed", ratios, "x", "higher")
    figure("cached tokens/s", rates["cached"], "tokens/s", "higher")
    figure("recomputed tokens/s", rates["recomputed"], "tokens/s", "higher")


if __name__ == "__main__":
    main()
