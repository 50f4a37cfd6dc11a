"""Virtual-key test support, shared by the stage-level and the proxy-level limits tests.

* ``limits_env`` (a fixture, parametrized ``sqlite``, ``postgresql``, ``redis``):
  a :class:`LimitsEnv` whose settings point the ledger (and keys) at a real
  SQLite file or a real PostgreSQL database, and budgets at the SQL backend or
  a real Redis (under a namespace of the test's own);
* :func:`race` / :func:`race_threads`: fire many calls at once while a watcher
  samples the key's spend, for the "never overspends" checks;
* :func:`check_budget_held`: those checks.

A proxy-level test passes calls that go through HTTP (an SDK client with the
key), and the same checks apply: ``await race([lambda: client.chat...] * 200,
watch=lambda: stage.budgets.status(key))``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from thrifty import Engine, Settings
from thrifty.middleware._budgets import SpendStatus
from thrifty.middleware.limits import KeyStore, LimitsStage
from thrifty.testing import CannedUpstream

PG_ADMIN_URL = os.environ.get("THRIFTY_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("THRIFTY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_TABLES = "key_spend, virtual_keys, llm_call_payloads, llm_call_savings, llm_call_tags, llm_calls"

LIMITS_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("redis", id="redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
]


def limits_settings(
    data_dir: Path, upstream: CannedUpstream, *, db_url: str | None = None, redis_url: str | None = None,
    **overrides: Any,
) -> Settings:
    """Providers on the canned upstream (``openai/gpt-4o-mini`` is priced), one that is down (``dead/``)."""
    providers = {
        "openai": {"kind": "openai", "base_url": upstream.url, "api_key": "sk-openai-test"},
        "anthropic": {"kind": "anthropic", "base_url": upstream.url, "api_key": "sk-ant-test"},
        "canned": {"kind": "openai-compatible", "base_url": upstream.url},
        "dead": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x", "timeout_s": 5},
    }
    overrides.setdefault("retry", {"max_attempts": 1})
    return Settings.load(data_dir=data_dir, providers=providers, db_url=db_url, redis_url=redis_url, **overrides)


@dataclass
class LimitsEnv:
    """One backend's databases for a test; everything made through it is closed at teardown."""

    backend: str
    data_dir: Path
    db_url: str
    redis_url: str | None
    namespace: str
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def settings(self, upstream: CannedUpstream, **overrides: Any) -> Settings:
        return limits_settings(self.data_dir, upstream, db_url=self.db_url, redis_url=self.redis_url, **overrides)

    def keys(self, settings: Settings, **kwargs: Any) -> KeyStore:
        store = KeyStore.from_settings(settings, **kwargs)
        self._closers.append(store.close)
        return store

    def engine(self, settings: Settings, keys: KeyStore | None = None) -> tuple[Engine, LimitsStage]:
        """An engine with a limits stage: one "proxy process"; call it twice for two sharing the backend."""
        stage = LimitsStage.from_settings(settings, keys=keys, redis_namespace=self.namespace)
        engine = Engine(settings, stages=[stage])
        self._closers.append(stage.close)
        self._closers.append(engine.close)
        return engine, stage

    def close(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - teardown goes on
                pass


@pytest.fixture(scope="session")
def limits_pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test session, migrated; dropped at the end."""
    from thrifty.ledger.migrations import migrate

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"thrifty_limits_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc.orig}")
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    migrate(url)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def limits_redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture(params=LIMITS_BACKENDS)
def limits_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LimitsEnv]:
    backend = request.param
    redis_url = None
    if backend == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        db_url = request.getfixturevalue("limits_pg_url")
        engine = sa.create_engine(db_url, poolclass=sa.NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE")
        engine.dispose()
        if backend == "redis":
            redis_url = request.getfixturevalue("limits_redis_url")
    env = LimitsEnv(backend, tmp_path / "data", db_url, redis_url, f"thrifty-test-{uuid.uuid4().hex[:10]}")
    yield env
    env.close()
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{env.namespace}:*"):
            client.delete(key)
        client.close()


# ---------------------------------------------------------------- races


@dataclass
class RaceResult:
    """What happened to each call (``"ok"``, ``"429"`` or the error's type name) and what the watcher saw."""

    outcomes: list[str]
    samples: list[SpendStatus]
    seconds: float

    @property
    def ok(self) -> int:
        return self.outcomes.count("ok")

    @property
    def limited(self) -> int:
        return self.outcomes.count("429")

    @property
    def max_spent(self) -> Decimal:
        return max((s.spent_usd for s in self.samples), default=Decimal(0))

    @property
    def max_committed(self) -> Decimal:
        """The most ``spent + reserved`` the watcher saw."""
        return max((s.spent_usd + s.reserved_usd for s in self.samples), default=Decimal(0))


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    status = getattr(exc, "status_code", None)
    return "429" if status == 429 else type(exc).__name__


class _Watcher:
    def __init__(self, watch: Callable[[], SpendStatus] | None, interval_s: float) -> None:
        self.watch, self.interval_s = watch, interval_s
        self.samples: list[SpendStatus] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Watcher:
        if self.watch is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.watch is not None:
            self._thread.join(10)
            self.samples.append(self.watch())

    def _run(self) -> None:
        assert self.watch is not None
        while not self._stop.is_set():
            self.samples.append(self.watch())
            time.sleep(self.interval_s)


async def race(
    calls: list[Callable[[], Awaitable[Any]]],
    *,
    watch: Callable[[], SpendStatus] | None = None,
    interval_s: float = 0.002,
) -> RaceResult:
    """Start every call at once on this event loop; ``watch`` is sampled from a thread meanwhile."""
    t0 = time.perf_counter()
    with _Watcher(watch, interval_s) as watcher:
        results = await asyncio.gather(*(c() for c in calls), return_exceptions=True)
    outcomes = [_outcome(r if isinstance(r, BaseException) else None) for r in results]
    return RaceResult(outcomes, watcher.samples, time.perf_counter() - t0)


def race_threads(
    calls: list[Callable[[], Any]],
    *,
    watch: Callable[[], SpendStatus] | None = None,
    threads: int = 64,
    interval_s: float = 0.002,
) -> RaceResult:
    """The calls on ``threads`` threads, the first ``threads`` released together."""
    go = threading.Event()

    def run(call: Callable[[], Any]) -> str:
        go.wait(30)
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - classified
            return _outcome(exc)
        return "ok"

    t0 = time.perf_counter()
    with _Watcher(watch, interval_s) as watcher, ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(run, call) for call in calls]
        time.sleep(0.05)  # let the workers start and wait
        go.set()
        outcomes = [f.result() for f in futures]
    return RaceResult(outcomes, watcher.samples, time.perf_counter() - t0)


def check_budget_held(result: RaceResult, budget: Decimal, reservation: Decimal, final: SpendStatus) -> None:
    """The spend never passed the budget by more than one reservation, and everything settled."""
    slack = reservation + Decimal("1e-9")  # SQLite keeps money as floats
    assert result.max_committed <= budget + slack, (result.max_committed, budget, reservation)
    assert result.max_spent <= budget + slack
    assert final.spent_usd <= budget + slack
    assert abs(final.reserved_usd) < Decimal("1e-9"), final
    assert result.ok >= 1 and result.limited >= 1, result.outcomes
    assert set(result.outcomes) <= {"ok", "429"}, sorted(set(result.outcomes))
