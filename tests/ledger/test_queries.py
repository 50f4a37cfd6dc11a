"""Spend queries: every group-by and filter against totals computed here, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from thrifty.ledger import queries
from thrifty.ledger.queries import GROUP_BY, Filters, SpendRow, parse_time
from thrifty.ledger.record import LedgerRecord
from thrifty.ledger.recorder import Recorder
from thrifty.middleware.context import Saving

SINCE = datetime(2026, 11, 1, tzinfo=UTC)
UNTIL = datetime(2026, 11, 10, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))

# call_id, started_at, model, provider, project, user, key, tags, (in, cache_r, cache_w, out, reasoning),
# cost (None: unpriced), status, savings
# fmt: off
DATA: list[tuple[Any, ...]] = [
    ("a", datetime(2026, 11, 1, 0, 0, tzinfo=UTC), "gpt-4o", "openai", "search", "alice", "k1", ["x", "y"],
     (100, 0, 0, 10, 0), Decimal("0.000000075"), "ok", {"compression": Saving(300, 100, usd_saved=0.0005)}),
    ("b", datetime(2026, 11, 1, 23, 30, tzinfo=UTC), "gpt-4o", "openai", "search", "bob", "k1", ["x"],
     (200, 1000, 50, 20, 5), Decimal("1.234567890123"), "ok", {}),
    ("c", datetime(2026, 11, 2, 1, 30, tzinfo=PLUS2), "claude-haiku-4-5", "anthropic", None, "alice", "k2", [],
     (300, 0, 0, 30, 0), Decimal("0.1"), "error", {"compression": Saving(500, 300)}),
    ("d", datetime(2026, 11, 2, 0, 45, tzinfo=UTC), "mystery", "custom", "ads", None, None, ["y"],
     (400, 0, 0, 40, 0), None, "ok", {}),
    ("e", datetime(2026, 11, 8, 12, 0, tzinfo=UTC), "gpt-4o", "openai", "ads", "carol", "k2", ["z"],
     (500, 0, 0, 50, 0), Decimal("0.000123456789"), "client_disconnected",
     {"contracts": Saving(50, 80, usd_saved=-0.0001), "compression": Saving(80, 40)}),
    ("f", datetime(2026, 11, 9, 23, 59, 59, tzinfo=UTC), "mystery", "custom", "ads", "carol", "k1", [],
     (600, 0, 0, 60, 0), None, "ok", {}),
    # outside [SINCE, UNTIL): before, and exactly at the (exclusive) end
    ("early", datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), "gpt-4o", "openai", "search", "alice", "k1", ["x"],
     (7, 0, 0, 7, 0), Decimal(9), "ok", {}),
    ("late", UNTIL, "gpt-4o", "openai", "search", "alice", "k1", ["x"], (7, 0, 0, 7, 0), Decimal(9), "ok", {}),
]
# fmt: on


def build(row: tuple[Any, ...]) -> LedgerRecord:
    call_id, at, model, provider, project, user, key, tags, tokens, cost, status, savings = row
    rec = LedgerRecord(
        call_id=call_id,
        started_at=at,
        entry="proxy" if call_id in ("c", "d") else "wrapper",
        wire="openai",
        provider=provider,
        model_used=model,
        project=project,
        user=user,
        key_id=key,
        tags=list(tags),
        input_tokens=tokens[0],
        cache_read_tokens=tokens[1],
        cache_write_tokens=tokens[2],
        output_tokens=tokens[3],
        reasoning_tokens=tokens[4],
        usage_source="estimate" if call_id == "e" else "provider",
        cost_usd=cost,
        price_source="test" if cost is not None else "unpriced",
        status=status,
    )
    rec.set_savings(savings)
    return rec


@pytest.fixture
def ledger(ledger_url: str, tmp_path: Any) -> str:
    from thrifty.settings import LedgerSettings

    with Recorder(ledger_url, LedgerSettings(flush_interval_s=0.02), data_dir=tmp_path) as recorder:
        for row in DATA:
            recorder.submit(build(row))
        assert recorder.flush(10)
    return ledger_url


def in_range(rec: LedgerRecord) -> bool:
    return SINCE <= rec.started_at < UNTIL


def key_of(rec: LedgerRecord, group_by: str) -> list[str | None]:
    at = rec.started_at.astimezone(UTC)
    if group_by == "hour":
        return [at.strftime("%Y-%m-%dT%H:00")]
    if group_by == "day":
        return [at.strftime("%Y-%m-%d")]
    if group_by == "week":
        return [(at - timedelta(days=at.weekday())).strftime("%Y-%m-%d")]
    if group_by == "tag":
        return list(rec.tags) or [None]
    attr = {"model": "model_used", "key": "key_id"}.get(group_by, group_by)
    return [getattr(rec, attr)]


def expected(records: list[LedgerRecord], group: str | None) -> SpendRow:
    row = SpendRow(group)
    costs = []
    for rec in records:
        row.calls += 1
        row.errors += rec.status != "ok"
        row.input_tokens += rec.input_tokens
        row.cache_read_tokens += rec.cache_read_tokens
        row.cache_write_tokens += rec.cache_write_tokens
        row.output_tokens += rec.output_tokens
        row.reasoning_tokens += rec.reasoning_tokens
        row.unpriced_calls += rec.cost_usd is None
        row.estimated_calls += rec.usage_source == "estimate"
        row.tokens_saved += rec.tokens_saved or 0
        row.usd_saved += rec.usd_saved or 0
        if rec.cost_usd is not None:
            costs.append(rec.cost_usd)
    row.cost_usd = sum(costs, Decimal(0)) if costs else None
    return row


def expected_report(group_by: str | None, keep: Callable[[LedgerRecord], bool] = lambda r: True) -> dict:
    records = [r for r in map(build, DATA) if in_range(r) and keep(r)]
    groups: dict[str | None, list[LedgerRecord]] = defaultdict(list)
    if group_by:
        for rec in records:
            for key in key_of(rec, group_by):
                groups[key].append(rec)
    return {"total": expected(records, None), "rows": {k: expected(v, k) for k, v in groups.items()}}


def same(actual: SpendRow, wanted: SpendRow) -> None:
    assert actual.as_dict() == wanted.as_dict()


@pytest.mark.parametrize("group_by", [None, *GROUP_BY])
def test_spend_by_every_group(ledger: str, engine_for: Callable, group_by: str | None) -> None:
    report = queries.spend(engine_for(ledger), since=SINCE, until=UNTIL, group_by=group_by)
    want = expected_report(group_by)
    same(report.total, want["total"])
    assert {r.group: r for r in report.rows}.keys() == want["rows"].keys()
    for row in report.rows:
        same(row, want["rows"][row.group])
    if group_by in ("hour", "day", "week"):
        assert [r.group for r in report.rows] == sorted(want["rows"])  # in time order


def test_known_buckets(ledger: str, engine_for: Callable) -> None:
    engine = engine_for(ledger)
    days = {r.group: r.calls for r in queries.spend(engine, since=SINCE, until=UNTIL, group_by="day").rows}
    # c started at 01:30 +02:00, which is 23:30 UTC the day before
    assert days == {"2026-11-01": 3, "2026-11-02": 1, "2026-11-08": 1, "2026-11-09": 1}
    weeks = {r.group: r.calls for r in queries.spend(engine, since=SINCE, until=UNTIL, group_by="week").rows}
    assert weeks == {"2026-10-26": 3, "2026-11-02": 2, "2026-11-09": 1}  # ISO weeks start on Monday


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        (Filters(model="gpt-4o"), lambda r: r.model_used == "gpt-4o"),
        (Filters(provider="custom"), lambda r: r.provider == "custom"),
        (Filters(project="ads"), lambda r: r.project == "ads"),
        (Filters(user="alice"), lambda r: r.user == "alice"),
        (Filters(key_id="k1"), lambda r: r.key_id == "k1"),
        (Filters(tag="y"), lambda r: "y" in r.tags),
        (Filters(status="ok"), lambda r: r.status == "ok"),
        (Filters(entry="proxy"), lambda r: r.entry == "proxy"),
        (Filters(model="gpt-4o", tag="x"), lambda r: r.model_used == "gpt-4o" and "x" in r.tags),
    ],
)
def test_filters(ledger: str, engine_for: Callable, filters: Filters, keep: Callable) -> None:
    report = queries.spend(engine_for(ledger), since=SINCE, until=UNTIL, group_by="model", filters=filters)
    want = expected_report("model", keep)
    same(report.total, want["total"])
    for row in report.rows:
        same(row, want["rows"][row.group])


def test_exact_decimal_totals_and_unpriced(ledger: str, engine_for: Callable) -> None:
    report = queries.spend(engine_for(ledger), since=SINCE, until=UNTIL, group_by="model")
    priced = ("0.000000075", "1.234567890123", "0.1", "0.000123456789")
    assert report.total.cost_usd == sum(map(Decimal, priced))
    mystery = next(r for r in report.rows if r.group == "mystery")
    assert mystery.cost_usd is None and mystery.unpriced_calls == 2  # never a silent 0
    assert report.total.unpriced_calls == 2
    assert report.as_dict()["total"]["cost_usd"] == "1.334691421912"


def test_open_ended_range(ledger: str, engine_for: Callable) -> None:
    report = queries.spend(engine_for(ledger))
    assert report.total.calls == len(DATA)


def test_savings_by_technique(ledger: str, engine_for: Callable) -> None:
    rows = {
        r.technique: r for r in queries.savings_by_technique(engine_for(ledger), since=SINCE, until=UNTIL)
    }
    assert set(rows) == {"compression", "contracts"}
    assert (rows["compression"].calls, rows["compression"].tokens_saved) == (3, 200 + 200 + 40)
    assert (rows["compression"].tokens_before, rows["compression"].tokens_after) == (880, 440)
    assert rows["compression"].usd_saved == Decimal("0.0005")  # the tokens-only ones were given as priced
    assert (rows["contracts"].tokens_saved, rows["contracts"].usd_saved) == (-30, Decimal("-0.0001"))


def test_recent_calls(ledger: str, engine_for: Callable) -> None:
    rows = queries.recent_calls(engine_for(ledger), since=SINCE, until=UNTIL, limit=3)
    assert [r["call_id"] for r in rows] == ["f", "e", "d"]
    assert rows[1]["tags"] == ["z"] and rows[0]["tags"] == []
    assert rows[0]["started_at"].tzinfo is not None
    more = queries.recent_calls(engine_for(ledger), filters=Filters(tag="x"), limit=10, offset=1)
    assert [r["call_id"] for r in more] == ["b", "a", "early"]


def test_unknown_group_by(ledger: str, engine_for: Callable) -> None:
    with pytest.raises(ValueError, match="unknown group-by 'color'"):
        queries.spend(engine_for(ledger), group_by="color")


def test_check_ledger(ledger: str, engine_for: Callable, tmp_path: Any) -> None:
    from thrifty.errors import LedgerError

    queries.check_ledger(engine_for(ledger))
    with pytest.raises(LedgerError, match="has no ledger tables"):
        queries.check_ledger(engine_for(f"sqlite:///{tmp_path / 'empty.db'}"))


NOW = datetime(2026, 11, 28, 15, 45, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("7d", NOW - timedelta(days=7)),
        ("24h", NOW - timedelta(hours=24)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2w", NOW - timedelta(weeks=2)),
        (" 1.5h ", NOW - timedelta(hours=1.5)),
        ("now", NOW),
        ("today", datetime(2026, 11, 28, tzinfo=UTC)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T09:30", datetime(2026, 11, 1, 9, 30, tzinfo=UTC)),
        ("2026-11-01T09:30:00+02:00", datetime(2026, 11, 1, 7, 30, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, when: datetime) -> None:
    assert parse_time(text, now=NOW) == when


@pytest.mark.parametrize("text", ["", "yesterday-ish", "7x", "-3d", "2026-13-01"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="use a duration ago"):
        parse_time(text, now=NOW)
