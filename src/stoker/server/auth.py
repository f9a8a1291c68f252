"""API tokens: one per tenant plus the admin's, held only as SHA-256 hashes.

A token comes from the cluster config as its hash (``token_sha256``), from a file only the
server can read (``token_file``), or from an environment variable (``token_env``), hashed at
startup. Requests carry ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from stoker.spec.cluster import ClusterConfig, TokenConfig
from stoker.spec.errors import ConfigError

ADMIN = "admin"
ADMIN_ENV = "STOKER_ADMIN_TOKEN"


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool
    queues: frozenset[str]

    def may_use(self, queue: str) -> bool:
        return self.admin or queue in self.queues

    def may_see(self, tenant: str) -> bool:
        return self.admin or tenant == self.name


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenBook:
    """Maps a presented token to its principal, comparing hashes in constant time."""

    def __init__(self, cluster: ClusterConfig, env: Mapping[str, str] | None = None,
                 source: str | None = None) -> None:
        env = os.environ if env is None else env
        self.source = source
        self.missing: list[str] = []  # principals whose token env variable is unset
        self._by_hash: list[tuple[str, Principal]] = []
        admin = cluster.admin or TokenConfig(token_env=ADMIN_ENV)
        self._add(admin, Principal(ADMIN, True, frozenset(cluster.queues)), env, "admin")
        for name, tenant in cluster.tenants.items():
            self._add(tenant, Principal(name, False, frozenset(tenant.queues)), env,
                      f"tenants.{name}")

    def _add(self, cfg: TokenConfig, who: Principal, env: Mapping[str, str], key: str) -> None:
        digest = cfg.token_sha256
        if cfg.token_file is not None:
            digest = hash_token(read_token_file(cfg.token_file, self.source,
                                                f"{key}.token_file"))
        if digest is None and cfg.token_env is not None:
            token = env.get(cfg.token_env)
            if not token:
                self.missing.append(f"{who.name} (${cfg.token_env})")
                return
            digest = hash_token(token)
        if digest is not None:
            self._by_hash.append((digest, who))

    def principal(self, token: str) -> Principal | None:
        presented = hash_token(token)
        found = None
        for digest, who in self._by_hash:  # no early exit: timing says nothing about which
            if hmac.compare_digest(digest, presented):
                found = who
        return found


def read_token_file(path: str, source: str | None, key: str) -> str:
    """The token in ``path``, which nobody but the server's user may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(source, key, f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd) as f:
        info = os.fstat(f.fileno())
        if info.st_mode & 0o077 or info.st_uid != os.geteuid():
            raise ConfigError(source, key, f"{path} must belong to this server's user and be "
                              f"readable by it alone (chmod 600), not {info.st_mode & 0o777:o}")
        token = f.read().strip()
    if not token:
        raise ConfigError(source, key, f"{path} is empty")
    return token


def token_env_names(cluster: ClusterConfig) -> set[str]:
    """Environment variables holding tokens: never handed down to jobs."""
    names = {ADMIN_ENV, "STOKER_TOKEN"}
    configs = [cluster.admin, *cluster.tenants.values()]
    names |= {c.token_env for c in configs if c is not None and c.token_env}
    return names
