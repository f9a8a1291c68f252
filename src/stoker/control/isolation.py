"""Who a job runs as, and inside what: per-tenant Unix identities and the bubblewrap sandbox.

`decide` settles it once, at server start, from ``[isolation]`` in cluster.toml and what the
host allows:

- **Identities.** A server running as root runs each tenant's jobs as that tenant's own
  unprivileged user: the ``user`` its config names, or ``stoker-<tenant>``, which Stoker creates
  (``useradd --system``, marked with the comment ``stoker tenant <name>`` so it never takes over
  a user it did not make). Jobs never run as root.
- **Sandbox.** Where bubblewrap works, each process runs in its own mount, PID and IPC
  namespaces: the host's files read-only, a private ``/tmp`` and ``/dev/shm``, the server's
  state directory (database, other jobs, logs) replaced by an empty one, only the job's own
  ``run/`` and ``work/`` directories writable, and no other process of the host visible.
- A server with several tenants that can do neither refuses to start, unless the admin opted
  into ``single_trust`` (every tenant may read what the server can).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stoker.spec.cluster import ClusterConfig, IsolationConfig
from stoker.spec.errors import ConfigError

log = logging.getLogger(__name__)

MANAGED_PREFIX = "stoker-"
MANAGED_COMMENT = "stoker tenant {}"


@dataclass(frozen=True)
class Identity:
    """The Unix user one tenant's jobs run as."""

    user: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class Sandbox:
    """bubblewrap, and what every sandbox re-exposes: the paths the runtime needs that lie
    under a directory other users cannot enter (a Python under /root, a venv in /tmp)."""

    bwrap: str
    closed: tuple[str, ...] = ()  # directories mounted over with an empty, enterable tmpfs
    runtime: tuple[str, ...] = ()  # bound back read-only

    def argv(self, job_dir: Path, writable: Sequence[Path], cwd: Path, hidden: Sequence[Path],
             who: Identity | None) -> list[str]:
        """The bubblewrap command line that runs a command (appended after it) for a job."""
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-pid",
                "--unshare-ipc", "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev",
                "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc",
                "--perms", "1777", "--tmpfs", "/tmp"]
        if os.geteuid() != 0:
            args.append("--unshare-user")  # mounts without privileges, same uid inside
        for closed in self.closed:
            args += ["--perms", "0755", "--tmpfs", closed]
        emptied = ["/tmp", *self.closed]
        for path in self.runtime:
            args += [*_enterable_parents(path, emptied), "--ro-bind", path, path]
        for path in hidden:
            args += ["--tmpfs", str(path)]
        emptied += map(str, hidden)
        args += [*_enterable_parents(str(job_dir), emptied, "0711"),
                 "--ro-bind", str(job_dir), str(job_dir)]
        for path in writable:
            args += ["--bind", str(path), str(path)]
        args += ["--chdir", str(cwd)]
        if who is not None:  # bwrap runs as root: drop to the tenant inside, all groups shed
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                     "setpriv", f"--reuid={who.uid}", f"--regid={who.gid}", "--clear-groups",
                     "--inh-caps=-all"]
        return [*args, "--"]


def _enterable_parents(path: str, emptied: Sequence[str], mode: str = "0755") -> list[str]:
    """Directories above ``path`` inside an emptied (tmpfs) directory, made enterable by all:
    bubblewrap would make them for the bind with mode 0700, closed to the tenant's user."""
    args: list[str] = []
    for parent in reversed(Path(path).parents):
        if any(parent != Path(e) and parent.is_relative_to(e) for e in emptied):
            args += ["--perms", mode, "--dir", str(parent)]
    return args


@dataclass(frozen=True)
class Isolation:
    identities: Mapping[str, Identity] = field(default_factory=dict)  # empty: server's user
    sandbox: Sandbox | None = None
    single_trust: bool = False

    def identity(self, tenant: str) -> Identity | None:
        return self.identities.get(tenant)

    @property
    def isolated(self) -> bool:
        """Jobs cannot read what the server can: other users, or a sandbox not run as root."""
        return bool(self.identities) or (self.sandbox is not None and os.geteuid() != 0)

    def describe(self) -> str:
        who = (f"as per-tenant users ({', '.join(i.user for i in self.identities.values())})"
               if self.identities else f"as this server's user (uid {os.geteuid()})")
        where = "in a bubblewrap sandbox" if self.sandbox else "without a sandbox"
        trust = "; single-trust mode: tenants are not isolated" if self.single_trust \
            and not self.isolated else ""
        return f"jobs run {who}, {where}{trust}"


class IsolationError(ConfigError):
    """The server cannot isolate its tenants as the config asks."""


def decide(cluster: ClusterConfig, runtime: Iterable[str] | None = None,
           source: str | None = None) -> Isolation:
    """The isolation this server gives its jobs; IsolationError when it cannot give enough."""
    cfg = cluster.isolation
    root = os.geteuid() == 0
    if not root:
        _check_unprivileged(cluster, cfg, source)
    identities: dict[str, Identity] = {}
    if root and cfg.identity != "server":
        identities = {name: tenant_identity(name, tenant.user, source)
                      for name, tenant in cluster.tenants.items()}
    paths = tuple(runtime if runtime is not None else runtime_paths())
    sandbox = find_sandbox(cfg, paths, switch_user=bool(identities), source=source)
    isolation = Isolation(identities, sandbox, cfg.single_trust)
    if not isolation.isolated and not cfg.single_trust and (root or len(cluster.tenants) > 1):
        why = ("jobs would run as root" if root else
               f"{len(cluster.tenants)} tenants' jobs would all run as this server's user "
               f"(uid {os.geteuid()}) with no sandbox, so each could read the others' files "
               "and the server's database")
        raise IsolationError(source, "isolation", f"{why}: run the server as root, install "
                             "bubblewrap, or set isolation.single_trust = true")
    if identities and sandbox is None:
        for who in identities.values():
            _check_can_run(who, source)
    return isolation


def _check_unprivileged(cluster: ClusterConfig, cfg: IsolationConfig,
                        source: str | None) -> None:
    if cfg.identity == "tenant":
        raise IsolationError(source, "isolation.identity",
                             "'tenant' runs jobs as other users: the server must run as root")
    for name, tenant in cluster.tenants.items():
        if tenant.user is not None and cfg.identity != "server":
            raise IsolationError(source, f"tenants.{name}.user",
                                 f"running jobs as {tenant.user!r} needs the server to run as "
                                 "root")


# --- identities ---------------------------------------------------------------------------------


def managed_user(tenant: str) -> str:
    """``stoker-<tenant>``, or with a hash when the tenant's name is no valid Unix name."""
    base = re.sub(r"[^a-z0-9_-]", "-", tenant.lower())
    name = MANAGED_PREFIX + base
    if base != tenant or len(name) > 32:
        digest = hashlib.sha256(tenant.encode()).hexdigest()[:8]
        name = f"{MANAGED_PREFIX}{base[:16]}-{digest}"
    return name


def tenant_identity(tenant: str, user: str | None, source: str | None = None) -> Identity:
    """The configured user (which must exist), or the managed one (created when missing)."""
    key = f"tenants.{tenant}.user"
    if user is None:
        user = managed_user(tenant)
        entry = _lookup(user) or _create_user(user, tenant, source)
        if entry.pw_gecos != MANAGED_COMMENT.format(tenant):
            raise IsolationError(source, key, f"Unix user {user!r} exists but was not created "
                                 f"by Stoker for tenant {tenant!r}: name a user in {key}")
    else:
        found = _lookup(user)
        if found is None:
            raise IsolationError(source, key, f"no Unix user {user!r} on this machine")
        entry = found
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise IsolationError(source, key, f"{user!r} is root (uid or gid 0): jobs never run as "
                             "root")
    return Identity(user, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _lookup(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


def _create_user(user: str, tenant: str, source: str | None) -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    argv = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir",
            "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment",
            MANAGED_COMMENT.format(tenant), user]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise IsolationError(source, f"tenants.{tenant}", f"cannot create Unix user {user!r}: "
                             f"{e}") from None
    entry = _lookup(user)
    if entry is None:  # useradd failed (and no concurrent server made it meanwhile)
        raise IsolationError(source, f"tenants.{tenant}", f"cannot create Unix user {user!r}: "
                             f"{done.stderr.strip() or done.returncode}")
    log.info("created Unix user %s (uid %d) for tenant %s", user, entry.pw_uid, tenant)
    return entry


def _check_can_run(who: Identity, source: str | None) -> None:
    """Without a sandbox, the tenant's user itself must reach this Python and Stoker."""
    argv = [sys.executable, "-c", "import stoker.control.supervise"]
    try:
        done = subprocess.run(argv, user=who.uid, group=who.gid, extra_groups=[],
                              capture_output=True, text=True, timeout=120, cwd="/")
        ok, why = done.returncode == 0, done.stderr.strip().splitlines()[-1:] or [""]
    except OSError as e:
        ok, why = False, [str(e)]
    if not ok:
        raise IsolationError(source, "isolation.sandbox", f"user {who.user!r} cannot run "
                             f"{sys.executable} ({why[0]}): make it readable by other users, "
                             "or install bubblewrap")


# --- the sandbox --------------------------------------------------------------------------------


def runtime_paths() -> list[str]:
    """What a job's processes must read: this Python, its environment and Stoker itself."""
    import stoker

    paths = {sys.prefix, sys.base_prefix, os.path.realpath(sys.executable),
             str(Path(stoker.__file__).resolve().parent.parent)}
    paths |= {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
    return sorted(p for p in paths if os.path.exists(p))


def closed_ancestors(paths: Iterable[str]) -> tuple[str, ...]:
    """Directories above ``paths`` that other users cannot enter (e.g. /root)."""
    closed: set[str] = set()
    for path in paths:
        for parent in Path(path).parents:
            try:
                if parent != Path("/") and not parent.stat().st_mode & 0o001:
                    closed.add(str(parent))
            except OSError:
                continue
    # An outer closed directory's tmpfs hides the inner ones: keep the outermost only.
    return tuple(sorted(c for c in closed
                        if not any(c != o and Path(c).is_relative_to(o) for o in closed)))


def find_sandbox(cfg: IsolationConfig, runtime: Sequence[str], switch_user: bool,
                 source: str | None = None) -> Sandbox | None:
    if cfg.sandbox == "none":
        return None
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        if cfg.sandbox == "bubblewrap":
            raise IsolationError(source, "isolation.sandbox", "bubblewrap is not installed "
                                 "(Debian: apt-get install bubblewrap)")
        return None
    sandbox = Sandbox(bwrap, closed_ancestors(runtime), tuple(runtime))
    problem = _probe(sandbox, switch_user)
    if problem is None:
        return sandbox
    if cfg.sandbox == "bubblewrap":
        raise IsolationError(source, "isolation.sandbox", f"bubblewrap does not work here: "
                             f"{problem}")
    log.warning("bubblewrap is installed but does not work here (%s): no sandbox", problem)
    return None


def _probe(sandbox: Sandbox, switch_user: bool) -> str | None:
    """Run this Python in a sandbox like a job's (as a nobody user when switching users)."""
    here = Path("/")
    who = Identity("nobody", 65534, 65534, "/") if switch_user else None
    argv = [*sandbox.argv(here, (), here, (), who), sys.executable, "-c", "pass"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")
