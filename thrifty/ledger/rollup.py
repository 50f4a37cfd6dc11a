"""Rollups of the ledger: sums per hour and per day, and daily latency histograms.

The dashboard's aggregates over a month of calls would read every row of
``llm_calls``; the rollups hold the same sums per hour, day and ISO week, so a
query reads whole weeks, then whole days, then whole hours from a rollup and only the partial hours at its range's edges
from the calls themselves (see :mod:`thrifty.ledger.queries`). Answers stay
exact: every sum is an integer (USD in units of 1e-12), and a row is either in
the rollups or read raw, never both.

Which rows are in: ``ledger_rollup_state.last_id``, the highest ``llm_calls.id``
rolled up. :func:`catch_up` adds the calls above it and moves it. The recorder
calls it in the same transaction as each batch it inserts, after :func:`lock`
(on PostgreSQL an advisory lock taken before the insert, so that recorders of
several processes allocate ids and commit in the same order and none is
skipped); the migration that creates the rollups and ``bench/dashboard.py``
call :func:`rebuild`. Rows written to ``llm_calls`` by anything else are above
the mark until the next catch-up, and queries read them raw meanwhile.

Dimensions are kept per *grain*, so that a high-cardinality dimension (users)
does not multiply the rows of every other: :data:`GRAINS`. A dimension a grain
does not keep, and a NULL value, are stored as ``''`` (the recorder stores an
empty user, project, key, model, provider or error type as NULL).

Latency histograms: for each call, ``duration_ms``, ``ttft_ms`` and
``overhead_ms`` fall in log-spaced buckets ``[MIN_MS * GROWTH**(k-1), MIN_MS *
GROWTH**k)``; bucket 0 holds values under ``MIN_MS``. A percentile read from
them is the bucket's harmonic midpoint, within :data:`RELATIVE_ERROR` (1%) of the
exact nearest-rank value; values under 0.01 ms read as 0.
"""

from __future__ import annotations

import json
import math
import operator
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from thrifty.ledger.models import (
    calls_table,
    latency_table,
    rollup_state_table,
    rollup_table,
    savings_rollup_table,
    savings_table,
    tags_table,
)

__all__ = [
    "DIALECTS",
    "DIMENSIONS",
    "GRAINS",
    "GROWTH",
    "LATENCY_DIMENSIONS",
    "MEASURES",
    "METRICS",
    "MIN_MS",
    "RELATIVE_ERROR",
    "SPANS",
    "STATE",
    "add_buckets",
    "add_value",
    "bucket_of",
    "bucket_value",
    "catch_up",
    "lock",
    "measures",
    "period_start",
    "pico",
    "rebuild",
    "watermark",
]

#: the backends with rollups
DIALECTS = ("sqlite", "postgresql")
#: the periods summed: UTC hours, days and ISO weeks (from Monday)
SPANS = ("hour", "day", "week")
#: rollup dimension -> the column of llm_calls (``tag`` comes from llm_call_tags)
DIMENSIONS: dict[str, str] = {
    "model": "model_used",
    "provider": "provider",
    "status": "status",
    "error_type": "error_type",
    "entry": "entry",
    "key_id": "key_id",
    "user": "user",
    "project": "project",
    "tag": "tag",
}
#: grain -> the dimensions its rows keep; a query uses the first grain that has all it needs
GRAINS: dict[str, tuple[str, ...]] = {
    "all": ("model", "provider", "status", "error_type", "entry"),
    "key": ("key_id", "model", "provider"),
    "project": ("project", "model", "provider"),
    "user": ("user", "model", "provider"),
    "tag": ("tag", "model", "provider"),
}
MEASURES = (
    "calls", "errors", "retries", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
    "reasoning_tokens", "cost_pusd", "unpriced_calls", "estimated_calls", "tokens_saved", "saved_pusd",
)
SAVINGS_MEASURES = ("calls", "tokens_before", "tokens_after", "tokens_saved", "saved_pusd", "priced_calls")
#: the timed columns with daily histograms
METRICS = ("duration_ms", "ttft_ms", "overhead_ms")
LATENCY_DIMENSIONS = ("model", "provider")
MIN_MS = 0.01
GROWTH = 1.02
#: the largest relative error of a percentile read from the histograms
RELATIVE_ERROR = (GROWTH - 1) / (GROWTH + 1)
_LOG_GROWTH = math.log(GROWTH)
#: 1e12: USD sums are kept in units of 1e-12 USD (the ledger's money scale)
PICO = 10**12
#: the row of ledger_rollup_state that holds the watermark
STATE = "llm_calls"
#: pg_advisory_xact_lock key of the rollup writers: the first 8 bytes of sha1("thrifty.ledger.rollup")
_PG_LOCK_KEY = int.from_bytes(bytes.fromhex("3f61d0a4c2b7e915"), "big", signed=True)


def bucket_of(value: float) -> int:
    """The histogram bucket of a value in milliseconds."""
    if not value >= MIN_MS:  # also NaN
        return 0
    return int(math.floor(math.log(value / MIN_MS) / _LOG_GROWTH)) + 1


def bucket_value(bucket: int) -> float:
    """The value a bucket stands for: the harmonic midpoint of its bounds (0 for bucket 0)."""
    if bucket <= 0:
        return 0.0
    low = MIN_MS * GROWTH ** (bucket - 1)
    high = low * GROWTH
    return 2 * low * high / (low + high)


def pico(column: Any) -> Any:
    """A USD column as an integer number of 1e-12 USD (NULL stays NULL)."""
    return sa.cast(sa.func.round(column * PICO), sa.BigInteger)


def measures(c: Any) -> list[Any]:
    """The rollup's sums over rows of llm_calls (columns ``c``), labelled as :data:`MEASURES`."""

    def total(col: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(col), 0)

    def count_if(cond: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)

    return [
        sa.func.count().label("calls"),
        count_if(c.status != "ok").label("errors"),
        count_if(c.attempt > 1).label("retries"),
        total(c.input_tokens).label("input_tokens"),
        total(c.cache_read_tokens).label("cache_read_tokens"),
        total(c.cache_write_tokens).label("cache_write_tokens"),
        total(c.output_tokens).label("output_tokens"),
        total(c.reasoning_tokens).label("reasoning_tokens"),
        total(pico(c.cost_usd)).label("cost_pusd"),
        count_if(c.cost_usd.is_(None)).label("unpriced_calls"),
        count_if(c.usage_source == "estimate").label("estimated_calls"),
        total(c.tokens_saved).label("tokens_saved"),
        total(pico(c.usd_saved)).label("saved_pusd"),
    ]


def period_start(column: Any, span: str, dialect: str) -> Any:
    """The UTC start of the hour, day or week (Monday) of a time column, in the column's own storage form."""
    if dialect == "postgresql":
        utc = sa.func.timezone(sa.literal_column("'UTC'"), column)
        return sa.func.timezone(sa.literal_column("'UTC'"), sa.func.date_trunc(sa.literal_column(f"'{span}'"), utc))
    if dialect == "sqlite":  # UTC text, as the ledger's datetime type writes it
        if span == "hour":
            return sa.func.strftime(sa.literal_column("'%Y-%m-%d %H:00:00.000000'"), column)
        day = sa.literal_column("'%Y-%m-%d 00:00:00.000000'")
        if span == "day":
            return sa.func.strftime(day, column)
        # the Monday of the week: the next Sunday (or this one), minus six days
        return sa.func.strftime(day, column, sa.literal_column("'weekday 0'"), sa.literal_column("'-6 days'"))
    raise ValueError(f"ledger rollups support SQLite and PostgreSQL, not {dialect}")


def lock(conn: Connection) -> None:
    """Serialize rollup writers until the end of the transaction (a no-op on SQLite, whose writers
    are serialized already). Take it before inserting calls that :func:`catch_up` will roll up."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def watermark(conn: Connection) -> int:
    """The highest llm_calls.id in the rollups (0 when none is, or the rollups are missing)."""
    s = rollup_state_table.c
    value = conn.execute(sa.select(s.last_id).where(s.name == STATE)).scalar_one_or_none()
    return int(value or 0)


def catch_up(conn: Connection) -> int:
    """Roll up the calls above the watermark and move it; returns how many calls were added.

    Run it in the transaction that inserted them, after :func:`lock`.
    """
    low = watermark(conn)
    high = conn.execute(sa.select(sa.func.max(calls_table.c.id))).scalar_one_or_none()
    if high is None or high <= low:
        return 0
    window = (calls_table.c.id > low, calls_table.c.id <= high)
    for grain in GRAINS:
        for span in SPANS:
            _upsert_sums(conn, grain, span, window)
    for span in SPANS:
        _upsert_savings(conn, span, window)
    _upsert_latency(conn, window)
    _set_watermark(conn, int(high), low)
    return int(conn.execute(sa.select(sa.func.count()).where(*window)).scalar_one())


def rebuild(conn: Connection) -> int:
    """Empty the rollups and roll up every call again (the migration's back-fill); returns the calls."""
    lock(conn)
    for table in (rollup_table, savings_rollup_table, latency_table, rollup_state_table):
        conn.execute(sa.delete(table))
    return catch_up(conn)


# ---------------------------------------------------------------- internals


def _dim(name: str, keep: Iterable[str]) -> Any:
    empty = sa.literal_column("''")  # inline, so that SELECT and GROUP BY name the same expression
    if name not in keep:
        return empty
    column = tags_table.c.tag if name == "tag" else calls_table.c[DIMENSIONS[name]]
    return sa.func.coalesce(column, empty)


def _insert(conn: Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


def _upsert_from_select(conn: Connection, table: sa.Table, select: sa.Select[Any], sums: tuple[str, ...]) -> None:
    keys = [c.name for c in table.primary_key.columns]
    stmt = _insert(conn, table).from_select([*keys, *sums], select)
    stmt = stmt.on_conflict_do_update(
        index_elements=keys, set_={m: table.c[m] + stmt.excluded[m] for m in sums}
    )
    conn.execute(stmt)


def _upsert_sums(conn: Connection, grain: str, span: str, window: tuple[Any, ...]) -> None:
    keep = GRAINS[grain]
    c = calls_table.c
    start = period_start(c.started_at, span, conn.dialect.name)
    dims = [_dim(name, keep) for name in DIMENSIONS]
    source: sa.FromClause = calls_table
    if "tag" in keep:  # one row per (call, tag); an untagged call once, with tag ''
        source = calls_table.outerjoin(tags_table, tags_table.c.call_id == c.call_id)
    select = (
        sa.select(sa.literal(grain), sa.literal(span), start, *dims, *measures(c))
        .select_from(source)
        .where(*window)
        .group_by(start, *[d for d, name in zip(dims, DIMENSIONS, strict=True) if name in keep])
    )
    _upsert_from_select(conn, rollup_table, select, MEASURES)


def _upsert_savings(conn: Connection, span: str, window: tuple[Any, ...]) -> None:
    c, s = calls_table.c, savings_table.c
    start = period_start(c.started_at, span, conn.dialect.name)
    empty = sa.literal_column("''")
    model, provider = sa.func.coalesce(c.model_used, empty), sa.func.coalesce(c.provider, empty)
    select = (
        sa.select(
            sa.literal(span),
            start,
            s.technique,
            model,
            provider,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(s.tokens_before), 0),
            sa.func.coalesce(sa.func.sum(s.tokens_after), 0),
            sa.func.coalesce(sa.func.sum(s.tokens_saved), 0),
            sa.func.coalesce(sa.func.sum(pico(s.usd_saved)), 0),
            sa.func.count(s.usd_saved),
        )
        .select_from(savings_table.join(calls_table, c.call_id == s.call_id))
        .where(*window)
        .group_by(start, s.technique, model, provider)
    )
    _upsert_from_select(conn, savings_rollup_table, select, SAVINGS_MEASURES)


def _upsert_latency(conn: Connection, window: tuple[Any, ...]) -> None:
    """Add the window's calls to the daily histograms (read, merge, write: writers hold :func:`lock`)."""
    c = calls_table.c
    day = period_start(c.started_at, "day", conn.dialect.name)
    query = sa.select(day.label("day"), c.model_used, c.provider, *[c[m] for m in METRICS]).where(*window)
    found: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    days: dict[Any, datetime] = {}
    for row in conn.execute(query):
        if row[0] not in days:  # SQLite gives the day in its storage form (UTC text)
            days[row[0]] = row[0] if isinstance(row[0], datetime) else datetime.fromisoformat(row[0]).replace(tzinfo=UTC)
        head = (days[row[0]], row[1] or "", row[2] or "")
        for metric, value in zip(METRICS, row[3:], strict=True):
            if value is not None:
                add_value(found[(*head, metric)], value)
    if not found:
        return
    t = latency_table
    for start in range(0, len(found), 500):
        keys = list(found)[start : start + 500]
        wanted = set(keys)
        stored = sa.select(t.c.day, t.c.model, t.c.provider, t.c.metric, t.c.buckets).where(
            t.c.day.in_({k[0] for k in keys})
        )
        for day_, model, provider, metric, buckets in conn.execute(stored):
            if (day_, model, provider, metric) in wanted:
                add_buckets(found[(day_, model, provider, metric)], buckets)
        stmt = _insert(conn, t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["day", "model", "provider", "metric"],
            set_={"calls": stmt.excluded.calls, "buckets": stmt.excluded.buckets},
        )
        conn.execute(stmt, [
            {"day": k[0], "model": k[1], "provider": k[2], "metric": k[3], "calls": sum(found[k]),
             "buckets": _encode(found[k])}
            for k in keys
        ])


def add_buckets(counts: list[int], encoded: str) -> None:
    """Add a stored histogram (``[first, n0, n1, ...]``) to ``counts`` (calls per bucket, from bucket 0)."""
    first, *values = json.loads(encoded)
    end = first + len(values)
    if len(counts) < end:
        counts.extend([0] * (end - len(counts)))
    counts[first:end] = map(operator.add, counts[first:end], values)


def add_value(counts: list[int], value: float) -> None:
    """Count one value in ``counts`` (calls per bucket, from bucket 0)."""
    bucket = bucket_of(value)
    if len(counts) <= bucket:
        counts.extend([0] * (bucket + 1 - len(counts)))
    counts[bucket] += 1


def _encode(counts: list[int]) -> str:
    first = next(i for i, n in enumerate(counts) if n)
    return json.dumps([first, *counts[first:]], separators=(",", ":"))


def _set_watermark(conn: Connection, high: int, low: int) -> None:
    s = rollup_state_table
    if low == 0 and watermark(conn) == 0:
        exists = conn.execute(sa.select(s.c.name).where(s.c.name == STATE)).first() is not None
        if not exists:
            conn.execute(sa.insert(s), {"name": STATE, "last_id": high})
            return
    conn.execute(sa.update(s).where(s.c.name == STATE).values(last_id=high))
