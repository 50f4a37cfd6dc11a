"""What the limits stage adds to one call, per backend: the checks and the reservation on the request path.

A pipeline of the limits stage alone in front of an upstream that answers at
once, so the time measured is the stage's own: the allow-list, the rate
window, counting the prompt, pricing the worst case, and the reservation's
round trip (a SQLite file, PostgreSQL and Redis on loopback). Reconciling runs
on the stage's background thread; the run waits for it and checks that every
reservation was settled. Each stage call is interleaved with one bare round
trip to the same backend (a one-row UPDATE; a trivial Redis script), so that
the machine's noise hits both alike and "minus round trip" is thrifty's own
cost. Prints a table and writes bench/results/limits.json.

    .venv/bin/python bench/limits.py [--calls 2000] [--pg ADMIN_URL] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import thrifty
from thrifty.middleware.context import CallContext, Target
from thrifty.middleware.limits import KeyStore, LimitsStage
from thrifty.middleware.pipeline import Pipeline
from thrifty.types import Choice, Message, Request, Response, TextPart, Usage

RESULTS = Path(__file__).parent / "results"
REQUEST = Request(
    model="gpt-4o-mini",
    messages=[Message(role="system", content=[TextPart("You are terse.")]),
              Message(role="user", content=[TextPart("Say hello in five words.")])],
    max_tokens=64,
)
ANSWER = Response(id="r", model="gpt-4o-mini", usage=Usage(input_tokens=20, output_tokens=7),
                  choices=[Choice(0, Message(role="assistant", content=[TextPart("Hello there, how are you?")]), "stop")])


class Instant:
    def handle(self, request: Request, ctx: CallContext) -> Response:
        return ANSWER

    async def ahandle(self, request: Request, ctx: CallContext) -> Response:
        return ANSWER


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(pipeline: Pipeline, target: Target, key: Any, calls: int, warmup: int, use_async: bool,
            bare: Callable[[], Any] | None) -> tuple[list[float], list[float]]:
    """Stage call times and (interleaved) bare round-trip times, in µs."""
    stage_t: list[float] = []
    bare_t: list[float] = []

    def ctx() -> CallContext:
        c = CallContext(entry="proxy", wire="openai", virtual_key=key)
        c.target = target
        return c

    def time_bare(i: int) -> None:
        if bare is not None:
            t0 = time.perf_counter()
            bare()
            if i >= warmup:
                bare_t.append((time.perf_counter() - t0) * 1e6)

    if use_async:
        async def go() -> None:
            for i in range(warmup + calls):
                time_bare(i)
                c = ctx()
                t0 = time.perf_counter()
                await pipeline.ahandle(REQUEST, c)
                if i >= warmup:
                    stage_t.append((time.perf_counter() - t0) * 1e6)
        asyncio.run(go())
    else:
        for i in range(warmup + calls):
            time_bare(i)
            c = ctx()
            t0 = time.perf_counter()
            pipeline.handle(REQUEST, c)
            if i >= warmup:
                stage_t.append((time.perf_counter() - t0) * 1e6)
    return stage_t, bare_t


def bare_sql(url: str) -> tuple[Callable[[], Any], Callable[[], None]]:
    """A one-row autocommitted UPDATE on a scratch table: the reservation's round trip, bare."""
    from thrifty.ledger.db import create_engine

    kwargs: dict[str, Any] = {"isolation_level": "AUTOCOMMIT", "pool_pre_ping": False}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10, "options": "-c synchronous_commit=off"}
    engine = create_engine(url, **kwargs)
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS bench_rt (id INTEGER PRIMARY KEY, v NUMERIC)")
        conn.exec_driver_sql("DELETE FROM bench_rt")
        conn.exec_driver_sql("INSERT INTO bench_rt VALUES (1, 0)")
    update = sa.text("UPDATE bench_rt SET v = v + :x WHERE id = 1")

    def call() -> None:
        with engine.connect() as conn:
            conn.execute(update, {"x": 1})

    return call, engine.dispose


def bare_redis(url: str) -> tuple[Callable[[], Any], Callable[[], None]]:
    import redis

    client = redis.Redis.from_url(url)
    script = client.register_script("return 1")
    return (lambda: script(keys=[], args=[])), client.close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="an admin URL; a scratch database is made and dropped")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    backends: dict[str, tuple[str, str | None]] = {"sqlite": (f"sqlite:///{tmp / 'ledger.db'}", None)}
    admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    pg_name = f"thrifty_bench_{uuid.uuid4().hex[:8]}"
    pg_url = None
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{pg_name}"')
        pg_url = sa.make_url(args.pg).set(database=pg_name).render_as_string(hide_password=False)
        backends["postgresql"] = (pg_url, None)
        backends["redis"] = (pg_url, args.redis)
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL not reachable ({exc.orig}); SQLite only")

    target_engine = thrifty.Engine(thrifty.Settings.load(data_dir=tmp), ledger=False)
    target = target_engine.resolve("openai/gpt-4o-mini")
    rows: list[dict[str, Any]] = []
    try:
        base = {m: statistics.median(measure(Pipeline([], Instant()), target, None, args.calls, args.warmup, m,
                                             None)[0]) for m in (False, True)}
        for backend, (db_url, redis_url) in backends.items():
            settings = thrifty.Settings.load(data_dir=tmp, db_url=db_url, redis_url=redis_url)
            store = KeyStore.from_settings(settings)
            bare, close_bare = bare_redis(redis_url) if redis_url else bare_sql(db_url)
            tag = uuid.uuid4().hex[:6]
            cases = {
                "no key": None,
                "key, no limits": store.create(f"plain-{tag}")[0],
                "key, rpm": store.create(f"rpm-{tag}", rpm=10**9)[0],
                "key, budget": store.create(f"budget-{tag}", budget_usd=10**6)[0],
                "key, budget + rpm": store.create(f"both-{tag}", budget_usd=10**6, rpm=10**9)[0],
            }
            for case, key in cases.items():
                local = case in ("no key", "key, no limits") or (case == "key, rpm" and redis_url is None)
                if local and backend != "sqlite":
                    continue  # no round trip: the same on every backend
                for use_async in (False, True):
                    stage = LimitsStage.from_settings(settings, keys=store, redis_namespace=f"bench-{tag}")
                    pipeline = Pipeline([stage], Instant())
                    stage_t, bare_t = measure(pipeline, target, key, args.calls, args.warmup, use_async,
                                              None if local else bare)
                    assert stage.flush(30)
                    if key is not None and key.budget_usd is not None:
                        status = stage.budgets.status(key)
                        assert abs(status.reserved_usd) < Decimal("1e-9"), status
                    stage.close()
                    added = statistics.median(stage_t) - base[use_async]
                    rtt = statistics.median(bare_t) if bare_t else 0.0
                    rows.append({
                        "backend": "any (no I/O)" if local else backend,
                        "case": case,
                        "face": "async" if use_async else "sync",
                        "added_p50_us": round(added, 1),
                        "added_p99_us": round(pct(stage_t, 0.99) - base[use_async], 1),
                        "round_trip_p50_us": round(rtt, 1),
                        "minus_round_trip_p50_us": round(added - rtt, 1),
                    })
            close_bare()
            store.close()
    finally:
        target_engine.close()
        if pg_url is not None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        admin.dispose()

    header = ["backend", "case", "face", "added p50", "added p99", "bare round trip p50", "added minus round trip"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "limits.json").write_text(json.dumps({
        "python": platform.python_version(),
        "calls": args.calls,
        "unit": "µs",
        "baseline_p50_us": {"sync": round(base[False], 1), "async": round(base[True], 1)},
        "rows": rows,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
