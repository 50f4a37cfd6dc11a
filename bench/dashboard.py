"""Times every dashboard API query over a large ledger, on SQLite and PostgreSQL.

    python bench/dashboard.py --rows 1000000            # both backends
    python bench/dashboard.py --rows 20000 --backend sqlite

Fills a fresh, migrated ledger with ``--rows`` calls spread over 30 days (a
third with savings rows, half with tags), then calls each endpoint through
:class:`thrifty.dashboard.api.DashboardAPI` ``--runs`` times and reports the
p50 in milliseconds. The rows go straight into ``llm_calls``, past the recorder, so
the rollups are then built as the migration's back-fill builds them
(:func:`thrifty.ledger.rollup.rebuild`). Writes bench/results/dashboard.json.
Target: < 300 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from thrifty.dashboard.api import DashboardAPI
from thrifty.ledger import rollup
from thrifty.ledger.db import create_engine
from thrifty.ledger.migrations import migrate

QUERIES = [
    ("summary", ""), ("timeseries", "bucket=hour"), ("timeseries", "bucket=day"), ("timeseries", "bucket=week"),
    ("breakdown", "by=model"), ("breakdown", "by=provider"), ("breakdown", "by=key"),
    ("breakdown", "by=project"), ("breakdown", "by=user"), ("breakdown", "by=tag"), ("savings", ""),
    ("latency", ""), ("latency", "by=model"), ("errors", ""), ("calls", "order=cost"),
    ("calls", "order=duration"), ("calls", "order=recent"), ("budgets", ""),
    ("summary", "model=gpt-4o"), ("breakdown", "by=model&tag=t3"), ("summary", "since=24h"),
]
COLUMNS = ["call_id", "attempt", "started_at", "ttft_ms", "duration_ms", "overhead_ms", "entry", "wire", "stream",
           "provider", "model_requested", "model_used", "key_id", "user", "project", "input_tokens",
           "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens", "usage_source",
           "cost_usd", "price_source", "tokens_saved", "usd_saved", "status", "error_type", "http_status"]
MODELS = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-haiku"),
          ("anthropic", "claude-sonnet"), ("local", "qwen")]


def rows(n: int, now: datetime, seed: int = 1):
    """(calls, savings, tags) as tuples, in batches of 50,000 calls."""
    rnd = random.Random(seed)
    span = 30 * 24 * 3600
    calls, savings, tags = [], [], []
    for i in range(n):
        provider, model = MODELS[i % len(MODELS)]
        at = now - timedelta(seconds=rnd.random() * span)
        ok = rnd.random() > 0.05
        call_id = f"b{i:09d}"
        saved = i % 3 == 0
        calls.append((
            call_id, 2 if i % 20 == 0 else 1, at, rnd.random() * 800, rnd.random() * 5000, rnd.random() * 20,
            "proxy", "openai", i % 2 == 0, provider, model, model, f"k{i % 50}", f"u{i % 1000}", f"p{i % 20}",
            rnd.randrange(5000), rnd.randrange(2000), rnd.randrange(200), rnd.randrange(1000), rnd.randrange(50),
            "provider", None if provider == "local" else f"{rnd.random() / 100:.10f}",
            "unpriced" if provider == "local" else "table", 300 if saved else None, "0.0001" if saved else None,
            "ok" if ok else "error", None if ok else "RateLimitError", 200 if ok else 429,
        ))
        if saved:
            savings.append((call_id, "compression", 1300, 1000, 300, "0.0001"))
        if i % 2:
            tags.append((call_id, f"t{i % 10}"))
        if len(calls) == 50_000:
            yield calls, savings, tags
            calls, savings, tags = [], [], []
    if calls:
        yield calls, savings, tags


def fill_sqlite(url: str, n: int, now: datetime) -> None:
    import sqlite3

    conn = sqlite3.connect(sa.make_url(url).database)
    marks = ",".join("?" * len(COLUMNS))
    for calls, savings, tags in rows(n, now):
        with conn:
            conn.executemany(f'INSERT INTO llm_calls ({",".join(f"{c!r}" for c in COLUMNS)}) VALUES ({marks})',
                             [(*c[:2], c[2].strftime("%Y-%m-%d %H:%M:%S.%f"), *c[3:]) for c in calls])
            conn.executemany("INSERT INTO llm_call_savings (call_id, technique, tokens_before, tokens_after,"
                             " tokens_saved, usd_saved) VALUES (?,?,?,?,?,?)", savings)
            conn.executemany("INSERT INTO llm_call_tags (call_id, tag) VALUES (?,?)", tags)
    conn.execute("ANALYZE")
    conn.close()


def fill_postgres(url: str, n: int, now: datetime) -> None:
    import psycopg

    plain = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain) as conn:
        for calls, savings, tags in rows(n, now):
            with conn.cursor() as cur:
                cols = ",".join(f'"{c}"' for c in COLUMNS)
                with cur.copy(f"COPY llm_calls ({cols}) FROM STDIN") as copy:
                    for c in calls:
                        copy.write_row(c)
                with cur.copy("COPY llm_call_savings (call_id, technique, tokens_before, tokens_after,"
                              " tokens_saved, usd_saved) FROM STDIN") as copy:
                    for s in savings:
                        copy.write_row(s)
                with cur.copy("COPY llm_call_tags (call_id, tag) FROM STDIN") as copy:
                    for t in tags:
                        copy.write_row(t)
            conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")


def build_rollups(url: str) -> None:
    """The rows went in past the recorder: roll them up as the migration's back-fill does."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            rollup.rebuild(conn)
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("ANALYZE")
            else:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()


def measure(url: str, runs: int) -> dict[str, float]:
    engine = create_engine(url)
    api = DashboardAPI(engine)
    out = {}
    try:
        for endpoint, query in QUERIES:
            q = query if "since=" in query else f"since=31d&{query}"
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                status, _, body = api.handle(endpoint, q)
                times.append((time.perf_counter() - start) * 1000)
                if status != 200:
                    raise SystemExit(f"{endpoint}?{q}: {status} {body[:300]!r}")
            out[f"{endpoint}?{query}".rstrip("?")] = round(statistics.median(times), 1)
    finally:
        engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="an admin URL; a scratch database is created and dropped")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dashboard.json"))
    args = parser.parse_args()
    now = datetime.now(UTC)
    results: dict[str, dict[str, float]] = {}
    fill_s: dict[str, float] = {}
    rollup_s: dict[str, float] = {}
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            admin = None
            if backend == "sqlite":
                url = f"sqlite:///{tmp}/bench.db"
            else:
                admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
                name = f"thrifty_bench_{uuid.uuid4().hex[:8]}"
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                url = sa.make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)
            try:
                migrate(url)
                start = time.perf_counter()
                (fill_sqlite if backend == "sqlite" else fill_postgres)(url, args.rows, now)
                fill_s[backend] = round(time.perf_counter() - start, 1)
                print(f"{backend}: {args.rows:,} rows in {fill_s[backend]} s", file=sys.stderr)
                start = time.perf_counter()
                build_rollups(url)
                rollup_s[backend] = round(time.perf_counter() - start, 1)
                print(f"{backend}: rollups built in {rollup_s[backend]} s", file=sys.stderr)
                results[backend] = measure(url, args.runs)
            finally:
                if admin is not None:
                    with admin.connect() as conn:
                        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    admin.dispose()
    names = list(next(iter(results.values())))
    width = max(len(n) for n in names)
    print(f"{'query (p50 ms, ' + format(args.rows, ',') + ' rows)':<{width}}  " + "  ".join(f"{b:>10}" for b in results))
    for n in names:
        cells = "  ".join(f"{results[b][n]:>10.1f}" + ("*" if results[b][n] >= 300 else " ") for b in results)
        print(f"{n:<{width}}  {cells}")
    print("* over the 300 ms target")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": args.rows, "runs": args.runs, "fill_s": fill_s, "rollup_s": rollup_s,
                                          "p50_ms": results, "target_ms": 300}, indent=2) + "\n")


if __name__ == "__main__":
    main()
