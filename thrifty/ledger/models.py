"""The ledger's tables, as SQLAlchemy 2 typed declarative models.

``llm_calls`` has one row per upstream attempt (retries, reasks and fallbacks
each get their own row, linked by ``parent_call_id``). Everything a report
groups or sums by is a typed column, so reports are plain SQL on SQLite and
PostgreSQL alike:

* ``llm_call_savings``: what each technique saved on a call, one row per
  (call, technique), so a new technique needs no migration;
* ``llm_call_tags``: one row per (call, tag);
* ``llm_call_payloads``: prompts and responses, written only when the operator
  opts in (``ledger.store_prompts``), each row with its own ``expires_at``.

Rollups, derived from those tables and kept current by the recorder in the
same transaction as each batch (see :mod:`thrifty.ledger.rollup`), let the
dashboard answer over months of calls without reading every row:

* ``llm_calls_rollup``: sums per (grain, span, period start, dimensions);
* ``llm_call_savings_rollup``: savings sums per (span, period start, technique, model, provider);
* ``llm_calls_latency_daily``: log-spaced latency histograms per (day, model, provider, metric);
* ``ledger_rollup_state``: the highest ``llm_calls.id`` the rollups include.

Beside the ledger proper, the proxy's virtual keys live in the same database
(see :mod:`thrifty.middleware.limits`):

* ``virtual_keys``: one row per key, holding the SHA-256 of the secret (never
  the secret), its budget, budget period, requests-per-minute limit and model
  allow-list; revoked keys keep their row (``revoked_at``) and their name;
* ``key_spend``: one row per (key, budget period start), with the USD spent
  (reconciled to actual costs) and reserved (worst cases of calls in flight).

Token columns partition usage as :class:`thrifty.types.Usage` does:
``input_tokens`` are the *uncached* prompt tokens; the whole prompt is
``input_tokens + cache_read_tokens + cache_write_tokens``; ``reasoning_tokens``
are part of ``output_tokens``. ``cost_usd`` is ``NULL`` exactly when the call
could not be priced (``price_source = 'unpriced'``), never a silent 0.

Times are timezone-aware UTC datetimes in Python; PostgreSQL stores them as
``timestamptz``, SQLite as UTC text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "STRING_LIMITS",
    "Base",
    "KeySpend",
    "LatencyDaily",
    "LlmCall",
    "LlmCallPayload",
    "LlmCallRollup",
    "LlmCallSaving",
    "LlmCallSavingRollup",
    "LlmCallTag",
    "Money",
    "RollupState",
    "UTCDateTime",
    "VirtualKeyRow",
    "calls_table",
    "key_spend_table",
    "latency_table",
    "keys_table",
    "payloads_table",
    "rollup_state_table",
    "rollup_table",
    "savings_rollup_table",
    "savings_table",
    "tags_table",
]

#: USD amounts: 8 integer digits, 12 decimals (per-token prices go down to 1e-9 USD)
MONEY_PRECISION = 20
MONEY_SCALE = 12

#: column lengths; the recorder truncates longer values instead of failing the row
STRING_LIMITS: dict[str, int] = {
    "call_id": 64,
    "entry": 16,
    "wire": 16,
    "provider": 100,
    "model": 200,
    "route_decision": 500,
    "key_id": 128,
    "user": 256,
    "project": 256,
    "usage_source": 16,
    "price_source": 32,
    "price_version": 64,
    "status": 32,
    "error_type": 200,
    "response_id": 256,
    "technique": 64,
    "tag": 200,
    "key_name": 100,
    "key_prefix": 16,
    "key_models": 2000,
}

# deterministic constraint names, so that migrations can refer to them on every backend
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    Naive datetimes are refused (a naive time in a ledger is a bug waiting for
    a time zone change); values come back as aware UTC datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(DateTime())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"ledger times must be timezone-aware, got naive {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


Money = Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True)
#: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite, so it autoincrements on both
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _s(name: str) -> String:
    return String(STRING_LIMITS[name])


class LlmCall(Base):
    """One upstream attempt of one LLM call."""

    __tablename__ = "llm_calls"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(_s("call_id"), unique=True)
    parent_call_id: Mapped[str | None] = mapped_column(_s("call_id"))
    attempt: Mapped[int] = mapped_column(Integer, default=1)

    # timing
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    overhead_ms: Mapped[float | None] = mapped_column(Float)

    # where it came from and where it went
    entry: Mapped[str] = mapped_column(_s("entry"))
    wire: Mapped[str] = mapped_column(_s("wire"))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    provider: Mapped[str | None] = mapped_column(_s("provider"))
    model_requested: Mapped[str | None] = mapped_column(_s("model"))
    model_used: Mapped[str | None] = mapped_column(_s("model"))
    route_decision: Mapped[str | None] = mapped_column(_s("route_decision"))
    response_id: Mapped[str | None] = mapped_column(_s("response_id"))

    # who it is billed to
    key_id: Mapped[str | None] = mapped_column(_s("key_id"))  # a hash of the key, never the key
    user: Mapped[str | None] = mapped_column(_s("user"))  # the end user; quote it in raw PostgreSQL SQL
    project: Mapped[str | None] = mapped_column(_s("project"))

    # usage, partitioned (see the module docstring)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    usage_source: Mapped[str] = mapped_column(_s("usage_source"), default="provider")

    # cost: NULL exactly when unpriced
    cost_usd: Mapped[Decimal | None] = mapped_column(Money)
    price_source: Mapped[str] = mapped_column(_s("price_source"))
    price_version: Mapped[str | None] = mapped_column(_s("price_version"))

    # counterfactual totals over llm_call_savings
    tokens_before_transforms: Mapped[int | None] = mapped_column(BigInteger)
    tokens_saved: Mapped[int | None] = mapped_column(BigInteger)
    usd_saved: Mapped[Decimal | None] = mapped_column(Money)

    # outcome
    status: Mapped[str] = mapped_column(_s("status"))
    error_type: Mapped[str | None] = mapped_column(_s("error_type"))
    http_status: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        # time ranges, and each group-by dimension within a time range
        Index("ix_llm_calls_started_at", "started_at"),
        Index("ix_llm_calls_model_used_started_at", "model_used", "started_at"),
        Index("ix_llm_calls_provider_started_at", "provider", "started_at"),
        Index("ix_llm_calls_project_started_at", "project", "started_at"),
        Index("ix_llm_calls_key_id_started_at", "key_id", "started_at"),
        Index("ix_llm_calls_user_started_at", "user", "started_at"),
        Index("ix_llm_calls_parent_call_id", "parent_call_id"),
        # the dashboard's most expensive and slowest calls: read in index order, newest id first on ties
        Index("ix_llm_calls_cost_usd_id", "cost_usd", "id"),
        Index("ix_llm_calls_duration_ms_id", "duration_ms", "id"),
    )


class LlmCallSaving(Base):
    """What one technique saved on one call, against not applying it."""

    __tablename__ = "llm_call_savings"

    call_id: Mapped[str] = mapped_column(
        _s("call_id"), ForeignKey("llm_calls.call_id", ondelete="CASCADE"), primary_key=True
    )
    technique: Mapped[str] = mapped_column(_s("technique"), primary_key=True)
    tokens_before: Mapped[int] = mapped_column(BigInteger)
    tokens_after: Mapped[int] = mapped_column(BigInteger)
    tokens_saved: Mapped[int] = mapped_column(BigInteger)
    usd_saved: Mapped[Decimal | None] = mapped_column(Money)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_llm_call_savings_technique", "technique"),)


class LlmCallTag(Base):
    __tablename__ = "llm_call_tags"

    call_id: Mapped[str] = mapped_column(
        _s("call_id"), ForeignKey("llm_calls.call_id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(_s("tag"), primary_key=True)

    __table_args__ = (Index("ix_llm_call_tags_tag", "tag"),)


class LlmCallPayload(Base):
    """A call's prompt and response; only with ``ledger.store_prompts``, until ``expires_at``."""

    __tablename__ = "llm_call_payloads"

    call_id: Mapped[str] = mapped_column(
        _s("call_id"), ForeignKey("llm_calls.call_id", ondelete="CASCADE"), primary_key=True
    )
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    request: Mapped[Any | None] = mapped_column(JSON)
    response: Mapped[Any | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_llm_call_payloads_expires_at", "expires_at"),)


class VirtualKeyRow(Base):
    """A virtual key of the proxy; ``key_sha256`` is the hex SHA-256 of the secret."""

    __tablename__ = "virtual_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(_s("key_name"), unique=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str | None] = mapped_column(_s("key_prefix"))  # the secret's first characters, for display
    source: Mapped[str] = mapped_column(String(16))  # "cli" (thrifty keys create) | "config" (settings.keys)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    budget_usd: Mapped[Decimal | None] = mapped_column(Money)
    budget_period: Mapped[str] = mapped_column(String(8))  # day | week | month | total
    rpm: Mapped[int | None] = mapped_column(Integer)
    models: Mapped[str] = mapped_column(_s("key_models"))  # allow-list patterns, comma-separated


class KeySpend(Base):
    """What one key spent and has reserved in one budget period (``period_start``, UTC)."""

    __tablename__ = "key_spend"

    key_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("virtual_keys.id", ondelete="CASCADE"), primary_key=True
    )
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    spent_usd: Mapped[Decimal] = mapped_column(Money)
    reserved_usd: Mapped[Decimal] = mapped_column(Money)
    calls: Mapped[int] = mapped_column(BigInteger)


class LlmCallRollup(Base):
    """Sums over the calls of one period (``span``: hour, day or week) and one combination of dimensions.

    ``grain`` names the dimensions the row keeps (see :data:`thrifty.ledger.rollup.GRAINS`); the
    others hold ``''``, as does a kept dimension whose value is NULL. USD sums are integers in
    units of 1e-12 USD (``*_pusd``), so that sums of sums are exact on every backend.
    """

    __tablename__ = "llm_calls_rollup"

    grain: Mapped[str] = mapped_column(String(16), primary_key=True)
    span: Mapped[str] = mapped_column(String(8), primary_key=True)
    start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    model: Mapped[str] = mapped_column(_s("model"), primary_key=True)
    provider: Mapped[str] = mapped_column(_s("provider"), primary_key=True)
    status: Mapped[str] = mapped_column(_s("status"), primary_key=True)
    error_type: Mapped[str] = mapped_column(_s("error_type"), primary_key=True)
    entry: Mapped[str] = mapped_column(_s("entry"), primary_key=True)
    key_id: Mapped[str] = mapped_column(_s("key_id"), primary_key=True)
    user: Mapped[str] = mapped_column(_s("user"), primary_key=True)
    project: Mapped[str] = mapped_column(_s("project"), primary_key=True)
    tag: Mapped[str] = mapped_column(_s("tag"), primary_key=True)

    calls: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    retries: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_pusd: Mapped[int] = mapped_column(BigInteger)
    unpriced_calls: Mapped[int] = mapped_column(BigInteger)
    estimated_calls: Mapped[int] = mapped_column(BigInteger)
    tokens_saved: Mapped[int] = mapped_column(BigInteger)
    saved_pusd: Mapped[int] = mapped_column(BigInteger)


class LlmCallSavingRollup(Base):
    """Sums of ``llm_call_savings`` over one period, per technique, model and provider."""

    __tablename__ = "llm_call_savings_rollup"

    span: Mapped[str] = mapped_column(String(8), primary_key=True)
    start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    technique: Mapped[str] = mapped_column(_s("technique"), primary_key=True)
    model: Mapped[str] = mapped_column(_s("model"), primary_key=True)
    provider: Mapped[str] = mapped_column(_s("provider"), primary_key=True)

    calls: Mapped[int] = mapped_column(BigInteger)
    tokens_before: Mapped[int] = mapped_column(BigInteger)
    tokens_after: Mapped[int] = mapped_column(BigInteger)
    tokens_saved: Mapped[int] = mapped_column(BigInteger)
    saved_pusd: Mapped[int] = mapped_column(BigInteger)
    priced_calls: Mapped[int] = mapped_column(BigInteger)  # calls whose usd_saved is known


class LatencyDaily(Base):
    """The histogram of one timed column (``metric``) over one day's calls of one model and provider.

    ``buckets`` is a JSON list ``[first, n0, n1, ...]``: ``n_i`` calls fell in log-spaced bucket
    ``first + i`` (see :mod:`thrifty.ledger.rollup`); ``calls`` is their sum.
    """

    __tablename__ = "llm_calls_latency_daily"

    day: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    model: Mapped[str] = mapped_column(_s("model"), primary_key=True)
    provider: Mapped[str] = mapped_column(_s("provider"), primary_key=True)
    metric: Mapped[str] = mapped_column(String(16), primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    buckets: Mapped[str] = mapped_column(Text)


class RollupState(Base):
    """The highest ``llm_calls.id`` included in the rollups (``name`` is ``llm_calls``)."""

    __tablename__ = "ledger_rollup_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)


#: the tables as typed ``Table`` objects, for Core queries
calls_table = Base.metadata.tables["llm_calls"]
savings_table = Base.metadata.tables["llm_call_savings"]
tags_table = Base.metadata.tables["llm_call_tags"]
payloads_table = Base.metadata.tables["llm_call_payloads"]
keys_table = Base.metadata.tables["virtual_keys"]
key_spend_table = Base.metadata.tables["key_spend"]
rollup_table = Base.metadata.tables["llm_calls_rollup"]
savings_rollup_table = Base.metadata.tables["llm_call_savings_rollup"]
latency_table = Base.metadata.tables["llm_calls_latency_daily"]
rollup_state_table = Base.metadata.tables["ledger_rollup_state"]
