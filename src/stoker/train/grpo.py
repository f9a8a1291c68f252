"""GRPO (Group Relative Policy Optimization, Shao et al. 2024, "DeepSeekMath", section 4.1)
on the local runtime, in one process.

Per step: ``P`` prompts, ``G`` completions each sampled from the current policy (the old
policy πθ_old of the step), a reward r_i per completion, and per group

    Â_i = (r_i − mean(r)) / (std(r) + eps)                                    (group advantage)

given to every token of completion o_i (outcome supervision). Then ``μ`` optimiser steps on
the same batch maximise

    J = 1/G Σ_i 1/|o_i| Σ_t [ min(ρ_it Â_i, clip(ρ_it, 1−ε, 1+ε) Â_i) − β D_KL,it ]
    ρ_it = πθ(o_it | q, o_i<t) / πθ_old(o_it | q, o_i<t)
    D_KL,it = π_ref/πθ − log(π_ref/πθ) − 1                       (the k3 estimator, ≥ 0)

Tokens are averaged as in the paper: over each completion's own tokens, then over the
completions (all groups of the batch together, which is the mean of the group means since
every group has G completions). ``std`` is the population standard deviation, so a group whose
rewards are all equal, a single completion included, has advantages of exactly 0 and teaches
nothing. β = 0 drops the KL term and never builds the reference model.

Log-probabilities come from the training forward (`Transformer.forward`) over prompt +
completion, right-padded: causal attention means padding after a sequence cannot change it,
and masks keep the prompt and the padding out of the loss. Rollouts use the KV-cache sampler
(`stoker.train.generate`). Ratios and KL use πθ itself: sampling at a temperature other than 1
or with top_p < 1 makes the rollouts slightly off-policy.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stoker.observe.sinks import Sinks, check_installed, open_named
from stoker.spec.errors import ConfigError, StokerError
from stoker.spec.grpo import GrpoConfig, GrpoRecipe, WarmupConfig
from stoker.train.generate import Sampling, generate
from stoker.train.grpo_tasks import STOP, TASKS, Task
from stoker.train.model import Transformer
from stoker.train.tokenizer import ByteTokenizer

ADV_EPS = 1e-4
RECORDS, STATE = "grpo.jsonl", "grpo_state.pt"
MAX_MISSES = 10_000  # held-out prompts drawn in a row before the task counts as used up
TOKENIZER = ByteTokenizer()
STOP_ID = TOKENIZER.encode(STOP)[0]


# --- the equations ------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, eps: float = ADV_EPS) -> torch.Tensor:
    """Â = (r − mean(r)) / (std(r) + eps) within each group: rewards [groups, G]."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True, correction=0)
    return (rewards - mean) / (std + eps)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(πθ || π_ref) estimate exp(log π_ref − log πθ) − (log π_ref − log πθ) − 1."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's mean over its masked-in entries (1/|o_i| Σ_t), then the mean of the rows."""
    per_row = (x * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
    return per_row.mean()


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float, beta: float = 0.0,
              ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """−J for per-token log-probs [B, T] under πθ (with grad), πθ_old and π_ref, advantages
    [B] and the completion mask [B, T]. Also returns the mean KL and the clipped fraction."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    per_token = surrogate
    kl = torch.zeros_like(logp)
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs the reference model's log-probs")
        kl = k3_kl(logp, ref_logp)
        per_token = surrogate - beta * kl
    clipped = ((ratio - 1).abs() > clip_eps).float()
    stats = {"kl": float(masked_mean(kl.detach(), mask)),
             "clip_frac": float(masked_mean(clipped, mask))}
    return -masked_mean(per_token, mask), stats


# --- sequences and log-probs ---------------------------------------------------------------

def pack(prompts: Sequence[list[int]], completions: Sequence[list[int]],
         device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt + completion per row, right-padded with 0: tokens [B, T] and the mask [B, T-1]
    of the targets (tokens[:, 1:]) that are completion tokens."""
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    T = max(map(len, rows))
    tokens = torch.zeros(len(rows), T, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), T, device=device)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        tokens[i, :len(p) + len(c)] = torch.tensor(p + c)
        mask[i, len(p):len(p) + len(c)] = 1
    return tokens, mask[:, 1:]


def next_token_logprobs(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """log π(· | tokens[:, :t+1]) over the vocabulary: [B, T-1, V], in fp32."""
    return F.log_softmax(model(tokens[:, :-1]).float(), dim=-1)


def pick(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The log-probs [B, T-1] of the tokens that came next (tokens[:, 1:])."""
    return torch.gather(logprobs, -1, tokens[:, 1:, None]).squeeze(-1)


def token_logprobs(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """log π(tokens[:, t+1] | tokens[:, :t+1]): [B, T-1], in fp32."""
    return pick(next_token_logprobs(model, tokens), tokens)


def entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """H(π(· | prefix)) = −Σ_v π log π per position: [B, T-1] from [B, T-1, V]."""
    return -(logprobs.exp() * logprobs).sum(dim=-1)


# --- the recipe ----------------------------------------------------------------------------

@dataclass
class Prompts:
    """A task's prompts: training ones drawn from ``rng``, never one of the held-out set."""

    task: Task
    rng: random.Random
    held_out: list[tuple[str, str]]

    @classmethod
    def make(cls, task: Task, seed: int, n_held_out: int) -> Prompts:
        rng = random.Random(seed)
        held: dict[str, str] = {}
        for _ in range(100 * n_held_out):
            if len(held) == n_held_out:
                break
            prompt, answer = task.make_prompt(rng)
            held[prompt] = answer
        return cls(task, random.Random(seed + 1), list(held.items()))

    def draw(self, n: int) -> list[tuple[str, str]]:
        held = {p for p, _ in self.held_out}
        out: list[tuple[str, str]] = []
        misses = 0
        while len(out) < n:
            pair = self.task.make_prompt(self.rng)
            if pair[0] not in held:
                out.append(pair)
            elif (misses := misses + 1) > MAX_MISSES:
                raise ConfigError(None, "task.held_out", f"{len(held)} held-out prompts leave "
                                  "(almost) none to train on: hold out fewer, or lengthen "
                                  "the task's strings")
        return out


def build_model(recipe: GrpoRecipe) -> Transformer:
    shape = recipe.model.shape().model_copy(update={"vocab_size": TOKENIZER.vocab_size})
    torch.manual_seed(recipe.run.seed)
    model = Transformer(shape)
    model.init_weights()
    return model


def warmup(model: Transformer, prompts: Prompts, cfg: WarmupConfig,
           on_step: Callable[[int, float], None] = lambda step, loss: None) -> None:
    """Supervised steps on prompt + answer + STOP, the loss on the answer tokens only."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    model.train()
    for step in range(cfg.steps):
        pairs = prompts.draw(cfg.batch_size)
        tokens, mask = pack([TOKENIZER.encode(p) for p, _ in pairs],
                            [TOKENIZER.encode(a + STOP) for _, a in pairs])
        loss = -masked_mean(token_logprobs(model, tokens), mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        on_step(step, loss.item())


def pass_at_1(model: Transformer, prompts: Prompts, max_new_tokens: int) -> float:
    """The fraction of held-out prompts whose greedy completion is exactly right."""
    model.eval()
    encoded = [TOKENIZER.encode(p) for p, _ in prompts.held_out]
    outs = generate(model, encoded, Sampling(max_new_tokens=max_new_tokens, temperature=0,
                                             stop_tokens=(STOP_ID,)))
    right = [TOKENIZER.decode(o) == a + STOP for o, (_, a) in zip(outs, prompts.held_out,
                                                                   strict=True)]
    return sum(right) / len(right)


@dataclass
class Rollouts:
    prompts: list[list[int]]
    completions: list[list[int]]
    rewards: torch.Tensor  # [P, G]
    gen_s: float
    reward_s: float


def rollout(model: Transformer, prompts: Prompts, cfg: GrpoConfig, seed: int) -> Rollouts:
    """P prompts, G sampled completions each, and their rewards."""
    pairs = prompts.draw(cfg.prompts)
    encoded = [TOKENIZER.encode(p) for p, _ in pairs for _ in range(cfg.group_size)]
    model.eval()
    t0 = time.perf_counter()
    completions = generate(model, encoded, Sampling(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        stop_tokens=(STOP_ID,), seed=seed))
    t1 = time.perf_counter()
    answers = [a for _, a in pairs for _ in range(cfg.group_size)]
    rewards = [prompts.task.reward(TOKENIZER.decode(c), a)
               for c, a in zip(completions, answers, strict=True)]
    t2 = time.perf_counter()
    return Rollouts(encoded, completions,
                    torch.tensor(rewards).view(cfg.prompts, cfg.group_size), t1 - t0, t2 - t1)


def grpo_step(model: Transformer, ref: Transformer | None, opt: torch.optim.Optimizer,
              batch: Rollouts, cfg: GrpoConfig) -> dict[str, float]:
    """μ optimiser steps on one batch of rollouts, πθ_old being the model as it is now."""
    tokens, mask = pack(batch.prompts, batch.completions)
    model.train()
    with torch.no_grad():
        old_logp = token_logprobs(model, tokens)
    return optimise(model, ref, opt, tokens, mask, group_advantages(batch.rewards).flatten(),
                    old_logp, cfg)


def optimise(model: Transformer, ref: Transformer | None, opt: torch.optim.Optimizer,
             tokens: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
             old_logp: torch.Tensor, cfg: GrpoConfig) -> dict[str, float]:
    """μ optimiser steps on packed sequences, the ratio taken to ``old_logp`` (the policy
    that sampled them); the last iteration's loss statistics and the policy's entropy. The
    gradient norm is global under FSDP2 (`stoker.train.optim.clip_grad_norm_`)."""
    from stoker.train.optim import clip_grad_norm_

    with torch.no_grad():
        policy_entropy = float(masked_mean(entropy(next_token_logprobs(model, tokens)), mask))
        ref_logp = token_logprobs(ref, tokens) if ref is not None else None
    stats: dict[str, float] = {}
    for _ in range(cfg.iterations):
        loss, stats = grpo_loss(token_logprobs(model, tokens), old_logp, advantages, mask,
                                cfg.clip_eps, cfg.beta, ref_logp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        stats |= {"loss": loss.item(), "grad_norm": float(grad_norm)}
    return stats | {"entropy": policy_entropy}


def step_record(step: int, rewards: torch.Tensor, prompts: Sequence[list[int]],
                completions: Sequence[list[int]], iterations: int, gen_s: float,
                reward_s: float, train_s: float) -> dict[str, Any]:
    """A step's record: rewards, completion lengths, throughput and the time split."""
    lengths = [len(c) for c in completions]
    # Each of the μ iterations runs forward and backward over every prompt and completion
    # token; the rollout policy's (and reference's) no-grad forward is not counted.
    trained = iterations * sum(len(p) + n for p, n in zip(prompts, lengths, strict=True))
    return {"step": step, "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(correction=0)),
            "exact": float((rewards == 1).float().mean()),
            "completion_len": sum(lengths) / len(lengths),
            "gen_tokens_per_s": sum(lengths) / max(gen_s, 1e-9),
            "train_tokens_per_s": trained / train_s,
            "gen_s": gen_s, "reward_s": reward_s, "train_s": train_s}


def refuse_reuse(run_dir: Path, resume: bool) -> None:
    """A run dir that holds a GRPO run is continued with --resume, never started over."""
    if not resume and ((run_dir / RECORDS).exists() or (run_dir / STATE).exists()):
        raise StokerError(f"{run_dir} already holds a GRPO run: continue it with --resume, "
                          "or use another --run-dir")


class GrpoLoop:
    """The GRPO loop's state: the policy, its frozen reference (β > 0 only), the optimiser, the
    prompt stream and the last step done; `state_dict` is all a resume needs."""

    def __init__(self, model: Transformer, prompts: Prompts, cfg: GrpoConfig,
                 seed: int = 0) -> None:
        self.model, self.prompts, self.cfg, self.seed = model, prompts, cfg, seed
        self.ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.beta > 0 else None
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.step = 0

    def run_step(self) -> dict[str, Any]:
        """One GRPO step; its record (pass@1 on the eval steps and the last)."""
        self.step += 1
        cfg = self.cfg
        batch = rollout(self.model, self.prompts, cfg, seed=self.seed * 1_000_003 + self.step)
        t0 = time.perf_counter()
        stats = grpo_step(self.model, self.ref, self.opt, batch, cfg)
        train_s = time.perf_counter() - t0
        record = step_record(self.step, batch.rewards, batch.prompts, batch.completions,
                             cfg.iterations, batch.gen_s, batch.reward_s, train_s) | stats
        if self.step % cfg.eval_interval == 0 or self.step == cfg.steps:
            record["pass_at_1"] = pass_at_1(self.model, self.prompts, cfg.max_new_tokens)
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "ref": self.ref.state_dict() if self.ref is not None else None,
                "step": self.step, "prompt_rng": self.prompts.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        if self.ref is not None:
            if state["ref"] is None:
                raise ConfigError(None, "grpo.beta", "the checkpoint has no reference model "
                                  "(it was saved with beta = 0)")
            self.ref.load_state_dict(state["ref"])
        self.step = state["step"]
        self.prompts.rng.setstate(state["prompt_rng"])


def save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a reader sees the old state or the new."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def run(recipe: GrpoRecipe, run_dir: Path, resume: bool = False,
        log: Callable[[str], None] = print,
        progress: Callable[[str, int, int], None] = lambda phase, done, total: None
        ) -> dict[str, Any]:
    """Warm-up then GRPO; per-step records to RUN_DIR/grpo.jsonl, the summary returned and
    written to RUN_DIR/grpo_summary.json. The loop's state goes to RUN_DIR/grpo_state.pt
    after the warm-up and every ``grpo.checkpoint_interval`` steps; ``resume`` goes on from
    it (the warm-up is not redone; records after the saved step are dropped and redone)."""
    check_installed(recipe.telemetry.sinks)
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    records_path, state_path = run_dir / RECORDS, run_dir / STATE
    refuse_reuse(run_dir, resume)
    t = recipe.task
    task = TASKS[t.name](min_len=t.min_len, max_len=t.max_len, partial=t.partial)
    prompts = Prompts.make(task, recipe.run.seed, t.held_out)
    model = build_model(recipe)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {n_params / 1e6:.2f}M parameters, task {t.name}, "
        f"{len(prompts.held_out)} held-out prompts")
    cfg = recipe.grpo
    saved = torch.load(state_path) if resume and state_path.exists() else None
    if saved is not None and "loop" not in saved:
        raise StokerError(f"{state_path} is a GRPO run with roles: resume it with --roles")
    if saved is None:
        started = time.perf_counter()
        warmup(model, prompts, recipe.warmup,
               on_step=lambda step, loss: progress("warm-up", step + 1, recipe.warmup.steps))
        head = {"pass_at_1_warmup": pass_at_1(model, prompts, cfg.max_new_tokens),
                "warmup_s": time.perf_counter() - started,
                "gen_s": 0.0, "reward_s": 0.0, "train_s": 0.0, "grpo_s": 0.0}
        log(f"warm-up: {recipe.warmup.steps} steps in {head['warmup_s']:.0f}s, "
            f"pass@1 {head['pass_at_1_warmup']:.3f}")
    loop = GrpoLoop(model, prompts, cfg, recipe.run.seed)
    if saved is not None:
        loop.load_state_dict(saved["loop"])
        head = saved["summary"]
        log(f"resumed at GRPO step {loop.step} from {state_path}")
    else:
        save_state(state_path, {"loop": loop.state_dict(), "summary": head})
    kept = [line for line in records_path.read_text().splitlines()
            if json.loads(line)["step"] <= loop.step] if records_path.exists() else []
    records_path.write_text("".join(line + "\n" for line in kept))
    last = json.loads(kept[-1]) if kept else {}
    sinks = open_named(recipe.telemetry.sinks, run_dir, recipe.run.name,
                       recipe.model_dump(by_alias=True))
    with records_path.open("a") as out, closing_sinks(sinks):
        while loop.step < cfg.steps:
            started = time.perf_counter()
            last = loop.run_step()
            out.write(json.dumps(last) + "\n")
            out.flush()
            if sinks is not None:
                sinks.log(last)
            for k in ("gen_s", "reward_s", "train_s"):
                head[k] += last[k]
            head["grpo_s"] += time.perf_counter() - started
            progress("grpo", loop.step, cfg.steps)
            log(step_line(last))
            if cfg.checkpoint_interval and (loop.step % cfg.checkpoint_interval == 0
                                            or loop.step == cfg.steps):
                save_state(state_path, {"loop": loop.state_dict(), "summary": head})
    before = head["pass_at_1_warmup"]
    after = last.get("pass_at_1", before)
    summary = {**head, "pass_at_1_grpo": after, "params": n_params}
    (run_dir / "grpo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    split = " ".join(f"{k[:-2]} {head[k]:.0f}s" for k in ("gen_s", "reward_s", "train_s"))
    log(f"pass@1 {before:.3f} after warm-up -> {after:.3f} after GRPO; GRPO "
        f"{head['grpo_s']:.0f}s ({split})")
    return summary


@contextmanager
def closing_sinks(sinks: Sinks | None) -> Iterator[None]:
    try:
        yield
    finally:
        if sinks is not None:
            sinks.close()


def step_line(r: dict[str, Any]) -> str:
    line = (f"step {r['step']:>4}  reward {r['reward_mean']:.3f}±{r['reward_std']:.3f}  "
            f"exact {r['exact']:.2f}  kl {r['kl']:.4f}  entropy {r['entropy']:.3f}  "
            f"len {r['completion_len']:.1f}  "
            f"gen {r['gen_tokens_per_s']:,.0f} tok/s  train {r['train_tokens_per_s']:,.0f} tok/s  "
            f"time gen {r['gen_s']:.2f}s reward {r['reward_s']:.3f}s train {r['train_s']:.2f}s")
    if "pass_at_1" in r:
        line += f"  pass@1 {r['pass_at_1']:.3f}"
    return line



if __name__ == "__main__":  # python -m stoker.train.grpo CFG [--run-dir DIR] [--set k=v ...]
    import sys

    from stoker.cli.main import main

    sys.argv[1:1] = ["grpo"]
    main()
