"""Engines for the ledger database: SQLite by default, PostgreSQL by URL.

:func:`create_engine` accepts what operators type (``postgresql://`` and
``postgres://`` use psycopg 3), turns SQLite into a good shared ledger (WAL, a
busy timeout, foreign keys) and turns a bad URL or a missing driver into a
:class:`~thrifty.errors.LedgerError` that says what to do. Engines connect
lazily; :func:`ping` checks that the database answers.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from thrifty.errors import LedgerError

__all__ = ["create_engine", "ping", "redacted", "sqlite_path"]

log = logging.getLogger("thrifty.ledger")

_EXAMPLES = "e.g. sqlite:////var/lib/thrifty/ledger.db or postgresql://user@host:5432/thrifty"


def create_engine(
    url: str | URL,
    *,
    must_exist: bool = False,
    busy_timeout_s: float = 5.0,
    **engine_kwargs: Any,
) -> Engine:
    """An engine for the ledger at ``url``.

    For a SQLite file, the parent directory is created (unless ``must_exist``,
    which instead raises :class:`LedgerError` when the file is missing), and every
    connection uses WAL journaling, a ``busy_timeout_s`` lock wait and foreign keys.
    """
    parsed = _parse(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        kwargs["connect_args"] = {"timeout": busy_timeout_s, "check_same_thread": False}
        if path is None:
            # in-memory: one connection shared by every thread, or each would see its own database
            kwargs["poolclass"] = StaticPool
            kwargs.pop("pool_pre_ping")
        elif must_exist and not path.exists():
            raise LedgerError(f"no ledger database at {path}; has thrifty recorded any calls yet?")
        elif not must_exist:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(
                    f"cannot create the ledger directory {path.parent}: {exc.strerror}"
                ) from exc
    elif parsed.get_backend_name() == "postgresql":
        # an unreachable host must fail in seconds, not hang the recorder's retries
        kwargs["connect_args"] = {"connect_timeout": 10}
    kwargs.update(engine_kwargs)
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        hint = " (pip install 'thrifty[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
        raise LedgerError(
            f"no database driver for {parsed.drivername!r} in ledger URL {redacted(parsed)}{hint}"
        ) from exc
    except (ArgumentError, TypeError, ValueError) as exc:
        raise LedgerError(f"invalid ledger database URL {redacted(parsed)}: {exc}; {_EXAMPLES}") from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect(busy_timeout_s))
    return engine


def ping(engine: Engine) -> None:
    """Connect and run ``SELECT 1``; a :class:`LedgerError` if the database does not answer."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise LedgerError(f"cannot reach the ledger database {redacted(engine.url)}: {reason}") from exc


def redacted(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite URL, or None for an in-memory database."""
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or parsed.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database).expanduser()


def _parse(url: str | URL) -> URL:
    if isinstance(url, str):
        text = url.strip()
        if not text:
            raise LedgerError(f"the ledger database URL is empty; {_EXAMPLES}")
        try:
            parsed = make_url(text)
        except ArgumentError as exc:
            raise LedgerError(f"invalid ledger database URL {text!r}; {_EXAMPLES}") from exc
    else:
        parsed = url
    # the postgres extra installs psycopg 3; plain postgresql:// would mean psycopg2
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_on_connect(busy_timeout_s: float) -> Any:
    busy_ms = int(busy_timeout_s * 1000)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            try:
                # WAL lets readers (reports, the dashboard) run while the recorder writes
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error:  # a read-only or locked file keeps its journal mode
                log.debug("ledger: could not switch SQLite to WAL", exc_info=True)
        finally:
            cursor.close()

    return on_connect
