"""A throwaway PostgreSQL server in a temporary directory: for tests and benchmarks.

`LocalPostgres` runs ``initdb`` and ``postgres`` from PostgreSQL's binaries (``$PG_BIN``, else
the newest ``/usr/lib/postgresql/*/bin``, else ``PATH``), listening on 127.0.0.1 only, on a free
port chosen at start and on a unix socket inside its directory. PostgreSQL refuses to run as
root: under root it runs as the ``postgres`` system user (created, as ``stoker-pg``, when no such
user exists) and its directory belongs to that user. `database()` makes a fresh database, by
copying a template (``CREATE DATABASE ... TEMPLATE``), so a test gets its own in milliseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from stoker.ports import free_port

SUPERUSER = "stoker"


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries (initdb, postgres) on this machine."""


def find_bin() -> Path:
    """The directory of PostgreSQL's ``initdb`` and ``postgres``; PostgresMissing otherwise."""
    candidates = [Path(os.environ["PG_BIN"])] if os.environ.get("PG_BIN") else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                         key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise PostgresMissing("PostgreSQL server binaries (initdb, postgres) not found in $PG_BIN, "
                          "/usr/lib/postgresql/*/bin or PATH: install postgresql-15 "
                          "(`make postgres` as root)")


def server_user() -> str | None:
    """The unprivileged user PostgreSQL runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "stoker-pg"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "stoker-pg"], check=True, capture_output=True)
    return "stoker-pg"


class LocalPostgres:
    """Start with `start()` (or as a context manager), stop with `stop()`; ``durable=False``
    turns fsync off (fast, for tests; a benchmark keeps PostgreSQL's defaults)."""

    def __init__(self, durable: bool = False, max_connections: int = 200) -> None:
        self.bin = find_bin()
        self.user = server_user()
        self.durable = durable
        self.max_connections = max_connections
        self.dir = Path(tempfile.mkdtemp(prefix="stoker-pg-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count()

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def log(self) -> Path:
        return self.dir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        if self.user is not None:
            shutil.chown(self.dir, self.user, self.user)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
        for attempt in range(3):  # the free port may be taken between choosing and binding
            self.port = free_port()
            try:
                self._start_server(timeout)
                return self
            except RuntimeError:
                self._stop_server()
                if attempt == 2:
                    raise
        return self

    def _settings(self) -> list[str]:
        settings = {"listen_addresses": "127.0.0.1", "port": str(self.port),
                    "unix_socket_directories": str(self.dir),
                    "max_connections": str(self.max_connections),
                    "shared_buffers": "32MB", "log_min_messages": "warning"}
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off",
                         "full_page_writes": "off"}
        return [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]

    def _start_server(self, timeout: float) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), *self._settings()],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                user=self.user, group=self._group(), extra_groups=[] if self.user else None,
                env=self._env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n"
                                   + self.log.read_text()[-2000:])
            if self._accepts():
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not accept connections:\n" + self.log.read_text()[-2000:])

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self._conninfo("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _conninfo(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(self._conninfo(database), autocommit=True) as conn:
            conn.execute(sql.encode())

    def database(self, template: str = "template0") -> str:
        """A new, empty database (a copy of ``template``): its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self._stop_server()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_server(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: PostgreSQL's "fast" shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, user=self.user, group=self._group(),
                              extra_groups=[] if self.user else None, env=self._env(),
                              cwd=self.dir, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): "
                               + (done.stderr or done.stdout).decode(errors="replace")[-2000:])

    def _group(self) -> int | None:
        return pwd.getpwnam(self.user).pw_gid if self.user else None

    def _env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "TZ")}
        return {**keep, "LC_ALL": "C", "HOME": str(self.dir)}

    def __enter__(self) -> LocalPostgres:
        return self.start() if self.proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
