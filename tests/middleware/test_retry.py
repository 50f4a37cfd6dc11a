"""Retries and fallbacks through a real Engine, the loopback upstream and the ledger.

Most failures come from the CannedUpstream over real HTTP (``fail-<status>``,
``slow-<ms>``, ``cut-stream``). A scripted provider gives the sequences HTTP
cannot give on demand: a model that fails a set number of times and then
answers, a ``retry-after`` of a chosen length, a stream that breaks before its
first event. It is the calls' bound provider (the slot a wrapped client's own
provider takes), so ``scripted/<model>`` reaches it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa

import thrifty
from thrifty import (
    AuthenticationError,
    CallContext,
    Engine,
    RateLimitError,
    Settings,
    Stage,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from thrifty.middleware.providers.base import Provider
from thrifty.middleware.retry import RetryStage, is_retryable, retry_after_s
from thrifty.settings import RetrySettings
from thrifty.testing import REPLY, CannedUpstream
from thrifty.types import (
    AsyncEventStream,
    Choice,
    ChoiceEnd,
    EventStream,
    Message,
    Request,
    Response,
    StreamError,
    StreamStart,
    TextDelta,
    TextPart,
    Usage,
    UsageEvent,
)

FAST = {"backoff_s": 0.0, "max_backoff_s": 1.0}  # retries without waits, unless a test asks for them


# ---------------------------------------------------------------- a scripted provider


class Scripted(Provider):
    """Models: ``ok``; ``flaky-<n>-<tag>`` fails n times (503) then answers; ``wait-<s>-<n>-<tag>`` answers
    429 with ``retry-after: <s>`` n times; ``broken-start`` streams a StreamError first; ``timeout``."""

    kind = "scripted"

    def __init__(self, name: str = "scripted") -> None:
        super().__init__(name)
        self.calls: Counter[str] = Counter()

    def _fail(self, model: str) -> None:
        self.calls[model] += 1
        parts = model.split("-")
        if parts[0] == "flaky" and self.calls[model] <= int(parts[1]):
            raise UpstreamError(f"scripted 503 #{self.calls[model]}", status_code=503)
        if parts[0] == "wait" and self.calls[model] <= int(parts[2]):
            raise UpstreamError("scripted 429", status_code=429, headers={"Retry-After": parts[1]})
        if model == "timeout":
            raise UpstreamTimeoutError("scripted timeout")

    def _events(self, request: Request) -> list[Any]:
        if request.model == "broken-start":
            return [StreamError(UpstreamConnectionError("scripted: broke before the first event"))]
        return [StreamStart("s-1", request.model), TextDelta("scripted "), TextDelta("reply"),
                ChoiceEnd("stop"), UsageEvent(Usage(3, 2))]

    def _response(self, request: Request) -> Response:
        message = Message("assistant", [TextPart("scripted reply")])
        return Response("s-1", request.model, [Choice(0, message, "stop")], Usage(3, 2))

    def send(self, request: Request, ctx: CallContext) -> Response | EventStream:
        self._fail(request.model)
        if request.stream:
            return EventStream(iter(self._events(request)))
        return self._response(request)

    async def asend(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        self._fail(request.model)
        if request.stream:
            events = self._events(request)

            async def gen() -> AsyncIterator[Any]:
                for event in events:
                    yield event

            return AsyncEventStream(gen())
        return self._response(request)


# ---------------------------------------------------------------- fixtures and helpers


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_for(data_dir: Path, upstream: CannedUpstream, **overrides: Any) -> Settings:
    providers = {
        "canned": {"kind": "openai-compatible", "base_url": upstream.url},
        "impatient": {"kind": "openai-compatible", "base_url": upstream.url, "timeout_s": 0.2},
        "down": {"kind": "openai-compatible", "base_url": f"http://127.0.0.1:{_closed_port()}/v1"},
        "nokey": {"kind": "anthropic", "base_url": upstream.url, "api_key_env": "THRIFTY_TEST_UNSET_KEY"},
    }
    return Settings.load(data_dir=data_dir, providers=providers, **overrides)


@pytest.fixture
def make_engine(data_dir: Path, upstream: CannedUpstream) -> Iterator[Any]:
    engines: list[Engine] = []

    def make(aliases: dict[str, Any] | None = None, retry: dict[str, Any] | None = None,
             engine_retry: bool | None = None, **kw: Any) -> Engine:
        """An engine with these aliases and ``[retry]`` settings; ``engine_retry`` is ``Engine(retry=...)``."""
        overrides: dict[str, Any] = {"aliases": aliases or {}, "retry": {**FAST, **(retry or {})}}
        own_dir = data_dir / f"engine-{len(engines)}"  # each engine its own ledger
        engine = Engine(settings_for(own_dir, upstream, **overrides), retry=engine_retry, **kw)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def rows(engine: Engine) -> list[dict[str, Any]]:
    assert engine.recorder.flush(timeout=10)
    db = sa.create_engine(engine.settings.ledger_url)
    try:
        with db.connect() as conn:
            result = conn.execute(sa.text("SELECT * FROM llm_calls ORDER BY started_at, attempt"))
            return [dict(r) for r in result.mappings()]
    finally:
        db.dispose()


def request(model: str, stream: bool = False) -> Request:
    return Request(model=model, messages=[Message("user", [TextPart("say hello")])], stream=stream,
                   stream_usage=stream)


def proxy_ctx(**kw: Any) -> CallContext:
    return CallContext(entry="proxy", wire="openai", bound_provider=Scripted(), **kw)


def text_of(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def assert_one_call(found: list[dict[str, Any]], ctx: CallContext) -> None:
    """The rows are one call's attempts: the first has the call's id, the rest name it as parent."""
    assert found[0]["call_id"] == ctx.call_id and found[0]["parent_call_id"] is None
    assert [r["attempt"] for r in found] == list(range(1, len(found) + 1))
    assert all(r["parent_call_id"] == ctx.call_id for r in found[1:])
    assert len({r["call_id"] for r in found}) == len(found)


# ---------------------------------------------------------------- fallbacks and retries


def test_fallback_chain_one_row_per_attempt(make_engine):
    engine = make_engine({"smart": {"model": "canned/fail-500",
                                    "fallbacks": ["canned/fail-503", "canned/gpt-ok"]}})
    ctx = proxy_ctx()
    answer = engine.handle(request("smart"), ctx)
    assert isinstance(answer, Response) and answer.choices[0].message.text() == REPLY
    found = rows(engine)
    assert len(found) == 5  # two tries on each failing model (the [retry] default), then the fallback answers
    assert_one_call(found, ctx)
    assert [r["model_used"] for r in found] == ["fail-500", "fail-500", "fail-503", "fail-503", "gpt-ok"]
    assert [r["status"] for r in found] == ["error"] * 4 + ["ok"]
    assert [r["http_status"] for r in found] == [500, 500, 503, 503, None]
    assert {r["model_requested"] for r in found} == {"smart"}
    assert [r["route_decision"] for r in found] == [
        "alias:smart", "alias:smart", "alias:smart>fallback:canned/fail-503",
        "alias:smart>fallback:canned/fail-503", "alias:smart>fallback:canned/gpt-ok"]
    assert found[-1]["output_tokens"] == len(REPLY.split())
    # the call's context ends with the answering attempt's facts
    assert ctx.target is not None and ctx.target.model == "gpt-ok"
    assert ctx.result.call_id == found[-1]["call_id"]
    assert ctx.route_decision == "alias:smart>fallback:canned/gpt-ok"


def test_all_attempts_fail_raises_the_last_error(make_engine):
    engine = make_engine({"smart": {"model": "canned/fail-500", "fallbacks": ["canned/fail-502"],
                                    "retry": {"max_attempts": 1}}})
    ctx = proxy_ctx()
    with pytest.raises(UpstreamError) as info:
        engine.handle(request("smart"), ctx)
    assert info.value.status_code == 502
    found = rows(engine)
    assert [r["http_status"] for r in found] == [500, 502]  # no extra row for the call as a whole
    assert_one_call(found, ctx)


def test_retry_on_the_same_model_then_it_answers(make_engine):
    engine = make_engine(retry={"max_attempts": 3})
    ctx = proxy_ctx()
    answer = engine.handle(request("scripted/flaky-2-a"), ctx)
    assert answer.choices[0].message.text() == "scripted reply"
    found = rows(engine)
    assert [r["status"] for r in found] == ["error", "error", "ok"]
    assert_one_call(found, ctx)
    assert {r["route_decision"] for r in found} == {None}  # not an alias: nothing to record


def test_max_attempts_per_model(make_engine):
    engine = make_engine(retry={"max_attempts": 2})
    with pytest.raises(UpstreamError):
        engine.handle(request("scripted/flaky-5-b"), proxy_ctx())
    assert len(rows(engine)) == 2


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The waits the retry stage asks for in this thread, recorded and still slept (other threads may sleep
    too): what a wall-clock ceiling would check, without the ceiling a busy machine breaks."""
    sleep, me, asked = time.sleep, threading.get_ident(), []

    def recording_sleep(seconds: float) -> None:
        if threading.get_ident() == me:
            asked.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(time, "sleep", recording_sleep)
    return asked


def test_backoff_grows_and_is_capped(make_engine, waits):
    engine = make_engine(retry={"max_attempts": 4, "backoff_s": 0.05, "max_backoff_s": 0.08})
    t0 = time.perf_counter()
    with pytest.raises(UpstreamError):
        engine.handle(request("canned/fail-500"), proxy_ctx())
    assert time.perf_counter() - t0 >= 0.1
    # waits of 0.05, 0.08 (0.1 capped), 0.08 (0.2 capped), each jittered into [half, all]
    assert len(waits) == 3
    for wait, base in zip(waits, (0.05, 0.08, 0.08), strict=True):
        assert base / 2 <= wait <= base
    assert len(rows(engine)) == 4


def test_retry_after_replaces_the_backoff(make_engine, waits):
    # the canned 429 says retry-after: 0, so a 5 s backoff is not waited
    engine = make_engine(retry={"max_attempts": 2, "backoff_s": 5.0, "max_backoff_s": 5.0})
    with pytest.raises(UpstreamError) as info:
        engine.handle(request("canned/fail-429"), proxy_ctx())
    assert waits == []
    assert info.value.status_code == 429 and info.value.headers.get("retry-after") == "0"
    assert len(rows(engine)) == 2


def test_retry_after_is_waited(make_engine):
    engine = make_engine(retry={"max_attempts": 2})
    t0 = time.perf_counter()
    answer = engine.handle(request("scripted/wait-0.2-1-c"), proxy_ctx())
    assert time.perf_counter() - t0 >= 0.2
    assert isinstance(answer, Response) and len(rows(engine)) == 2


def test_retry_after_longer_than_max_backoff_moves_to_the_fallback(make_engine, waits):
    engine = make_engine({"smart": {"model": "scripted/wait-30-9-d", "fallbacks": ["canned/gpt-ok"]}},
                         retry={"max_attempts": 3, "max_backoff_s": 1.0})
    answer = engine.handle(request("smart"), proxy_ctx())
    assert waits == []
    assert answer.model == "gpt-ok"
    assert [r["model_used"] for r in rows(engine)] == ["wait-30-9-d", "gpt-ok"]


def test_deadline_cuts_the_wait(make_engine, waits):
    engine = make_engine(retry={"max_attempts": 3, "backoff_s": 5.0, "max_backoff_s": 5.0})
    ctx = proxy_ctx(deadline=time.monotonic() + 0.5)
    with pytest.raises(UpstreamError):
        engine.handle(request("canned/fail-500"), ctx)
    assert waits == []  # a wait past the deadline is not taken
    assert len(rows(engine)) == 1


def test_deadline_still_allows_a_fallback_that_needs_no_wait(make_engine):
    engine = make_engine({"smart": {"model": "canned/fail-500", "fallbacks": ["canned/gpt-ok"]}},
                         retry={"max_attempts": 3, "backoff_s": 5.0, "max_backoff_s": 5.0})
    answer = engine.handle(request("smart"), proxy_ctx(deadline=time.monotonic() + 2.0))
    assert answer.model == "gpt-ok"
    assert len(rows(engine)) == 2


def test_past_deadline_no_more_attempts(make_engine):
    engine = make_engine({"smart": {"model": "canned/fail-500", "fallbacks": ["canned/gpt-ok"]}})
    with pytest.raises(UpstreamError):
        engine.handle(request("smart"), proxy_ctx(deadline=time.monotonic() - 1))
    assert len(rows(engine)) == 1


def test_timeouts_and_connection_errors_fall_back(make_engine):
    engine = make_engine({"smart": {"model": "impatient/slow-2000", "fallbacks": ["down/x", "canned/gpt-ok"],
                                    "retry": {"max_attempts": 1}}})
    answer = engine.handle(request("smart"), proxy_ctx())
    assert answer.model == "gpt-ok"
    found = rows(engine)
    assert [(r["provider"], r["error_type"]) for r in found] == [
        ("impatient", "UpstreamTimeoutError"), ("down", "UpstreamConnectionError"), ("canned", None)]


def test_on_timeout_off(make_engine):
    engine = make_engine({"smart": {"model": "scripted/timeout", "fallbacks": ["canned/gpt-ok"]}},
                         retry={"on_timeout": False})
    with pytest.raises(UpstreamTimeoutError):
        engine.handle(request("smart"), proxy_ctx())
    assert len(rows(engine)) == 1


@pytest.mark.parametrize("model", ["canned/fail-400", "canned/fail-404", "canned/fail-401"])
def test_no_retry_or_fallback_on_client_errors(make_engine, model):
    engine = make_engine({"smart": {"model": model, "fallbacks": ["canned/gpt-ok"]}})
    with pytest.raises(UpstreamError) as info:
        engine.handle(request("smart"), proxy_ctx())
    assert info.value.status_code == int(model.rsplit("-", 1)[1])
    assert len(rows(engine)) == 1


def test_no_retry_on_thriftys_own_errors(make_engine):
    # a provider with no key configured: thrifty's AuthenticationError, not an upstream failure
    engine = make_engine({"smart": {"model": "nokey/claude", "fallbacks": ["canned/gpt-ok"]}})
    with pytest.raises(AuthenticationError):
        engine.handle(request("smart"), proxy_ctx())
    assert len(rows(engine)) == 1


class Budget(Stage):
    """A stand-in for the limits stage: refuses the first attempt it sees with thrifty's 429."""

    kind = "limits"

    def __init__(self) -> None:
        self.seen = 0

    def prepare(self, request: Request, ctx: CallContext) -> Request:
        self.seen += 1
        raise RateLimitError("budget spent")


def test_no_retry_on_thriftys_rate_limits_and_retry_runs_outside_limits(make_engine):
    budget = Budget()
    engine = make_engine({"smart": {"model": "canned/gpt-ok", "fallbacks": ["canned/gpt-ok2"]}}, stages=[budget])
    assert [s.kind for s in engine.pipeline.stages] == [
        "contracts", "routing", "compression", "structured", "retry", "limits", "ledger"]
    with pytest.raises(RateLimitError):
        engine.handle(request("smart"), proxy_ctx())
    assert budget.seen == 1
    (row,) = rows(engine)  # the engine's row for a call refused before the upstream
    assert row["error_type"] == "RateLimitError" and row["http_status"] == 429


# ---------------------------------------------------------------- streams


def test_stream_falls_back_when_the_first_attempt_fails_at_connect(make_engine):
    engine = make_engine({"smart": {"model": "canned/fail-503", "fallbacks": ["canned/gpt-ok"]}})
    ctx = proxy_ctx()
    stream = engine.handle(request("smart", stream=True), ctx)
    assert isinstance(stream, EventStream)
    events = list(stream)
    assert text_of(events) == REPLY and not any(isinstance(e, StreamError) for e in events)
    found = rows(engine)
    assert [(r["model_used"], r["status"]) for r in found] == [
        ("fail-503", "error"), ("fail-503", "error"), ("gpt-ok", "ok")]
    assert_one_call(found, ctx)
    assert found[-1]["stream"] and found[-1]["output_tokens"] == len(REPLY.split())


def test_stream_that_breaks_before_its_first_event_is_retried(make_engine):
    engine = make_engine({"smart": {"model": "scripted/broken-start", "fallbacks": ["canned/gpt-ok"],
                                    "retry": {"max_attempts": 1}}})
    ctx = proxy_ctx()
    events = list(engine.handle(request("smart", stream=True), ctx))
    assert text_of(events) == REPLY and not any(isinstance(e, StreamError) for e in events)
    found = rows(engine)
    assert [(r["model_used"], r["status"]) for r in found] == [("broken-start", "error"), ("gpt-ok", "ok")]
    assert_one_call(found, ctx)


def test_stream_that_never_starts_gives_its_error_inside_the_stream(make_engine):
    engine = make_engine(retry={"max_attempts": 2})
    events = list(engine.handle(request("scripted/broken-start", stream=True), proxy_ctx()))
    assert len(events) == 1 and isinstance(events[0], StreamError)
    assert isinstance(events[0].error, UpstreamConnectionError)
    assert [r["status"] for r in rows(engine)] == ["error", "error"]


def test_stream_cut_after_it_started_keeps_the_error_inside(make_engine):
    engine = make_engine({"smart": {"model": "canned/cut-stream", "fallbacks": ["canned/gpt-ok"]}})
    events = list(engine.handle(request("smart", stream=True), proxy_ctx()))
    assert isinstance(events[0], StreamStart)
    assert isinstance(events[-1], StreamError)  # no fallback once the stream had started
    (row,) = rows(engine)
    assert row["status"] == "error" and row["model_used"] == "cut-stream"


def test_stream_closed_before_iteration_closes_the_attempt(make_engine):
    engine = make_engine({"smart": {"model": "canned/gpt-ok", "fallbacks": ["canned/gpt-ok2"]}})
    stream = engine.handle(request("smart", stream=True), proxy_ctx())
    stream.close()
    (row,) = rows(engine)
    assert row["status"] == "client_disconnected"


# ---------------------------------------------------------------- async


async def test_async_fallback_and_retry_after(make_engine):
    engine = make_engine({"smart": {"model": "scripted/wait-0.2-1-e", "fallbacks": ["canned/gpt-ok"]}})
    ctx = proxy_ctx()
    t0 = time.perf_counter()
    answer = await engine.ahandle(request("smart"), ctx)
    assert time.perf_counter() - t0 >= 0.2
    assert answer.model == "wait-0.2-1-e"  # its second try answered
    engine2 = make_engine({"smart": {"model": "canned/fail-500", "fallbacks": ["canned/gpt-ok"]}})
    ctx2 = proxy_ctx()
    answer = await engine2.ahandle(request("smart"), ctx2)
    assert answer.model == "gpt-ok"
    found = rows(engine2)
    assert [r["model_used"] for r in found] == ["fail-500", "fail-500", "gpt-ok"]
    assert_one_call(found, ctx2)


async def test_async_retry_waits_without_blocking_the_loop(make_engine):
    import asyncio

    engine = make_engine(retry={"max_attempts": 2, "backoff_s": 0.3, "max_backoff_s": 0.3})
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        with pytest.raises(UpstreamError):
            await engine.ahandle(request("scripted/flaky-9-f"), proxy_ctx())
    finally:
        task.cancel()
    assert ticks >= 5  # the loop ran during the backoff


async def test_async_streams(make_engine):
    engine = make_engine({"smart": {"model": "canned/fail-500", "fallbacks": ["scripted/broken-start",
                                                                               "canned/gpt-ok"]},
                          "cut": {"model": "canned/cut-stream", "fallbacks": ["canned/gpt-ok"]}},
                         retry={"max_attempts": 1})
    ctx = proxy_ctx()
    stream = await engine.ahandle(request("smart", stream=True), ctx)
    assert isinstance(stream, AsyncEventStream)
    events = [e async for e in stream]
    assert text_of(events) == REPLY
    found = rows(engine)
    assert [(r["model_used"], r["status"]) for r in found] == [
        ("fail-500", "error"), ("broken-start", "error"), ("gpt-ok", "ok")]
    assert_one_call(found, ctx)
    assert [r["route_decision"] for r in found] == [
        "alias:smart", "alias:smart>fallback:scripted/broken-start", "alias:smart>fallback:canned/gpt-ok"]
    assert ctx.route_decision == "alias:smart>fallback:canned/gpt-ok" and ctx.result.call_id == found[-1]["call_id"]

    events = [e async for e in await engine.ahandle(request("cut", stream=True), proxy_ctx())]
    assert isinstance(events[0], StreamStart) and isinstance(events[-1], StreamError)
    assert len(rows(engine)) == 4


async def test_async_stream_that_never_starts(make_engine):
    engine = make_engine(retry={"max_attempts": 2})
    stream = await engine.ahandle(request("scripted/broken-start", stream=True), proxy_ctx())
    events = [e async for e in stream]
    assert len(events) == 1 and isinstance(events[0], StreamError)
    assert len(rows(engine)) == 2


# ---------------------------------------------------------------- wrapped SDK clients


def wrapped(engine: Engine, upstream: CannedUpstream, **kw: Any) -> openai.OpenAI:
    return thrifty.wrap(openai.OpenAI(api_key="sk-user", base_url=upstream.url, **kw), engine=engine)


def test_wrapped_openai_through_an_alias_with_fallbacks(make_engine, upstream):
    # bare names in the alias go to the wrapped client's own API
    engine = make_engine({"smart": {"model": "fail-500", "fallbacks": ["fail-503", "canned/gpt-ok"]}})
    client = wrapped(engine, upstream, max_retries=0)
    r = client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == REPLY and r.model == "gpt-ok"
    found = rows(engine)
    # a wrapped call tries each model once: the SDK does its own retries
    assert [(r["provider"], r["model_used"]) for r in found] == [
        ("openai", "fail-500"), ("openai", "fail-503"), ("canned", "gpt-ok")]
    assert {r["entry"] for r in found} == {"wrapper"} and {r["model_requested"] for r in found} == {"smart"}
    assert found[0]["parent_call_id"] is None
    assert all(r["parent_call_id"] == found[0]["call_id"] for r in found[1:])
    assert [r["attempt"] for r in found] == [1, 2, 3]

    stream = client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == REPLY
    assert len(rows(engine)) == 6


def test_wrapped_calls_are_not_retried_by_thrifty_without_an_alias(make_engine, upstream):
    engine = make_engine(retry={"max_attempts": 3})
    client = wrapped(engine, upstream, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fail-500", messages=[{"role": "user", "content": "hi"}])
    assert len(rows(engine)) == 1


def test_wrapped_calls_retried_when_the_alias_says_so_or_the_engine_does(make_engine, upstream):
    engine = make_engine({"sturdy": {"model": "fail-502", "retry": {"max_attempts": 3}}})
    with pytest.raises(openai.InternalServerError):
        wrapped(engine, upstream, max_retries=0).chat.completions.create(
            model="sturdy", messages=[{"role": "user", "content": "hi"}])
    assert len(rows(engine)) == 3

    engine = make_engine(retry={"max_attempts": 2}, engine_retry=True)
    with pytest.raises(openai.InternalServerError):
        wrapped(engine, upstream, max_retries=0).chat.completions.create(
            model="fail-500", messages=[{"role": "user", "content": "hi"}])
    assert len(rows(engine)) == 2


async def test_async_wrapped_openai_through_an_alias(make_engine, upstream):
    engine = make_engine({"smart": {"model": "fail-500", "fallbacks": ["canned/gpt-ok"]}})
    client = thrifty.wrap(openai.AsyncOpenAI(api_key="sk-user", base_url=upstream.url, max_retries=0),
                          engine=engine)
    r = await client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}])
    assert r.model == "gpt-ok"
    stream = await client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == REPLY
    assert [r["model_used"] for r in rows(engine)] == ["fail-500", "gpt-ok", "fail-500", "gpt-ok"]


# ---------------------------------------------------------------- the engine's chain and the helpers


def test_engine_chain(make_engine):
    techniques = ["contracts", "routing", "compression", "structured"]
    assert [s.kind for s in make_engine().pipeline.stages] == [*techniques, "retry", "ledger"]
    assert [s.kind for s in make_engine(engine_retry=False).pipeline.stages] == [*techniques, "ledger"]
    own = RetryStage(RetrySettings(), lambda name, bound: None)  # type: ignore[arg-type, return-value]
    engine = make_engine(stages=[own])
    assert [s.kind for s in engine.pipeline.stages] == [*techniques, "retry", "ledger"]
    assert engine.pipeline.stages[4] is own


def test_retryable_and_retry_after():
    retry = RetrySettings()
    assert is_retryable(UpstreamError("x", status_code=503), retry)
    assert not is_retryable(UpstreamError("x", status_code=400), retry)
    assert is_retryable(UpstreamTimeoutError("x"), retry)
    assert not is_retryable(UpstreamTimeoutError("x"), RetrySettings(on_timeout=False))
    assert is_retryable(UpstreamConnectionError("x"), RetrySettings(on_status=[]))
    assert not is_retryable(RateLimitError("x"), retry) and not is_retryable(ValueError("x"), retry)
    assert retry_after_s(UpstreamError("x", headers={"Retry-After": "2"})) == 2.0
    assert retry_after_s(UpstreamError("x", headers={"retry-after-ms": "150", "retry-after": "9"})) == 0.15
    assert retry_after_s(UpstreamError("x", headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0
    assert retry_after_s(UpstreamError("x", headers={"retry-after": "soon"})) is None
    assert retry_after_s(UpstreamError("x")) is None
