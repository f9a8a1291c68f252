"""GRPO with roles: trainer ranks, rollout workers and reward workers, each its own process.

    python -m stoker.train.grpo_roles CONFIG --run-dir DIR   # every process of a roles job
    stoker grpo CONFIG --roles trainer=2,rollout=1,reward=1  # the same processes, started here

The recipe and its equations are `stoker.train.grpo`'s; this module spreads one GRPO step over
processes, as a job with three roles (`examples/grpo/roles-job.toml`) that the control plane
admits and restarts as one gang. Who is who comes from the job's environment: ``STOKER_ROLE``,
``STOKER_ROLE_RANK`` and ``STOKER_ROLES`` (``trainer=0-1,rollout=2-2,reward=3-3``), with one
gloo world over every role (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``).

- **trainer** ranks hold the policy under FSDP2 over their own group. They do the supervised
  warm-up (each rank alike, from the same seed), publish the weights as version 0, then per
  step: trainer 0 draws the step's prompts (the prompt stream is the trainers' state) and hands
  each rollout worker its share; every trainer waits for the rollouts and their rewards, takes
  the group advantages over the whole batch and trains on its slice of the completions (equal
  slices: FSDP's mean of the slices' means is the batch mean); then the new weights are
  published as version ``step``.
- **rollout** workers keep a plain copy of the model. For step ``s`` each takes weights of
  version ``s − 1 − max_staleness`` or newer, samples ``group_size`` completions for each of its
  prompts (seeded by the run's seed, the step and the worker), computes their log-probs under
  the weights that sampled them (the behaviour policy, πθ_old of the ratio) and hands them on.
- **reward** workers score the rollouts of the workers assigned to them (worker ``w`` to
  reward worker ``w mod R``).

``max_staleness = k`` lets rollouts for step ``s`` start from weights up to ``k`` versions old,
so generation for the next steps overlaps training (bounded off-policy; the clipped ratio to
the behaviour policy is what keeps it stable). ``k = 0`` is synchronous.

Weights move from trainer 0 to the rollout workers by one of ``[roles] sync``:

- ``file``: ``torch.save`` to the attempt's exchange directory, then a rename; rollout workers
  load the newest version with ``mmap``. On one node the bytes are read back from the page
  cache (shared memory); across nodes the directory must be shared (Ray's ``shared_dir``).
- ``broadcast``: a gloo broadcast of every tensor from trainer 0 to the rollout workers in a
  group of their own; every worker takes every version.

Everything else (prompts, rollouts, rewards) moves as small files in
``RUN_DIR/exchange/attempt-N/``, written then renamed, polled by the reader. Trainer 0 writes
the records (`grpo.py`'s plus ``sync_s``, ``wait_s`` and ``staleness``) and checkpoints the
trainers' state every ``checkpoint_interval`` steps; a restarted gang resumes from it (the
exchange of the failed attempt is left behind: a new attempt has its own directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from stoker.spec.errors import ConfigError, StokerError
from stoker.spec.grpo import GrpoRecipe
from stoker.train.generate import Sampling, generate
from stoker.train.grpo import (
    RECORDS,
    STATE,
    STOP_ID,
    TOKENIZER,
    Prompts,
    build_model,
    group_advantages,
    optimise,
    pack,
    pass_at_1,
    save_state,
    step_line,
    step_record,
    token_logprobs,
    warmup,
)
from stoker.train.grpo_tasks import TASKS
from stoker.train.model import Transformer

ROLES = ("trainer", "rollout", "reward")
POLL_S = 0.005


@dataclass(frozen=True)
class Layout:
    """Which ranks of the job's one world hold each role, and who this process is."""

    spans: dict[str, range]  # role -> its job-wide ranks
    role: str
    role_rank: int
    rank: int

    @classmethod
    def from_env(cls) -> Layout:
        spans: dict[str, range] = {}
        for part in os.environ["STOKER_ROLES"].split(","):
            name, _, span = part.partition("=")
            first, _, last = span.partition("-")
            spans[name] = range(int(first), int(last or first) + 1)
        missing = [r for r in ROLES if r not in spans]
        if missing or set(spans) - set(ROLES):
            raise ConfigError(None, "roles", f"a GRPO job has the roles {', '.join(ROLES)} "
                              f"(got {', '.join(spans)})")
        return cls(spans, os.environ["STOKER_ROLE"], int(os.environ["STOKER_ROLE_RANK"]),
                   int(os.environ["RANK"]))

    def count(self, role: str) -> int:
        return len(self.spans[role])


# --- the exchange ---------------------------------------------------------------------------

class Exchange:
    """Small files in one directory, each written whole (a rename) and read once it exists."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, obj: Any) -> None:
        tmp = self.root / f".{name}.tmp"
        torch.save(obj, tmp)
        os.replace(tmp, self.root / name)

    def get(self, name: str) -> Any:
        path = self.root / name
        poll(lambda: path.exists() or None, f"{name} in {self.root}")
        return torch.load(path, weights_only=False)


def poll(found: Callable[[], Any], what: str, timeout_s: float = 600.0) -> Any:
    """``found()`` once it is not None, asked every `POLL_S`; TimeoutError after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (value := found()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout_s:.0f} s")
        time.sleep(POLL_S)
    return value


class WeightSync:
    """Trainer 0 publishes full weights by version; rollout workers take a version or newer."""

    def __init__(self, method: str, exchange: Exchange, group: dist.ProcessGroup | None,
                 source: int) -> None:
        self.method, self.exchange, self.group, self.source = method, exchange, group, source
        self.have = -1  # the newest version a rollout worker has

    def publish(self, version: int, state: dict[str, torch.Tensor]) -> float:
        started = time.perf_counter()
        if self.method == "file":
            self.exchange.put(f"weights-{version}.pt", state)
            old = self.exchange.root / f"weights-{version - 2}.pt"
            old.unlink(missing_ok=True)  # a reader takes the newest; one older may be in use
        else:
            dist.broadcast(torch.tensor([version]), src=self.source, group=self.group)
            for tensor in state.values():
                dist.broadcast(tensor.contiguous(), src=self.source, group=self.group)
        return time.perf_counter() - started

    def take(self, model: Transformer, at_least: int) -> tuple[int, float]:
        """Load version ``at_least`` or newer into ``model``: (the version, the seconds it
        took once the version was there: the wait for the trainers is left out)."""
        if self.method == "file":
            newest = self._newest_file(at_least)
            started = time.perf_counter()
            if newest > self.have:
                path = self.exchange.root / f"weights-{newest}.pt"
                model.load_state_dict(torch.load(path, mmap=True, weights_only=True))
                self.have = newest
            return self.have, time.perf_counter() - started
        spent = 0.0
        state, header = model.state_dict(), torch.zeros(1, dtype=torch.long)
        while self.have < at_least:  # every version, in order: a broadcast needs everyone
            dist.broadcast(header, src=self.source, group=self.group)  # waits for the trainer
            started = time.perf_counter()
            for tensor in state.values():
                dist.broadcast(tensor, src=self.source, group=self.group)
            spent += time.perf_counter() - started
            self.have = int(header)
        return self.have, spent

    def _newest_file(self, at_least: int) -> int:
        def newest() -> int | None:
            versions = [int(p.stem.split("-")[1]) for p in self.exchange.root.glob("weights-*.pt")]
            return max(versions) if versions and max(versions) >= at_least else None

        version: int = poll(newest, f"weights of version {at_least} or newer in "
                                    f"{self.exchange.root}")
        return version


# --- the roles --------------------------------------------------------------------------------

def rollout_worker(recipe: GrpoRecipe, layout: Layout, exchange: Exchange, sync: WeightSync,
                   start: int) -> None:
    cfg, w = recipe.grpo, layout.role_rank
    model = build_model(recipe).eval()
    sync.have = start - 1  # the trainers publish version `start` first
    for step in range(start + 1, cfg.steps + 1):
        version, sync_s = sync.take(model, max(start, step - 1 - recipe.roles.max_staleness))
        pairs = exchange.get(f"prompts-{step}-{w}.pt")
        encoded = [TOKENIZER.encode(p) for p, _ in pairs for _ in range(cfg.group_size)]
        started = time.perf_counter()
        completions = generate(model, encoded, Sampling(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
            stop_tokens=(STOP_ID,), seed=recipe.run.seed * 1_000_003 + step + w * 7_919_993))
        gen_s = time.perf_counter() - started
        tokens, _ = pack(encoded, completions)
        with torch.no_grad():
            logp = token_logprobs(model, tokens)
        exchange.put(f"rollouts-{step}-{w}.pt", {
            "prompts": encoded, "completions": completions, "answers": [a for _, a in pairs],
            "logp": logp, "version": version, "gen_s": gen_s, "sync_s": sync_s})


def reward_worker(recipe: GrpoRecipe, layout: Layout, exchange: Exchange, start: int) -> None:
    t = recipe.task
    task = TASKS[t.name](min_len=t.min_len, max_len=t.max_len, partial=t.partial)
    mine = [w for w in range(layout.count("rollout"))
            if w % layout.count("reward") == layout.role_rank]
    for step in range(start + 1, recipe.grpo.steps + 1):
        for w in mine:
            batch = exchange.get(f"rollouts-{step}-{w}.pt")
            started = time.perf_counter()
            g = recipe.grpo.group_size
            rewards = [task.reward(TOKENIZER.decode(c), batch["answers"][i // g])
                       for i, c in enumerate(batch["completions"])]
            exchange.put(f"rewards-{step}-{w}.pt",
                         {"rewards": rewards, "reward_s": time.perf_counter() - started})


@dataclass
class Batch:
    prompts: list[list[int]]
    completions: list[list[int]]
    behaviour_logp: torch.Tensor  # [B, T-1], padded as pack pads
    rewards: torch.Tensor  # [P, G]
    versions: list[int]
    gen_s: float
    reward_s: float
    wait_s: float
    sync_take_s: float  # the longest a rollout worker took to load its weights


def collect(exchange: Exchange, step: int, rollouts: int, group_size: int) -> Batch:
    """Every rollout worker's share of the step, in worker order, with its rewards."""
    started = time.perf_counter()
    parts = [(exchange.get(f"rollouts-{step}-{w}.pt"), exchange.get(f"rewards-{step}-{w}.pt"))
             for w in range(rollouts)]
    wait_s = time.perf_counter() - started
    prompts = [p for r, _ in parts for p in r["prompts"]]
    completions = [c for r, _ in parts for c in r["completions"]]
    tokens, _ = pack(prompts, completions)
    logp = torch.zeros(tokens.shape[0], tokens.shape[1] - 1)
    row = 0
    for r, _ in parts:  # each worker's log-probs were padded to its own longest row
        n, t = r["logp"].shape
        logp[row:row + n, :t] = r["logp"]
        row += n
    rewards = torch.tensor([x for _, q in parts for x in q["rewards"]]).view(-1, group_size)
    return Batch(prompts, completions, logp, rewards, [r["version"] for r, _ in parts],
                 max(r["gen_s"] for r, _ in parts), max(q["reward_s"] for _, q in parts), wait_s,
                 max(r["sync_s"] for r, _ in parts))


class Trainer:
    """The trainer ranks' loop: FSDP2 over ``group``; trainer 0 also draws the prompts, writes
    the records and checkpoints."""

    def __init__(self, recipe: GrpoRecipe, layout: Layout, exchange: Exchange,
                 sync: WeightSync, group: dist.ProcessGroup, run_dir: Path) -> None:
        self.recipe, self.layout, self.exchange, self.sync = recipe, layout, exchange, sync
        self.group, self.run_dir = group, run_dir
        self.lead = layout.role_rank == 0
        t = recipe.task
        self.prompts = Prompts.make(TASKS[t.name](min_len=t.min_len, max_len=t.max_len,
                                                  partial=t.partial), recipe.run.seed, t.held_out)
        self.model = build_model(recipe)
        self.ref: Transformer | None = None
        self.step = 0
        self.head: dict[str, Any] = {}

    def prepare(self, saved: dict[str, Any] | None) -> None:
        """The warm-up (or the checkpoint's state), then FSDP2 and the optimiser."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import fully_shard

        cfg = self.recipe.grpo
        if saved is None:
            started = time.perf_counter()
            warmup(self.model, self.prompts, self.recipe.warmup)
            self.head = {"pass_at_1_warmup": pass_at_1(self.model, self.prompts,
                                                       cfg.max_new_tokens),
                         "warmup_s": time.perf_counter() - started}
        else:
            self.model.load_state_dict(saved["model"])
            self.prompts.rng.setstate(saved["prompt_rng"])
            self.step, self.head = saved["step"], saved["summary"]
        if cfg.beta > 0:
            self.ref = build_model(self.recipe).eval().requires_grad_(False)
            self.ref.load_state_dict(saved["ref"] if saved is not None
                                     else self.model.state_dict())
        mesh = DeviceMesh.from_group(self.group, "cpu")
        for block in self.model.layers.values():
            fully_shard(block, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        if saved is not None and saved["opt"] is not None:
            set_optimizer_state_dict(self.model, self.opt, saved["opt"],
                                     options=StateDictOptions(full_state_dict=True))

    def full_state(self) -> dict[str, torch.Tensor]:
        """The whole model's weights (a collective of the trainers; every rank gets them)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    def publish(self) -> float:
        state = self.full_state()
        return self.sync.publish(self.step, state) if self.lead else 0.0

    def hand_out(self, step: int) -> None:
        """Trainer 0: the step's prompts, split evenly over the rollout workers."""
        rollouts = self.layout.count("rollout")
        pairs = self.prompts.draw(self.recipe.grpo.prompts)  # every trainer draws: same stream
        if self.lead:
            share = len(pairs) // rollouts
            for w in range(rollouts):
                self.exchange.put(f"prompts-{step}-{w}.pt", pairs[w * share:(w + 1) * share])

    def train_step(self) -> dict[str, Any]:
        self.step += 1
        cfg = self.recipe.grpo
        batch = collect(self.exchange, self.step, self.layout.count("rollout"), cfg.group_size)
        started = time.perf_counter()
        tokens, mask = pack(batch.prompts, batch.completions)
        advantages = group_advantages(batch.rewards).flatten()
        n, me = self.layout.count("trainer"), self.layout.role_rank
        rows = slice(me * len(tokens) // n, (me + 1) * len(tokens) // n)
        mine = tokens[rows], mask[rows], advantages[rows], batch.behaviour_logp[rows]
        self.model.train()
        stats = mean_over(optimise(self.model, self.ref, self.opt, *mine, cfg), self.group,
                          keep=("grad_norm",))
        train_s = time.perf_counter() - started
        record = step_record(self.step, batch.rewards, batch.prompts, batch.completions,
                             cfg.iterations, batch.gen_s, batch.reward_s, train_s)
        return record | {"wait_s": batch.wait_s, "sync_take_s": batch.sync_take_s,
                         "staleness": self.step - 1 - min(batch.versions), **stats}

    def checkpoint(self) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        # Before the first step there is no optimiser state to keep, and asking for it would
        # make one (torch takes a step with zero gradients: Adam's step count would be off).
        opt = (get_optimizer_state_dict(self.model, self.opt, options=options)
               if self.step > 0 else None)
        state = {"model": self.full_state(), "opt": opt,
                 "ref": self.ref.state_dict() if self.ref is not None else None,
                 "step": self.step, "prompt_rng": self.prompts.rng.getstate(),
                 "summary": self.head}
        if self.lead:
            save_state(self.run_dir / STATE, {"roles": state})


def mean_over(stats: dict[str, float], group: dist.ProcessGroup,
              keep: tuple[str, ...] = ()) -> dict[str, float]:
    """Each statistic averaged over the trainer ranks' slices (``keep``: already global)."""
    names = [k for k in stats if k not in keep]
    values = torch.tensor([stats[k] for k in names], dtype=torch.float64)
    dist.all_reduce(values, group=group)
    n = dist.get_world_size(group)
    return stats | {k: float(v) / n for k, v in zip(names, values, strict=True)}


# --- one process ------------------------------------------------------------------------------

def run_role(recipe: GrpoRecipe, run_dir: Path, log: Callable[[str], None] = print) -> None:
    """This process's role, from the job's environment, to the last step."""
    layout = Layout.from_env()
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    check_shape(recipe, layout)
    dist.init_process_group("gloo")
    try:
        trainers = dist.new_group(list(layout.spans["trainer"]))
        sync_ranks = [layout.spans["trainer"][0], *layout.spans["rollout"]]
        sync_group = dist.new_group(sync_ranks) if recipe.roles.sync == "broadcast" else None
        attempt = os.environ.get("STOKER_ATTEMPT", "1")
        exchange = Exchange(run_dir / "exchange" / f"attempt-{attempt}")
        sync = WeightSync(recipe.roles.sync, exchange, sync_group, sync_ranks[0])
        start = start_step(run_dir, layout, exchange)
        if layout.role == "trainer":
            train(recipe, layout, exchange, sync, trainers, run_dir, log)
        elif layout.role == "rollout":
            rollout_worker(recipe, layout, exchange, sync, start)
        else:
            reward_worker(recipe, layout, exchange, start)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def check_shape(recipe: GrpoRecipe, layout: Layout) -> None:
    cfg, rollouts = recipe.grpo, layout.count("rollout")
    if cfg.prompts % rollouts:
        raise ConfigError(None, "grpo.prompts", f"{cfg.prompts} prompts do not split evenly "
                          f"over {rollouts} rollout workers")
    if (cfg.prompts * cfg.group_size) % layout.count("trainer"):
        raise ConfigError(None, "grpo.prompts", f"{cfg.prompts} x {cfg.group_size} completions "
                          f"do not split evenly over {layout.count('trainer')} trainer ranks")


def start_step(run_dir: Path, layout: Layout, exchange: Exchange) -> int:
    """The step the trainers resume after (0: a fresh run), told to every role: trainer 0
    reads the checkpoint and writes it into this attempt's exchange."""
    if layout.role == "trainer" and layout.role_rank == 0:
        saved = load_saved(run_dir)
        exchange.put("start.pt", saved["step"] if saved is not None else 0)
    return int(exchange.get("start.pt"))


def load_saved(run_dir: Path) -> dict[str, Any] | None:
    """The trainers' checkpoint in the run dir, if any."""
    path = run_dir / STATE
    if not path.exists():
        return None
    saved: dict[str, Any] = torch.load(path, weights_only=False)
    if "roles" not in saved:
        raise StokerError(f"{path} is a one-process GRPO run's state: resume it without roles")
    state: dict[str, Any] = saved["roles"]
    return state


def train(recipe: GrpoRecipe, layout: Layout, exchange: Exchange, sync: WeightSync,
          group: dist.ProcessGroup, run_dir: Path, log: Callable[[str], None]) -> None:
    cfg = recipe.grpo
    saved = load_saved(run_dir)
    trainer = Trainer(recipe, layout, exchange, sync, group, run_dir)
    trainer.prepare(saved)
    lead = trainer.lead
    records = run_dir / RECORDS
    if lead:
        kept = [line for line in records.read_text().splitlines()
                if json.loads(line)["step"] <= trainer.step] if records.exists() else []
        records.write_text("".join(line + "\n" for line in kept))
        if saved is None:
            log(f"warm-up: pass@1 {trainer.head['pass_at_1_warmup']:.3f}")
        else:
            log(f"resumed at GRPO step {trainer.step}")
    if saved is None:
        trainer.checkpoint()
    if trainer.step < cfg.steps:
        trainer.publish()  # the starting weights: version `step`
    last_step = cfg.steps
    ahead = recipe.roles.max_staleness
    for step in range(trainer.step + 1, min(trainer.step + 1 + ahead, last_step) + 1):
        trainer.hand_out(step)
    with records.open("a") if lead else open(os.devnull, "w") as out:
        while trainer.step < last_step:
            record = trainer.train_step()
            # This step's weights, to the rollouts: those no rollout will take are not sent
            # (a broadcast nobody joins would never end).
            needed = trainer.step <= last_step - 1 - ahead
            record["sync_s"] = trainer.publish() if needed else 0.0
            if trainer.step + 1 + ahead <= last_step:
                trainer.hand_out(trainer.step + 1 + ahead)
            if trainer.step % cfg.eval_interval == 0 or trainer.step == last_step:
                record["pass_at_1"] = evaluate(trainer)
            # The record before the checkpoint: a resume drops the records after the saved
            # step and redoes them, so a gang stopped between the two loses no step's record.
            if lead:
                record["time"] = time.time()
                out.write(json.dumps(record) + "\n")
                out.flush()
                log(step_line(record))
            if cfg.checkpoint_interval and (trainer.step % cfg.checkpoint_interval == 0
                                            or trainer.step == last_step):
                trainer.checkpoint()


def evaluate(trainer: Trainer) -> float:
    """pass@1 with the whole model, on trainer 0 (the others wait at the next collective)."""
    state = trainer.full_state()
    if not trainer.lead:
        return 0.0
    model = build_model(trainer.recipe)
    model.load_state_dict(state)
    return pass_at_1(model, trainer.prompts, trainer.recipe.grpo.max_new_tokens)


# --- entry points -----------------------------------------------------------------------------

def launch_local(argv: list[str], run_dir: Path, counts: dict[str, int]) -> int:
    """Start every role's processes on this machine as the control plane would (one gloo world,
    the roles' environment); trainer 0's output here, the others' in RUN_DIR/logs/. The first
    process to fail stops the rest; its exit code is returned."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spans, first = [], 0
    for role in ROLES:
        spans.append((role, range(first, first + counts[role])))
        first += counts[role]
    every = ",".join(f"{r}={span[0]}-{span[-1]}" for r, span in spans)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as logs:
        return _run_all(argv, run_dir, spans, every, port, logs)


def _run_all(argv: list[str], run_dir: Path, spans: list[tuple[str, range]], every: str,
             port: int, logs: contextlib.ExitStack) -> int:
    import signal
    import subprocess
    import sys

    world = sum(len(span) for _, span in spans)
    procs: list[subprocess.Popen[bytes]] = []
    for role, span in spans:
        for i, rank in enumerate(span):
            env = os.environ | {
                "RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port), "STOKER_ROLE": role, "STOKER_ROLE_RANK": str(i),
                "STOKER_ROLE_WORLD_SIZE": str(len(span)), "STOKER_ROLES": every,
                "STOKER_ATTEMPT": str(int(os.environ.get("STOKER_ATTEMPT", "1")))}
            out = None if rank == 0 else logs.enter_context(
                (run_dir / "logs" / f"rank-{rank}.log").open("ab"))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "stoker.train.grpo_roles", *argv], env=env,
                stdout=out, stderr=subprocess.STDOUT if out else None))
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    return failed[0] if failed else 0


def main(args: list[str] | None = None) -> int:
    """``python -m stoker.train.grpo_roles [CONFIG] [--run-dir DIR] [--set k=v ...]``: this
    process's role; the run dir defaults to the job's (``STOKER_RUN_DIR``). ``STOKER_GRPO_SET``
    (``k=v`` pairs separated by spaces) adds overrides before the ``--set`` ones: a job's
    ``env`` gives them to every role at once."""
    import argparse
    import sys

    from stoker.spec import loading

    p = argparse.ArgumentParser(prog="python -m stoker.train.grpo_roles")
    p.add_argument("config", nargs="?", type=Path)
    p.add_argument("--run-dir", type=Path, default=os.environ.get("STOKER_RUN_DIR"))
    p.add_argument("--set", dest="sets", action="append", default=[])
    a = p.parse_args(args)
    a.sets = os.environ.get("STOKER_GRPO_SET", "").split() + a.sets
    try:
        if a.run_dir is None:
            raise ConfigError(None, "--run-dir", "no run dir: give --run-dir (a job has "
                              "STOKER_RUN_DIR)")
        recipe = (loading.load(GrpoRecipe, a.config, a.sets) if a.config is not None
                  else loading.validate(GrpoRecipe, loading.apply_overrides({}, a.sets), None))
        a.run_dir.mkdir(parents=True, exist_ok=True)
        run_role(recipe, a.run_dir, log=lambda line: print(line, flush=True))
    except StokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
