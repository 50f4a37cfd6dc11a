"""Virtual keys with budgets, rate limits and model allow-lists: the ``limits`` stage.

The proxy's callers present a *virtual key* (``tk-...``), not a provider key.
:class:`KeyStore` keeps them in the ledger database (``virtual_keys``: the
SHA-256 of each secret, never the secret) and authenticates callers with a
short cache, so a revoke takes effect everywhere within ``cache_ttl_s``.
Keys come from ``thrifty keys create`` and from the config file
(``[[keys]]``, synced into the table at start by :meth:`KeyStore.sync_config`).

:class:`LimitsStage` runs once per upstream attempt, against that attempt's
model (after routing and retries pick it, before the ledger observer). For a
call whose context carries a :class:`VirtualKey` (``ctx.virtual_key``; calls
without one pass straight through) it checks, in order:

1. the model allow-list: the attempt's ``provider/model`` must match one of the
   key's patterns (``fnmatch``: ``openai/*``, ``local/*``, ``*``), else
   :class:`~thrifty.errors.PermissionDeniedError` (403) naming the patterns;
2. the rate limit: at most ``rpm`` attempts in any 60 seconds (a sliding
   window), else :class:`~thrifty.errors.RateLimitError` (429) with
   ``retry_after``;
3. the budget: the call's worst-case cost is *reserved* before the call and
   reconciled to its actual cost after it; a reservation that would take
   ``spent + reserved`` past the budget is refused with a 429 that names the
   key, budget, period and spend.

Rejections are raised as thrifty errors, so the engine writes their ledger row
and the entry answers in the caller's API error shape.

**The worst case.** Prompt tokens are the provider's own count
(:meth:`Provider.estimate_prompt_tokens`, exact for local models) or
:func:`thrifty.ledger.tokens.count_prompt`; output tokens are ``max_tokens``
times ``n``, or, when the request sets no ``max_tokens``,
``default_output_tokens`` (4096) times ``n``. Both are priced at the current
price of the attempt's model as uncached input and output
(:func:`thrifty.ledger.pricing.worst_case_cost`). A request without
``max_tokens`` whose answer runs past 4096 tokens is charged in full when it is
reconciled, so set ``max_tokens`` for a hard bound. Local models cost 0 and
reserve nothing. A model with no known price may be used by a key without a
budget (its calls are recorded as ``unpriced``), but never by a key with one:
that is a 403 saying so, because its spend could not be bounded.

**Reconciling.** When a non-streamed attempt returns, and when a streamed
attempt's stream closes (exhausted, failed or closed early), its actual cost
replaces the reservation: the usage the ledger observer recorded for the
attempt (``ctx.result``; estimated for a stream cut short), priced exactly as
the ledger prices it, so a key's spend equals the sum of its ledger rows. An
attempt that fails without usage releases its reservation; one that used
tokens before failing is charged for them. Reconciliation happens on a
background thread (:meth:`LimitsStage.flush` waits for it): until then the
reservation stays counted, which can only refuse a call, never overspend.

**Atomicity.** With the SQL backend (:class:`~thrifty.middleware._budgets.SqlBudgets`,
the default; SQLite or PostgreSQL, shared by every process on that database)
a reservation is one autocommitted statement::

    UPDATE key_spend SET reserved_usd = reserved_usd + :x
     WHERE key_id = :k AND period_start = :p
       AND spent_usd + reserved_usd + :x <= :budget

PostgreSQL row-locks the row and re-checks the condition against the newest
committed version when two updates race; SQLite runs one writer at a time.
Either way no two reservations can both fit in the same headroom, so the spend
can pass the budget only when an attempt's actual cost exceeds its reservation
(an answer longer than ``default_output_tokens``, or a provider that bills
more than the prompt count). With ``settings.redis_url`` set
(:class:`~thrifty.middleware._budgets.RedisBudgets`) the rate window and the
reservation are one Lua script, atomic in Redis and shared by every proxy
process; a period's spend missing from Redis (a flushed or restarted Redis) is
re-read from the ledger before the first reservation. Without Redis, rate
limits are counted per process.

Budget periods are calendar periods in UTC: a day from 00:00, a week from
Monday 00:00, a month from the 1st; ``total`` never resets.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Literal, get_args

from thrifty.errors import ConfigurationError, InvalidRequestError, LedgerError, PermissionDeniedError
from thrifty.middleware.context import CallContext
from thrifty.middleware.pipeline import Stage
from thrifty.types import (
    AsyncEventStream,
    AsyncTap,
    EventStream,
    Request,
    Response,
    StreamEvent,
    Tap,
    TextDelta,
    Usage,
    UsageEvent,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    from thrifty.middleware._budgets import Budgets, Hold
    from thrifty.middleware.context import Target
    from thrifty.settings import KeyConfig, Settings

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "KeyStore",
    "LimitsStage",
    "Period",
    "VirtualKey",
    "period_bounds",
]

log = logging.getLogger("thrifty.limits")

Period = Literal["day", "week", "month", "total"]
PERIODS: tuple[str, ...] = get_args(Period)

#: output tokens reserved for a request that sets no ``max_tokens``
DEFAULT_OUTPUT_TOKENS = 4096
#: how a secret starts; 43 random letters and digits follow
SECRET_PREFIX = "tk-"
_PREFIX_CHARS = 10  # "tk-" and 7 random characters, shown in listings
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: reservations and costs are kept to this many decimal places of a dollar (the ledger's Money scale)
_CENT_SCALE = Decimal("1e-12")


# ---------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A virtual key as the proxy knows it; never holds the secret.

    ``key_id`` (the first 16 hex digits of the secret's SHA-256) is what the
    ledger records as the call's ``key_id``.
    """

    id: int
    name: str
    key_sha256: str = field(repr=False)
    prefix: str | None
    budget_usd: Decimal | None
    budget_period: Period
    rpm: int | None
    models: tuple[str, ...]
    source: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def key_id(self) -> str:
        return self.key_sha256[:16]

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, model: str) -> bool:
        """Whether ``model`` (``provider/model``) matches one of the key's allow-list patterns."""
        for pattern in self.models:
            if pattern == "*" or fnmatchcase(model, pattern):
                return True
        return False

    def period(self, now: datetime | None = None) -> tuple[datetime, datetime | None]:
        """The budget period ``now`` falls in: its start and end (None for ``total``), UTC."""
        return period_bounds(self.budget_period, now or datetime.now(UTC))


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime | None]:
    """The start and end (exclusive; None for ``total``) of the calendar ``period`` around ``now``, UTC."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        return start, end
    if period == "total":
        return _EPOCH, None
    raise ValueError(f"unknown budget period {period!r}; periods: {', '.join(PERIODS)}")


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of a key's secret, as ``virtual_keys.key_sha256`` holds it."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def parse_models(models: str | Sequence[str] | None) -> tuple[str, ...]:
    """Allow-list patterns from ``"openai/*,local/*"`` or a list; ``None`` means every model."""
    if models is None:
        return ("*",)
    items = models.split(",") if isinstance(models, str) else list(models)
    patterns = tuple(p.strip() for p in items if p and p.strip())
    if not patterns:
        raise InvalidRequestError("the model allow-list is empty; give patterns such as 'openai/*,local/*' or '*'")
    return patterns


def _validate(
    name: str, budget_usd: Any, budget_period: str, rpm: int | None
) -> Decimal | None:
    if not _NAME_RE.match(name or ""):
        raise InvalidRequestError(
            f"invalid key name {name!r}: use 1-100 letters, digits and . _ : @ - (starting with a letter or digit)"
        )
    if budget_period not in PERIODS:
        raise InvalidRequestError(f"unknown budget period {budget_period!r}; periods: {', '.join(PERIODS)}")
    if rpm is not None and rpm < 1:
        raise InvalidRequestError(f"rpm must be at least 1, got {rpm}")
    if budget_usd is None:
        return None
    budget = Decimal(str(budget_usd))
    if not budget.is_finite() or budget <= 0:
        raise InvalidRequestError(f"a budget must be a positive amount of USD, got {budget_usd}")
    if budget >= Decimal("1e8"):
        raise InvalidRequestError(f"a budget must be under 100,000,000 USD, got {budget_usd}")
    return budget


class KeyStore:
    """The virtual keys in the ledger database (``virtual_keys``); see the module docstring.

    ``cache_ttl_s`` bounds how long an authentication result (a key, or "no
    such key") and :meth:`required` are reused: a key created or revoked in
    another process takes effect here within that time.
    """

    def __init__(self, engine: sa.Engine, *, cache_ttl_s: float = 2.0, owns_engine: bool = False) -> None:
        self.engine = engine
        self.cache_ttl_s = cache_ttl_s
        self._owns_engine = owns_engine
        self._auth: dict[str, tuple[float, VirtualKey | None]] = {}
        self._auth_max = 4096
        self._required: tuple[float, bool] | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, cache_ttl_s: float = 2.0) -> KeyStore:
        """A store on the database at ``url``, migrated to the newest schema first (unless ``migrate=False``)."""
        from thrifty.ledger.db import create_engine

        # one statement per round trip matters more than surviving a server restart silently:
        # a stale pooled connection fails one call, and is replaced (see _retrying)
        engine = create_engine(url, pool_pre_ping=False)
        if migrate:
            from thrifty.ledger.migrations import migrate as run_migrations

            try:
                run_migrations(engine)
            except BaseException:
                engine.dispose()
                raise
        return cls(engine, cache_ttl_s=cache_ttl_s, owns_engine=True)

    @classmethod
    def from_settings(cls, settings: Settings, *, sync: bool = True, cache_ttl_s: float = 2.0) -> KeyStore:
        """The store on ``settings.ledger_url``, with the config file's keys synced in (unless ``sync=False``)."""
        store = cls.open(settings.ledger_url, cache_ttl_s=cache_ttl_s)
        if sync:
            try:
                store.sync_config(settings.keys)
            except BaseException:
                store.close()
                raise
        return store

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # ------------------------------------------------------------ the request path

    def required(self) -> bool:
        """Whether callers must present a key: true once any key exists, revoked ones included.

        Revoked keys count so that revoking the last key locks the proxy rather
        than opening it to everyone. Cached for ``cache_ttl_s``.
        """
        cached = self._required
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        import sqlalchemy as sa

        from thrifty.ledger.models import keys_table

        with self._connect() as conn:
            found = conn.execute(sa.select(keys_table.c.id).limit(1)).first() is not None
        self._required = (now + self.cache_ttl_s, found)
        return found

    def authenticate(self, secret: str | None) -> VirtualKey | None:
        """The active key whose secret this is, or None (unknown, revoked, or empty).

        The secret is hashed first and only its SHA-256 is looked up, so the
        time a lookup takes says nothing about the secret; results (also
        "unknown") are cached for ``cache_ttl_s``.
        """
        if not secret:
            return None
        digest = hash_secret(secret)
        now = time.monotonic()
        hit = self._auth.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        key = self._load_by_hash(digest)
        if key is not None and (not key.active or not hmac.compare_digest(key.key_sha256, digest)):
            key = None
        if len(self._auth) >= self._auth_max:
            self._auth.clear()  # bounded: unknown secrets come from callers
        self._auth[digest] = (now + self.cache_ttl_s, key)
        return key

    async def aauthenticate(self, secret: str | None) -> VirtualKey | None:
        """:meth:`authenticate` for an event loop: a cache miss queries the database in a thread."""
        if not secret:
            return None
        hit = self._auth.get(hash_secret(secret))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return await asyncio.to_thread(self.authenticate, secret)

    async def arequired(self) -> bool:
        cached = self._required
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return await asyncio.to_thread(self.required)

    # ------------------------------------------------------------ management

    def create(
        self,
        name: str,
        *,
        budget_usd: float | Decimal | str | None = None,
        budget_period: str = "month",
        rpm: int | None = None,
        models: str | Sequence[str] | None = None,
    ) -> tuple[VirtualKey, str]:
        """Make a key; returns it and its secret (``tk-...``), which is stored only as a hash.

        Raises :class:`~thrifty.errors.InvalidRequestError` for a name in use
        (revoked keys keep theirs) or a bad budget, period, rpm or allow-list.
        """
        import sqlalchemy as sa

        from thrifty.ledger.models import keys_table

        budget = _validate(name, budget_usd, budget_period, rpm)
        patterns = parse_models(models)
        secret = new_secret()
        row = {
            "name": name,
            "key_sha256": hash_secret(secret),
            "prefix": secret[:_PREFIX_CHARS],
            "source": "cli",
            "created_at": datetime.now(UTC),
            "revoked_at": None,
            "budget_usd": budget,
            "budget_period": budget_period,
            "rpm": rpm,
            "models": ",".join(patterns),
        }
        try:
            with self.engine.begin() as conn:
                if conn.execute(sa.select(keys_table.c.id).where(keys_table.c.name == name)).first():
                    raise self._name_taken(conn, name)
                new_id = conn.execute(sa.insert(keys_table).values(**row).returning(keys_table.c.id)).scalar_one()
        except sa.exc.IntegrityError:
            # another process made a key of that name at the same moment
            with self.engine.connect() as conn:
                raise self._name_taken(conn, name) from None
        self._forget()
        return _key({"id": new_id, **row}), secret

    def list(self) -> builtins.list[VirtualKey]:
        """Every key, revoked ones included, by name."""
        import sqlalchemy as sa

        from thrifty.ledger.models import keys_table

        with self._connect() as conn:
            rows = conn.execute(sa.select(keys_table).order_by(keys_table.c.name)).mappings().all()
        return [_key(r) for r in rows]

    def get(self, name: str) -> VirtualKey | None:
        import sqlalchemy as sa

        from thrifty.ledger.models import keys_table

        with self._connect() as conn:
            row = conn.execute(sa.select(keys_table).where(keys_table.c.name == name)).mappings().first()
        return _key(row) if row is not None else None

    def revoke(self, name: str) -> VirtualKey:
        """Revoke the key ``name`` (effective everywhere within ``cache_ttl_s``); returns it.

        Revoking a revoked key changes nothing. A key from the config file stays
        revoked until its secret there changes. Raises
        :class:`~thrifty.errors.InvalidRequestError` for an unknown name.
        """
        import sqlalchemy as sa

        from thrifty.ledger.models import keys_table

        with self.engine.begin() as conn:
            conn.execute(
                sa.update(keys_table)
                .where(keys_table.c.name == name, keys_table.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            row = conn.execute(sa.select(keys_table).where(keys_table.c.name == name)).mappings().first()
        if row is None:
            known = ", ".join(k.name for k in self.list()) or "none yet"
            raise InvalidRequestError(f"no key named {name!r}; keys: {known}", param="name")
        self._forget()
        return _key(row)

    def sync_config(self, keys: Sequence[KeyConfig]) -> None:
        """Make the table's config-file keys those of ``keys`` (the ``[[keys]]`` of the config file).

        New names are inserted, known ones updated (a changed secret replaces
        the old one and un-revokes the key), and config keys no longer in the
        file are revoked. A name that belongs to a key made with ``thrifty keys
        create`` is a :class:`~thrifty.errors.ConfigurationError`. Safe to run
        from several processes at once.
        """
        import sqlalchemy as sa

        wanted = [_config_row(k) for k in keys]
        names = [w["name"] for w in wanted]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigurationError(f"keys: the name {dupes[0]!r} is used by more than one [[keys]] entry")
        hashes = [w["key_sha256"] for w in wanted]
        if len(set(hashes)) != len(hashes):
            raise ConfigurationError("keys: two [[keys]] entries have the same secret; give each key its own")
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    self._sync(conn, wanted)
                break
            except sa.exc.IntegrityError as exc:
                if attempt == 2:
                    raise ConfigurationError(
                        "keys: a [[keys]] secret is already used by another key; give each key its own secret"
                    ) from exc
        self._forget()

    # ------------------------------------------------------------ internals

    def _sync(self, conn: sa.Connection, wanted: builtins.list[dict[str, Any]]) -> None:
        import sqlalchemy as sa

        from thrifty.ledger.models import keys_table as t

        now = datetime.now(UTC)
        existing = {r["name"]: r for r in conn.execute(sa.select(t)).mappings()}
        for want in wanted:
            have = existing.get(want["name"])
            if have is None:
                conn.execute(sa.insert(t).values(**want, source="config", created_at=now, revoked_at=None))
                continue
            if have["source"] != "config":
                raise ConfigurationError(
                    f"keys: {want['name']!r} in the config file is the name of a key made with "
                    "`thrifty keys create`; rename one of them"
                )
            changes = {
                k: v for k, v in want.items() if k not in ("key_sha256", "prefix") and _differs(have[k], v)
            }
            if have["key_sha256"] != want["key_sha256"]:
                changes.update(key_sha256=want["key_sha256"], prefix=want["prefix"], revoked_at=None)
            if changes:
                conn.execute(sa.update(t).where(t.c.id == have["id"]).values(**changes))
        gone = [
            r["id"]
            for name, r in existing.items()
            if r["source"] == "config" and r["revoked_at"] is None and name not in {w["name"] for w in wanted}
        ]
        if gone:
            conn.execute(sa.update(t).where(t.c.id.in_(gone)).values(revoked_at=now))

    def _load_by_hash(self, digest: str) -> VirtualKey | None:
        import sqlalchemy as sa

        from thrifty.ledger.models import keys_table

        with self._connect() as conn:
            row = conn.execute(
                sa.select(keys_table).where(keys_table.c.key_sha256 == digest)
            ).mappings().first()
        return _key(row) if row is not None else None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        """A connection for reads; database failures become :class:`~thrifty.errors.LedgerError`."""
        from sqlalchemy.exc import DBAPIError

        from thrifty.ledger.db import redacted

        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            raise LedgerError(f"cannot read keys from the database {redacted(self.engine.url)}: {reason}") from exc

    def _name_taken(self, conn: sa.Connection, name: str) -> InvalidRequestError:
        import sqlalchemy as sa

        from thrifty.ledger.models import keys_table

        row = conn.execute(sa.select(keys_table).where(keys_table.c.name == name)).mappings().first()
        state = ""
        if row is not None and row["revoked_at"] is not None:
            state = f" (revoked {row['revoked_at']:%Y-%m-%d}; names are not reused)"
        return InvalidRequestError(f"a key named {name!r} already exists{state}; choose another name", param="name")

    def _forget(self) -> None:
        self._auth.clear()
        self._required = None


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        return (None if a is None else Decimal(a)) != (None if b is None else Decimal(b))
    return bool(a != b)


def _config_row(config: KeyConfig) -> dict[str, Any]:
    where = f"keys: {config.name!r}"
    if (config.key is None) == (config.key_sha256 is None):
        raise ConfigurationError(f"{where}: give exactly one of key (the secret) or key_sha256")
    if config.key is not None:
        secret = config.key.get_secret_value()
        if len(secret) < 16:
            raise ConfigurationError(f"{where}: a key must be at least 16 characters long")
        digest, prefix = hash_secret(secret), secret[:_PREFIX_CHARS]
    else:
        digest, prefix = (config.key_sha256 or "").strip().lower(), None
        if not _SHA256_RE.match(digest):
            raise ConfigurationError(f"{where}: key_sha256 must be 64 hex digits (sha256sum of the key)")
    try:
        budget = _validate(config.name, config.budget_usd, config.budget_period, config.rpm)
        patterns = parse_models(config.models)
    except InvalidRequestError as exc:
        raise ConfigurationError(f"{where}: {exc.message}") from None
    return {
        "name": config.name,
        "key_sha256": digest,
        "prefix": prefix,
        "budget_usd": budget,
        "budget_period": config.budget_period,
        "rpm": config.rpm,
        "models": ",".join(patterns),
    }


def _plain(amount: Decimal) -> Decimal:
    """``Decimal("20.000000000000")`` as ``Decimal("20")``, never ``2E+1``."""
    return Decimal(format(amount.quantize(_CENT_SCALE).normalize(), "f"))


def new_secret() -> str:
    """``tk-`` and 43 random letters and digits (256 bits)."""
    return SECRET_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(43))


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _key(row: Any) -> VirtualKey:
    budget = row["budget_usd"]
    return VirtualKey(
        id=int(row["id"]),
        name=row["name"],
        key_sha256=row["key_sha256"],
        prefix=row["prefix"],
        budget_usd=None if budget is None else _plain(Decimal(budget)),
        budget_period=row["budget_period"],
        rpm=row["rpm"],
        models=tuple(p for p in row["models"].split(",") if p),
        source=row["source"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


# ---------------------------------------------------------------- the stage


class LimitsStage(Stage):
    """Model allow-lists, rate limits and budgets of virtual keys; see the module docstring.

    ``budgets`` is the spend backend (:class:`~thrifty.middleware._budgets.SqlBudgets`
    or :class:`~thrifty.middleware._budgets.RedisBudgets`); :meth:`from_settings`
    picks it from the settings. Call :meth:`close` when done (it settles what is pending).
    """

    kind = "limits"

    def __init__(self, budgets: Budgets, *, default_output_tokens: int = DEFAULT_OUTPUT_TOKENS) -> None:
        from thrifty.middleware._budgets import CostModel

        if default_output_tokens < 1:
            raise ValueError("default_output_tokens must be at least 1")
        self.budgets = budgets
        self.default_output_tokens = default_output_tokens
        self._costs = CostModel()
        self._owned: builtins.list[Any] = []

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        keys: KeyStore | None = None,
        redis_namespace: str = "thrifty",
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    ) -> LimitsStage:
        """The stage for ``settings``: Redis budgets when ``redis_url`` is set, else SQL on the ledger database.

        ``keys``: a store whose database engine to share (else one is opened on ``settings.ledger_url``).
        """
        from thrifty.middleware._budgets import RedisBudgets, SqlBudgets

        store = keys if keys is not None else KeyStore.open(settings.ledger_url)
        budgets: Budgets
        if settings.redis_url:
            budgets = RedisBudgets(settings.redis_url, ledger=store.engine, namespace=redis_namespace)
        else:
            budgets = SqlBudgets(store.engine)
        stage = cls(budgets, default_output_tokens=default_output_tokens)
        if keys is None:
            stage._owned.append(store)
        return stage

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every finished attempt is reconciled; False if ``timeout`` passed first."""
        return self.budgets.flush(timeout)

    def close(self) -> None:
        self.budgets.close()
        for owned in self._owned:
            owned.close()

    # ------------------------------------------------------------ the two faces

    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream:
        key = ctx.virtual_key
        if key is None:
            return self.next.handle(request, ctx)
        amount = self._admit(request, ctx, key)
        hold = self.budgets.reserve(key, amount)
        try:
            result = self.next.handle(request, ctx)
        except BaseException:
            self._settle(hold, ctx, ctx.result, None)
            raise
        return self._after(hold, ctx, result, request)

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        key = ctx.virtual_key
        if key is None:
            return await self.next.ahandle(request, ctx)
        amount = self._admit(request, ctx, key)
        hold = await self.budgets.areserve(key, amount)
        try:
            result = await self.next.ahandle(request, ctx)
        except BaseException:
            self._settle(hold, ctx, ctx.result, None)
            raise
        return self._after(hold, ctx, result, request)

    # ------------------------------------------------------------ before the call

    def _admit(self, request: Request, ctx: CallContext, key: VirtualKey) -> Decimal:
        """Check the allow-list; return the USD to reserve (0 for a key without a budget)."""
        target = ctx.target
        if target is None:
            raise RuntimeError("the limits stage runs after routing: the call has no target")
        ctx.key_id = key.key_id
        model = f"{target.provider.name}/{target.model}"
        if not key.allows(model):
            raise PermissionDeniedError(
                f"key {key.name!r} may not use model {model!r}; its allowed models are: {', '.join(key.models)}",
                param="model",
            )
        if key.budget_usd is None:
            return Decimal(0)
        cost = self.worst_case_usd(request, target)
        if cost is None:
            raise PermissionDeniedError(
                f"model {model!r} has no known price, so key {key.name!r}, which has a budget, cannot use it "
                "(its spend could not be bounded); use a priced model, set the provider's pricing_id, "
                "or use a key without a budget",
                param="model",
            )
        return cost

    def worst_case_usd(self, request: Request, target: Target) -> Decimal | None:
        """What this stage reserves for ``request`` on ``target``: its worst-case cost, or None if unpriced."""
        provider = target.provider
        if provider.is_local:
            return Decimal(0)
        prompt = provider.prompt_tokens(request, target.model)
        output = request.max_tokens if request.max_tokens is not None else self.default_output_tokens
        output = max(0, output) * max(1, request.n)
        cost = self._costs.worst_case(prompt, output, target.model, provider.pricing_id)
        return None if cost is None else cost.quantize(_CENT_SCALE, rounding=ROUND_CEILING)

    # ------------------------------------------------------------ after the call

    def _after(self, hold: Hold, ctx: CallContext, result: Any, request: Request) -> Any:
        record = ctx.result
        if isinstance(result, (EventStream, AsyncEventStream)):
            if _is_record(record):
                # the ledger observer's stream: its on_close callback finalizes the record first
                result.on_close(lambda: self._settle(hold, ctx, record, None))
                return result
            account = _Account(hold, ctx, self, request)
            if isinstance(result, EventStream):
                wrapped: Any = EventStream(Tap(result, account))
            else:
                wrapped = AsyncEventStream(AsyncTap(result, account))
            wrapped.on_close(account.close)
            return wrapped
        self._settle(hold, ctx, record, result if isinstance(result, Response) else None)
        return result

    def _settle(self, hold: Hold, ctx: CallContext, record: Any, response: Response | None) -> None:
        """Hand the attempt's actual usage to the backend's reconciler (never raises)."""
        if hold.settled:
            return
        try:
            from thrifty.middleware._budgets import Actual

            target = ctx.target
            if _is_record(record) and record.call_id == ctx.call_id:
                actual = Actual(
                    usage=record.usage,
                    model=record.model_used or record.model_requested or "",
                    pricing_id=record.pricing_id,
                    is_local=record.is_local,
                    at=record.started_at,
                    cost=record.cost_usd if record.price_source is not None else None,
                )
            elif response is not None and target is not None:
                actual = Actual(
                    usage=response.usage,
                    model=response.model or target.model,
                    pricing_id=target.provider.pricing_id,
                    is_local=target.provider.is_local,
                    at=datetime.fromtimestamp(ctx.started_at, UTC),
                )
            else:
                actual = None
            self.budgets.settle(hold, actual)
        except Exception:
            log.exception("limits: could not reconcile call %s; its reservation stays held", ctx.call_id)


_record_type: type | None = None


def _is_record(value: Any) -> bool:
    """Whether ``value`` is the ledger observer's record of an attempt (imported on first use)."""
    global _record_type
    if _record_type is None:
        from thrifty.ledger.record import LedgerRecord

        _record_type = LedgerRecord
    return isinstance(value, _record_type)


class _Account:
    """Usage of a stream that no ledger observer watches (the ledger is off): last usage event, or an estimate."""

    __slots__ = ("ctx", "error", "exhausted", "hold", "request", "stage", "texts", "usage")

    def __init__(self, hold: Hold, ctx: CallContext, stage: LimitsStage, request: Request) -> None:
        self.hold, self.ctx, self.stage, self.request = hold, ctx, stage, request
        self.usage: Usage | None = None
        self.texts: builtins.list[str] = []
        self.exhausted = False
        self.error: BaseException | None = None

    def see(self, event: StreamEvent) -> None:
        if isinstance(event, UsageEvent):
            self.usage = event.usage
        elif isinstance(event, TextDelta):
            self.texts.append(event.text)

    def close(self) -> None:
        target = self.ctx.target
        if target is None:
            self.stage._settle(self.hold, self.ctx, None, None)
            return
        usage = self.usage
        if usage is None or not self.exhausted:
            usage = self._estimate(usage, target)
        response = Response(id="", model=target.model, choices=[], usage=usage)
        self.stage._settle(self.hold, self.ctx, None, response)

    def _estimate(self, usage: Usage | None, target: Target) -> Usage:
        try:
            from thrifty.ledger.tokens import count_prompt, count_text

            output = count_text("".join(self.texts), target.model) if self.texts else 0
            if usage is not None:
                return Usage(
                    usage.input_tokens,
                    max(usage.output_tokens, output),
                    usage.cache_read_tokens,
                    usage.cache_write_tokens,
                    usage.reasoning_tokens,
                    "estimate",
                )
            prompt = count_prompt(self.request, target.model, target.provider.kind).n
            return Usage(input_tokens=prompt, output_tokens=output, source="estimate")
        except Exception:
            log.debug("limits: could not estimate stream usage", exc_info=True)
            return usage or Usage(source="estimate")


