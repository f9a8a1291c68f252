"""GRPO (`stoker.train.grpo`): the group advantage, the clipped objective and the KL term
against hand-computed values, the log-probs' masking, the tasks' rewards, and the recipe end
to end at a small size."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stoker.spec.errors import StokerError
from stoker.spec.grpo import GrpoRecipe
from stoker.spec.loading import validate
from stoker.spec.train import ModelShape
from stoker.train.grpo import (
    ADV_EPS,
    entropy,
    group_advantages,
    grpo_loss,
    k3_kl,
    pack,
    run,
    token_logprobs,
)
from stoker.train.grpo_tasks import Addition, Reverse
from stoker.train.model import Transformer


def test_group_advantage_is_the_reward_standardised_within_its_group() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    got = group_advantages(rewards)
    # mean 2, population std sqrt(2/3); mean 1/3, std sqrt(2)/3
    s1, s2 = math.sqrt(2 / 3), math.sqrt(2) / 3
    want = torch.tensor([[-1 / (s1 + ADV_EPS), 0.0, 1 / (s1 + ADV_EPS)],
                         [-1 / 3 / (s2 + ADV_EPS), -1 / 3 / (s2 + ADV_EPS),
                          2 / 3 / (s2 + ADV_EPS)]])
    torch.testing.assert_close(got, want)


def test_equal_rewards_and_a_single_completion_give_zero_advantage() -> None:
    assert group_advantages(torch.tensor([[0.5, 0.5, 0.5, 0.5]])).abs().max() == 0
    assert group_advantages(torch.tensor([[0.7], [0.0]])).abs().max() == 0


def test_k3_kl_by_hand() -> None:
    logp = torch.zeros(3)
    ref = torch.tensor([0.0, math.log(2), -math.log(2)])
    # exp(d) - d - 1 for d = 0, ln 2, -ln 2
    want = torch.tensor([0.0, 1 - math.log(2), 0.5 + math.log(2) - 1])
    torch.testing.assert_close(k3_kl(logp, ref), want)


def _ratios_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two completions; token ratios [1.5, 0.5, pad] (Â = +1) and [1.5, 0.5, 1.0] (Â = −1)."""
    old = torch.full((2, 3), -1.0)
    logp = old + torch.log(torch.tensor([[1.5, 0.5, 7.0], [1.5, 0.5, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    return logp.requires_grad_(), old, torch.tensor([1.0, -1.0]), mask


def test_clipped_objective_by_hand() -> None:
    logp, old, adv, mask = _ratios_case()
    loss, stats = grpo_loss(logp, old, adv, mask, clip_eps=0.2)
    # Â=+1: min(1.5, 1.2)=1.2, min(0.5, 0.8)=0.5 -> mean 0.85 over its 2 tokens (pad ignored)
    # Â=−1: min(−1.5, −1.2)=−1.5, min(−0.5, −0.8)=−0.8, −1 -> mean −1.1 over 3 tokens
    assert loss.item() == pytest.approx(-(0.85 - 1.1) / 2)
    assert stats["clip_frac"] == pytest.approx((2 / 2 + 2 / 3) / 2)
    assert stats["kl"] == 0
    loss.backward()
    assert logp.grad is not None
    # clipped tokens carry no gradient; d(−J)/dlogp = −Â ρ / |o_i| / B for the others
    want = torch.tensor([[0.0, -0.5 / 2 / 2, 0.0], [1.5 / 3 / 2, 0.0, 1.0 / 3 / 2]])
    torch.testing.assert_close(logp.grad, want)


def test_kl_penalty_is_subtracted_with_weight_beta() -> None:
    logp, old, adv, mask = _ratios_case()
    ref = logp.detach() + math.log(2)  # k3 = 1 − ln 2 on every token
    loss, stats = grpo_loss(logp, old, adv, mask, clip_eps=0.2, beta=0.1, ref_logp=ref)
    assert stats["kl"] == pytest.approx(1 - math.log(2))
    assert loss.item() == pytest.approx(-(0.85 - 1.1) / 2 + 0.1 * (1 - math.log(2)))
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(logp, old, adv, mask, clip_eps=0.2, beta=0.1)


def test_on_policy_first_iteration_is_the_advantage_weighted_log_likelihood() -> None:
    """At ρ = 1 the clipped objective's gradient is that of Â · mean log π (REINFORCE)."""
    logp = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    adv = torch.tensor([0.5, -1.0, 2.0])
    loss, _ = grpo_loss(logp, logp.detach(), adv, mask, clip_eps=0.2)
    loss.backward()
    assert logp.grad is not None
    want = -(adv[:, None] * mask / mask.sum(-1, keepdim=True)) / 3
    torch.testing.assert_close(logp.grad, want)


def test_completion_logprobs_ignore_right_padding_and_mask_the_prompt() -> None:
    torch.manual_seed(0)
    model = Transformer(ModelShape(dim=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=64,
                                   vocab_size=20)).eval()
    model.init_weights()
    prompts, completions = [[1, 2, 3], [4]], [[5, 6], [7, 8, 9, 10]]
    tokens, mask = pack(prompts, completions)
    assert tokens.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 10]]
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    with torch.no_grad():
        batched = token_logprobs(model, tokens)
        alone = token_logprobs(model, torch.tensor([[1, 2, 3, 5, 6]]))
    torch.testing.assert_close(batched[0], alone[0])


def test_task_rewards_exact_and_partial() -> None:
    task = Reverse(min_len=3, max_len=3, partial=0.5)
    prompt, answer = task.make_prompt(random.Random(0))
    assert prompt == answer[::-1] + "=" and len(answer) == 3
    assert Reverse().reward("cba\n", "cba") == 1.0
    assert Reverse().reward("cba", "cba") == pytest.approx(0.5)  # never stopped
    assert Reverse().reward("cxa\n", "cba") == pytest.approx(0.5 * 2 / 3)
    assert Reverse().reward("cbaa\n", "cba") == pytest.approx(0.5 * 3 / 4)
    assert Addition().reward("357\n", "357") == 1.0
    assert Addition().reward("457\n", "357") == pytest.approx(0.5 * 2 / 3)  # units and tens
    assert Addition().reward("57\n", "357") == pytest.approx(0.5 * 2 / 3)


# The recipe end to end at a small size (examples/grpo/reverse.toml, fewer steps, no KL):
# about 20 s on a busy 2-core machine. Seeds fixed, so the run is the same each time.
SMALL = {"model": {"preset": "tiny", "dim": 64, "n_layers": 2, "ffn_hidden": 176},
         "task": {"name": "reverse", "min_len": 3, "max_len": 5, "held_out": 200},
         "warmup": {"steps": 100, "batch_size": 32, "lr": 3e-3},
         "grpo": {"steps": 100, "prompts": 8, "group_size": 8, "iterations": 2, "lr": 3e-4,
                  "max_new_tokens": 8, "eval_interval": 50},
         "run": {"seed": 0, "threads": 1}}  # one thread: two fight each other on a busy machine
MARGIN = 0.08  # pass@1 after GRPO at least this much above the warm-up model's


@pytest.mark.slow
def test_grpo_raises_held_out_pass_at_1_above_the_warm_up_model(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        summary = run(validate(GrpoRecipe, SMALL, None), tmp_path, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    assert summary["pass_at_1_grpo"] >= summary["pass_at_1_warmup"] + MARGIN, summary
    records = [json.loads(line) for line in (tmp_path / "grpo.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 101))
    assert {"reward_mean", "reward_std", "kl", "completion_len", "gen_tokens_per_s", "gen_s",
            "reward_s", "train_s", "loss"} <= records[0].keys()
    assert [r["step"] for r in records if "pass_at_1" in r] == [50, 100]
    first, last = records[:20], records[-20:]
    assert sum(r["reward_mean"] for r in last) > sum(r["reward_mean"] for r in first)


def test_cli_rejects_a_bad_key_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[grpo]\ngroup_sise = 4\n")
    done = subprocess.run([sys.executable, "-m", "stoker.train.grpo", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: {cfg}: grpo.group_sise: unknown key; "
                                   "did you mean 'group_size'?")


def test_a_task_the_held_out_set_uses_up_is_a_one_line_error(tmp_path: Path) -> None:
    cfg = tmp_path / "small.toml"
    cfg.write_text("[task]\nmin_len = 1\nmax_len = 1\nheld_out = 8\n")  # all 8 one-letter strings
    done = subprocess.run([sys.executable, "-m", "stoker.train.grpo", str(cfg),
                           "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: task.held_out: 8 held-out prompts leave (almost) none to train on: hold out "
        "fewer, or lengthen the task's strings")


def test_a_resumed_loop_redoes_nothing_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    """Stopped after step 2 (its checkpoint), then resumed to step 4: the same records."""
    tiny = {"model": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 2,
                      "ffn_hidden": 64},
            "task": {"min_len": 3, "max_len": 4, "held_out": 20},
            "warmup": {"steps": 30, "batch_size": 16},
            "grpo": {"steps": 4, "prompts": 2, "group_size": 4, "beta": 0.1,
                     "eval_interval": 2, "checkpoint_interval": 2},
            "run": {"threads": 1}}
    threads = torch.get_num_threads()
    try:
        whole = validate(GrpoRecipe, tiny, None)
        run(whole, tmp_path / "whole", log=lambda line: None)
        whole = validate(GrpoRecipe, tiny | {"telemetry": {"sinks": ["jsonl", "tensorboard"]}},
                         None)
        half = whole.model_copy(update={"grpo": whole.grpo.model_copy(update={"steps": 2})})
        run(half, tmp_path / "resumed", log=lambda line: None)
        with pytest.raises(StokerError, match="--resume"):
            run(whole, tmp_path / "resumed", log=lambda line: None)
        run(whole, tmp_path / "resumed", resume=True, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    timing = {"gen_s", "reward_s", "train_s", "gen_tokens_per_s", "train_tokens_per_s"}

    def records(run_dir: Path) -> list[dict[str, object]]:
        lines = (run_dir / "grpo.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]

    assert [r["step"] for r in records(tmp_path / "resumed")] == [1, 2, 3, 4]
    assert all(r["reward_std"] for r in records(tmp_path / "whole")[2:])  # steps that teach
    assert records(tmp_path / "resumed") == records(tmp_path / "whole")
    # The same records reach TensorBoard, one events file per attempt.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((tmp_path / "resumed" / "tensorboard").glob("events.out.*"))) == 2
    acc = EventAccumulator(str(tmp_path / "resumed" / "tensorboard"))
    acc.Reload()
    for key in ("reward_mean", "entropy", "kl", "train_tokens_per_s"):
        logged = {e.step: e.value for e in acc.Scalars(key)}
        want = {r["step"]: r[key] for r in map(json.loads, (tmp_path / "resumed" / "grpo.jsonl")
                                               .read_text().splitlines())}
        assert logged == pytest.approx(want, rel=1e-6), key


def test_entropy_by_hand() -> None:
    uniform = torch.log_softmax(torch.zeros(2, 3, 5), dim=-1)
    assert entropy(uniform) == pytest.approx(torch.full((2, 3), math.log(5)))
    sure = torch.log_softmax(torch.tensor([[[60.0, 0.0, 0.0]]]), dim=-1)
    assert entropy(sure).item() == pytest.approx(0.0, abs=1e-20)
    two = torch.log(torch.tensor([[[0.5, 0.5, 0.0]]]).clamp(min=1e-30))
    assert entropy(two).item() == pytest.approx(math.log(2))
