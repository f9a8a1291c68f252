"""Database engine and schema migration.

SQLite is the embedded default: WAL journal, a busy timeout, and write transactions that take
the write lock up front (``BEGIN IMMEDIATE``) so two writers never deadlock on a lock upgrade.
Any other URL (e.g. ``postgresql+psycopg://``) is used as given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event

WRITE = {"stoker_write": True}
"""Execution option marking a connection whose transaction will write."""

BUSY_TIMEOUT_MS = 10_000


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite, creates the parent directory and sets the pragmas."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


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
    """Bring the schema to ``revision``; a no-op when it is already there."""
    cfg = alembic_config()
    with engine.execution_options(**WRITE).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
