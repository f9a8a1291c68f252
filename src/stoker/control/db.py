"""Database engine and schema migration.

SQLite is the embedded default: WAL journal, a busy timeout, and write transactions that take
the write lock up front (``BEGIN IMMEDIATE``) so two writers never deadlock on a lock upgrade.
PostgreSQL (``postgresql+psycopg://``; ``postgresql://`` and ``postgres://`` mean the same) runs
at READ COMMITTED: the store locks the rows it reads before changing them (``FOR UPDATE``), and
concurrent migrations are serialized by a transaction-scoped advisory lock.

`open_engine` checks the URL and the connection first: a mistake is one `DatabaseError` line
that never shows the URL's password.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from stoker.spec.errors import StokerError

WRITE = {"stoker_write": True}
"""Execution option marking a connection whose transaction will write."""

BUSY_TIMEOUT_MS = 10_000
MIGRATION_LOCK = 0x73746F6B65720001  # pg_advisory_xact_lock key: one migration at a time
# Dead peers are noticed within ~15 s even without traffic (libpq keepalive parameters).
PG_CONNECT_ARGS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 5,
                   "keepalives_interval": 2, "keepalives_count": 3,
                   "application_name": "stoker"}


class DatabaseError(StokerError):
    """The database URL is wrong, or the database cannot be reached or used."""


def parse_url(url: str) -> URL:
    """The URL with PostgreSQL's driver made explicit; DatabaseError (without the URL, which
    may hold a password) when it is not a SQLite or PostgreSQL URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError("the database URL cannot be parsed (expected sqlite:///PATH or "
                            "postgresql+psycopg://USER@HOST:PORT/DB)") from None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed
    raise DatabaseError(f"unsupported database {parsed.drivername!r} in "
                        f"{redact(parsed)}: use sqlite:///PATH or "
                        "postgresql+psycopg://USER@HOST:PORT/DB")


def redact(url: str | URL) -> str:
    """The URL as safe to show: the password, if any, as ***."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparseable database URL>"
    return parsed.render_as_string(hide_password=True)


def is_postgres(url: str) -> bool:
    return parse_url(url).get_backend_name() == "postgresql"


def make_engine(url: str | URL, **pg_options: Any) -> Engine:
    """An engine for ``url``; for SQLite, creates the parent directory and sets the pragmas."""
    parsed = parse_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "postgresql":
        options: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 10,
                                   "max_overflow": 20, "pool_timeout": 30}
        options |= pg_options
        connect_args = {**PG_CONNECT_ARGS, **options.pop("connect_args", {})}
        return create_engine(parsed, connect_args=connect_args, **options)
    path = parsed.database or ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def open_engine(url: str) -> Engine:
    """`make_engine` after checking that the database answers; DatabaseError otherwise."""
    parsed = parse_url(url)
    engine = make_engine(parsed)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as e:
        engine.dispose()
        raise DatabaseError(f"cannot open the database {redact(parsed)}: {reason(e)}") from None
    return engine


def reason(error: BaseException) -> str:
    """The driver's first line of an error (no SQLAlchemy decorations, no URL)."""
    orig = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own BEGIN is deferred).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes in WAL mode
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get("stoker_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def alembic_config(url: str | None = None) -> Config:
    """The Alembic config of the store's migrations (shipped inside the package)."""
    cfg = Config()
    cfg.set_main_option("script_location", "stoker.control:migrations")
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``; a no-op when it is already there. On PostgreSQL the
    whole migration is one transaction, and servers starting together take turns."""
    cfg = alembic_config()
    with engine.execution_options(**WRITE).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
