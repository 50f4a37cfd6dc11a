"""Read-only queries over the ledger, for ``thrifty report`` and the dashboard.

Every function takes a SQLAlchemy engine and returns plain dataclasses (with
``as_dict()`` for JSON). Spend is summed in SQL, per group, over a half-open
time range ``[since, until)`` with optional filters. Unpriced calls are
counted, never summed as 0: a group whose calls are all unpriced has
``cost_usd = None``.

Sums over long ranges read the rollups of :mod:`thrifty.ledger.rollup`: whole
weeks, days and hours from them, and from ``llm_calls`` only the partial hours at the
range's edges and any call not rolled up yet, so the answers are those of the
calls alone. Filters and groupings no rollup grain keeps (say a user and a key
at once) read the calls. Latency percentiles are exact for ranges without a
whole UTC day, and within 1% otherwise.

Time buckets are UTC: ``hour`` keys read ``2026-11-28T14:00``, ``day`` keys
``2026-11-28``, ``week`` keys the Monday that starts the ISO week.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from thrifty.errors import LedgerError
from thrifty.ledger import rollup
from thrifty.ledger.models import (
    calls_table,
    key_spend_table,
    keys_table,
    latency_table,
    rollup_state_table,
    rollup_table,
    savings_rollup_table,
    savings_table,
    tags_table,
)

__all__ = [
    "BREAKDOWN_BY",
    "CALL_ORDERS",
    "GROUP_BY",
    "LATENCY_COLUMNS",
    "PERCENTILES",
    "TIME_GROUPS",
    "Filters",
    "SpendReport",
    "SpendRow",
    "TechniqueRow",
    "budgets",
    "check_ledger",
    "errors",
    "latency",
    "parse_time",
    "recent_calls",
    "savings_by_technique",
    "spend",
    "summary",
    "top_calls",
]

_calls = calls_table
_tags = tags_table
_savings = savings_table

TIME_GROUPS = ("hour", "day", "week")
#: group-by name -> column of llm_calls (``tag`` and the time buckets are built in _group_expr)
_DIMENSIONS = {
    "model": _calls.c.model_used,
    "provider": _calls.c.provider,
    "project": _calls.c.project,
    "user": _calls.c.user,
    "key": _calls.c.key_id,
    "status": _calls.c.status,
    "entry": _calls.c.entry,
}
GROUP_BY: tuple[str, ...] = (*TIME_GROUPS, *_DIMENSIONS, "tag")


@dataclass(frozen=True, slots=True)
class Filters:
    """Only calls matching every field that is set."""

    model: str | None = None
    provider: str | None = None
    project: str | None = None
    user: str | None = None
    key_id: str | None = None
    tag: str | None = None
    status: str | None = None
    entry: str | None = None


@dataclass(slots=True)
class SpendRow:
    """Totals of one group (``group`` is None for calls without that attribute, e.g. untagged)."""

    group: str | None
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal | None = None  # over priced calls; None when every call is unpriced
    unpriced_calls: int = 0
    estimated_calls: int = 0  # calls whose usage is an estimate
    tokens_saved: int = 0
    usd_saved: Decimal = Decimal(0)

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: USD amounts as exact decimal strings."""
        out = {name: getattr(self, name) for name in _SPEND_FIELDS}  # asdict() deep-copies: slow for long tables
        for key in ("cost_usd", "usd_saved"):
            out[key] = None if out[key] is None else _plain(out[key])
        return out


_SPEND_FIELDS = tuple(f.name for f in fields(SpendRow))


@dataclass(slots=True)
class SpendReport:
    group_by: str | None
    since: datetime | None
    until: datetime | None
    rows: list[SpendRow] = field(default_factory=list)
    total: SpendRow = field(default_factory=lambda: SpendRow(None))

    def as_dict(self) -> dict[str, Any]:
        return {
            "group_by": self.group_by,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "rows": [r.as_dict() for r in self.rows],
            "total": self.total.as_dict(),
        }


@dataclass(slots=True)
class TechniqueRow:
    technique: str
    calls: int
    tokens_before: int
    tokens_after: int
    tokens_saved: int
    usd_saved: Decimal | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["usd_saved"] = None if self.usd_saved is None else _plain(self.usd_saved)
        return out


def check_ledger(engine: Engine) -> None:
    """A :class:`LedgerError` saying what is wrong if ``engine`` is not a readable ledger."""
    from thrifty.ledger.db import ping, redacted

    ping(engine)
    try:
        found = sa.inspect(engine).has_table(_calls.name)
    except DBAPIError as exc:
        raise LedgerError(f"cannot read the ledger database {redacted(engine.url)}: {exc.orig}") from exc
    if not found:
        raise LedgerError(
            f"{redacted(engine.url)} has no ledger tables; has thrifty recorded any calls to it?"
        )


def spend(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: str | None = None,
    filters: Filters | None = None,
) -> SpendReport:
    """Calls, tokens, cost and savings in ``[since, until)``, per ``group_by`` (one of :data:`GROUP_BY`)."""
    if group_by is not None and group_by not in GROUP_BY:
        raise ValueError(f"unknown group-by {group_by!r}; choose one of: {', '.join(GROUP_BY)}")
    filters = filters or Filters()
    report = SpendReport(group_by, since, until)
    with engine.connect() as conn:
        groups: dict[tuple[Any, ...], list[int]] = {}
        if group_by is not None:
            groups = _sums(conn, since, until, filters, (_ROLLUP_KEYS.get(group_by, group_by),))
            report.rows = [_spend_row(g[0], m) for g, m in groups.items()]
        if group_by is not None and group_by != "tag":  # every call is in one group: the total is their sum
            total = [sum(column) for column in zip(*groups.values(), strict=True)] if groups else _zeros()
        else:
            total = _sums(conn, since, until, filters, ()).get((), _zeros())
        report.total = _spend_row(None, total)
    if group_by in TIME_GROUPS:
        report.rows.sort(key=lambda r: r.group or "")
    else:
        report.rows.sort(key=lambda r: (-(r.cost_usd or 0), -r.calls, r.group or ""))
    return report


def savings_by_technique(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    filters: Filters | None = None,
) -> list[TechniqueRow]:
    """What each technique saved in ``[since, until)``, most USD first."""
    filters = filters or Filters()
    s, c = _savings.c, _calls.c
    sums = [
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(s.tokens_before), 0),
        sa.func.coalesce(sa.func.sum(s.tokens_after), 0),
        sa.func.coalesce(sa.func.sum(s.tokens_saved), 0),
        sa.func.coalesce(sa.func.sum(rollup.pico(s.usd_saved)), 0),
        sa.func.count(s.usd_saved),
    ]
    found: dict[tuple[Any, ...], list[int]] = {}
    with engine.connect() as conn:
        usable = _rollup_usable(conn, filters) and _fields(filters) <= {"model", "provider"}
        plan = _plan(conn, since, until, ("week", "day", "hour") if usable else ())
        r = savings_rollup_table.c
        for span, low, high in plan.rollup:
            query = (
                sa.select(r.technique, *[sa.func.sum(r[m]) for m in rollup.SAVINGS_MEASURES])
                .where(r.span == span, *_time_range(r.start, low, high), *_rollup_filters(r, filters))
                .group_by(r.technique)
            )
            _merge(found, conn.execute(query), 1)
        for where in plan.raw_where(conn.dialect.name):
            query = (
                sa.select(s.technique, *sums)
                .select_from(_savings.join(_calls, c.call_id == s.call_id))
                .where(*where, *_filter_where(filters))
                .group_by(s.technique)
            )
            _merge(found, conn.execute(query), 1)
    rows = [
        TechniqueRow(t, calls, before, after, saved, _from_pico(usd) if priced else None)
        for (t,), (calls, before, after, saved, usd, priced) in found.items()
    ]
    rows.sort(key=lambda r: (-(r.usd_saved or 0), -r.tokens_saved, r.technique))
    return rows


def recent_calls(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    filters: Filters | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """The newest calls first, one dict per ``llm_calls`` row plus its ``tags``."""
    where = _where(since, until, filters or Filters())
    query = (
        sa.select(_calls)
        .where(*where)
        .order_by(_calls.c.started_at.desc(), _calls.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
        ids = [r["call_id"] for r in rows]
        tags: dict[str, list[str]] = {}
        if ids:
            for call_id, tag in conn.execute(
                sa.select(_tags.c.call_id, _tags.c.tag).where(_tags.c.call_id.in_(ids)).order_by(_tags.c.tag)
            ):
                tags.setdefault(call_id, []).append(tag)
    for row in rows:
        row["tags"] = tags.get(row["call_id"], [])
    return rows


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """``7d``, ``24h``, ``30m``, ``2w`` (ago), ``now``, ``today``, a date or an ISO datetime (UTC if naive).

    Raises ``ValueError`` with a message that shows the accepted forms.
    """
    now = now or datetime.now(UTC)
    value = text.strip()
    lowered = value.lower()
    if lowered == "now":
        return now
    if lowered == "today":
        return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    match = _RELATIVE.match(value)
    if match:
        amount, unit = float(match.group(1)), _UNITS[match.group(2).lower()]
        return now - timedelta(**{unit: amount})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time; use a duration ago (30m, 24h, 7d, 2w), "
            "'today', 'now', a date (2026-11-01) or an ISO datetime (2026-11-01T09:30)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# ---------------------------------------------------------------- dashboard queries

#: what the dashboard's breakdown may group by
BREAKDOWN_BY = ("model", "provider", "key", "project", "user", "tag")
#: the timed columns of llm_calls whose percentiles :func:`latency` reports
LATENCY_COLUMNS = ("duration_ms", "ttft_ms", "overhead_ms")
#: percentiles, nearest-rank: the value at rank ceil(p/100 * n) of the n non-null values
PERCENTILES = (50, 90, 99)
#: orders of :func:`top_calls`
CALL_ORDERS = ("cost", "duration", "recent")
#: the metadata columns :func:`top_calls` returns (never prompts or responses)
CALL_COLUMNS = (
    "call_id", "parent_call_id", "attempt", "started_at", "duration_ms", "ttft_ms", "overhead_ms", "entry",
    "wire", "stream", "provider", "model_requested", "model_used", "route_decision", "key_id", "user",
    "project", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens",
    "usage_source", "cost_usd", "price_source", "tokens_saved", "usd_saved", "status", "error_type",
    "http_status",
)


def summary(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    filters: Filters | None = None,
) -> dict[str, Any]:
    """The totals of :class:`SpendRow` plus ``retries`` (calls with ``attempt > 1``), JSON-ready."""
    with engine.connect() as conn:
        total = _sums(conn, since, until, filters or Filters(), ()).get((), _zeros())
    out = _spend_row(None, total).as_dict()
    del out["group"]
    out["retries"] = total[_RETRIES]
    return out


def latency(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    filters: Filters | None = None,
    by: str | None = None,
) -> list[dict[str, Any]]:
    """Nearest-rank p50/p90/p99 of each of :data:`LATENCY_COLUMNS`, overall or per ``by`` (``model``).

    One row per group: ``{"group", "<column>_count", "<column>_p50", ...}``; a
    percentile is None when the group has no value for that column. Exact when
    the range holds no whole UTC day (or only filters the histograms do not
    keep); otherwise read from the daily histograms of :mod:`thrifty.ledger.rollup`,
    within :data:`thrifty.ledger.rollup.RELATIVE_ERROR` (1%) of the exact value.
    """
    if by not in (None, "model"):
        raise ValueError(f"unknown latency group {by!r}; choose model or leave it out")
    filters = filters or Filters()
    c = _calls.c
    grp = c.model_used if by == "model" else sa.literal_column("''")
    hist: dict[Any, dict[str, list[int]]] = {}  # group -> column -> calls per bucket
    with engine.connect() as conn:
        usable = _rollup_usable(conn, filters) and _fields(filters) <= set(rollup.LATENCY_DIMENSIONS)
        plan = _plan(conn, since, until, ("day",) if usable else ())
        t = latency_table.c
        key = t.model if by == "model" else sa.literal_column("''")
        for _, low, high in plan.rollup:
            query = sa.select(key, t.metric, t.buckets).where(
                *_time_range(t.day, low, high), *_rollup_filters(t, filters)
            )
            for g, metric, buckets in conn.execute(query):
                rollup.add_buckets(hist.setdefault(g or None, {}).setdefault(metric, []), buckets)
        values_of = sa.select(grp, *[c[name] for name in LATENCY_COLUMNS])
        out: dict[Any, dict[str, Any]] = {}
        if hist:  # whole days from the histograms, the rest from the calls, bucketed alike
            for where in plan.raw_where(conn.dialect.name):
                for g, *values in conn.execute(values_of.where(*where, *_filter_where(filters))):
                    metrics = hist.setdefault(g or None, {})
                    for name, value in zip(LATENCY_COLUMNS, values, strict=True):
                        if value is not None:
                            rollup.add_value(metrics.setdefault(name, []), value)
            for g, metrics in hist.items():
                row = out[g] = _latency_row(g if by else None)
                for name, counts in metrics.items():
                    _fill_percentiles(row, name, [(b, n) for b, n in enumerate(counts) if n], rollup.bucket_value)
        else:  # exact, from the calls
            found: dict[Any, dict[str, list[float]]] = {}
            for g, *values in conn.execute(values_of.where(*_where(since, until, filters))):
                metrics = found.setdefault(g if by else None, {})
                for name, value in zip(LATENCY_COLUMNS, values, strict=True):
                    if value is not None:
                        metrics.setdefault(name, []).append(float(value))
            for g, metrics in found.items():
                row = out[g] = _latency_row(g)
                for name, values in metrics.items():
                    values.sort()
                    _fill_percentiles(row, name, [(v, 1) for v in values], float)
    if not out and by is None:
        out[""] = _latency_row(None)
    return sorted(out.values(), key=lambda r: (r["group"] is None, r["group"] or ""))


def _fill_percentiles(row: dict[str, Any], name: str, counted: list[tuple[Any, int]], value: Any) -> None:
    """Nearest-rank percentiles from ``(key, count)`` pairs in ascending order; ``value(key)`` reads one."""
    n = sum(count for _, count in counted)
    row[f"{name}_count"] = n
    if not n:
        return
    ranks = {p: (n * p + 99) // 100 for p in PERCENTILES}  # ceil(p * n / 100)
    seen = 0
    pending = sorted(PERCENTILES, key=ranks.__getitem__)
    for key, count in counted:
        seen += count
        while pending and ranks[pending[0]] <= seen:
            row[f"{name}_p{pending.pop(0)}"] = value(key)
        if not pending:
            break


def _latency_row(group: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"group": group}
    for name in LATENCY_COLUMNS:
        row[f"{name}_count"] = 0
        for p in PERCENTILES:
            row[f"{name}_p{p}"] = None
    return row


def errors(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    filters: Filters | None = None,
) -> dict[str, Any]:
    """Calls, errors (status other than ``ok``), retries (``attempt > 1``), their rates, and counts per
    (status, error_type), most first."""
    with engine.connect() as conn:
        found = _sums(conn, since, until, filters or Filters(), ("status", "error_type"))
    groups = [(s, e, m[_CALLS], m[_RETRIES]) for (s, e), m in found.items()]
    calls = sum(g[2] for g in groups)
    errs = sum(g[2] for g in groups if g[0] != "ok")
    retries = sum(g[3] for g in groups)
    rows = [{"status": s, "error_type": e, "calls": n} for s, e, n, _ in groups]
    rows.sort(key=lambda r: (-r["calls"], r["status"], r["error_type"] or ""))
    return {
        "calls": calls,
        "errors": errs,
        "retries": retries,
        "error_rate": errs / calls if calls else None,
        "retry_rate": retries / calls if calls else None,
        "rows": rows,
    }


def top_calls(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    filters: Filters | None = None,
    order: str = "cost",
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Calls' metadata (:data:`CALL_COLUMNS`), the most expensive, slowest or newest first."""
    if order not in CALL_ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of: {', '.join(CALL_ORDERS)}")
    c = _calls.c
    first = {"cost": c.cost_usd, "duration": c.duration_ms, "recent": c.started_at}[order]
    query = (
        sa.select(*[c[name] for name in CALL_COLUMNS])
        .where(*_where(since, until, filters or Filters()), first.is_not(None))
        .order_by(first.desc(), c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def budgets(engine: Engine, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Each virtual key's budget, period, and what it spent, holds reserved and called in the current period."""
    now = now or datetime.now(UTC)
    k, s = keys_table.c, key_spend_table.c
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(keys_table.name):
            return []
        keys = list(conn.execute(sa.select(keys_table).order_by(k.name)))
        starts = {row.id: _period_start(row.budget_period, now) for row in keys}
        spent: dict[int, Any] = {}
        if keys:
            query = sa.select(key_spend_table).where(
                sa.or_(*[sa.and_(s.key_id == kid, s.period_start == start) for kid, start in starts.items()])
            )
            spent = {r.key_id: r for r in conn.execute(query)}
    out = []
    for row in keys:
        used = spent.get(row.id)
        out.append({
            "name": row.name,
            "prefix": row.prefix,
            "revoked": row.revoked_at is not None,
            "budget_usd": None if row.budget_usd is None else _plain(_money(row.budget_usd)),  # type: ignore[arg-type]
            "period": row.budget_period,
            "period_start": starts[row.id].isoformat(),
            "spent_usd": _plain(_money(used.spent_usd)) if used else "0",  # type: ignore[arg-type]
            "reserved_usd": _plain(_money(used.reserved_usd)) if used else "0",  # type: ignore[arg-type]
            "calls": int(used.calls) if used else 0,
        })
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _period_start(period: str, now: datetime) -> datetime:
    """The start of the calendar budget ``period`` around ``now`` (as the limits stage keys key_spend)."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return _EPOCH


# ---------------------------------------------------------------- internals


def _where(since: datetime | None, until: datetime | None, filters: Filters) -> list[Any]:
    c = _calls.c
    where: list[Any] = []
    if since is not None:
        where.append(c.started_at >= _aware(since))
    if until is not None:
        where.append(c.started_at < _aware(until))
    for name, column in (
        ("model", c.model_used),
        ("provider", c.provider),
        ("project", c.project),
        ("user", c.user),
        ("key_id", c.key_id),
        ("status", c.status),
        ("entry", c.entry),
    ):
        value = getattr(filters, name)
        if value is not None:
            where.append(column == value)
    if filters.tag is not None:
        # correlated, so that the time range (or id range) drives the search, not every call with the tag
        t = _tags.alias("tagged")
        tagged = sa.select(t.c.call_id).where(t.c.call_id == c.call_id, t.c.tag == filters.tag)
        where.append(tagged.correlate(_calls).exists())
    return where


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


_CALLS = rollup.MEASURES.index("calls")
_RETRIES = rollup.MEASURES.index("retries")
#: a group-by of the spend report -> the rollup dimension (``key`` is ``key_id``; time groups as they are)
_ROLLUP_KEYS = {"key": "key_id"}
#: filter field -> rollup dimension
_FILTER_DIMENSIONS = {"model": "model", "provider": "provider", "project": "project", "user": "user",
                      "key_id": "key_id", "tag": "tag", "status": "status", "entry": "entry"}


def _zeros() -> list[int]:
    return [0] * len(rollup.MEASURES)


def _fields(filters: Filters) -> set[str]:
    """The rollup dimensions ``filters`` restricts."""
    return {dim for name, dim in _FILTER_DIMENSIONS.items() if getattr(filters, name) is not None}


def _rollup_usable(conn: Any, filters: Filters) -> bool:
    # '' is how the rollups store NULL: a filter on an empty value reads the calls
    empty = any(getattr(filters, name) == "" for name in _FILTER_DIMENSIONS)
    return conn.dialect.name in rollup.DIALECTS and not empty


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where a range's answer comes from: ``rollup`` periods ``(span, start, end)`` (None: unbounded),
    the ``raw`` time ranges read from the calls, and, within the rolled-up stretch, the calls above the
    rollups' watermark ``mark``."""

    rollup: list[tuple[str, datetime | None, datetime | None]]
    raw: list[tuple[datetime | None, datetime | None]]
    mark: int
    gap: bool = False  # whether any call is above the mark

    def raw_where(self, dialect: str) -> list[list[Any]]:
        """One WHERE clause (a list of conditions on llm_calls) per part read from the calls."""
        c = _calls.c
        unindexed = sa.func.coalesce(c.started_at, c.started_at) if dialect == "sqlite" else c.started_at
        out = []
        for low, high in self.raw:
            # SQLite cannot tell how much of the table a time range holds and takes the started_at index
            # even for a month, one row lookup per call: slower than a scan (or a filter's index) past a week
            long = low is None or high is None or high - low > _LONG_RANGE
            out.append(_time_range(unindexed if long else c.started_at, low, high))
        if self.gap:
            lows, highs = [r[1] for r in self.rollup], [r[2] for r in self.rollup]
            low = None if None in lows else min(lows)  # type: ignore[type-var]
            high = None if None in highs else max(highs)  # type: ignore[type-var]
            # read by id, not by time: keep the planner off the started_at index for a months-long range
            out.append([c.id > self.mark, *_time_range(unindexed, low, high)])
        return out


_LONG_RANGE = timedelta(days=7)


def _plan(conn: Any, since: datetime | None, until: datetime | None, spans: tuple[str, ...]) -> _Plan:
    since = None if since is None else _aware(since).astimezone(UTC)
    until = None if until is None else _aware(until).astimezone(UTC)
    periods, raw = _split(since, until, spans) if spans else ([], [(since, until)])
    if not periods:
        return _Plan([], [(since, until)], 0)
    state = rollup_state_table.c
    mark, newest = conn.execute(sa.select(
        sa.select(state.last_id).where(state.name == rollup.STATE).scalar_subquery(),
        sa.select(sa.func.max(_calls.c.id)).scalar_subquery(),
    )).one()
    mark = int(mark or 0)
    return _Plan(periods, raw, mark, gap=newest is not None and newest > mark)


def _split(
    low: datetime | None, high: datetime | None, spans: tuple[str, ...]
) -> tuple[list[tuple[str, datetime | None, datetime | None]], list[tuple[datetime | None, datetime | None]]]:
    """``[low, high)`` as whole periods of the coarsest span that fits, the edges recursively in finer
    spans, and what is left as raw ranges."""
    if not spans:
        return [], [(low, high)]
    span, finer = spans[0], spans[1:]
    first = None if low is None else _ceil(low, span)
    last = None if high is None else _floor(high, span)
    if first is not None and last is not None and first >= last:
        return _split(low, high, finer)
    periods: list[tuple[str, datetime | None, datetime | None]] = [(span, first, last)]
    raw: list[tuple[datetime | None, datetime | None]] = []
    for edge_low, edge_high in ((low, first), (last, high)):
        if edge_low is not None and edge_high is not None and edge_low < edge_high:
            more, left = _split(edge_low, edge_high, finer)
            periods += more
            raw += left
    return periods, raw


_SPAN_LENGTH = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


def _floor(at: datetime, span: str) -> datetime:
    at = at.replace(minute=0, second=0, microsecond=0)
    if span == "hour":
        return at
    day = at.replace(hour=0)
    return day if span == "day" else day - timedelta(days=day.weekday())


def _ceil(at: datetime, span: str) -> datetime:
    floor = _floor(at, span)
    return floor if floor == at else floor + _SPAN_LENGTH[span]


def _time_range(column: Any, low: datetime | None, high: datetime | None) -> list[Any]:
    out = []
    if low is not None:
        out.append(column >= low)
    if high is not None:
        out.append(column < high)
    return out


def _filter_where(filters: Filters) -> list[Any]:
    """The conditions of ``filters`` on llm_calls (no time range)."""
    return _where(None, None, filters)


def _rollup_filters(t: Any, filters: Filters) -> list[Any]:
    return [t[dim] == getattr(filters, name) for name, dim in _FILTER_DIMENSIONS.items()
            if getattr(filters, name) is not None]


def _grain(filters: Filters, keys: tuple[str, ...]) -> str | None:
    """The first rollup grain that keeps every dimension the query filters or groups by."""
    needed = _fields(filters) | {k for k in keys if k not in TIME_GROUPS}
    if "tag" in keys and filters.tag is not None:
        return None  # the other tags of the calls with one tag: only the calls know
    return next((g for g, dims in rollup.GRAINS.items() if needed <= set(dims)), None)


def _sums(
    conn: Any, since: datetime | None, until: datetime | None, filters: Filters, keys: tuple[str, ...]
) -> dict[tuple[Any, ...], list[int]]:
    """The sums of :data:`thrifty.ledger.rollup.MEASURES` per group; a group is the tuple of the
    values of ``keys`` (rollup dimensions or time groups) in ``[since, until)``."""
    dialect = conn.dialect.name
    grain = _grain(filters, keys) if _rollup_usable(conn, filters) else None
    spans = ("hour",) if "hour" in keys else ("day", "hour") if "day" in keys else ("week", "day", "hour")
    plan = _plan(conn, since, until, () if grain is None else spans)
    found: dict[tuple[Any, ...], list[int]] = {}
    r = rollup_table.c
    for span, low, high in plan.rollup:
        exprs = [_group_expr(k, dialect, r.start) if k in TIME_GROUPS else r[k] for k in keys]
        query = (
            sa.select(*exprs, *[sa.func.sum(r[m]) for m in rollup.MEASURES])
            .where(r.grain == grain, r.span == span, *_time_range(r.start, low, high), *_rollup_filters(r, filters))
            .group_by(*exprs)
        )
        # '' is how a rollup keeps NULL
        _merge(found, conn.execute(query), len(keys), empty_is_null=[k not in TIME_GROUPS for k in keys])
    c = _calls.c
    source: sa.FromClause = _calls
    if "tag" in keys:
        source = _calls.outerjoin(_tags, _tags.c.call_id == c.call_id)
    exprs = [_group_expr(k, dialect) for k in keys]
    for where in plan.raw_where(dialect):
        query = (
            sa.select(*exprs, *rollup.measures(c))
            .select_from(source)
            .where(*where, *_filter_where(filters))
            .group_by(*exprs)
        )
        _merge(found, conn.execute(query), len(keys))
    return found


def _merge(
    found: dict[tuple[Any, ...], list[int]], rows: Any, width: int, empty_is_null: list[bool] | None = None
) -> None:
    for row in rows:
        key = tuple(row[:width])
        if empty_is_null:
            key = tuple(None if null and v == "" else v for v, null in zip(key, empty_is_null, strict=True))
        sums = found.get(key)
        values = [int(v or 0) for v in row[width:]]
        if sums is None:
            found[key] = values
        else:
            for i, v in enumerate(values):
                sums[i] += v


def _from_pico(value: int) -> Decimal:
    return Decimal(value).scaleb(-12)


def _spend_row(group: Any, m: list[int]) -> SpendRow:
    (calls, errs, _retries, input_tokens, cache_read, cache_write, output_tokens, reasoning, cost, unpriced,
     estimated, tokens_saved, saved) = m
    return SpendRow(
        group=None if group is None else str(group),
        calls=calls,
        errors=errs,
        input_tokens=input_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning,
        cost_usd=_from_pico(cost) if unpriced < calls else None,
        unpriced_calls=unpriced,
        estimated_calls=estimated,
        tokens_saved=tokens_saved,
        usd_saved=_from_pico(saved),
    )


def _money(value: Any) -> Decimal | None:
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _plain(value: Decimal) -> str:
    """An exact decimal string without exponent or trailing zeros (``0.0000125``, ``3``)."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _group_expr(group_by: str, dialect: str, col: Any = None) -> Any:
    """The expression of a group-by on llm_calls (a rollup dimension name or a time group; time groups
    of another time column ``col``)."""
    if group_by in _DIMENSIONS:
        return _DIMENSIONS[group_by]
    if group_by in rollup.DIMENSIONS and group_by != "tag":
        return _calls.c[rollup.DIMENSIONS[group_by]]
    if group_by == "tag":
        return _tags.c.tag
    col = _calls.c.started_at if col is None else col
    # the format strings are constants, rendered inline so that SELECT and GROUP BY match
    if dialect == "postgresql":
        utc = sa.func.timezone(sa.literal_column("'UTC'"), col)
        trunc = sa.func.date_trunc(sa.literal_column(f"'{group_by}'"), utc)
        fmt = "'YYYY-MM-DD\"T\"HH24:00'" if group_by == "hour" else "'YYYY-MM-DD'"
        return sa.func.to_char(trunc, sa.literal_column(fmt))
    if dialect == "sqlite":  # stored as UTC text
        if group_by == "hour":
            return sa.func.strftime(sa.literal_column("'%Y-%m-%dT%H:00'"), col)
        if group_by == "day":
            return sa.func.strftime(sa.literal_column("'%Y-%m-%d'"), col)
        # the Monday of the week: the next Sunday (or this one), minus six days
        return sa.func.date(col, sa.literal_column("'weekday 0'"), sa.literal_column("'-6 days'"))
    raise LedgerError(f"grouping by {group_by} is supported on SQLite and PostgreSQL, not {dialect}")
