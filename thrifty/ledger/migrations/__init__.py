"""The ledger's schema migrations (Alembic), shipped inside the package.

:func:`migrate` brings a database to the newest schema. It is idempotent and
safe when several processes start at once: on PostgreSQL they serialize on a
transaction-level advisory lock, on SQLite on a lock file beside the database,
and whoever comes second finds the schema already at head. Within a process,
migrations take turns, whatever their databases: Alembic's ``op`` and
``context`` are module-wide proxies, so two at once ran each other's
operations on the wrong database.

Alembic's version table is ``thrifty_alembic_version``, so the ledger can live in
a database whose application uses Alembic for its own tables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from thrifty.errors import LedgerError

__all__ = ["VERSION_TABLE", "alembic_config", "current_revision", "head_revision", "migrate"]

log = logging.getLogger("thrifty.ledger")

VERSION_TABLE = "thrifty_alembic_version"
#: pg_advisory_xact_lock key: the first 8 bytes of sha1("thrifty.ledger.migrate"), as a signed bigint
_PG_LOCK_KEY = int.from_bytes(bytes.fromhex("5a1c2b9d6e0f4a73"), "big", signed=True)
#: One migration at a time in this process (see the module docstring); taken before the inter-process locks.
_THREAD_LOCK = threading.Lock()


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Autogenerate looks at every table of thrifty's models, and never at a host application's."""
    from thrifty.ledger.models import Base

    ours = Base.metadata.tables
    if type_ == "table":
        return name in ours
    table = getattr(obj, "table", None)
    return table is None or table.name in ours


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic ``Config`` for the ledger, built in code (no alembic.ini)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("thrifty.ledger") / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # the package ships at least one revision
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at, or None for a database without the ledger."""
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


def migrate(url: str | Engine) -> None:
    """Upgrade the ledger at ``url`` (a URL or an engine) to the newest schema.

    Raises :class:`LedgerError` if the database cannot be reached or migrated.
    """
    from thrifty.ledger.db import create_engine, redacted

    engine = url if isinstance(url, Engine) else create_engine(url)
    try:
        _upgrade(engine)
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise LedgerError(f"cannot migrate the ledger database {redacted(engine.url)}: {reason}") from exc
    finally:
        if engine is not url:
            engine.dispose()


def _upgrade(engine: Engine) -> None:
    from alembic import command

    head = head_revision()
    with _THREAD_LOCK, _process_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # held to the end of this transaction; PostgreSQL's DDL is transactional,
            # so a second process waits here and then finds the schema at head
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        if current_revision(conn) == head:
            return
        log.info("migrating the ledger database to revision %s", head)
        command.upgrade(alembic_config(conn), "head")


@contextlib.contextmanager
def _process_lock(engine: Engine) -> Iterator[None]:
    """An inter-process lock for SQLite files (PostgreSQL uses an advisory lock instead)."""
    if engine.dialect.name != "sqlite":
        yield
        return
    from thrifty.ledger.db import sqlite_path

    path = sqlite_path(engine.url)
    if path is None:
        yield
        return
    lock_path = Path(f"{path}.migrate-lock")
    try:
        import fcntl
    except ImportError:  # Windows: SQLite's own locking makes a concurrent create fail, not corrupt
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
