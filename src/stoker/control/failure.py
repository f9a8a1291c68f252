"""Why an attempt failed: its evidence in, one cause out. Pure: no I/O, no clock.

Evidence is what the control plane can see of each process of the attempt: its exit code (a
signal when negative, or 128 + the signal as a shell or the training launcher reports it),
whether it ended after the control plane asked it to stop, how it vanished, the last lines of
its log for this attempt (tracebacks, gloo/NCCL errors, the training launcher's and the
watchdog's lines), and whether the kernel's OOM killer acted during the attempt.

The cause has a category that decides what happens next (`stoker.control.reconciler`):

- ``user``: the job's own doing, the same on any node (an exception in the training code, a
  bad config or command line, memory beyond what it was given): the job fails at once.
- ``infra``: the machine or the network (a node lost, a signal nobody asked for, a hang, a
  collective that lost its peer or failed): the attempt is retried on other nodes, the
  suspected ones cordoned.
- ``unknown``: a non-zero exit with no evidence either way: retried as before, no node blamed.

Several ranks usually fail together (a rank dies; its peers' collectives fail after it), so
each process is classified and the root cause is the most telling one (`PRECEDENCE`); processes
stopped by the control plane after the first failure are never a cause.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass, replace

from stoker.train.exitcodes import EXIT_HANG, describe

INFRA, USER, UNKNOWN = "infra", "user", "unknown"

# Cause codes, with their category.
NODE_LOST = "node_lost"
SIGNALED = "signal"
HANG = "hang"
COLLECTIVE = "collective"
HEALTH_CHECK = "health_check"
OOM = "oom"
BAD_CONFIG = "bad_config"
USER_EXCEPTION = "user_exception"
EXIT_CODE = "exit_code"
CATEGORY = {NODE_LOST: INFRA, SIGNALED: INFRA, HANG: INFRA, COLLECTIVE: INFRA,
            HEALTH_CHECK: INFRA, OOM: USER, BAD_CONFIG: USER, USER_EXCEPTION: USER,
            EXIT_CODE: UNKNOWN}
# The root cause among the processes' causes: first in this order. A dead or hung rank
# explains its peers' collective errors; a user's exception explains its peers' too.
PRECEDENCE = (NODE_LOST, OOM, SIGNALED, HANG, BAD_CONFIG, USER_EXCEPTION, COLLECTIVE, EXIT_CODE)

EXIT_USAGE = 2  # a user mistake: bad config or flag, nothing was run (`stoker.train.exitcodes`)
MAX_LINES = 12  # log lines kept as a cause's evidence

# A collective lost a peer: the reporting rank is a victim, not the suspect.
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
             "remote process exited", "NCCL communicator was aborted",
             "Connection refused")
# A collective failed on this rank: its node (its NIC, its GPU) is suspect.
COLLECTIVE_ERRORS = ("NCCL error", "ncclSystemError", "ncclInternalError",
                     "ncclUnhandledCudaError", "ncclRemoteError", "Watchdog caught collective",
                     "ProcessGroupNCCL", "ProcessGroupGloo", "gloo/transport",
                     "DistBackendError", "Timed out waiting", "timed out after")
OOM_ERRORS = ("OutOfMemoryError", "CUDA out of memory", "MemoryError",
              "Cannot allocate memory")
TRACEBACK = "Traceback (most recent call last):"
_PREFIX = re.compile(r"^(?:\[(?:rank|default)\d+\]:\s?)+")  # torch's and the launcher's rank prefix
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning)|"
                        r"[A-Za-z_][\w.]*\.[A-Z]\w*|[A-Z]\w*)(?::|$)")
_FAILED_RANK = re.compile(r"^stoker train: rank (\d+) failed: (.*)$")


@dataclass(frozen=True)
class ProcessEvidence:
    """One process of the attempt as it ended."""

    index: int
    node: str
    exit_code: int | None  # negative: killed by that signal; None: vanished
    log: Sequence[str] = ()  # its log's lines for this attempt, the last ones
    stopped: bool = False  # ended after the control plane asked the gang to stop
    vanished: str | None = None  # how it vanished, where the executor knows


@dataclass(frozen=True)
class AttemptEvidence:
    processes: Sequence[ProcessEvidence]
    lost_node: str | None = None  # a node that died under the attempt
    lost_reason: str = ""
    oom_kills: int = 0  # the kernel's OOM kills among the job's processes during the attempt
    memory_limit: bool = False  # the job asked for an amount of memory
    stragglers: tuple[tuple[int, str], ...] = ()  # (rank, its node) still flagged at the end


@dataclass(frozen=True)
class Cause:
    category: str  # infra | user | unknown
    code: str
    message: str  # one line
    lines: tuple[str, ...] = ()  # the log lines that show it
    nodes: tuple[str, ...] = ()  # the nodes suspected (infra causes only)
    index: int | None = None  # the process it was found in
    exit_code: int | None = None

    @property
    def retried(self) -> bool:
        return self.category != USER

    def to_json(self) -> dict[str, object]:
        return {"category": self.category, "code": self.code, "message": self.message,
                "lines": list(self.lines), "nodes": list(self.nodes), "index": self.index,
                "exit_code": self.exit_code}


def health_check(nodes: Sequence[str], reason: str) -> Cause:
    """A pre-start health check failed on ``nodes`` (none: the gang's link, no node blamed)."""
    return Cause(INFRA, HEALTH_CHECK, f"pre-start health check failed: {reason}",
                 nodes=tuple(nodes))


def classify(evidence: AttemptEvidence) -> Cause | None:
    """The attempt's root cause; None when no process failed."""
    if evidence.lost_node is not None:
        return Cause(INFRA, NODE_LOST, f"node {evidence.lost_node} was lost: "
                     f"{evidence.lost_reason}".rstrip(": "), nodes=(evidence.lost_node,))
    causes = [c for p in evidence.processes if not p.stopped and p.exit_code != 0
              for c in [_process_cause(p, evidence)] if c is not None]
    if not causes:  # only stopped processes failed: the first of them
        causes = [c for p in evidence.processes if p.exit_code != 0
                  for c in [_process_cause(p, evidence)] if c is not None]
    if not causes:
        return None
    # A collective error that blames its own rank goes before one that only lost a peer.
    root = min(causes, key=lambda c: (PRECEDENCE.index(c.code), not c.nodes))
    return _blame_stragglers(root, evidence.stragglers)


def _blame_stragglers(cause: Cause, stragglers: Sequence[tuple[int, str]]) -> Cause:
    """A hang, or a collective that lost its peer, with no node to blame: the ranks still
    flagged as stragglers when it happened are the suspects (the gang waited on them)."""
    if cause.code not in (HANG, COLLECTIVE) or cause.nodes or not stragglers:
        return cause
    ranks = ", ".join(f"rank {rank} on {node}" for rank, node in stragglers)
    return replace(cause, message=f"{cause.message}; flagged as stragglers: {ranks}",
                   nodes=tuple(dict.fromkeys(node for _, node in stragglers)))


def _process_cause(p: ProcessEvidence, evidence: AttemptEvidence) -> Cause | None:
    code = p.exit_code
    lines = [_PREFIX.sub("", line.rstrip("\n")) for line in p.log]
    where = f"process {p.index} on {p.node}"
    if code is None:
        how = f": {p.vanished}" if p.vanished else ""
        # Its exit status was lost (e.g. killed while no server watched): nothing says the
        # node is at fault, so none is suspected.
        return Cause(INFRA, SIGNALED, f"{where} vanished{how}", index=p.index)
    if code == 0:
        return None
    oom = _last_matching(lines, OOM_ERRORS)
    if _signal(code) == signal.SIGKILL and evidence.oom_kills > 0:
        limit = ("its memory limit (resources.memory)" if evidence.memory_limit
                 else "the node's memory")
        return Cause(USER, OOM, f"{where} was killed by the kernel's OOM killer: it used more "
                     f"than {limit}", tuple(oom), index=p.index, exit_code=code)
    # The training launcher's log holds its ranks' output and names the failed rank's code.
    rank_code, line = _launcher_line(lines)
    code_seen = code if rank_code is None else rank_code
    sig = _signal(code_seen)
    if oom:
        return Cause(USER, OOM, f"{where}: out of memory: {oom[-1]}", tuple(_around(lines, oom)),
                     index=p.index, exit_code=code)
    if sig is not None:
        shown = [line] if line else []
        return Cause(INFRA, SIGNALED, f"{where}: {describe(-sig)}", tuple(shown),
                     nodes=(p.node,), index=p.index, exit_code=code)
    if code_seen == EXIT_HANG:
        shown = [line] if line else []
        return Cause(INFRA, HANG, f"{where}: a rank made no progress (hang watchdog)",
                     tuple(shown), nodes=(p.node,), index=p.index, exit_code=code)
    if code_seen == EXIT_USAGE:
        error = [x for x in lines if x.startswith(("error:", "usage:")) or ": error:" in x]
        why = error[-1] if error else f"exit code {EXIT_USAGE}"
        return Cause(USER, BAD_CONFIG, f"{where}: bad config or arguments: {why}",
                     tuple(error[-MAX_LINES:]), index=p.index, exit_code=code)
    trace = _traceback(lines)
    if trace:
        last = trace[-1]
        if any(m in last for m in PEER_LOST):
            return Cause(INFRA, COLLECTIVE, f"{where}: a collective lost its peer: "
                         f"{_short(last)}", tuple(trace), index=p.index, exit_code=code)
        if any(m in last for m in COLLECTIVE_ERRORS):
            return Cause(INFRA, COLLECTIVE, f"{where}: collective error: {_short(last)}",
                         tuple(trace), nodes=(p.node,), index=p.index, exit_code=code)
        return Cause(USER, USER_EXCEPTION, f"{where}: {_short(last)}", tuple(trace),
                     index=p.index, exit_code=code)
    errors = _last_matching(lines, PEER_LOST + COLLECTIVE_ERRORS)
    if errors:
        peer = any(m in errors[-1] for m in PEER_LOST)
        return Cause(INFRA, COLLECTIVE, f"{where}: collective error: {_short(errors[-1])}",
                     tuple(errors), nodes=() if peer else (p.node,), index=p.index,
                     exit_code=code)
    shown = [line] if line else lines[-3:]
    return Cause(UNKNOWN, EXIT_CODE, f"{where} {_exited(code)}", tuple(shown), index=p.index,
                 exit_code=code)


def _signal(code: int | None) -> signal.Signals | None:
    """The signal that ended a process: -N, or 128+N as a shell or launcher reports it."""
    if code is None or code == 0:
        return None
    number = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else 0
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None


def _exited(code: int) -> str:
    return f"exited with code {code}" if describe(code) in (f"exit code {code}", "error") \
        else f"exited with code {code} ({describe(code)})"


def _launcher_line(lines: Sequence[str]) -> tuple[int | None, str | None]:
    """The training launcher's last "rank R failed: ... (exit C)" line and the failed rank's
    own exit code in it (negative for a signal)."""
    for line in reversed(lines):
        match = _FAILED_RANK.match(line)
        if match:
            found = re.search(r"\(exit (-?\d+)\)", match.group(2))
            return (int(found.group(1)) if found else None), line
    return None, None


def _traceback(lines: Sequence[str]) -> list[str]:
    """The last Python traceback, ending at its exception line (at most MAX_LINES lines, the
    exception's end kept)."""
    starts = [i for i, line in enumerate(lines) if line.startswith(TRACEBACK)]
    if not starts:
        return []
    body = list(lines[starts[-1]:])
    end = None
    for i in range(1, len(body)):
        if not body[i].startswith(" ") and _EXCEPTION.match(body[i]):
            end = i
    if end is None:
        return []
    trace = body[:end + 1]
    return trace if len(trace) <= MAX_LINES else [trace[0], *trace[-(MAX_LINES - 1):]]


def _last_matching(lines: Sequence[str], markers: Sequence[str]) -> list[str]:
    found = [line for line in lines if any(m in line for m in markers)]
    return found[-3:]


def _around(lines: Sequence[str], found: Sequence[str]) -> list[str]:
    trace = _traceback(lines)
    return trace if trace and trace[-1] == found[-1] else list(found)


def _short(line: str, limit: int = 300) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[:limit] + "..."
