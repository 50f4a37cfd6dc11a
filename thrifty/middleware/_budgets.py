"""Spend backends of the limits stage: where reservations, spend and rate windows live.

* :class:`SqlBudgets`: the ``key_spend`` table of the ledger database (SQLite
  or PostgreSQL); rate windows in this process.
* :class:`RedisBudgets`: Redis hashes and sorted sets, updated by Lua scripts;
  shared by every process that uses the same Redis.

Both reserve in one round trip, and reconcile on a background thread (one
round trip per batch of finished attempts). See :mod:`thrifty.middleware.limits`
for the algorithm and why it cannot overspend.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from thrifty.errors import LedgerError, RateLimitError
from thrifty.types import Usage

if TYPE_CHECKING:
    import sqlalchemy as sa

    from thrifty.middleware.limits import VirtualKey

__all__ = ["Actual", "Budgets", "CostModel", "Hold", "RedisBudgets", "SpendStatus", "SqlBudgets"]

log = logging.getLogger("thrifty.limits")

_SCALE = Decimal("1e-12")  # the ledger's Money scale
_NANO = Decimal("1e9")  # Redis keeps integer nano-USD
WINDOW_S = 60.0  # the rpm window


@dataclass(slots=True)
class Hold:
    """A reservation made for one attempt; settled exactly once."""

    key: VirtualKey
    period_start: datetime
    amount: Decimal  # USD reserved (0 for keys without a budget)
    rate_token: Any = None  # the rate-window entry, to give back if the reservation fails
    settled: bool = False


@dataclass(slots=True)
class Actual:
    """What an attempt really used, to be priced (unless ``cost`` is known) off the request path."""

    usage: Usage
    model: str
    pricing_id: str | None
    is_local: bool
    at: datetime | None = None
    cost: Decimal | None = None


class SpendStatus(NamedTuple):
    """A key's spend in its current period."""

    period_start: datetime
    period_end: datetime | None
    spent_usd: Decimal
    reserved_usd: Decimal
    calls: int


def _usd(x: Decimal) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:.6f}"


# ---------------------------------------------------------------- costs


class CostModel:
    """:func:`~thrifty.ledger.pricing.worst_case_cost`, made cheap for models priced linearly.

    genai-prices takes ~50 µs a call. For a model whose price is a fixed part
    plus a rate per input and per output token (checked with probes, also far
    past tier boundaries), the rates are kept for ``ttl_s`` and the cost is two
    multiplications; tiered models are priced by genai-prices every time.
    """

    _PROBE_IN = 2_000_000
    _PROBE_OUT = 200_000

    def __init__(self, ttl_s: float = 600.0) -> None:
        self.ttl_s = ttl_s
        self._rates: dict[tuple[str, str | None], tuple[float, tuple[Decimal, Decimal, Decimal] | None]] = {}

    def worst_case(self, prompt: int, output: int, model: str, pricing_id: str | None) -> Decimal | None:
        from thrifty.ledger.pricing import worst_case_cost

        key = (model, pricing_id)
        entry = self._rates.get(key)
        now = time.monotonic()
        if entry is None or entry[0] < now:
            entry = (now + self.ttl_s, self._linear(model, pricing_id))
            if len(self._rates) > 1024:
                self._rates.clear()
            self._rates[key] = entry
        rates = entry[1]
        if rates is not None:
            fixed, per_in, per_out = rates
            return fixed + per_in * prompt + per_out * output
        return worst_case_cost(prompt, output, model, pricing_id=pricing_id, is_local=False)

    def _linear(self, model: str, pricing_id: str | None) -> tuple[Decimal, Decimal, Decimal] | None:
        from thrifty.ledger.pricing import worst_case_cost

        def cost(p: int, o: int) -> Decimal | None:
            return worst_case_cost(p, o, model, pricing_id=pricing_id, is_local=False)

        fixed = cost(0, 0)
        c_in, c_out = cost(1000, 0), cost(0, 1000)
        far_in, far_both = cost(self._PROBE_IN, 0), cost(self._PROBE_IN, self._PROBE_OUT)
        if fixed is None or c_in is None or c_out is None or far_in is None or far_both is None:
            return None  # unpriced: worst_case_cost says so each time (cheap: a cached miss)
        per_in, per_out = (c_in - fixed) / 1000, (c_out - fixed) / 1000
        if far_in != fixed + per_in * self._PROBE_IN or far_both != far_in + per_out * self._PROBE_OUT:
            return None  # tiered: price every call exactly
        return fixed, per_in, per_out


# ---------------------------------------------------------------- backends


class Budgets(abc.ABC):
    """Reserve, reconcile and read spend; rate windows too."""

    def __init__(self) -> None:
        self._settler = _Settler(self._apply, name=f"thrifty-limits-{type(self).__name__}")
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- the request path

    @abc.abstractmethod
    def reserve(self, key: VirtualKey, amount: Decimal) -> Hold:
        """Count the attempt against the key's rate limit and reserve ``amount`` USD, atomically.

        Raises :class:`~thrifty.errors.RateLimitError` when over either, and
        :class:`~thrifty.errors.LedgerError` when the backend cannot be reached.
        """

    def needs_io(self, key: VirtualKey) -> bool:
        """Whether :meth:`reserve` for ``key`` talks to the backend (else it runs inline in :meth:`areserve`)."""
        return key.budget_usd is not None

    async def areserve(self, key: VirtualKey, amount: Decimal) -> Hold:
        """:meth:`reserve` for an event loop: backend round trips run in a worker thread."""
        if not self.needs_io(key):
            return self.reserve(key, amount)
        future = self._executor().submit(self.reserve, key, amount)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # the caller went away; a reservation that completes anyway is released
            future.add_done_callback(self._release_orphan)
            raise

    def settle(self, hold: Hold, actual: Actual | None) -> None:
        """Replace the reservation with ``actual`` (None: nothing used), on the background thread."""
        if hold.settled:
            return
        hold.settled = True
        self._settler.submit((hold, actual))

    def flush(self, timeout: float | None = 10.0) -> bool:
        return self._settler.flush(timeout)

    def close(self) -> None:
        self._settler.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # -- reading

    @abc.abstractmethod
    def status(self, key: VirtualKey, now: datetime | None = None) -> SpendStatus:
        """The key's spend and reservations in the period ``now`` falls in."""

    # -- internals

    @abc.abstractmethod
    def _apply(self, batch: list[tuple[Hold, Decimal]]) -> None:
        """Apply settlements (hold, actual USD) in as few round trips as the backend allows."""

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="thrifty-limits")
        return self._pool

    def _release_orphan(self, future: Future[Hold]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.settle(future.result(), None)

    def _over_budget(self, key: VirtualKey, amount: Decimal, spent: Decimal, reserved: Decimal,
                     start: datetime, end: datetime | None) -> RateLimitError:
        budget = key.budget_usd or Decimal(0)
        per = "in total" if key.budget_period == "total" else f"per {key.budget_period} (since {start:%Y-%m-%d} UTC)"
        message = (
            f"key {key.name!r} is over its budget of {_usd(budget)} {per}: {_usd(spent)} spent"
            f"{f' and {_usd(reserved)} reserved by calls in flight' if reserved > 0 else ''}, "
            f"and this call may cost up to {_usd(amount)}"
        )
        if spent + amount <= budget:
            # only the calls in flight are in the way; they settle in seconds
            return RateLimitError(message + "; try again when calls in flight have finished", retry_after=1.0)
        if end is None:
            return RateLimitError(message + "; the budget does not reset: raise it or use another key")
        return RateLimitError(
            message + f"; the budget resets at {end:%Y-%m-%d %H:%M} UTC",
            retry_after=max(1.0, (end - datetime.now(UTC)).total_seconds()),
        )


def _over_rate(key: VirtualKey, retry_after: float) -> RateLimitError:
    return RateLimitError(
        f"key {key.name!r} is over its rate limit of {key.rpm} requests per minute; "
        f"try again in {max(1, round(retry_after))} s",
        retry_after=max(0.001, retry_after),
    )


def _actual_usd(hold: Hold, actual: Actual | None) -> Decimal:
    """What an attempt cost: priced like the ledger prices it; unpriced answers are charged their reservation."""
    if actual is None:
        return Decimal(0)
    if actual.cost is not None:
        return actual.cost
    usage = actual.usage
    if usage.total_tokens == 0:
        return Decimal(0)
    if actual.is_local:
        return Decimal(0)
    try:
        from thrifty.ledger.pricing import price

        cost = price(usage, actual.model, pricing_id=actual.pricing_id, is_local=False, at=actual.at).cost_usd
    except Exception:  # noqa: BLE001 - a pricing failure must not lose the settlement
        log.warning("limits: could not price a call of %r; charging its reservation", actual.model, exc_info=True)
        cost = None
    return hold.amount if cost is None else cost


class LocalRates:
    """Sliding 60-second windows of attempt times, per key, in this process."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._log: dict[int, deque[float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: VirtualKey) -> float:
        """Count one attempt now; raises :class:`RateLimitError` when the window is full."""
        assert key.rpm is not None
        now = time.monotonic()
        with self._lock:
            times = self._log.get(key.id)
            if times is None:
                times = self._log[key.id] = deque()
            cutoff = now - self.window_s
            while times and times[0] <= cutoff:
                times.popleft()
            if len(times) >= key.rpm:
                raise _over_rate(key, times[0] + self.window_s - now)
            times.append(now)
        return now

    def give_back(self, key: VirtualKey, token: float) -> None:
        with self._lock:
            times = self._log.get(key.id)
            if times is not None:
                try:
                    times.remove(token)
                except ValueError:
                    pass


class SqlBudgets(Budgets):
    """Spend in the ``key_spend`` table; reservations by one conditional UPDATE (see the limits module)."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__()
        import sqlalchemy as sa

        from thrifty.ledger.db import create_engine, sqlite_path
        from thrifty.ledger.models import Money
        from thrifty.ledger.models import key_spend_table as t

        # An engine of its own, in autocommit mode: each statement is one round trip, no BEGIN/COMMIT
        # around it (and no isolation-level switching per checkout).
        self._owned: sa.Engine | None = None
        if engine.dialect.name == "postgresql":
            # commits that do not wait for the WAL flush (~0.3 ms less per reservation); a server
            # crash can lose the last fraction of a second of them, always a suffix, never a hole
            engine = self._owned = create_engine(
                engine.url,
                pool_pre_ping=False,
                isolation_level="AUTOCOMMIT",
                connect_args={"connect_timeout": 10, "options": "-c synchronous_commit=off"},
            )
        elif engine.dialect.name == "sqlite" and sqlite_path(engine.url) is not None:
            engine = self._owned = create_engine(engine.url, pool_pre_ping=False, isolation_level="AUTOCOMMIT")
        self.engine = engine
        self._auto = engine if self._owned is not None else engine.execution_options(isolation_level="AUTOCOMMIT")
        self._rates = LocalRates()
        self._known: set[tuple[int, datetime]] = set()  # (key, period) rows known to exist
        x = sa.bindparam("x", type_=Money)
        where_row = (t.c.key_id == sa.bindparam("k"), t.c.period_start == sa.bindparam("p"))
        self._reserve_sql = (
            sa.update(t)
            .where(*where_row, t.c.spent_usd + t.c.reserved_usd + x <= sa.bindparam("budget", type_=Money))
            .values(reserved_usd=t.c.reserved_usd + x)
        )
        self._settle_sql = (
            sa.update(t)
            .where(*where_row)
            .values(
                spent_usd=t.c.spent_usd + sa.bindparam("spent", type_=Money),
                reserved_usd=t.c.reserved_usd - sa.bindparam("released", type_=Money),
                calls=t.c.calls + sa.bindparam("n"),
            )
        )
        self._status_sql = sa.select(t.c.spent_usd, t.c.reserved_usd, t.c.calls).where(*where_row)
        from sqlalchemy.dialects import postgresql, sqlite

        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._ensure_sql = insert(t).on_conflict_do_nothing(index_elements=[t.c.key_id, t.c.period_start])

    def needs_io(self, key: VirtualKey) -> bool:
        return key.budget_usd is not None

    def reserve(self, key: VirtualKey, amount: Decimal) -> Hold:
        start, end = key.period()
        token = self._rates.acquire(key) if key.rpm is not None else None
        hold = Hold(key, start, amount, token)
        if key.budget_usd is None:
            return hold
        try:
            ok = self._run(self._try_reserve, key, start, amount)
            status = None
            if not ok:  # over budget, or the period's row went away under us (deleted by hand)
                status = self._row(key, start)
                if status is None:
                    self._known.discard((key.id, start))
                    ok = self._run(self._try_reserve, key, start, amount)
        except BaseException:
            if token is not None:
                self._rates.give_back(key, token)
            raise
        if not ok:
            if token is not None:
                self._rates.give_back(key, token)
            status = status or self.status(key)
            raise self._over_budget(key, amount, status.spent_usd, status.reserved_usd, start, end)
        return hold

    def _try_reserve(self, conn: sa.Connection, key: VirtualKey, start: datetime, amount: Decimal) -> bool:
        self._ensure(conn, key.id, start)
        params = {"k": key.id, "p": start, "x": amount, "budget": key.budget_usd}
        return conn.execute(self._reserve_sql, params).rowcount == 1

    def _ensure(self, conn: sa.Connection, key_id: int, start: datetime) -> None:
        if (key_id, start) in self._known:
            return
        conn.execute(
            self._ensure_sql,
            {"key_id": key_id, "period_start": start, "spent_usd": 0, "reserved_usd": 0, "calls": 0},
        )
        if len(self._known) > 100_000:
            self._known.clear()
        self._known.add((key_id, start))

    def status(self, key: VirtualKey, now: datetime | None = None) -> SpendStatus:
        start, end = key.period(now)
        status = self._row(key, start)
        return status if status is not None else SpendStatus(start, end, Decimal(0), Decimal(0), 0)

    def _row(self, key: VirtualKey, start: datetime) -> SpendStatus | None:
        row = self._run(lambda conn: conn.execute(self._status_sql, {"k": key.id, "p": start}).first())
        if row is None:
            return None
        end = key.period(start)[1]
        return SpendStatus(start, end, _dec(row.spent_usd), _dec(row.reserved_usd), int(row.calls))

    def _apply(self, batch: list[tuple[Hold, Decimal]]) -> None:
        totals: dict[tuple[int, datetime], list[Any]] = {}
        for hold, actual in batch:
            acc = totals.setdefault((hold.key.id, hold.period_start), [Decimal(0), Decimal(0), 0])
            acc[0] += actual
            acc[1] += hold.amount
            acc[2] += 1
        params = [
            {"k": k, "p": p, "spent": spent.quantize(_SCALE, ROUND_HALF_EVEN), "released": released, "n": n}
            for (k, p), (spent, released, n) in totals.items()
        ]

        def write(conn: sa.Connection) -> None:
            # autocommitted: each UPDATE holds its row's lock only while it runs, not across round trips
            for k, p in totals:
                self._ensure(conn, k, p)
            conn.execute(self._settle_sql, params)

        self._run(write)

    def close(self) -> None:
        super().close()
        if self._owned is not None:
            self._owned.dispose()

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(conn, *args)`` autocommitted; a stale connection is replaced once; outages are LedgerErrors."""
        from sqlalchemy.exc import DBAPIError

        from thrifty.ledger.db import redacted

        for attempt in (1, 2):
            try:
                with self._auto.connect() as conn:
                    return fn(conn, *args)
            except DBAPIError as exc:
                if exc.connection_invalidated and attempt == 1:
                    continue
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
                raise LedgerError(
                    f"cannot reach the budget database {redacted(self.engine.url)}: {reason}"
                ) from exc
        raise AssertionError("unreachable")


def _dec(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    return Decimal(str(value)).quantize(_SCALE)


# ---------------------------------------------------------------- Redis

# KEYS: spend hash, rate zset. ARGV: amount (nano-USD), budget (nano-USD, -1: none),
# rpm (0: none), window (ms), member (unique), spend ttl (s, 0: none).
# Returns {0} admitted; {1, retry_ms} over rate; {2, spent, reserved} over budget; {3} spend not seeded.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if redis.call('ZCARD', KEYS[2]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {1, tonumber(oldest[2]) + window - now}
  end
end
local budget = tonumber(ARGV[2])
if budget >= 0 then
  local v = redis.call('HMGET', KEYS[1], 'seeded', 'spent', 'reserved')
  if not v[1] then return {3} end
  local spent = tonumber(v[2] or '0')
  local reserved = tonumber(v[3] or '0')
  if spent + reserved + tonumber(ARGV[1]) > budget then return {2, spent, reserved} end
  redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
end
if rpm > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], window)
end
return {0}
"""

# KEYS: spend hash. ARGV: spend seen in the ledger (nano-USD), ttl (s, 0: none).
_SEED = """
if redis.call('HEXISTS', KEYS[1], 'seeded') == 0 then
  local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
  if tonumber(ARGV[1]) > spent then redis.call('HSET', KEYS[1], 'spent', ARGV[1]) end
  redis.call('HSET', KEYS[1], 'seeded', 1)
  if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
end
return 1
"""

# KEYS: spend hash. ARGV: spent (nano-USD), minus the released reservation (nano-USD, <= 0), calls, ttl.
_SETTLE = """
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[2]) end
redis.call('HINCRBY', KEYS[1], 'calls', ARGV[3])
if tonumber(ARGV[4]) > 0 and redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

_KEEP_AFTER_PERIOD_S = 7 * 86400  # a finished period's spend stays readable this long


def _nano_up(x: Decimal) -> int:
    return int((x * _NANO).to_integral_value(ROUND_CEILING))


def _nano(x: Decimal) -> int:
    return int((x * _NANO).to_integral_value(ROUND_HALF_EVEN))


def _from_nano(n: Any) -> Decimal:
    return (Decimal(int(n or 0)) / _NANO).quantize(_SCALE)


class RedisBudgets(Budgets):
    """Spend and rate windows in Redis (``url``), shared by every process using it.

    Keys are ``<namespace>:vk:{<key id>}:spend:<period start>`` (a hash:
    ``spent``, ``reserved``, ``calls``, ``seeded``; integer nano-USD) and
    ``<namespace>:vk:{<key id>}:rpm`` (a sorted set of attempt times); the
    braces keep one key's entries in one Redis Cluster slot. ``ledger`` is the
    ledger database's engine: a period's spend missing from Redis is seeded
    from the ledger's priced calls of that key.
    """

    def __init__(self, url: str, *, ledger: sa.Engine | None = None, namespace: str = "thrifty") -> None:
        super().__init__()
        try:
            import redis
        except ImportError as exc:
            raise LedgerError(
                "redis_url is set but the redis client is not installed: pip install 'thrifty[redis]'"
            ) from exc
        self.url = url
        self.namespace = namespace
        self.ledger = ledger
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        self._reserve_script = self._redis.register_script(_RESERVE)
        self._seed_script = self._redis.register_script(_SEED)
        self._settle_script = self._redis.register_script(_SETTLE)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        # rate-window entries must be unique across processes: a random prefix, then a counter
        self._member_prefix = uuid.uuid4().hex[:12] + ":"
        self._members = itertools.count()

    def needs_io(self, key: VirtualKey) -> bool:
        return key.budget_usd is not None or key.rpm is not None

    def _spend_key(self, key: VirtualKey, start: datetime) -> str:
        return f"{self.namespace}:vk:{{{key.key_id}}}:spend:{int(start.timestamp())}"

    def _rate_key(self, key: VirtualKey) -> str:
        return f"{self.namespace}:vk:{{{key.key_id}}}:rpm"

    @staticmethod
    def _ttl(end: datetime | None) -> int:
        if end is None:
            return 0
        return max(1, int((end - datetime.now(UTC)).total_seconds())) + _KEEP_AFTER_PERIOD_S

    def reserve(self, key: VirtualKey, amount: Decimal) -> Hold:
        start, end = key.period()
        hold = Hold(key, start, amount)
        if key.budget_usd is None and key.rpm is None:
            return hold
        keys = [self._spend_key(key, start), self._rate_key(key)]
        args: list[int | str] = [
            _nano_up(amount),
            -1 if key.budget_usd is None else int((key.budget_usd * _NANO).to_integral_value(ROUND_FLOOR)),
            key.rpm or 0,
            int(WINDOW_S * 1000),
            f"{self._member_prefix}{next(self._members)}",
            self._ttl(end),
        ]
        for _ in range(3):
            try:
                answer = self._reserve_script(keys=keys, args=args)
            except self._errors as exc:
                raise LedgerError(f"cannot reach Redis for budgets and rate limits: {exc}") from exc
            code = int(answer[0])
            if code == 0:
                return hold
            if code == 1:
                raise _over_rate(key, int(answer[1]) / 1000.0)
            if code == 2:
                spent, reserved = _from_nano(answer[1]), _from_nano(answer[2])
                raise self._over_budget(key, amount, spent, reserved, start, end)
            self._seed(key, start, end)  # code 3: this period's spend is not in Redis yet
        raise LedgerError("Redis keeps losing the budget state (evicted at once?); check its maxmemory-policy")

    def _seed(self, key: VirtualKey, start: datetime, end: datetime | None) -> None:
        seen = self._ledger_spend(key, start)
        try:
            self._seed_script(keys=[self._spend_key(key, start)], args=[_nano(seen), self._ttl(end)])
        except self._errors as exc:
            raise LedgerError(f"cannot reach Redis for budgets and rate limits: {exc}") from exc

    def _ledger_spend(self, key: VirtualKey, start: datetime) -> Decimal:
        """The key's priced spend since ``start`` in the ledger (0 without a ledger)."""
        if self.ledger is None:
            return Decimal(0)
        import sqlalchemy as sa
        from sqlalchemy.exc import DBAPIError

        from thrifty.ledger.models import calls_table as c

        query = sa.select(sa.func.coalesce(sa.func.sum(c.c.cost_usd), 0)).where(
            c.c.key_id == key.key_id, c.c.started_at >= start
        )
        try:
            with self.ledger.connect() as conn:
                return _dec(conn.execute(query).scalar_one())
        except DBAPIError as exc:
            raise LedgerError(f"cannot read the key's spend from the ledger to seed Redis: {exc.orig}") from exc

    def status(self, key: VirtualKey, now: datetime | None = None) -> SpendStatus:
        start, end = key.period(now)
        try:
            seeded, spent, reserved, calls = self._redis.hmget(
                self._spend_key(key, start), ["seeded", "spent", "reserved", "calls"]
            )
        except self._errors as exc:
            raise LedgerError(f"cannot reach Redis for budgets and rate limits: {exc}") from exc
        spent_usd = _from_nano(spent)
        if seeded is None:
            spent_usd = max(spent_usd, self._ledger_spend(key, start))
        return SpendStatus(start, end, spent_usd, _from_nano(reserved), int(calls or 0))

    def _apply(self, batch: list[tuple[Hold, Decimal]]) -> None:
        totals: dict[tuple[str, datetime | None], list[int]] = {}
        for hold, actual in batch:
            end = hold.key.period(hold.period_start)[1]
            acc = totals.setdefault((self._spend_key(hold.key, hold.period_start), end), [0, 0, 0])
            acc[0] += _nano(actual)
            acc[1] += _nano_up(hold.amount)
            acc[2] += 1
        pipe = self._redis.pipeline(transaction=False)
        for (spend_key, end), (spent, released, n) in totals.items():
            self._settle_script(keys=[spend_key], args=[spent, -released, n, self._ttl(end)], client=pipe)
        pipe.execute()

    def close(self) -> None:
        super().close()
        self._redis.close()


# ---------------------------------------------------------------- reconciling


class _Settler:
    """A background thread that prices finished attempts and applies them in batches.

    Applying a batch that fails (the database or Redis is away) is retried with
    a growing pause; until then the reservations stay counted, which refuses
    calls early but never lets one overspend.
    """

    def __init__(
        self, apply: Callable[[list[tuple[Hold, Decimal]]], None], *, name: str, batch: int = 500,
        linger_s: float = 0.005,
    ) -> None:
        self._apply = apply
        self._batch = batch
        self._linger_s = linger_s  # wait this long for company: fewer, larger batches, less lock contention
        self._queue: deque[tuple[Hold, Actual | None]] = deque()
        self._cond = threading.Condition()
        self._pending = 0
        self._closing = False
        self._name = name
        self._thread: threading.Thread | None = None  # started by the first submit

    def submit(self, item: tuple[Hold, Actual | None]) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
                atexit.register(self.close, 2.0)
            self._queue.append(item)
            self._pending += 1
            self._cond.notify()

    def flush(self, timeout: float | None = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        atexit.unregister(self.close)
        if self._pending:
            log.warning(
                "limits: %d finished call(s) could not be reconciled; their reservations stay held "
                "until their budget period ends", self._pending
            )

    def _run(self) -> None:
        pause = 0.0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
            if not self._closing:
                time.sleep(self._linger_s)
            with self._cond:
                items = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            batch = [(hold, _actual_usd(hold, actual)) for hold, actual in items]
            while True:
                try:
                    self._apply(batch)
                    pause = 0.0
                    break
                except Exception as exc:  # noqa: BLE001 - kept and retried
                    if self._closing:
                        log.warning("limits: dropping %d reconciliation(s) at close: %s", len(batch), exc)
                        break
                    pause = min(5.0, max(0.1, pause * 2))
                    log.warning("limits: could not reconcile %d call(s) (%s); retrying in %.1fs", len(batch), exc, pause)
                    time.sleep(pause)
            with self._cond:
                self._pending -= len(items)
                self._cond.notify_all()
