"""Failure classification (`stoker.control.failure`) on what real processes leave: their exit
codes and the lines they write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stoker.control import failure
from stoker.control.evidence import attempt_log
from stoker.control.failure import AttemptEvidence, ProcessEvidence, classify

# Rank 0 of two gloo ranks on 127.0.0.1 whose peer was killed by SIGKILL mid all-reduce (torch
# 2.x, recorded from a real run: torch's own "[rank0]:" prefix included).
GLOO_PEER_KILLED = """\
[rank0]: Traceback (most recent call last):
[rank0]:   File "/tmp/cause/gl.py", line 9, in <module>
[rank0]:     dist.all_reduce(t)
[rank0]:   File "torch/distributed/c10d_logger.py", line 83, in wrapper
[rank0]:     return func(*args, **kwargs)
[rank0]:            ^^^^^^^^^^^^^^^^^^^^^
[rank0]:   File "torch/distributed/distributed_c10d.py", line 3252, in all_reduce
[rank0]:     work.wait()
[rank0]: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] \
Read error [127.0.0.1]:32463: Connection reset by peer. This is typically caused by a remote \
worker hanging or bugs in the application.
""".splitlines()


def run(code: str) -> tuple[int, list[str]]:
    """A real Python process: its exit code (negative: a signal) and its output's lines."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    return done.returncode, (done.stdout + done.stderr).splitlines()


def one(code: int | None, log: list[str], node: str = "n1", **kw: object) -> failure.Cause:
    cause = classify(AttemptEvidence([ProcessEvidence(0, node, code, log)], **kw))  # type: ignore[arg-type]
    assert cause is not None
    return cause


def test_user_exception_from_a_real_traceback() -> None:
    code, log = run("def train():\n    return 1 / 0\nprint('step 1')\ntrain()\n")
    cause = one(code, log)
    assert (cause.category, cause.code, cause.exit_code) == ("user", "user_exception", 1)
    assert cause.lines[0] == "Traceback (most recent call last):"
    assert cause.lines[-1] == "ZeroDivisionError: division by zero"
    assert "ZeroDivisionError: division by zero" in cause.message and cause.nodes == ()
    assert not cause.retried


def test_bad_arguments_exit_2() -> None:
    code, log = run("import argparse; argparse.ArgumentParser(prog='x').parse_args(['--nope'])")
    cause = one(code, log)
    assert (cause.category, cause.code) == ("user", "bad_config")
    assert cause.lines == ("usage: x [-h]", "x: error: unrecognized arguments: --nope")
    # The training runtime's own config error line.
    cause = one(2, ["error: train.toml: [train] steps: must be > 0"])
    assert cause.code == "bad_config" and "steps: must be > 0" in cause.message


def test_signal_kill_is_infra_and_blames_the_node() -> None:
    code, log = run("import os, signal; print('up', flush=True); "
                    "os.kill(os.getpid(), signal.SIGKILL)")
    assert code == -9
    cause = one(code, log, node="bad")
    assert (cause.category, cause.code, cause.nodes) == ("infra", "signal", ("bad",))
    assert "SIGKILL" in cause.message and cause.retried
    # As a shell or the supervisor's parent reports it: 128 + 9.
    assert one(137, []).code == "signal"


def test_oom_kill_is_the_jobs() -> None:
    cause = one(-9, [], oom_kills=1, memory_limit=True)
    assert (cause.category, cause.code) == ("user", "oom") and "resources.memory" in cause.message
    code, log = run("raise MemoryError('cannot allocate 80 GiB')")
    assert one(code, log).code == "oom"


def test_a_dead_rank_explains_its_peers_collective_error() -> None:
    ranks = [ProcessEvidence(0, "a", 1, GLOO_PEER_KILLED), ProcessEvidence(1, "b", -9, [])]
    cause = classify(AttemptEvidence(ranks))
    assert cause is not None
    assert (cause.code, cause.nodes, cause.index) == ("signal", ("b",), 1)
    # Alone, the peer-lost error is a collective error that blames no node.
    alone = classify(AttemptEvidence(ranks[:1]))
    assert alone is not None and (alone.category, alone.code, alone.nodes) == (
        "infra", "collective", ())
    assert alone.lines[-1].startswith("RuntimeError: [/__w/pytorch")


def test_a_collective_error_of_its_own_blames_its_node() -> None:
    log = ["Traceback (most recent call last):", '  File "t.py", line 3, in <module>',
           "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, "
           "unhandled system error (run with NCCL_DEBUG=INFO for details)"]
    ranks = [ProcessEvidence(0, "a", 1, GLOO_PEER_KILLED), ProcessEvidence(1, "b", 1, log)]
    cause = classify(AttemptEvidence(ranks))
    assert cause is not None and (cause.code, cause.nodes) == ("collective", ("b",))


def test_user_exception_goes_before_the_peers_collective_errors() -> None:
    code, log = run("raise ValueError('bad batch')")
    ranks = [ProcessEvidence(0, "a", 1, GLOO_PEER_KILLED), ProcessEvidence(1, "b", code, log)]
    cause = classify(AttemptEvidence(ranks))
    assert cause is not None and (cause.code, cause.index) == ("user_exception", 1)


def test_the_training_launchers_log() -> None:
    """`stoker train` tees every rank's output with a "[rankN]:" prefix and names the rank
    that failed with its own exit code."""
    _, log = run("raise KeyError('tok_embeddings')")
    lines = [*(f"[rank1]:{line}" for line in log),
             "stoker train: rank 1 failed: error (exit 1); logs in /j/run/logs"]
    cause = one(1, lines)
    assert cause.code == "user_exception" and cause.lines[-1] == "KeyError: 'tok_embeddings'"
    killed = [*GLOO_PEER_KILLED,
              "stoker train: rank 1 failed: killed by SIGKILL (exit -9); logs in /j/run/logs"]
    assert one(137, killed).code == "signal"
    hang = ["stoker train: rank 0 failed: hang detected by the watchdog (exit 86); logs in x"]
    cause = one(86, hang)
    assert (cause.category, cause.code, cause.lines) == ("infra", "hang", tuple(hang))


def test_stopped_processes_are_not_causes_and_node_loss_wins() -> None:
    ranks = [ProcessEvidence(0, "a", -15, [], stopped=True),
             ProcessEvidence(1, "b", 3, ["something odd"])]
    cause = classify(AttemptEvidence(ranks))
    assert cause is not None and (cause.category, cause.code, cause.index) == (
        "unknown", "exit_code", 1)
    assert cause.retried and cause.nodes == ()
    lost = classify(AttemptEvidence(ranks, lost_node="b", lost_reason="Ray node died"))
    assert lost is not None and (lost.code, lost.nodes) == ("node_lost", ("b",))
    assert classify(AttemptEvidence([ProcessEvidence(0, "a", 0, [])])) is None


def test_attempt_log_reads_only_this_attempts_lines(tmp_path: Path) -> None:
    logs = tmp_path / "7" / "logs"
    logs.mkdir(parents=True)
    (logs / "rank-0.log").write_text(
        "=== stoker: attempt 1 started x\nTraceback (most recent call last):\nOldError\n"
        "=== stoker: attempt 2 started y\nstep 1\n")
    assert attempt_log(tmp_path, 7, 0, 2) == ["step 1"]
    assert attempt_log(tmp_path, 7, 0, 1)[-1] == "OldError"
    assert attempt_log(tmp_path, 7, 1, 2) == []
    os.symlink(logs / "rank-0.log", logs / "rank-1.log")
    assert attempt_log(tmp_path, 7, 1, 2) == []  # a link the job planted is not followed


def test_a_peer_lost_with_a_flagged_straggler_blames_the_stragglers_node() -> None:
    plain = one(1, GLOO_PEER_KILLED)
    assert (plain.code, plain.nodes) == ("collective", ())  # a victim: no node blamed
    blamed = one(1, GLOO_PEER_KILLED, stragglers=((1, "n2"), (3, "n4"), (2, "n2")))
    assert (blamed.category, blamed.code, blamed.nodes) == ("infra", "collective", ("n2", "n4"))
    assert blamed.message.endswith("flagged as stragglers: rank 1 on n2, rank 3 on n4, "
                                   "rank 2 on n2")
    code, log = run("def train():\n    return 1 / 0\ntrain()\n")
    assert one(code, log, stragglers=((1, "n2"),)).nodes == ()  # the user's doing: no suspect


def test_the_ranks_still_flagged_are_those_of_the_latest_attempt(tmp_path: Path) -> None:
    import json

    from stoker.control.run_telemetry import flagged_at_end

    run_dir = tmp_path / "5" / "run"
    run_dir.mkdir(parents=True)
    events = [{"event": "straggler", "rank": 0}, {"event": "start"},
              {"event": "straggler", "rank": 3}, {"event": "straggler", "rank": 1},
              {"event": "straggler_cleared", "rank": 3}, {"event": "straggler", "rank": 2}]
    (run_dir / "events.jsonl").write_text("\n".join(map(json.dumps, events)) + "\n")
    assert flagged_at_end(tmp_path, 5) == [1, 2]
    assert flagged_at_end(tmp_path, 6) == []
