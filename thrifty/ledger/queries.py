"""Read-only queries over the ledger, for ``thrifty report`` and the dashboard.

Every function takes a SQLAlchemy engine and returns plain dataclasses (with
``as_dict()`` for JSON). Spend is summed in SQL, per group, over a half-open
time range ``[since, until)`` with optional filters. Unpriced calls are
counted, never summed as 0: a group whose calls are all unpriced has
``cost_usd = None``.

Time buckets are UTC: ``hour`` keys read ``2026-11-28T14:00``, ``day`` keys
``2026-11-28``, ``week`` keys the Monday that starts the ISO week.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from thrifty.errors import LedgerError
from thrifty.ledger.models import calls_table, key_spend_table, keys_table, savings_table, tags_table

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
        out = asdict(self)
        for key in ("cost_usd", "usd_saved"):
            out[key] = None if out[key] is None else _plain(out[key])
        return out


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
    where = _where(since, until, filters)
    report = SpendReport(group_by, since, until)
    with engine.connect() as conn:
        total = conn.execute(sa.select(*_aggregates(_calls.c)).where(*where)).one()
        report.total = _row(None, total)
        if group_by is not None:
            source: sa.FromClause = _calls
            if group_by == "tag":
                source = _calls.outerjoin(_tags, _tags.c.call_id == _calls.c.call_id)
            key = _group_expr(group_by, conn.dialect.name).label("grp")
            inner = sa.select(key, *_calls.c).select_from(source).where(*where).subquery()
            query = sa.select(inner.c.grp, *_aggregates(inner.c)).group_by(inner.c.grp)
            report.rows = [_row(r.grp, r) for r in conn.execute(query)]
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
    where = _where(since, until, filters or Filters())
    query = (
        sa.select(
            _savings.c.technique,
            sa.func.count().label("calls"),
            sa.func.coalesce(sa.func.sum(_savings.c.tokens_before), 0).label("tokens_before"),
            sa.func.coalesce(sa.func.sum(_savings.c.tokens_after), 0).label("tokens_after"),
            sa.func.coalesce(sa.func.sum(_savings.c.tokens_saved), 0).label("tokens_saved"),
            sa.func.sum(_savings.c.usd_saved).label("usd_saved"),
        )
        .select_from(_savings.join(_calls, _calls.c.call_id == _savings.c.call_id))
        .where(*where)
        .group_by(_savings.c.technique)
    )
    with engine.connect() as conn:
        rows = [
            TechniqueRow(
                r.technique,
                int(r.calls),
                int(r.tokens_before),
                int(r.tokens_after),
                int(r.tokens_saved),
                _money(r.usd_saved),
            )
            for r in conn.execute(query)
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
    where = _where(since, until, filters or Filters())
    retries = sa.func.coalesce(sa.func.sum(sa.case((_calls.c.attempt > 1, 1), else_=0)), 0).label("retries")
    with engine.connect() as conn:
        r = conn.execute(sa.select(*_aggregates(_calls.c), retries).where(*where)).one()
    out = _row(None, r).as_dict()
    del out["group"]
    out["retries"] = int(r.retries)
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
    percentile is None when the group has no value for that column.
    """
    if by not in (None, "model"):
        raise ValueError(f"unknown latency group {by!r}; choose model or leave it out")
    where = _where(since, until, filters or Filters())
    grp = _calls.c.model_used if by == "model" else sa.literal("")
    out: dict[Any, dict[str, Any]] = {}
    with engine.connect() as conn:
        for name in LATENCY_COLUMNS:
            col = _calls.c[name]
            partition = [grp] if by else None
            inner = (
                sa.select(
                    grp.label("grp"),
                    col.label("val"),
                    sa.func.row_number().over(partition_by=partition, order_by=col).label("rn"),
                    sa.func.count().over(partition_by=partition).label("n"),
                )
                .where(*where, col.is_not(None))
                .subquery()
            )
            # ceil(p * n / 100) in integer arithmetic, the same on every backend
            ranks = [(inner.c.n * p + 99) // 100 for p in PERCENTILES]
            query = sa.select(inner.c.grp, inner.c.rn, inner.c.n, inner.c.val).where(
                sa.or_(*[inner.c.rn == rank for rank in ranks])
            )
            for r in conn.execute(query):
                row = out.setdefault(r.grp, _latency_row(r.grp if by else None))
                row[f"{name}_count"] = int(r.n)
                for p in PERCENTILES:
                    if int(r.rn) == (int(r.n) * p + 99) // 100:
                        row[f"{name}_p{p}"] = float(r.val)
    if not out and by is None:
        out[""] = _latency_row(None)
    return sorted(out.values(), key=lambda r: (r["group"] is None, r["group"] or ""))


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
    where = _where(since, until, filters or Filters())
    c = _calls.c
    query = (
        sa.select(
            c.status,
            c.error_type,
            sa.func.count().label("calls"),
            sa.func.coalesce(sa.func.sum(sa.case((c.attempt > 1, 1), else_=0)), 0).label("retries"),
        )
        .where(*where)
        .group_by(c.status, c.error_type)
    )
    with engine.connect() as conn:
        groups = [(r.status, r.error_type, int(r.calls), int(r.retries)) for r in conn.execute(query)]
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
        where.append(c.call_id.in_(sa.select(_tags.c.call_id).where(_tags.c.tag == filters.tag)))
    return where


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _aggregates(c: Any) -> list[Any]:
    def total(col: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(col), 0)

    def count_if(cond: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)

    return [
        sa.func.count().label("calls"),
        count_if(c.status != "ok").label("errors"),
        total(c.input_tokens).label("input_tokens"),
        total(c.cache_read_tokens).label("cache_read_tokens"),
        total(c.cache_write_tokens).label("cache_write_tokens"),
        total(c.output_tokens).label("output_tokens"),
        total(c.reasoning_tokens).label("reasoning_tokens"),
        sa.func.sum(c.cost_usd).label("cost_usd"),
        count_if(c.cost_usd.is_(None)).label("unpriced_calls"),
        count_if(c.usage_source == "estimate").label("estimated_calls"),
        total(c.tokens_saved).label("tokens_saved"),
        sa.func.sum(c.usd_saved).label("usd_saved"),
    ]


def _row(group: Any, r: Any) -> SpendRow:
    return SpendRow(
        group=None if group is None else str(group),
        calls=int(r.calls),
        errors=int(r.errors),
        input_tokens=int(r.input_tokens),
        cache_read_tokens=int(r.cache_read_tokens),
        cache_write_tokens=int(r.cache_write_tokens),
        output_tokens=int(r.output_tokens),
        reasoning_tokens=int(r.reasoning_tokens),
        cost_usd=_money(r.cost_usd),
        unpriced_calls=int(r.unpriced_calls),
        estimated_calls=int(r.estimated_calls),
        tokens_saved=int(r.tokens_saved),
        usd_saved=_money(r.usd_saved) or Decimal(0),
    )


def _money(value: Any) -> Decimal | None:
    if value is None:
        return None
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _plain(value: Decimal) -> str:
    """An exact decimal string without exponent or trailing zeros (``0.0000125``, ``3``)."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _group_expr(group_by: str, dialect: str) -> Any:
    if group_by in _DIMENSIONS:
        return _DIMENSIONS[group_by]
    if group_by == "tag":
        return _tags.c.tag
    col = _calls.c.started_at
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
