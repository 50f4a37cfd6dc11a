"""Fixtures for the ledger tests: real SQLite files and real PostgreSQL databases.

PostgreSQL tests (marked ``postgres``) run against the server on
127.0.0.1:5432; each test session creates its own database and drops it at
the end, and tests that take a database away get a database of their own.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from thrifty.ledger.db import create_engine
from thrifty.ledger.migrations import migrate
from thrifty.ledger.models import Base
from thrifty.ledger.record import LedgerRecord
from thrifty.ledger.recorder import Recorder
from thrifty.settings import LedgerSettings

PG_ADMIN_URL = os.environ.get("THRIFTY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


class PgServer:
    """Creates, takes away, gives back and drops PostgreSQL databases for tests."""

    def __init__(self, admin_url: str) -> None:
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        self.base = sa.make_url(admin_url)
        self.created: list[str] = []

    def create(self) -> str:
        name = f"thrifty_ledger_test_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.url(name)

    def url(self, name: str) -> str:
        return self.base.set(database=name).render_as_string(hide_password=False)

    def take_away(self, url: str) -> None:
        """No new connections, and every open one terminated: the database is 'down'."""
        name = sa.make_url(url).database
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )

    def give_back(self, url: str) -> None:
        name = sa.make_url(url).database
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer(PG_ADMIN_URL)
    try:
        with server.admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc.orig}")
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def pg_session_url(pg_server: PgServer) -> str:
    """A database for this test session, migrated once."""
    url = pg_server.create()
    migrate(url)
    return url


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (not migrated), on each backend."""
    backend = request.param
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh' / 'ledger.db'}"
    return request.getfixturevalue("pg_server").create()


@pytest.fixture(params=BACKENDS)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty ledger on each backend: a SQLite file, or the session's PostgreSQL database."""
    backend = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        migrate(url)
        return url
    url = request.getfixturevalue("pg_session_url")
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    engine.dispose()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated, empty SQLite ledger."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    return url


@pytest.fixture(params=BACKENDS)
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Outage:
    """A migrated database of its own that the test can take away and give back."""
    backend = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'down' / 'ledger.db'}"
        migrate(url)
        return SqliteOutage(url)
    server: PgServer = request.getfixturevalue("pg_server")
    url = server.create()
    migrate(url)
    return PgOutage(server, url)


class Outage:
    url: str
    #: recorder options that make a SQLite lock wait short
    recorder_options: ClassVar[dict[str, Any]] = {}

    def take_away(self) -> None:
        raise NotImplementedError

    def give_back(self) -> None:
        raise NotImplementedError


class PgOutage(Outage):
    def __init__(self, server: PgServer, url: str) -> None:
        self.server, self.url = server, url

    def take_away(self) -> None:
        self.server.take_away(self.url)

    def give_back(self) -> None:
        self.server.give_back(self.url)


class SqliteOutage(Outage):
    """Another process-like connection holds an exclusive lock: every write gets 'database is locked'."""

    recorder_options: ClassVar[dict[str, Any]] = {"busy_timeout_s": 0.05}

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sa.make_url(url).database
        self._conn: sqlite3.Connection | None = None

    def take_away(self) -> None:
        self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        self._conn.execute("BEGIN EXCLUSIVE")

    def give_back(self) -> None:
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None


@pytest.fixture
def make_recorder(tmp_path: Path) -> Iterator[Callable[..., Recorder]]:
    """``make_recorder(url, data_dir=..., busy_timeout_s=..., **ledger_settings)``, closed at teardown."""
    made: list[Recorder] = []

    def make(
        url: str, *, data_dir: Path | None = None, busy_timeout_s: float = 5.0, **settings: Any
    ) -> Recorder:
        options = {"flush_interval_s": 0.02, "retry_interval_s": 0.1, **settings}
        recorder = Recorder(
            url,
            LedgerSettings(**options),
            data_dir=data_dir or tmp_path / "data",
            busy_timeout_s=busy_timeout_s,
        )
        made.append(recorder)
        return recorder.start()

    yield make
    for recorder in made:
        recorder.close(timeout=5)


@pytest.fixture
def make_record() -> Callable[..., LedgerRecord]:
    """``make_record(call_id=None, **fields)``: a record with sensible defaults."""
    return _record


@pytest.fixture
def count_rows() -> Callable[..., int]:
    """``count_rows(url, table="llm_calls", where="")``."""
    return _count_rows


def _record(call_id: str | None = None, **fields: Any) -> LedgerRecord:
    values: dict[str, Any] = {
        "call_id": call_id or uuid.uuid4().hex,
        "started_at": datetime.now(UTC),
        "entry": "wrapper",
        "wire": "openai",
        "provider": "openai",
        "model_requested": "gpt-4o-mini",
        "model_used": "gpt-4o-mini",
        "pricing_id": "openai",
        "input_tokens": 100,
        "output_tokens": 20,
    }
    values.update(fields)
    return LedgerRecord(**values)


def _count_rows(url: str, table: str = "llm_calls", where: str = "") -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table} {where}")).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture
def engine_for() -> Iterator[Callable[[str], sa.Engine]]:
    """``engine_for(url)``: an engine, disposed at teardown."""
    engines: list[sa.Engine] = []

    def make(url: str) -> sa.Engine:
        engine = create_engine(url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()
