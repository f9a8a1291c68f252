"""PostgreSQL for the tests: one real server per session, a fresh database per test.

`pg_server` starts one `LocalPostgres` (PostgreSQL 15 in a temporary directory, 127.0.0.1 on
a free port, run as an unprivileged user under root) for the whole session and stops it at the
end. `pg_url` is a new empty database; `db_url` is parametrised over SQLite and PostgreSQL, so a
test that takes it runs on both. Without PostgreSQL's binaries the PostgreSQL cases are skipped,
or fail naming what is missing when ``CI=true`` (CI must run them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stoker.control.pg_local import LocalPostgres, PostgresMissing


def _missing(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and PostgreSQL is missing: {why}", pytrace=False)
    pytest.skip(f"PostgreSQL is missing: {why}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    try:
        server = LocalPostgres()
    except PostgresMissing as e:
        _missing(str(e))
    try:
        server.start()
    except (OSError, RuntimeError) as e:
        server.stop()
        _missing(f"could not start the server in a temporary directory: {e}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: LocalPostgres) -> Iterator[str]:
    url = pg_server.database()
    yield url
    pg_server.drop(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'stoker.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url
