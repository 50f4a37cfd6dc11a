"""The dashboard API against a seeded ledger on SQLite and PostgreSQL: every aggregate checked against
plain Python over the seeded rows."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from thrifty.dashboard.api import DashboardAPI
from thrifty.dashboard.app import DashboardApp
from thrifty.ledger.models import calls_table, key_spend_table, keys_table, savings_table, tags_table
from thrifty.ledger.queries import _plain

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SINCE, UNTIL = "2026-11-10", "2026-11-28"
T0, T1 = datetime(2026, 11, 10, tzinfo=UTC), datetime(2026, 11, 28, tzinfo=UTC)
MODELS = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-haiku"), ("local", "qwen")]
TECHNIQUES = ["compression", "routing", "contracts"]
TAGS = ["red", "blue", "green"]


def make_rows(n: int = 120) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    rnd = random.Random(7)
    calls, savings, tags = [], [], []
    for i in range(n):
        provider, model = MODELS[i % len(MODELS)]
        # a few rows fall outside [SINCE, UNTIL) on either side
        started = datetime(2026, 11, 8, tzinfo=UTC) + timedelta(minutes=rnd.randrange(0, 21 * 24 * 60))
        status = rnd.choice(["ok"] * 6 + ["error", "timeout"])
        priced = provider != "local" and rnd.random() > 0.1
        tech = rnd.sample(TECHNIQUES, rnd.randrange(0, 3))
        saved = [(t, rnd.randrange(10, 500), Decimal(rnd.randrange(1, 10**6)) / Decimal(10**9)) for t in tech]
        row = {
            "call_id": f"c{i:04d}",
            "parent_call_id": f"c{i - 1:04d}" if i % 7 == 3 else None,
            "attempt": 2 if i % 7 == 3 else 1,
            "started_at": started,
            "duration_ms": None if i % 11 == 0 else float(rnd.randrange(50, 5000)),
            "ttft_ms": float(rnd.randrange(10, 900)) if i % 3 else None,
            "overhead_ms": rnd.randrange(1, 400) / 10,
            "entry": "proxy",
            "wire": "openai",
            "stream": bool(i % 2),
            "provider": provider,
            "model_requested": model,
            "model_used": model,
            "key_id": rnd.choice(["k1", "k2", None]),
            "user": rnd.choice(["ann", "bob", None]),
            "project": rnd.choice(["alpha", "beta", None]),
            "input_tokens": rnd.randrange(0, 5000),
            "cache_read_tokens": rnd.randrange(0, 2000),
            "cache_write_tokens": rnd.randrange(0, 500),
            "output_tokens": rnd.randrange(0, 1500),
            "reasoning_tokens": rnd.randrange(0, 100),
            "usage_source": "provider",
            "cost_usd": Decimal(rnd.randrange(1, 10**7)) / Decimal(10**10) if priced else None,
            "price_source": "test" if priced else "unpriced",
            "tokens_saved": sum(s[1] for s in saved) if saved else None,
            "usd_saved": sum((s[2] for s in saved), Decimal(0)) if saved else None,
            "status": status,
            "error_type": None if status == "ok" else rnd.choice(["RateLimitError", "APITimeoutError"]),
            "http_status": 200 if status == "ok" else 429,
        }
        calls.append(row)
        for t, tok, usd in saved:
            savings.append({"call_id": row["call_id"], "technique": t, "tokens_before": tok + 1000,
                            "tokens_after": 1000, "tokens_saved": tok, "usd_saved": usd})
        for tag in rnd.sample(TAGS, rnd.randrange(0, 3)):
            tags.append({"call_id": row["call_id"], "tag": tag})
    return calls, savings, tags


CALLS, SAVINGS, TAG_ROWS = make_rows()
TAGS_OF: dict[str, list[str]] = defaultdict(list)
for _t in TAG_ROWS:
    TAGS_OF[_t["call_id"]].append(_t["tag"])


@pytest.fixture
def ledger(ledger_url: str, engine_for: Callable[[str], sa.Engine]) -> sa.Engine:
    engine = engine_for(ledger_url)
    with engine.begin() as conn:
        conn.execute(calls_table.insert(), CALLS)
        conn.execute(savings_table.insert(), SAVINGS)
        conn.execute(tags_table.insert(), TAG_ROWS)
        conn.execute(keys_table.insert(), [
            {"id": 1, "name": "team-a", "key_sha256": "a" * 64, "prefix": "tk-a", "source": "cli",
             "created_at": NOW - timedelta(days=40), "budget_usd": Decimal("25.5"), "budget_period": "month",
             "rpm": None, "models": "*"},
            {"id": 2, "name": "team-b", "key_sha256": "b" * 64, "prefix": "tk-b", "source": "config",
             "created_at": NOW - timedelta(days=40), "budget_usd": None, "budget_period": "day",
             "rpm": 10, "models": "*"},
        ])
        conn.execute(key_spend_table.insert(), [
            {"key_id": 1, "period_start": datetime(2026, 11, 1, tzinfo=UTC), "spent_usd": Decimal("3.25"),
             "reserved_usd": Decimal("0.5"), "calls": 40},
            {"key_id": 1, "period_start": datetime(2026, 10, 1, tzinfo=UTC), "spent_usd": Decimal("99"),
             "reserved_usd": Decimal(0), "calls": 400},
            {"key_id": 2, "period_start": datetime(2026, 11, 28, tzinfo=UTC), "spent_usd": Decimal("1"),
             "reserved_usd": Decimal(0), "calls": 3},
            {"key_id": 2, "period_start": datetime(2026, 11, 27, tzinfo=UTC), "spent_usd": Decimal("7"),
             "reserved_usd": Decimal(0), "calls": 9},
        ])
    return engine


def get(engine: sa.Engine, endpoint: str, query: str = "", *, status: int = 200) -> Any:
    base = f"since={SINCE}&until={UNTIL}"
    code, content_type, body = DashboardAPI(engine).handle(endpoint, f"{base}&{query}" if query else base, now=NOW)
    assert code == status, body
    return body.decode() if content_type.startswith("text/csv") else json.loads(body)


# ---------------------------------------------------------------- expected values, in plain Python


def selected(**filters: str) -> list[dict[str, Any]]:
    out = []
    for r in CALLS:
        if not T0 <= r["started_at"] < T1:
            continue
        if "model" in filters and r["model_used"] != filters["model"]:
            continue
        if "key" in filters and r["key_id"] != filters["key"]:
            continue
        if "tag" in filters and filters["tag"] not in TAGS_OF[r["call_id"]]:
            continue
        if any(k in filters and r[k] != filters[k] for k in ("provider", "project", "user")):
            continue
        out.append(r)
    return out


def money(values: list[Decimal | None]) -> str | None:
    present = [v for v in values if v is not None]
    return _plain(sum(present, Decimal(0))) if present else None


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"calls": len(rows), "errors": sum(r["status"] != "ok" for r in rows)}
    for col in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens"):
        out[col] = sum(r[col] for r in rows)
    out["cost_usd"] = money([r["cost_usd"] for r in rows])
    out["unpriced_calls"] = sum(r["cost_usd"] is None for r in rows)
    out["estimated_calls"] = 0
    out["tokens_saved"] = sum(r["tokens_saved"] or 0 for r in rows)
    out["usd_saved"] = money([r["usd_saved"] for r in rows]) or "0"
    return out


def nearest_rank(values: list[float], p: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered) / 100) - 1]


# ---------------------------------------------------------------- endpoints


@pytest.mark.parametrize("filters", [{}, {"model": "gpt-4o"}, {"provider": "openai"}, {"key": "k1"},
                                     {"project": "alpha"}, {"user": "bob"}, {"tag": "red"},
                                     {"provider": "openai", "tag": "blue", "user": "ann"}])
def test_summary(ledger: sa.Engine, filters: dict[str, str]) -> None:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    got = get(ledger, "summary", query)["total"]
    rows = selected(**filters)
    want = totals(rows) | {"retries": sum(r["attempt"] > 1 for r in rows)}
    assert got == want
    assert got["calls"] > 0


@pytest.mark.parametrize("bucket", ["hour", "day", "week"])
def test_timeseries(ledger: sa.Engine, bucket: str) -> None:
    got = get(ledger, "timeseries", f"bucket={bucket}")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in selected():
        at = r["started_at"]
        key = {"hour": at.strftime("%Y-%m-%dT%H:00"), "day": at.strftime("%Y-%m-%d"),
               "week": (at - timedelta(days=at.weekday())).strftime("%Y-%m-%d")}[bucket]
        groups[key].append(r)
    want = [
        {"bucket": k, "calls": len(v),
         "tokens": sum(r["input_tokens"] + r["cache_read_tokens"] + r["cache_write_tokens"] + r["output_tokens"]
                       for r in v),
         "cost_usd": money([r["cost_usd"] for r in v]), "usd_saved": money([r["usd_saved"] for r in v]) or "0"}
        for k, v in sorted(groups.items())
    ]
    assert got["bucket"] == bucket
    assert got["rows"] == want


@pytest.mark.parametrize("by", ["model", "provider", "key", "project", "user", "tag"])
def test_breakdown(ledger: sa.Engine, by: str) -> None:
    got = get(ledger, "breakdown", f"by={by}")
    groups: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    column = {"model": "model_used", "key": "key_id"}.get(by, by)
    for r in selected():
        for key in (TAGS_OF[r["call_id"]] or [None]) if by == "tag" else [r[column]]:
            groups[key].append(r)
    want = {k: totals(v) | {"group": k} for k, v in groups.items()}
    assert {r["group"]: r for r in got["rows"]} == want
    assert got["total"] == totals(selected()) | {"group": None}
    # most expensive first
    costs = [Decimal(r["cost_usd"] or 0) for r in got["rows"]]
    assert costs == sorted(costs, reverse=True)


def test_savings(ledger: sa.Engine) -> None:
    ids = {r["call_id"] for r in selected()}
    want: dict[str, dict[str, Any]] = {}
    for s in SAVINGS:
        if s["call_id"] in ids:
            w = want.setdefault(s["technique"], {"technique": s["technique"], "calls": 0, "tokens_before": 0,
                                                 "tokens_after": 0, "tokens_saved": 0, "usd": []})
            w["calls"] += 1
            for col in ("tokens_before", "tokens_after", "tokens_saved"):
                w[col] += s[col]
            w["usd"].append(s["usd_saved"])
    for w in want.values():
        w["usd_saved"] = money(w.pop("usd"))
    assert {r["technique"]: r for r in get(ledger, "savings")["rows"]} == want
    assert len(want) == 3


@pytest.mark.parametrize("by", [None, "model"])
def test_latency(ledger: sa.Engine, by: str | None) -> None:
    got = get(ledger, "latency", f"by={by}" if by else "")
    groups: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for r in selected():
        groups[r["model_used"] if by else None].append(r)
    want = {}
    for key, rows in groups.items():
        row: dict[str, Any] = {"group": key}
        for col in ("duration_ms", "ttft_ms", "overhead_ms"):
            values = [r[col] for r in rows if r[col] is not None]
            row[f"{col}_count"] = len(values)
            for p in (50, 90, 99):
                row[f"{col}_p{p}"] = nearest_rank(values, p)
        want[key] = row
    assert {r["group"]: r for r in got["rows"]} == want


def test_errors(ledger: sa.Engine) -> None:
    got = get(ledger, "errors")
    rows = selected()
    counts: dict[tuple[str, str | None], int] = defaultdict(int)
    for r in rows:
        counts[(r["status"], r["error_type"])] += 1
    errors = sum(r["status"] != "ok" for r in rows)
    retries = sum(r["attempt"] > 1 for r in rows)
    assert got["calls"] == len(rows)
    assert got["errors"] == errors and got["retries"] == retries
    assert got["error_rate"] == pytest.approx(errors / len(rows))
    assert got["retry_rate"] == pytest.approx(retries / len(rows))
    assert {(r["status"], r["error_type"]): r["calls"] for r in got["rows"]} == counts


@pytest.mark.parametrize(("order", "column"), [("cost", "cost_usd"), ("duration", "duration_ms"),
                                                ("recent", "started_at")])
def test_calls(ledger: sa.Engine, order: str, column: str) -> None:
    rows = [r for r in selected(provider="openai") if r[column] is not None]
    rows.sort(key=lambda r: r[column], reverse=True)
    got = get(ledger, "calls", f"order={order}&limit=5&offset=2&provider=openai")
    assert [r["call_id"] for r in got["rows"]] == [r["call_id"] for r in rows[2:7]]
    first = got["rows"][0]
    assert "request" not in first and "response" not in first
    if order == "cost":
        assert first["cost_usd"] == _plain(rows[2]["cost_usd"])


def test_budgets(ledger: sa.Engine) -> None:
    got = get(ledger, "budgets")["rows"]
    assert got == [
        {"name": "team-a", "prefix": "tk-a", "revoked": False, "budget_usd": "25.5", "period": "month",
         "period_start": "2026-11-01T00:00:00+00:00", "spent_usd": "3.25", "reserved_usd": "0.5", "calls": 40},
        {"name": "team-b", "prefix": "tk-b", "revoked": False, "budget_usd": None, "period": "day",
         "period_start": "2026-11-28T00:00:00+00:00", "spent_usd": "1", "reserved_usd": "0", "calls": 3},
    ]


def test_csv(ledger: sa.Engine) -> None:
    text = get(ledger, "breakdown", "by=model&format=csv")
    table = list(csv.DictReader(io.StringIO(text)))
    want = get(ledger, "breakdown", "by=model")["rows"]
    assert [r["group"] for r in table] == [r["group"] for r in want]
    assert [r["cost_usd"] for r in table] == [r["cost_usd"] or "" for r in want]
    assert [int(r["calls"]) for r in table] == [r["calls"] for r in want]
    summary = list(csv.DictReader(io.StringIO(get(ledger, "summary", "format=csv"))))
    assert int(summary[0]["calls"]) == len(selected())


@pytest.mark.parametrize(("endpoint", "query", "param"), [
    ("summary", "since=yesterday-ish", "since"),
    ("summary", "until=2026-13-45", "until"),
    ("summary", "since=2026-11-20&until=2026-11-10", "until"),
    ("breakdown", "by=colour", "by"),
    ("timeseries", "bucket=month", "bucket"),
    ("calls", "order=cheapest", "order"),
    ("calls", "limit=lots", "limit"),
    ("calls", "limit=100000", "limit"),
    ("latency", "by=provider", "by"),
    ("summary", "format=xml", "format"),
    ("summary", "colour=red", "colour"),
])
def test_bad_input(ledger: sa.Engine, endpoint: str, query: str, param: str) -> None:
    code, content_type, body = DashboardAPI(ledger).handle(endpoint, query, now=NOW)
    assert code == 400
    error = json.loads(body)["error"]
    assert error["param"] == param and error["message"]


def test_unknown_endpoint(ledger: sa.Engine) -> None:
    code, _, body = DashboardAPI(ledger).handle("everything", "", now=NOW)
    assert code == 404 and "summary" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("url", ["postgresql+psycopg://nobody@127.0.0.1:1/nowhere"])
def test_unreachable_database(url: str) -> None:
    from thrifty.ledger.db import create_engine

    engine = create_engine(url)
    try:
        code, _, body = DashboardAPI(engine).handle("summary", "")
    finally:
        engine.dispose()
    assert 400 <= code < 500
    error = json.loads(body)["error"]
    assert error["param"] == "db" and "cannot reach" in error["message"]


def test_missing_sqlite_file(tmp_path: Any) -> None:
    from thrifty.dashboard.app import create_app
    from thrifty.errors import LedgerError

    with pytest.raises(LedgerError, match="no ledger database"):
        create_app(f"sqlite:///{tmp_path / 'none.db'}")


async def test_asgi_access(ledger: sa.Engine, tmp_path: Any) -> None:
    (tmp_path / "index.html").write_text("<h1>dash</h1>")

    async def fetch(app: DashboardApp, path: str, client: str = "127.0.0.1", **headers: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client, 5000))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.get(path, headers=headers)

    open_app = DashboardApp(ledger, static_dir=tmp_path)
    r = await fetch(open_app, f"/dashboard/api/summary?since={SINCE}&until={UNTIL}")
    assert r.status_code == 200 and r.json()["total"]["calls"] == len(selected())
    assert (await fetch(open_app, "/dashboard/")).text == "<h1>dash</h1>"
    assert (await fetch(open_app, "/dashboard/../../etc/passwd")).status_code == 404
    assert (await fetch(open_app, "/dashboard/api/summary", client="10.1.2.3")).status_code == 403
    bad = await fetch(open_app, "/dashboard/api/breakdown?by=colour")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "by"

    locked = DashboardApp(ledger, admin_key="s3cret", static_dir=tmp_path)
    assert (await fetch(locked, "/dashboard/api/summary")).status_code == 401
    assert (await fetch(locked, "/dashboard/api/summary", authorization="Bearer wrong")).status_code == 401
    ok = await fetch(locked, "/dashboard/api/summary", client="10.1.2.3", authorization="Bearer s3cret")
    assert ok.status_code == 200

    async def required() -> bool:
        return True

    keyed = DashboardApp(ledger, keys_required=required, static_dir=tmp_path)
    assert (await fetch(keyed, "/dashboard/api/summary")).status_code == 403


async def test_mounted_on_the_proxy(tmp_path: Any) -> None:
    from thrifty.ledger.migrations import migrate
    from thrifty.middleware.server import create_app
    from thrifty.settings import Settings

    settings = Settings(data_dir=tmp_path)
    migrate(settings.ledger_url)
    app = create_app(settings)
    try:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.get("/dashboard/api/summary")
            assert r.status_code == 200 and r.json()["total"]["calls"] == 0
            bad = await http.get("/dashboard/api/timeseries?bucket=fortnight")
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "bucket"
    finally:
        await app.aclose()
