"""Leadership of the control plane: several `stoker server` processes on one PostgreSQL, one
leader.

**The lease is a PostgreSQL advisory lock** (`LEADER_LOCK`), taken with ``pg_advisory_lock`` on
a connection of its own that the server keeps open (`AdvisoryLease`). PostgreSQL drops a
session-level advisory lock when the session ends, so when the leader's process dies (kill -9
included) its socket closes, the server ends the session and the lock is free at once; a
standby blocked in ``pg_advisory_lock`` gets it without polling. A dead *machine* is noticed
through TCP keepalives (`stoker.control.db.PG_CONNECT_ARGS`, about 15 s).

**Fencing.** On taking the lock the new leader increments ``term`` in the ``leader`` row
(`announce`). Every write of the leader's reconciler first reads that row ``FOR SHARE`` and
refuses to go on (`LeadershipLost`) unless the term is still its own (`AdvisoryLease.fence`),
so a deposed leader can change nothing once its successor has announced itself, and the
successor's announcement waits for the writes the old leader had already begun. The leader
also checks that it still holds the lock before each cycle: a leader that lost it stops
reconciling at once and competes again as a standby.

`Leadership.run` is the loop every server on PostgreSQL runs: wait for the lock; once held,
announce, `Reconciler.recover` (adopt the running gangs) and reconcile until the lock is lost
or the server stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, NullPool, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from stoker.control.db import PG_CONNECT_ARGS, reason
from stoker.control.reconciler import Reconciler
from stoker.control.sql_store import WAKE_CHANNEL, SqlStore

log = logging.getLogger(__name__)

LEADER_LOCK = 0x73746F6B65720000  # "stoker\0\0": one leader per database
LOCK_WAIT_S = 1.0  # a standby re-checks "should I stop?" this often while it waits


class LeadershipLost(Exception):
    """This server no longer holds the lease (or another server has taken it since)."""


@dataclass(frozen=True)
class LeaderInfo:
    server: str
    url: str
    since: float
    term: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def server_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class AdvisoryLease:
    """The leader lock on a dedicated connection (never from the store's pool)."""

    def __init__(self, engine: Engine, server: str) -> None:
        self._engine = create_engine(
            engine.url, poolclass=NullPool,
            connect_args={**PG_CONNECT_ARGS, "application_name": f"stoker-lease {server}"[:63]})
        self._conn: Connection | None = None
        self.term: int | None = None

    def acquire(self, wait_s: float = LOCK_WAIT_S) -> bool:
        """Wait up to ``wait_s`` for the lock: True once this server holds it."""
        if self._conn is None:
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._conn.execute(text("SET statement_timeout = '30s'"))
        self._conn.execute(text(f"SET lock_timeout = '{max(1, int(wait_s * 1000))}ms'"))
        try:
            self._conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LEADER_LOCK})
        except OperationalError as e:
            if getattr(e.orig, "sqlstate", None) == "55P03":  # lock_not_available: still led
                return False
            raise
        return True

    def held(self) -> bool:
        """Whether this server still holds the lock (False when its session is gone)."""
        if self._conn is None:
            return False
        try:
            held = self._conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid()")).scalar()
        except SQLAlchemyError:
            return False
        return bool(held)

    def fence(self, session: Session) -> None:
        """The first statement of each of the leader's writes: LeadershipLost unless the
        ``leader`` row still carries this server's term (it stays share-locked until commit,
        so a takeover's announcement waits for this write to end)."""
        term = session.execute(text("SELECT term FROM leader WHERE id = 1 FOR SHARE")).scalar()
        if self.term is None or term != self.term:
            raise LeadershipLost(f"the leader's term is now {term}, not this server's "
                                 f"({self.term})")

    def release(self) -> None:
        """Close the lease's session: the lock is free for a standby at once."""
        self.term = None
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def dispose(self) -> None:
        self.release()
        self._engine.dispose()

    def listen(self, stop: threading.Event, wake: Callable[[], None]) -> None:
        """Call ``wake`` at each NOTIFY on `WAKE_CHANNEL` (a submit or cancel through any
        server) until ``stop`` is set; on its own connection, reconnecting after a failure."""
        while not stop.is_set():
            try:
                with self._engine.connect() as conn:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                    conn.execute(text(f"LISTEN {WAKE_CHANNEL}"))
                    raw = conn.connection.driver_connection
                    assert raw is not None
                    while not stop.is_set():
                        for _ in raw.notifies(timeout=LOCK_WAIT_S):
                            wake()
            except Exception as e:  # the database is away: try again shortly
                log.debug("wake listener: %s", reason(e))
                stop.wait(LOCK_WAIT_S)


def announce(store: SqlStore, server: str, url: str, now: float) -> LeaderInfo:
    """Record this server as the leader with the next term; the event log says so too."""
    with store.engine.begin() as conn:
        term = conn.execute(text(
            "INSERT INTO leader (id, term, server, url, since) VALUES (1, 1, :server, :url, :now) "
            "ON CONFLICT (id) DO UPDATE SET term = leader.term + 1, server = :server, "
            "url = :url, since = :now RETURNING term"),
            {"server": server, "url": url, "now": now}).scalar_one()
    store.log_event("leader", f"server {server} ({url}) leads the control plane (term {term})",
                    "leader", {"server": server, "url": url, "term": term})
    return LeaderInfo(server, url, now, int(term))


def current_leader(store: SqlStore) -> LeaderInfo | None:
    """The last server to announce itself, if the lock is held now (by it or a successor
    that has not announced itself yet)."""
    with store.engine.connect() as conn:
        row = conn.execute(text("SELECT server, url, since, term FROM leader WHERE id = 1")).first()
        locked = conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = :hi AND objid = :lo AND objsubid = 1"),
            {"hi": LEADER_LOCK >> 32, "lo": LEADER_LOCK & 0xFFFFFFFF}).scalar()
    if row is None or not locked:
        return None
    return LeaderInfo(row.server, row.url, row.since, row.term)


class Leadership:
    """Compete for the lease; lead (recover, then reconcile) while holding it."""

    def __init__(self, lease: AdvisoryLease, store: SqlStore, reconciler: Reconciler,
                 server: str, url: str) -> None:
        self.lease = lease
        self.store = store
        self.reconciler = reconciler
        self.server = server
        self.url = url
        self.leading = False
        self.leader: LeaderInfo | None = None  # as last seen (refreshed while standing by)
        self.recovered_at: float | None = None  # of this server's current leadership
        self.first_cycle_at: float | None = None
        self.cycles = 0

    def status(self) -> dict[str, Any]:
        return {"role": "leader" if self.leading else "standby", "server": self.server,
                "leader": self.leader.as_dict() if self.leader else None,
                "recovered_at": self.recovered_at, "first_cycle_at": self.first_cycle_at,
                "cycles": self.cycles}

    def listen(self, stop: threading.Event) -> None:
        """Wake the reconciler at each submit or cancel made through any server."""
        self.lease.listen(stop, self.reconciler.wake)

    def run(self, stop: threading.Event, interval: float) -> None:
        standing_by = False
        while not stop.is_set():
            try:
                if not self.lease.acquire():
                    self._look()
                    if not standing_by:
                        standing_by = True
                        leader = self.leader.url if self.leader else "another server"
                        log.info("standing by: %s leads the control plane", leader)
                    continue
            except SQLAlchemyError as e:
                log.warning("cannot reach the database for the leader lock: %s", reason(e))
                self.lease.release()
                stop.wait(LOCK_WAIT_S)
                continue
            standing_by = False
            try:
                self._lead(stop, interval)
            except (LeadershipLost, DBAPIError) as e:
                log.warning("leadership lost: %s; standing by", reason(e))
            finally:
                self.leading = False
                self.lease.release()
        self.lease.dispose()

    def _look(self) -> None:
        try:
            self.leader = current_leader(self.store)
        except SQLAlchemyError as e:
            log.warning("cannot read the leader: %s", reason(e))

    def _lead(self, stop: threading.Event, interval: float) -> None:
        info = announce(self.store, self.server, self.url, time.time())
        self.lease.term = info.term
        self.leader, self.leading = info, True
        self.recovered_at, self.first_cycle_at, self.cycles = None, None, 0
        log.info("this server leads the control plane (term %d)", info.term)
        self.reconciler.recover()
        self.recovered_at = time.time()
        while not stop.is_set():
            if not self.lease.held():
                raise LeadershipLost("the leader lock's session is gone")
            try:
                self.reconciler.step()
            except LeadershipLost:
                raise
            except Exception:
                log.exception("reconcile cycle failed")
            else:
                self.cycles += 1
                if self.first_cycle_at is None:
                    self.first_cycle_at = time.time()
            self.reconciler.pause(interval)
