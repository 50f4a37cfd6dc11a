"""The rollups give the dashboard the answers the calls give: for ranges with partial hours and days at
their edges, after a back-fill, after the recorder upserts into hours that already have rows, and with
rows written past the recorder; percentiles from the histograms within their stated precision."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from thrifty.dashboard.api import DashboardAPI
from thrifty.ledger import rollup
from thrifty.ledger.migrations import alembic_config, migrate
from thrifty.ledger.models import (
    calls_table,
    latency_table,
    rollup_state_table,
    rollup_table,
    savings_rollup_table,
    savings_table,
    tags_table,
)
from thrifty.ledger.record import LedgerRecord
from thrifty.ledger.recorder import Recorder
from thrifty.middleware.context import Saving
from thrifty.settings import LedgerSettings

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
START = datetime(2026, 11, 8, tzinfo=UTC)
MODELS = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-haiku"), ("local", "qwen"),
          (None, None)]
RANGES = [
    "since=2026-11-10T05:17:30&until=2026-11-27T13:45",  # partial hours and days at both ends
    "since=2026-11-09T23:59:59.500000",  # open end
    "since=2026-11-12T03:00&until=2026-11-14T00:00",  # whole hours, then whole days
    "since=2026-11-20T10:10&until=2026-11-20T10:50",  # inside one hour: the calls only
    "since=2026-11-01&until=2026-12-01",  # every row, whole days
]
QUERIES = [
    ("summary", ""), ("summary", "model=gpt-4o"), ("summary", "provider=openai"), ("summary", "key=k1"),
    ("summary", "project=alpha"), ("summary", "user=bob"), ("summary", "tag=red"),
    ("summary", "provider=openai&tag=blue&user=ann"), ("timeseries", "bucket=hour"), ("timeseries", "bucket=day"),
    ("timeseries", "bucket=week"), ("breakdown", "by=model"), ("breakdown", "by=provider"), ("breakdown", "by=key"),
    ("breakdown", "by=project"), ("breakdown", "by=user"), ("breakdown", "by=tag"),
    ("breakdown", "by=model&tag=red"), ("breakdown", "by=tag&tag=red"), ("breakdown", "by=user&model=qwen"),
    ("savings", ""), ("savings", "model=gpt-4o"), ("savings", "user=bob"), ("errors", ""), ("errors", "key=k2"),
    ("latency", ""), ("latency", "by=model"), ("latency", "provider=openai"), ("latency", "by=model&user=ann"),
]


def make_rows(n: int, seed: int, first: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                          list[dict[str, Any]]]:
    rnd = random.Random(seed)
    calls, savings, tags = [], [], []
    for i in range(first, first + n):
        provider, model = MODELS[i % len(MODELS)]
        status = rnd.choice(["ok"] * 5 + ["error", "timeout"])
        priced = provider not in ("local", None) and rnd.random() > 0.1
        call_id = f"r{i:05d}"
        saved = rnd.sample(["compression", "routing", "contracts"], rnd.randrange(0, 3))
        usd = {t: Decimal(rnd.randrange(-10**5, 10**6)) / Decimal(10**10) if rnd.random() > 0.2 else None
               for t in saved}
        calls.append({
            "call_id": call_id,
            "attempt": rnd.choice([1, 1, 1, 2, 3]),
            "started_at": START + timedelta(seconds=rnd.randrange(0, 21 * 24 * 3600), microseconds=rnd.randrange(10**6)),
            "duration_ms": None if i % 9 == 0 else rnd.uniform(0, 20000),
            "ttft_ms": rnd.uniform(5, 900) if i % 3 else None,
            "overhead_ms": rnd.choice([0.0, 0.004, rnd.uniform(0.01, 40)]),
            "entry": rnd.choice(["proxy", "wrapper"]),
            "wire": "openai",
            "stream": bool(i % 2),
            "provider": provider,
            "model_requested": model,
            "model_used": model,
            "key_id": rnd.choice(["k1", "k2", None]),
            "user": rnd.choice(["ann", "bob", "cy", None]),
            "project": rnd.choice(["alpha", "beta", None]),
            "input_tokens": rnd.randrange(0, 5000),
            "cache_read_tokens": rnd.randrange(0, 2000),
            "cache_write_tokens": rnd.randrange(0, 500),
            "output_tokens": rnd.randrange(0, 1500),
            "reasoning_tokens": rnd.randrange(0, 100),
            "usage_source": rnd.choice(["provider", "provider", "estimate"]),
            "cost_usd": Decimal(rnd.randrange(1, 10**9)) / Decimal(10**12) if priced else None,
            "price_source": "test" if priced else "unpriced",
            "tokens_saved": 7 * len(saved) if saved else None,
            "usd_saved": sum((u for u in usd.values() if u is not None), Decimal(0)) if saved else None,
            "status": status,
            "error_type": None if status == "ok" else rnd.choice(["RateLimitError", "APITimeoutError"]),
            "http_status": 200,
        })
        for t in saved:
            savings.append({"call_id": call_id, "technique": t, "tokens_before": 107, "tokens_after": 100,
                            "tokens_saved": 7, "usd_saved": usd[t]})
        for tag in rnd.sample(["red", "blue", "green"], rnd.randrange(0, 3)):
            tags.append({"call_id": call_id, "tag": tag})
    return calls, savings, tags


def insert(engine: sa.Engine, rows: tuple[list[dict[str, Any]], ...]) -> None:
    calls, savings, tags = rows
    with engine.begin() as conn:
        conn.execute(calls_table.insert(), calls)
        if savings:
            conn.execute(savings_table.insert(), savings)
        if tags:
            conn.execute(tags_table.insert(), tags)


def answers(engine: sa.Engine) -> dict[str, Any]:
    api = DashboardAPI(engine)
    out = {}
    for span in RANGES:
        for endpoint, query in QUERIES:
            code, _, body = api.handle(endpoint, f"{span}&{query}" if query else span, now=NOW)
            assert code == 200, body
            out[f"{endpoint}?{span}&{query}"] = json.loads(body)
    return out


def forget_rollups(engine: sa.Engine) -> None:
    """Empty the rollups: every answer then comes from the calls alone."""
    with engine.begin() as conn:
        for table in (rollup_table, savings_rollup_table, latency_table, rollup_state_table):
            conn.execute(sa.delete(table))


def rebuild(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        return rollup.rebuild(conn)


def assert_same(rolled: dict[str, Any], raw: dict[str, Any]) -> None:
    assert rolled.keys() == raw.keys()
    for name, want in raw.items():
        got = rolled[name]
        if not name.startswith("latency?"):
            assert got == want, name
            continue
        assert [r["group"] for r in got["rows"]] == [r["group"] for r in want["rows"]], name
        for g, w in zip(got["rows"], want["rows"], strict=True):
            for key, exact in w.items():
                if key.endswith("_count") or key == "group" or exact is None:
                    assert g[key] == exact, (name, key)
                else:  # within the histograms' precision; values under 0.01 ms read as 0
                    assert abs(g[key] - exact) <= max(exact * rollup.RELATIVE_ERROR * 1.000001, 0.01), (name, key)


def max_id(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.max(calls_table.c.id))).scalar_one())


def mark(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return rollup.watermark(conn)


@pytest.fixture
def seeded(ledger_url: str, engine_for: Callable[[str], sa.Engine]) -> sa.Engine:
    engine = engine_for(ledger_url)
    insert(engine, make_rows(400, seed=3))
    return engine


@pytest.mark.slow
def test_rollup_answers_equal_the_calls(seeded: sa.Engine) -> None:
    raw = answers(seeded)  # nothing rolled up yet: the calls alone
    assert mark(seeded) == 0
    assert rebuild(seeded) == 400
    assert mark(seeded) == max_id(seeded)
    rolled = answers(seeded)
    assert_same(rolled, raw)
    # the histograms were read (not the exact path), and they answer within precision, not exactly
    lat = rolled[f"latency?{RANGES[0]}&"]["rows"][0]
    assert lat["duration_ms_p50"] != raw[f"latency?{RANGES[0]}&"]["rows"][0]["duration_ms_p50"]
    # and the sums come from the rollup: a change to a rolled-up call in a whole hour is not seen
    with seeded.begin() as conn:
        conn.execute(sa.update(calls_table).where(calls_table.c.started_at >= datetime(2026, 11, 15, tzinfo=UTC),
                                                  calls_table.c.started_at < datetime(2026, 11, 16, tzinfo=UTC))
                     .values(input_tokens=calls_table.c.input_tokens + 1))
    again = answers(seeded)
    key = f"summary?{RANGES[0]}&"
    assert again[key] == rolled[key]


@pytest.mark.slow
def test_rows_above_the_watermark_are_read_from_the_calls(seeded: sa.Engine) -> None:
    rebuild(seeded)
    insert(seeded, make_rows(150, seed=4, first=400))  # written past the recorder: not rolled up
    assert mark(seeded) < max_id(seeded)
    rolled = answers(seeded)
    forget_rollups(seeded)
    assert_same(rolled, answers(seeded))


def record(i: int, at: datetime, **fields: Any) -> LedgerRecord:
    rec = LedgerRecord(call_id=f"w{i:05d}", started_at=at, entry="proxy", wire="openai", provider="openai",
                       model_used="gpt-4o", input_tokens=100 + i, output_tokens=10, cost_usd=Decimal("0.000123"),
                       price_source="test", duration_ms=100.0 + i, ttft_ms=20.0, overhead_ms=0.5, **fields)
    rec.set_savings({"compression": Saving(300, 200 + i, usd_saved=0.00001)})
    return rec


@pytest.mark.slow
def test_the_recorder_upserts_into_existing_hours(seeded: sa.Engine, ledger_url: str, tmp_path: Path) -> None:
    rebuild(seeded)
    with seeded.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(rollup_table)).scalar_one()
    base = answers(seeded)
    records = [record(i, START + timedelta(days=2 + i % 15, hours=i % 24, minutes=i), user=["ann", "", None][i % 3],
                      tags=["red"] if i % 2 else [], status="ok" if i % 5 else "error")
               for i in range(60)]
    with Recorder(ledger_url, LedgerSettings(flush_interval_s=0.02, batch_size=16), data_dir=tmp_path) as recorder:
        for rec in records:
            recorder.submit(rec)
        assert recorder.flush(30)
    assert mark(seeded) == max_id(seeded)
    with seeded.connect() as conn:
        after = conn.execute(sa.select(sa.func.count()).select_from(rollup_table)).scalar_one()
        empty_users = conn.execute(sa.select(sa.func.count()).where(calls_table.c.user == "")).scalar_one()
    assert after > before and empty_users == 0  # an empty user is recorded as none
    rolled = answers(seeded)
    assert rolled != base
    forget_rollups(seeded)
    assert_same(rolled, answers(seeded))


@pytest.mark.slow
def test_the_migration_back_fills(fresh_url: str, engine_for: Callable[[str], sa.Engine]) -> None:
    engine = engine_for(fresh_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0003")
    insert(engine, make_rows(120, seed=5))
    migrate(fresh_url)
    assert mark(engine) == max_id(engine)
    rolled = answers(engine)
    forget_rollups(engine)
    assert_same(rolled, answers(engine))


@pytest.mark.parametrize("value", [0.0, 0.004, 0.01, 0.0100001, 0.37, 1.0, 17.3, 999.999, 4321.5, 60_000.0,
                                   3_600_000.0, 9.9e6])
def test_histogram_buckets_hold_their_precision(value: float) -> None:
    bucket = rollup.bucket_of(value)
    if value < rollup.MIN_MS:
        assert bucket == 0 and rollup.bucket_value(bucket) == 0.0
        return
    low = rollup.MIN_MS * rollup.GROWTH ** (bucket - 1)
    assert low <= value * (1 + 1e-12) and value < low * rollup.GROWTH * (1 + 1e-12)
    assert abs(rollup.bucket_value(bucket) - value) <= value * rollup.RELATIVE_ERROR * (1 + 1e-9)
    assert rollup.RELATIVE_ERROR < 0.01


@pytest.mark.parametrize(("since", "until", "periods", "raw"), [
    # partial hours, then whole hours, then whole days, and back
    (datetime(2026, 11, 10, 5, 17, tzinfo=UTC), datetime(2026, 11, 13, 2, 30, tzinfo=UTC),
     [("day", datetime(2026, 11, 11, tzinfo=UTC), datetime(2026, 11, 13, tzinfo=UTC)),
      ("hour", datetime(2026, 11, 10, 6, tzinfo=UTC), datetime(2026, 11, 11, tzinfo=UTC)),
      ("hour", datetime(2026, 11, 13, tzinfo=UTC), datetime(2026, 11, 13, 2, tzinfo=UTC))],
     [(datetime(2026, 11, 10, 5, 17, tzinfo=UTC), datetime(2026, 11, 10, 6, tzinfo=UTC)),
      (datetime(2026, 11, 13, 2, tzinfo=UTC), datetime(2026, 11, 13, 2, 30, tzinfo=UTC))]),
    # no whole day: hours only
    (datetime(2026, 11, 10, 5, 17, tzinfo=UTC), datetime(2026, 11, 11, 2, tzinfo=UTC),
     [("hour", datetime(2026, 11, 10, 6, tzinfo=UTC), datetime(2026, 11, 11, 2, tzinfo=UTC))],
     [(datetime(2026, 11, 10, 5, 17, tzinfo=UTC), datetime(2026, 11, 10, 6, tzinfo=UTC))]),
    # inside one hour: the calls only
    (datetime(2026, 11, 10, 5, 17, tzinfo=UTC), datetime(2026, 11, 10, 5, 50, tzinfo=UTC), [],
     [(datetime(2026, 11, 10, 5, 17, tzinfo=UTC), datetime(2026, 11, 10, 5, 50, tzinfo=UTC))]),
    # open ends
    (None, None, [("day", None, None)], []),
    (datetime(2026, 11, 10, 5, 17, tzinfo=UTC), None,
     [("day", datetime(2026, 11, 11, tzinfo=UTC), None),
      ("hour", datetime(2026, 11, 10, 6, tzinfo=UTC), datetime(2026, 11, 11, tzinfo=UTC))],
     [(datetime(2026, 11, 10, 5, 17, tzinfo=UTC), datetime(2026, 11, 10, 6, tzinfo=UTC))]),
])
def test_ranges_split_into_whole_periods_and_raw_edges(
    since: datetime | None, until: datetime | None, periods: list[Any], raw: list[Any]
) -> None:
    from thrifty.ledger.queries import _split

    got_periods, got_raw = _split(since, until, ("day", "hour"))
    assert sorted(got_periods, key=str) == sorted(periods, key=str)
    assert got_raw == raw
    # together they cover the range once: periods and raw ranges do not overlap and leave no gap
    pieces = sorted([(lo, hi) for _, lo, hi in got_periods] + got_raw, key=lambda r: (r[0] is not None, r[0]))
    for (_, end), (start, _) in zip(pieces, pieces[1:], strict=False):
        assert end == start
    assert pieces[0][0] == since and pieces[-1][1] == until


def test_weeks_start_on_monday_and_their_edges_split_into_days_and_hours() -> None:
    from thrifty.ledger.queries import _split

    def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
        return datetime(2026, 11, day, hour, minute, tzinfo=UTC)

    periods, raw = _split(at(10, 5, 17), at(27, 13, 45), ("week", "day", "hour"))  # Tuesday to Friday
    assert sorted(periods, key=str) == sorted([
        ("week", at(16), at(23)), ("day", at(11), at(16)), ("day", at(23), at(27)),
        ("hour", at(10, 6), at(11)), ("hour", at(27), at(27, 13)),
    ], key=str)
    assert raw == [(at(10, 5, 17), at(10, 6)), (at(27, 13), at(27, 13, 45))]
