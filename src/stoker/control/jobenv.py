"""A job's environment, built from an allow-list rather than inherited from the server.

Whatever the server was started with (credentials, proxies, API tokens, test switches) stays
with the server: a job gets the fixed variables below, those the admin passes through
(``isolation.pass_env``), its identity's HOME/USER, Stoker's own job variables and its spec's
``env``. The test-only fault hook (``STOKER_FAULT*``) is dropped unless the cluster enables it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

ALWAYS = ("PATH", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM")
FAULT_PREFIX = "STOKER_FAULT"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def matches(name: str, patterns: Iterable[str]) -> bool:
    """``NAME`` exactly, or a prefix pattern such as ``NCCL_*``."""
    return any(name == p or (p.endswith("*") and name.startswith(p[:-1])) for p in patterns)


def job_environment(server_env: Mapping[str, str], own: Mapping[str, str], *,
                    pass_env: Iterable[str] = (), hidden: Collection[str] = (),
                    allow_faults: bool = False) -> dict[str, str]:
    """``own``: what Stoker and the job's spec set (they win over the server's values)."""
    patterns = (*ALWAYS, *pass_env)
    env = {k: v for k, v in server_env.items() if k not in hidden and matches(k, patterns)}
    env.setdefault("PATH", DEFAULT_PATH)
    env |= own
    if not allow_faults:
        env = {k: v for k, v in env.items() if not k.startswith(FAULT_PREFIX)}
    return env
