"""Virtual keys, budgets, rate limits and allow-lists, through a real Engine and real upstream calls.

Backends are real: SQLite files, a PostgreSQL database and Redis (see
``limits_support.py``); the upstream is the canned loopback server under an
``openai``-kind provider, so ``openai/gpt-4o-mini`` is priced by genai-prices.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from tests.middleware.limits_support import LimitsEnv, check_budget_held, race, race_threads
from thrifty import Engine
from thrifty.errors import (
    ConfigurationError,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitError,
    UpstreamError,
)
from thrifty.ledger.pricing import price, worst_case_cost
from thrifty.ledger.tokens import count_prompt
from thrifty.middleware.context import CallContext
from thrifty.middleware.limits import LimitsStage, VirtualKey, hash_secret, period_bounds
from thrifty.middleware.providers.base import Provider
from thrifty.settings import KeyConfig
from thrifty.testing import CannedUpstream
from thrifty.types import (
    AsyncEventStream,
    EventStream,
    Message,
    Request,
    Response,
    StreamStart,
    TextDelta,
    TextPart,
    Usage,
    UsageEvent,
)

MODEL = "openai/gpt-4o-mini"
only_sqlite = pytest.mark.parametrize("limits_env", ["sqlite"], indirect=True)
sql_backends = pytest.mark.parametrize(
    "limits_env", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


def request(text: str = "Say hello to the budget test", *, model: str = MODEL, **kw: Any) -> Request:
    kw.setdefault("max_tokens", 5)
    return Request(model=model, messages=[Message(role="user", content=[TextPart(text)])], **kw)


def ctx(key: VirtualKey | None, **kw: Any) -> CallContext:
    return CallContext(entry="proxy", wire="openai", virtual_key=key, **kw)


class Setup:
    """A key store, an engine with a limits stage, and helpers, on one backend."""

    def __init__(self, env: LimitsEnv, upstream: CannedUpstream, **settings: Any) -> None:
        self.env = env
        self.settings = env.settings(upstream, **settings)
        self.keys = env.keys(self.settings)
        self.engine, self.stage = env.engine(self.settings, keys=self.keys)
        self.engines = [self.engine]  # more "processes" on the same backend: see _race_setup
        self.stages = [self.stage]

    def key(self, name: str = "team-a", **kw: Any) -> VirtualKey:
        return self.keys.create(name, **kw)[0]

    def reservation(self, req: Request) -> Decimal:
        target = self.engine.resolve(req.model)
        value = self.stage.worst_case_usd(req.replace(model=target.model), target)
        assert value is not None
        return value

    def status(self, key: VirtualKey) -> Any:
        return self.stage.budgets.status(key)

    def settled(self, key: VirtualKey) -> Any:
        for stage in self.stages:
            assert stage.flush(10)
        return self.status(key)

    def rows(self, key: VirtualKey | None = None) -> list[dict[str, Any]]:
        for engine in self.engines:
            assert engine.recorder.flush(timeout=10)
        query = "SELECT * FROM llm_calls"
        params = {}
        if key is not None:
            query += " WHERE key_id = :k"
            params["k"] = key.key_id
        with self.keys.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text(query + " ORDER BY id"), params).mappings()]

    def ledger_cost(self, key: VirtualKey) -> Decimal:
        return sum((Decimal(str(r["cost_usd"])) for r in self.rows(key) if r["cost_usd"]), Decimal(0))


@pytest.fixture
def setup(limits_env: LimitsEnv, upstream: CannedUpstream) -> Setup:
    return Setup(limits_env, upstream)


def close_to(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) < Decimal("1e-9")  # SQLite keeps money as floats


# ---------------------------------------------------------------- keys


@sql_backends
def test_create_authenticate_revoke(setup: Setup) -> None:
    key, secret = setup.keys.create("team-a", budget_usd=20, budget_period="week", rpm=60, models="openai/*, local/*")
    assert secret.startswith("tk-") and len(secret) == 46
    assert key.prefix == secret[:10] and key.key_sha256 == hash_secret(secret) and key.key_id == key.key_sha256[:16]
    assert (key.budget_usd, key.budget_period, key.rpm, key.models) == (Decimal(20), "week", 60, ("openai/*", "local/*"))
    assert setup.keys.authenticate(secret) == key
    assert setup.keys.authenticate("tk-nope") is None and setup.keys.authenticate("") is None
    assert setup.keys.required()
    # the secret is nowhere in the database
    with setup.keys.engine.connect() as conn:
        dump = repr(conn.execute(sa.text("SELECT * FROM virtual_keys")).all())
    assert secret not in dump and secret[10:] not in dump and key.key_sha256 in dump
    revoked = setup.keys.revoke("team-a")
    assert revoked.revoked_at is not None and not revoked.active
    assert setup.keys.authenticate(secret) is None  # this store forgets at once
    assert setup.keys.required()  # a revoked key still locks the proxy: revoking never opens it
    assert [k.name for k in setup.keys.list()] == ["team-a"]


@sql_backends
def test_key_errors(setup: Setup) -> None:
    assert not setup.keys.required()
    setup.keys.create("team-a")
    with pytest.raises(InvalidRequestError, match="a key named 'team-a' already exists"):
        setup.keys.create("team-a")
    setup.keys.revoke("team-a")
    with pytest.raises(InvalidRequestError, match=r"already exists \(revoked"):
        setup.keys.create("team-a")
    with pytest.raises(InvalidRequestError, match="no key named 'nobody'; keys: team-a"):
        setup.keys.revoke("nobody")
    for kwargs, message in [
        ({"budget_usd": 0}, "positive amount"),
        ({"budget_usd": "nan"}, "positive amount"),
        ({"budget_period": "year"}, "unknown budget period 'year'"),
        ({"rpm": 0}, "rpm must be at least 1"),
        ({"models": " , "}, "allow-list is empty"),
    ]:
        with pytest.raises(InvalidRequestError, match=message):
            setup.keys.create("other", **kwargs)
    with pytest.raises(InvalidRequestError, match="invalid key name"):
        setup.keys.create("has space")


@sql_backends
def test_revoke_takes_effect_in_other_processes_within_the_cache_time(setup: Setup) -> None:
    other = setup.env.keys(setup.settings, cache_ttl_s=0.3)  # another proxy process's store
    key, secret = setup.keys.create("team-a")
    assert other.authenticate(secret) == key
    setup.keys.revoke("team-a")
    assert other.authenticate(secret) == key  # cached
    time.sleep(0.35)
    assert other.authenticate(secret) is None


@only_sqlite
async def test_async_authenticate(setup: Setup) -> None:
    key, secret = setup.keys.create("team-a")
    assert await setup.keys.aauthenticate(secret) == key
    assert await setup.keys.aauthenticate("tk-wrong") is None
    assert await setup.keys.arequired()


@sql_backends
def test_config_keys_are_synced(setup: Setup) -> None:
    secret = "tk-config-secret-for-team-c"
    configs = [
        KeyConfig(name="team-c", key=SecretStr(secret), budget_usd=5, budget_period="day", rpm=10, models=["openai/*"]),
        KeyConfig(name="team-d", key_sha256=hash_secret("another-secret-of-team-d").upper()),
    ]
    setup.keys.sync_config(configs)
    setup.keys.sync_config(configs)  # idempotent
    c = setup.keys.authenticate(secret)
    assert c is not None and c.source == "config" and c.budget_usd == 5 and c.rpm == 10 and c.models == ("openai/*",)
    d = setup.keys.authenticate("another-secret-of-team-d")
    assert d is not None and d.prefix is None and d.models == ("*",)
    # a changed budget is applied; a revoked config key stays revoked while its secret is the same
    setup.keys.revoke("team-d")
    configs[0] = configs[0].model_copy(update={"budget_usd": 7.5})
    setup.keys.sync_config(configs)
    assert setup.keys.authenticate(secret).budget_usd == Decimal("7.5")  # type: ignore[union-attr]
    assert setup.keys.authenticate("another-secret-of-team-d") is None
    # a new secret replaces the old one (and un-revokes); a key gone from the file is revoked
    configs[1] = KeyConfig(name="team-d", key=SecretStr("the-new-secret-of-team-d"))
    setup.keys.sync_config(configs[1:])
    assert setup.keys.authenticate("the-new-secret-of-team-d") is not None
    assert setup.keys.authenticate(secret) is None
    assert not setup.keys.get("team-c").active  # type: ignore[union-attr]
    # keys made with the CLI are left alone, and their names are not taken over
    setup.keys.create("team-e")
    setup.keys.sync_config([])
    assert setup.keys.get("team-e").active  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="'team-e' in the config file is the name of a key made with"):
        setup.keys.sync_config([KeyConfig(name="team-e", key=SecretStr("x" * 20))])


@only_sqlite
def test_bad_config_keys(setup: Setup) -> None:
    cases = [
        ([KeyConfig(name="a")], "exactly one of key"),
        ([KeyConfig(name="a", key_sha256="abc")], "64 hex digits"),
        ([KeyConfig(name="a", key=SecretStr("short"))], "at least 16 characters"),
        ([KeyConfig(name="a", key=SecretStr("x" * 20)), KeyConfig(name="a", key=SecretStr("y" * 20))], "more than one"),
        ([KeyConfig(name="a", key=SecretStr("x" * 20)), KeyConfig(name="b", key=SecretStr("x" * 20))], "same secret"),
    ]
    for configs, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            setup.keys.sync_config(configs)


@only_sqlite
def test_from_settings_syncs_the_config_file(limits_env: LimitsEnv, upstream: CannedUpstream) -> None:
    settings = limits_env.settings(upstream, keys=[{"name": "ops", "key": "tk-ops-key-from-the-config", "rpm": 5}])
    store = limits_env.keys(settings)
    key = store.authenticate("tk-ops-key-from-the-config")
    assert key is not None and key.rpm == 5 and store.required()


def test_period_bounds() -> None:
    at = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)  # a Thursday
    assert period_bounds("day", at) == (datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert period_bounds("week", at) == (datetime(2026, 12, 28, tzinfo=UTC), datetime(2027, 1, 4, tzinfo=UTC))
    assert period_bounds("month", at) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert period_bounds("total", at) == (datetime(1970, 1, 1, tzinfo=UTC), None)
    with pytest.raises(ValueError, match="unknown budget period"):
        period_bounds("year", at)


# ---------------------------------------------------------------- the stage: checks


@only_sqlite
def test_calls_without_a_key_pass_through(setup: Setup) -> None:
    response = setup.engine.handle(request(), ctx(None))
    assert isinstance(response, Response)
    assert setup.rows()[0]["key_id"] is None


@only_sqlite
def test_model_allow_list(setup: Setup) -> None:
    key = setup.key(models="openai/gpt-4o*,local/*")
    assert isinstance(setup.engine.handle(request(), ctx(key)), Response)
    with pytest.raises(PermissionDeniedError) as info:
        setup.engine.handle(request(model="anthropic/claude-3-5-haiku-latest"), ctx(key))
    assert info.value.status_code == 403 and info.value.param == "model"
    assert "may not use model 'anthropic/claude-3-5-haiku-latest'" in info.value.message
    assert "openai/gpt-4o*, local/*" in info.value.message
    rows = setup.rows(key)
    assert [(r["status"], r["http_status"], r["error_type"]) for r in rows] == [
        ("ok", None, None),
        ("error", 403, "PermissionDeniedError"),
    ]


@pytest.mark.parametrize("limits_env", ["sqlite", pytest.param("redis", marks=[pytest.mark.postgres, pytest.mark.redis])],
                         indirect=True)
def test_requests_per_minute(setup: Setup) -> None:
    key = setup.key(rpm=3)
    for _ in range(3):
        setup.engine.handle(request(), ctx(key))
    with pytest.raises(RateLimitError) as info:
        setup.engine.handle(request(), ctx(key))
    exc = info.value
    assert exc.status_code == 429 and "over its rate limit of 3 requests per minute" in exc.message
    assert exc.retry_after is not None and 50 < exc.retry_after <= 60 and exc.headers["retry-after"] in {"59", "60"}
    assert [r["http_status"] for r in setup.rows(key)] == [None, None, None, 429]
    other = setup.key("team-b", rpm=3)
    setup.engine.handle(request(), ctx(other))  # each key has its own window


def test_rate_window_slides() -> None:
    from thrifty.middleware._budgets import LocalRates

    key = VirtualKey(1, "k", "0" * 64, None, None, "month", 2, ("*",), "cli", datetime.now(UTC))
    rates = LocalRates(window_s=0.2)
    rates.acquire(key)
    time.sleep(0.1)
    token = rates.acquire(key)
    with pytest.raises(RateLimitError) as info:
        rates.acquire(key)
    assert 0.05 < info.value.retry_after <= 0.1  # type: ignore[operator]
    rates.give_back(key, token)
    rates.acquire(key)  # a given-back slot is free again
    time.sleep(0.11)
    rates.acquire(key)  # the first attempt left the window


@pytest.mark.parametrize(
    "limits_env", ["sqlite", pytest.param("redis", marks=[pytest.mark.postgres, pytest.mark.redis])], indirect=True
)
def test_over_budget_is_a_429_naming_key_budget_period_and_spend(setup: Setup) -> None:
    req = request()
    budget = setup.reservation(req) * 3
    key = setup.key(budget_usd=budget, budget_period="day")
    for _ in range(3):
        setup.engine.handle(req, ctx(key))
    spent = setup.settled(key).spent_usd
    n_more = int((budget - spent) / setup.reservation(req))
    for _ in range(n_more):
        setup.engine.handle(req, ctx(key))
    with pytest.raises(RateLimitError) as info:
        setup.engine.handle(req.replace(max_tokens=1000), ctx(key))
    message = info.value.message
    assert "key 'team-a' is over its budget of $" in message and "per day (since" in message
    assert " spent" in message and "this call may cost up to $" in message and "resets at" in message
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 86400
    assert setup.rows(key)[-1]["http_status"] == 429
    assert setup.settled(key).spent_usd <= budget


@only_sqlite
def test_unpriced_models_need_a_key_without_a_budget(setup: Setup) -> None:
    free = setup.key("free")
    capped = setup.key("capped", budget_usd=1)
    unpriced = request(model="canned/some-unpriced-model")
    assert isinstance(setup.engine.handle(unpriced, ctx(free)), Response)
    with pytest.raises(PermissionDeniedError, match="has no known price, so key 'capped', which has a budget"):
        setup.engine.handle(unpriced, ctx(capped))
    assert setup.settled(free).spent_usd == 0 and setup.settled(free).calls == 1
    assert setup.rows(free)[0]["price_source"] == "unpriced"


# ---------------------------------------------------------------- reservation and reconciliation


@pytest.mark.parametrize("stream", [False, True])
def test_reserve_then_reconcile_to_the_actual_cost(setup: Setup, stream: bool) -> None:
    key = setup.key(budget_usd=1)
    req = request(stream=stream, stream_usage=stream)
    for _ in range(3):
        result = setup.engine.handle(req, ctx(key))
        if stream:
            assert isinstance(result, EventStream)
            assert close_to(setup.settled(key).reserved_usd, setup.reservation(req))  # held while it is open
            events = list(result)
            assert isinstance(events[-1], UsageEvent)
    status = setup.settled(key)
    assert status.calls == 3 and close_to(status.reserved_usd, Decimal(0))
    rows = setup.rows(key)
    assert [r["status"] for r in rows] == ["ok"] * 3
    one = price(Usage(input_tokens=rows[0]["input_tokens"], output_tokens=rows[0]["output_tokens"]), "gpt-4o-mini",
                pricing_id="openai", is_local=False).cost_usd
    assert one is not None and one < setup.reservation(req)
    assert close_to(status.spent_usd, 3 * one) and close_to(status.spent_usd, setup.ledger_cost(key))


async def test_async_reserve_then_reconcile(setup: Setup) -> None:
    key = setup.key(budget_usd=1)
    response = await setup.engine.ahandle(request(), ctx(key))
    assert isinstance(response, Response)
    stream = await setup.engine.ahandle(request(stream=True, stream_usage=True), ctx(key))
    assert isinstance(stream, AsyncEventStream)
    assert setup.status(key).reserved_usd > 0
    events = [e async for e in stream]
    assert isinstance(events[-1], UsageEvent)
    status = setup.settled(key)
    assert status.calls == 2 and close_to(status.reserved_usd, Decimal(0)) and status.spent_usd > 0
    assert close_to(status.spent_usd, setup.ledger_cost(key))


@only_sqlite
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_early_closed_stream_is_charged_what_it_used(setup: Setup, mode: str) -> None:
    key = setup.key(budget_usd=1)
    req = request(stream=True, stream_usage=True)
    if mode == "sync":
        stream = setup.engine.handle(req, ctx(key))
        assert isinstance(stream, EventStream)
        it = iter(stream)
        next(it), next(it), next(it)
        stream.close()
    else:
        astream = await setup.engine.ahandle(req, ctx(key))
        assert isinstance(astream, AsyncEventStream)
        ait = astream.__aiter__()
        await ait.__anext__(), await ait.__anext__(), await ait.__anext__()
        await astream.aclose()
    status = setup.settled(key)
    [row] = setup.rows(key)
    assert row["status"] == "client_disconnected" and row["usage_source"] == "estimate"
    assert status.calls == 1 and close_to(status.reserved_usd, Decimal(0))
    assert status.spent_usd > 0 and close_to(status.spent_usd, Decimal(str(row["cost_usd"])))


@only_sqlite
def test_an_upstream_that_fails_releases_the_reservation(setup: Setup) -> None:
    key = setup.key(budget_usd=1)
    with pytest.raises(UpstreamError):
        setup.engine.handle(request(model="dead/gpt-4o-mini"), ctx(key))
    status = setup.settled(key)
    assert status.calls == 1 and status.spent_usd == 0 and close_to(status.reserved_usd, Decimal(0))
    [row] = setup.rows(key)
    assert row["status"] == "error"


class Scripted(Provider):
    """A provider bound to a call (like a wrapped client's): a priced model that fails as told."""

    kind = "scripted"
    wire = "openai"

    def __init__(self, fail: str = "") -> None:
        super().__init__("scripted", pricing_id="openai")
        self.fail = fail

    def send(self, request: Request, ctx: CallContext) -> Response | EventStream:
        if self.fail == "before":
            raise UpstreamError("refused", status_code=400)
        return EventStream(self._events())

    async def asend(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        events = self.send(request, ctx)
        assert isinstance(events, EventStream)

        async def gen():  # type: ignore[no-untyped-def]
            for event in events:
                yield event

        return AsyncEventStream(gen())

    def _events(self) -> Iterator[Any]:
        yield StreamStart(id="s1", model="gpt-4o-mini")
        for word in ["partial", " answer", " that", " breaks"]:
            yield TextDelta(word)
        if self.fail == "midway":
            raise UpstreamError("the upstream died mid-stream", status_code=502)
        yield UsageEvent(Usage(input_tokens=12, output_tokens=4))


@only_sqlite
def test_a_stream_that_dies_midway_is_charged_its_partial_usage(setup: Setup) -> None:
    key = setup.key(budget_usd=1)
    stream = setup.engine.handle(request("hi", model="gpt-4o-mini", stream=True), ctx(key, bound_provider=Scripted("midway")))
    assert isinstance(stream, EventStream)
    with pytest.raises(UpstreamError, match="mid-stream"):
        list(stream)
    status = setup.settled(key)
    [row] = setup.rows(key)
    assert row["status"] == "error" and row["output_tokens"] > 0
    assert status.spent_usd > 0 and close_to(status.spent_usd, Decimal(str(row["cost_usd"])))
    assert close_to(status.reserved_usd, Decimal(0))
    with pytest.raises(UpstreamError):
        setup.engine.handle(request(model="gpt-4o-mini", stream=True), ctx(key, bound_provider=Scripted("before")))
    assert setup.settled(key).calls == 2 and close_to(setup.settled(key).spent_usd, status.spent_usd)


@only_sqlite
def test_streams_are_reconciled_without_a_ledger(limits_env: LimitsEnv, upstream: CannedUpstream) -> None:
    settings = limits_env.settings(upstream, ledger={"enabled": False})
    store = limits_env.keys(settings)
    engine, stage = limits_env.engine(settings, keys=store)
    key = store.create("team-a", budget_usd=1)[0]
    list(engine.handle(request(stream=True, stream_usage=True), ctx(key)))  # type: ignore[arg-type]
    stream = engine.handle(request("hi", model="gpt-4o-mini", stream=True), ctx(key, bound_provider=Scripted()))
    it = iter(stream)  # type: ignore[arg-type]
    next(it), next(it)
    stream.close()  # type: ignore[union-attr]
    assert stage.flush(10)
    status = stage.budgets.status(key)
    exact = price(Usage(input_tokens=6, output_tokens=5), "gpt-4o-mini", pricing_id="openai", is_local=False).cost_usd
    assert status.calls == 2 and close_to(status.reserved_usd, Decimal(0)) and status.spent_usd > exact  # type: ignore[operator]


@only_sqlite
def test_what_is_reserved(setup: Setup) -> None:
    req = request("count these words", max_tokens=100)
    prompt = count_prompt(req.replace(model="gpt-4o-mini"), "gpt-4o-mini", "openai").n
    expected = worst_case_cost(prompt, 100, "gpt-4o-mini", pricing_id="openai", is_local=False)
    assert setup.reservation(req) == expected
    # no max_tokens: the documented default output; n choices: n times the output
    default = worst_case_cost(prompt, 4096, "gpt-4o-mini", pricing_id="openai", is_local=False)
    assert setup.reservation(req.replace(max_tokens=None)) == default
    assert setup.reservation(req.replace(n=3)) == worst_case_cost(
        prompt, 300, "gpt-4o-mini", pricing_id="openai", is_local=False
    )
    key = setup.key(budget_usd=1)
    stream = setup.engine.handle(req.replace(stream=True, max_tokens=None), ctx(key))
    assert close_to(setup.settled(key).reserved_usd, default)
    stream.close()  # type: ignore[union-attr]


def test_cost_model_matches_genai_prices() -> None:
    from thrifty.middleware._budgets import CostModel

    costs = CostModel()
    for model, pricing in [("gpt-4o-mini", "openai"), ("claude-3-5-haiku-latest", "anthropic"),
                           ("gemini-1.5-pro", "google"), ("gpt-4.1", None), ("no-such-model", "openai")]:
        for prompt, output in [(0, 0), (10, 5), (150_000, 4096), (300_000, 8000)]:
            exact = worst_case_cost(prompt, output, model, pricing_id=pricing, is_local=False)
            assert costs.worst_case(prompt, output, model, pricing) == exact, (model, prompt, output)


@only_sqlite
async def test_a_cancelled_reservation_is_released(setup: Setup) -> None:
    key = setup.key(budget_usd=1)
    gate = threading.Event()
    budgets = setup.stage.budgets
    real = budgets.reserve

    def slow_reserve(k: VirtualKey, amount: Decimal) -> Any:
        gate.wait(5)
        return real(k, amount)

    budgets.reserve = slow_reserve  # type: ignore[method-assign]
    try:
        task = asyncio.ensure_future(setup.engine.ahandle(request(), ctx(key)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        await asyncio.sleep(0.1)
    finally:
        budgets.reserve = real  # type: ignore[method-assign]
    status = setup.settled(key)
    assert close_to(status.reserved_usd, Decimal(0)) and status.calls == 1 and status.spent_usd == 0


@sql_backends
def test_a_spend_row_deleted_by_hand_is_made_again(setup: Setup) -> None:
    key = setup.key(budget_usd=1)
    setup.engine.handle(request(), ctx(key))
    setup.settled(key)
    with setup.keys.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM key_spend"))  # an operator resetting the period's spend
    setup.engine.handle(request(), ctx(key))
    status = setup.settled(key)
    assert status.calls == 1 and status.spent_usd > 0


# ---------------------------------------------------------------- Redis specifics


def test_an_unreachable_redis_refuses_limited_calls_with_a_ledger_error() -> None:
    from thrifty.errors import LedgerError
    from thrifty.middleware._budgets import RedisBudgets

    budgets = RedisBudgets("redis://127.0.0.1:1/0")
    key = VirtualKey(1, "k", "0" * 64, None, Decimal(1), "month", None, ("*",), "cli", datetime.now(UTC))
    try:
        with pytest.raises(LedgerError, match="cannot reach Redis"):
            budgets.reserve(key, Decimal("0.01"))
        free = VirtualKey(2, "f", "1" * 64, None, None, "month", None, ("*",), "cli", datetime.now(UTC))
        assert budgets.reserve(free, Decimal(0)).amount == 0  # no limits: no round trip
    finally:
        budgets.close()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("limits_env", ["redis"], indirect=True)
def test_redis_reseeds_a_lost_period_from_the_ledger(setup: Setup) -> None:
    import redis

    key = setup.key(budget_usd=1)
    for _ in range(3):
        setup.engine.handle(request(), ctx(key))
    spent = setup.settled(key).spent_usd
    assert close_to(spent, setup.ledger_cost(key))
    client = redis.Redis.from_url(setup.env.redis_url)  # type: ignore[arg-type]
    for name in client.scan_iter(f"{setup.env.namespace}:*"):
        client.delete(name)  # Redis restarted without persistence
    assert close_to(setup.status(key).spent_usd, spent)  # read from the ledger meanwhile
    setup.engine.handle(request(), ctx(key))
    status = setup.settled(key)
    assert close_to(status.spent_usd, setup.ledger_cost(key)) and status.calls == 1
    client.close()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("limits_env", ["redis"], indirect=True)
def test_redis_rate_limit_is_shared_by_processes(limits_env: LimitsEnv, upstream: CannedUpstream) -> None:
    settings = limits_env.settings(upstream)
    store = limits_env.keys(settings)
    (one, _), (two, _) = limits_env.engine(settings, keys=store), limits_env.engine(settings)
    key = store.create("team-a", rpm=4)[0]
    for engine in (one, two, one, two):
        engine.handle(request(), ctx(key))
    for engine in (one, two):
        with pytest.raises(RateLimitError, match="rate limit of 4"):
            engine.handle(request(), ctx(key))


# ---------------------------------------------------------------- concurrency


def _race_setup(env: LimitsEnv, upstream: CannedUpstream, engines: int) -> tuple[list[Engine], LimitsStage, VirtualKey,
                                                                                 Decimal, Decimal, Setup]:
    setup = Setup(env, upstream)
    reservation = setup.reservation(request())
    budget = reservation * 50  # about 50 calls
    key = setup.key("race", budget_usd=budget)
    for _ in range(engines - 1):
        engine, stage = env.engine(setup.settings)
        setup.engines.append(engine)
        setup.stages.append(stage)
    return setup.engines, setup.stage, key, budget, reservation, setup


def _check_race(result: Any, setup: Setup, key: VirtualKey, budget: Decimal, reservation: Decimal) -> None:
    final = setup.settled(key)
    check_budget_held(result, budget, reservation, final)
    actual = setup.ledger_cost(key) / max(1, result.ok)
    assert 49 <= result.ok <= int(budget / actual), (result.ok, budget / actual)
    assert final.calls == result.ok
    assert close_to(final.spent_usd, setup.ledger_cost(key))
    rows = setup.rows(key)
    assert len(rows) == 200
    assert sum(r["status"] == "ok" for r in rows) == result.ok
    assert sum(r["http_status"] == 429 for r in rows) == result.limited


@pytest.mark.parametrize("engines", [1, 2], ids=["one-process", "two-processes"])
async def test_200_concurrent_async_requests_never_overspend(
    limits_env: LimitsEnv, upstream: CannedUpstream, engines: int
) -> None:
    all_engines, stage, key, budget, reservation, setup = _race_setup(limits_env, upstream, engines)
    calls = [
        (lambda e=all_engines[i % engines]: e.ahandle(request(), ctx(key)))  # type: ignore[misc]
        for i in range(200)
    ]
    result = await race(calls, watch=lambda: stage.budgets.status(key))
    _check_race(result, setup, key, budget, reservation)


@pytest.mark.parametrize("engines", [1, 2], ids=["one-process", "two-processes"])
def test_200_concurrent_threaded_requests_never_overspend(
    limits_env: LimitsEnv, upstream: CannedUpstream, engines: int
) -> None:
    all_engines, stage, key, budget, reservation, setup = _race_setup(limits_env, upstream, engines)
    calls = [(lambda e=all_engines[i % engines]: e.handle(request(), ctx(key))) for i in range(200)]
    result = race_threads(calls, watch=lambda: stage.budgets.status(key))
    _check_race(result, setup, key, budget, reservation)
