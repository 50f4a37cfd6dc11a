"""The ledger observer: one record per upstream attempt, for calls, failures and streams."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from thrifty.errors import UpstreamError
from thrifty.ledger.observer import LedgerObserver
from thrifty.ledger.record import LedgerRecord
from thrifty.ledger.recorder import Recorder
from thrifty.middleware.context import CallContext, Saving, Target, ThriftyOptions
from thrifty.middleware.pipeline import Pipeline
from thrifty.middleware.providers.base import Provider
from thrifty.settings import LedgerSettings
from thrifty.types import (
    AsyncEventStream,
    Choice,
    ChoiceEnd,
    EventStream,
    Message,
    Request,
    Response,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

USAGE = Usage(
    input_tokens=120, output_tokens=30, cache_read_tokens=1000, cache_write_tokens=5, reasoning_tokens=7
)
TEXT = ["Hello", " there,", " how can", " I help", " you today?"]


class Sink:
    """Collects records: anything with ``submit`` can take a recorder's place."""

    def __init__(self) -> None:
        self.records: list[LedgerRecord] = []

    def submit(self, record: LedgerRecord) -> None:
        self.records.append(record)


class FakeProvider(Provider):
    """Answers with whatever ``behaviour(request)`` gives (or raises)."""

    kind = "openai"

    def __init__(self, behaviour: Callable[[Request], Any], name: str = "openai") -> None:
        super().__init__(name, pricing_id="openai")
        self.behaviour = behaviour
        self.calls = 0

    def send(self, request: Request, ctx: CallContext) -> Response | EventStream:
        self.calls += 1
        return self.behaviour(request)

    async def asend(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        self.calls += 1
        await asyncio.sleep(0)
        return self.behaviour(request)


class ToProvider:
    """The terminal handler: hands the request to the context's target provider."""

    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream:
        assert ctx.target is not None
        return ctx.target.provider.send(request, ctx)

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        assert ctx.target is not None
        return await ctx.target.provider.asend(request, ctx)


def response(model: str = "gpt-4o-mini-2024-07-18") -> Response:
    return Response(
        id="chatcmpl-1",
        model=model,
        choices=[Choice(0, Message("assistant", [TextPart("hi")]), "stop")],
        usage=USAGE,
    )


def events(*, usage: bool = True, error: Exception | None = None) -> list[StreamEvent]:
    out: list[StreamEvent] = [StreamStart(id="chatcmpl-s", model="gpt-4o-mini-2024-07-18")]
    out += [TextDelta(t) for t in TEXT]
    if error is not None:
        out.append(StreamError(error))
        return out
    out.append(ChoiceEnd("stop"))
    if usage:
        out.append(UsageEvent(Usage(input_tokens=50, output_tokens=1)))  # an early, partial one
        out.append(UsageEvent(USAGE))
    return out


class Closed:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def sync_stream(evs: list[StreamEvent], closed: Closed | None = None) -> EventStream:
    stream = EventStream(iter(evs))
    if closed is not None:
        stream.on_close(closed)
    return stream


def async_stream(evs: list[StreamEvent], closed: Closed | None = None) -> AsyncEventStream:
    async def gen() -> AsyncIterator[StreamEvent]:
        for ev in evs:
            await asyncio.sleep(0)
            yield ev

    stream = AsyncEventStream(gen())
    if closed is not None:
        stream.on_close(closed)
    return stream


def setup(
    behaviour: Callable[[Request], Any], **ctx_fields: Any
) -> tuple[Pipeline, Sink, CallContext, Request]:
    stream = bool(ctx_fields.pop("stream", False))
    sink = Sink()
    provider = FakeProvider(behaviour)
    pipeline = Pipeline([LedgerObserver(sink)], ToProvider())
    ctx = CallContext(
        entry="wrapper",
        wire="openai",
        target=Target(provider, "gpt-4o-mini"),
        model_requested="openai/gpt-4o-mini",
        **ctx_fields,
    )
    request = Request(model="gpt-4o-mini", messages=[Message("user", [TextPart("Say hello politely.")])])
    return pipeline, sink, ctx, request.replace(stream=stream) if stream else request


# ---------------------------------------------------------------- plain calls


def test_ok_call_row() -> None:
    pipeline, sink, ctx, request = setup(
        lambda r: response(),
        key_id="k-hash",
        user="alice",
        project="search",
        tags=["a"],
        options=ThriftyOptions(tags=["b"]),
        route_decision="small",
        parent_call_id="parent",
        attempt=2,
        savings={"compression": Saving(400, 120), "contracts": Saving(120, 150, usd_saved=-0.001)},
    )
    result = pipeline.handle(request, ctx)
    assert isinstance(result, Response)
    [rec] = sink.records
    assert ctx.result is rec
    assert rec.call_id == ctx.call_id and rec.status == "ok"
    assert (rec.parent_call_id, rec.attempt) == ("parent", 2)
    assert (rec.entry, rec.wire, rec.provider) == ("wrapper", "openai", "openai")
    assert rec.model_requested == "openai/gpt-4o-mini"
    assert rec.model_used == "gpt-4o-mini-2024-07-18"  # what the provider says answered
    assert rec.response_id == "chatcmpl-1"
    assert rec.usage == USAGE and rec.usage_source == "provider"
    assert (rec.key_id, rec.user, rec.project, rec.route_decision) == ("k-hash", "alice", "search", "small")
    assert rec.tags == ["a", "b"]
    assert rec.started_at.tzinfo is UTC and abs(rec.started_at.timestamp() - ctx.started_at) < 1e-3
    assert rec.overhead_ms is not None and rec.duration_ms is not None
    assert 0 <= rec.overhead_ms <= rec.duration_ms
    assert rec.ttft_ms is None and rec.stream is False
    # counterfactual totals; pricing is left to the recorder (off the request path)
    assert rec.tokens_before_transforms == 400
    assert rec.tokens_saved == 280 - 30
    assert rec.price_source is None and rec.cost_usd is None
    assert (rec.pricing_id, rec.is_local) == ("openai", False)


def test_model_used_falls_back_to_the_target() -> None:
    pipeline, sink, ctx, request = setup(lambda r: response(model=""))
    pipeline.handle(request, ctx)
    assert sink.records[0].model_used == "gpt-4o-mini"


def test_error_row_and_the_exception_passes_unchanged() -> None:
    error = UpstreamError("rate limited", status_code=429)

    def fail(r: Request) -> Response:
        raise error

    pipeline, sink, ctx, request = setup(fail)
    with pytest.raises(UpstreamError) as info:
        pipeline.handle(request, ctx)
    assert info.value is error
    [rec] = sink.records
    assert (rec.status, rec.error_type, rec.http_status) == ("error", "UpstreamError", 429)
    assert rec.usage == Usage() and ctx.result is rec


def test_an_exception_without_status() -> None:
    def fail(r: Request) -> Response:
        raise ValueError("broken adapter")

    pipeline, sink, ctx, request = setup(fail)
    with pytest.raises(ValueError, match="broken adapter"):
        pipeline.handle(request, ctx)
    assert (sink.records[0].error_type, sink.records[0].http_status) == ("ValueError", None)


def test_record_failure_for_calls_that_never_reached_the_observer() -> None:
    sink = Sink()
    observer = LedgerObserver(sink)
    ctx = CallContext(entry="proxy", wire="anthropic", model_requested="nope")
    request = Request(model="nope", messages=[])
    observer.record_failure(request, ctx, UpstreamError("x", status_code=404))
    [rec] = sink.records
    assert (rec.status, rec.http_status, rec.provider, rec.model_used) == ("error", 404, None, "nope")


def test_a_broken_sink_never_fails_the_call() -> None:
    class Broken:
        def submit(self, record: LedgerRecord) -> None:
            raise RuntimeError("disk on fire")

    provider = FakeProvider(lambda r: response())
    pipeline = Pipeline([LedgerObserver(Broken())], ToProvider())
    ctx = CallContext(entry="wrapper", wire="openai", target=Target(provider, "gpt-4o-mini"))
    assert isinstance(pipeline.handle(Request(model="m", messages=[]), ctx), Response)


# ---------------------------------------------------------------- sync streams


def test_stream_exhausted() -> None:
    closed = Closed()
    pipeline, sink, ctx, request = setup(lambda r: sync_stream(events(), closed), stream=True)
    stream = pipeline.handle(request, ctx)
    assert isinstance(stream, EventStream)
    assert sink.records == [] and isinstance(ctx.result, LedgerRecord)  # finalized on close only
    seen = list(stream)
    assert len(seen) == len(events())  # every event passes through
    stream.close()  # a second close changes nothing
    [rec] = sink.records
    assert ctx.result is rec and closed.count == 1
    assert rec.status == "ok" and rec.stream is True
    assert rec.usage == USAGE  # from the last usage event
    assert rec.model_used == "gpt-4o-mini-2024-07-18" and rec.response_id == "chatcmpl-s"
    assert rec.ttft_ms is not None and rec.duration_ms is not None
    assert 0 <= rec.overhead_ms <= rec.ttft_ms <= rec.duration_ms  # type: ignore[operator]


def test_stream_ttft_counts_tool_call_deltas() -> None:
    evs: list[StreamEvent] = [StreamStart("s", "m"), ToolCallDelta(0, '{"q":', id="t1", name="search")]
    evs += [ToolCallDelta(0, '"x"}'), ChoiceEnd("tool_calls"), UsageEvent(USAGE)]
    pipeline, sink, ctx, request = setup(lambda r: sync_stream(evs), stream=True)
    list(pipeline.handle(request, ctx))  # type: ignore[call-overload]
    assert sink.records[0].ttft_ms is not None and sink.records[0].status == "ok"


def test_stream_closed_early_estimates_usage() -> None:
    pytest.importorskip("thrifty.ledger.tokens")
    from thrifty.ledger.tokens import count_prompt, count_text

    closed = Closed()
    pipeline, sink, ctx, request = setup(lambda r: sync_stream(events(usage=False), closed), stream=True)
    stream = pipeline.handle(request, ctx)
    it = iter(stream)  # type: ignore[arg-type]
    got = [next(it) for _ in range(3)]  # start + two text deltas, then the client goes away
    stream.close()
    [rec] = sink.records
    assert closed.count == 1  # the upstream stream was closed too
    assert rec.status == "client_disconnected" and rec.usage_source == "estimate"
    streamed = "".join(e.text for e in got if isinstance(e, TextDelta))
    assert rec.output_tokens == count_text(streamed, rec.model_used or "") > 0
    assert rec.input_tokens == count_prompt(request, rec.model_used or "", "openai").n > 0


def test_stream_closed_early_keeps_provider_usage_when_it_came() -> None:
    pytest.importorskip("thrifty.ledger.tokens")
    evs: list[StreamEvent] = [
        StreamStart("s", "gpt-4o-mini"),
        UsageEvent(Usage(input_tokens=77, output_tokens=1)),
    ]
    evs += [TextDelta(t) for t in TEXT]
    pipeline, sink, ctx, request = setup(lambda r: sync_stream(evs), stream=True)
    stream = pipeline.handle(request, ctx)
    it = iter(stream)  # type: ignore[arg-type]
    for _ in range(5):
        next(it)
    stream.close()
    rec = sink.records[0]
    assert rec.status == "client_disconnected"
    assert rec.input_tokens == 77  # the provider's count of the prompt
    assert rec.output_tokens > 1 and rec.usage_source == "estimate"  # the text sent after it, counted


def test_stream_closed_before_iteration_closes_upstream() -> None:
    closed = Closed()
    pipeline, sink, ctx, request = setup(lambda r: sync_stream(events(), closed), stream=True)
    stream = pipeline.handle(request, ctx)
    stream.close()  # type: ignore[union-attr]
    assert closed.count == 1
    [rec] = sink.records
    assert rec.status == "client_disconnected" and rec.ttft_ms is None


def test_stream_error_event() -> None:
    error = UpstreamError("overloaded", status_code=529)
    pipeline, sink, ctx, request = setup(lambda r: sync_stream(events(error=error)), stream=True)
    seen = list(pipeline.handle(request, ctx))  # type: ignore[call-overload]
    assert isinstance(seen[-1], StreamError)
    [rec] = sink.records
    assert (rec.status, rec.error_type, rec.http_status) == ("error", "UpstreamError", 529)


def test_stream_that_raises_mid_way() -> None:
    def broken() -> Iterator[StreamEvent]:
        yield StreamStart("s", "gpt-4o-mini")
        yield TextDelta("partial")
        raise ConnectionResetError("peer went away")

    pipeline, sink, ctx, request = setup(lambda r: EventStream(broken()), stream=True)
    with pytest.raises(ConnectionResetError):
        list(pipeline.handle(request, ctx))  # type: ignore[call-overload]
    [rec] = sink.records
    assert (rec.status, rec.error_type) == ("error", "ConnectionResetError")


# ---------------------------------------------------------------- async


async def test_async_ok_and_error() -> None:
    pipeline, sink, ctx, request = setup(lambda r: response())
    assert isinstance(await pipeline.ahandle(request, ctx), Response)
    assert sink.records[0].status == "ok" and sink.records[0].usage == USAGE

    def fail(r: Request) -> Response:
        raise UpstreamError("bad gateway", status_code=502)

    pipeline, sink, ctx, request = setup(fail)
    with pytest.raises(UpstreamError):
        await pipeline.ahandle(request, ctx)
    assert (sink.records[0].status, sink.records[0].http_status) == ("error", 502)


async def test_async_stream_exhausted() -> None:
    closed = Closed()
    pipeline, sink, ctx, request = setup(lambda r: async_stream(events(), closed), stream=True)
    stream = await pipeline.ahandle(request, ctx)
    assert isinstance(stream, AsyncEventStream)
    seen = [ev async for ev in stream]
    assert len(seen) == len(events())
    await stream.aclose()
    [rec] = sink.records
    assert rec.status == "ok" and rec.usage == USAGE and closed.count == 1 and rec.ttft_ms is not None


async def test_async_stream_closed_early() -> None:
    pytest.importorskip("thrifty.ledger.tokens")
    closed = Closed()
    pipeline, sink, ctx, request = setup(lambda r: async_stream(events(usage=False), closed), stream=True)
    stream = await pipeline.ahandle(request, ctx)
    async for ev in stream:  # type: ignore[union-attr]
        if isinstance(ev, TextDelta):
            break
    await stream.aclose()  # type: ignore[union-attr]
    [rec] = sink.records
    assert rec.status == "client_disconnected" and rec.usage_source == "estimate"
    assert rec.output_tokens > 0 and closed.count == 1


async def test_async_stream_closed_before_iteration() -> None:
    closed = Closed()
    pipeline, sink, ctx, request = setup(lambda r: async_stream(events(), closed), stream=True)
    stream = await pipeline.ahandle(request, ctx)
    await stream.aclose()  # type: ignore[union-attr]
    assert closed.count == 1 and sink.records[0].status == "client_disconnected"


async def test_async_cancelled_call() -> None:
    started = asyncio.Event()

    class Slow(FakeProvider):
        async def asend(self, request: Request, ctx: CallContext) -> Response:
            started.set()
            await asyncio.sleep(10)
            return response()

    sink = Sink()
    pipeline = Pipeline([LedgerObserver(sink)], ToProvider())
    ctx = CallContext(entry="proxy", wire="openai", target=Target(Slow(lambda r: None), "gpt-4o-mini"))
    task = asyncio.create_task(pipeline.ahandle(Request(model="gpt-4o-mini", messages=[]), ctx))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (sink.records[0].status, sink.records[0].error_type) == ("cancelled", "CancelledError")


# ---------------------------------------------------------------- with a real recorder


def test_rows_reach_the_database(sqlite_url: str, tmp_path: Any, count_rows: Callable[..., int]) -> None:
    with Recorder(sqlite_url, LedgerSettings(flush_interval_s=0.02), data_dir=tmp_path) as recorder:
        pipeline = Pipeline([LedgerObserver(recorder)], ToProvider())
        provider = FakeProvider(lambda r: response() if not r.stream else sync_stream(events()))
        for stream in (False, True):
            ctx = CallContext(entry="wrapper", wire="openai", target=Target(provider, "gpt-4o-mini"))
            result = pipeline.handle(Request(model="gpt-4o-mini", messages=[], stream=stream), ctx)
            if stream:
                list(result)  # type: ignore[call-overload]
        assert recorder.flush(10)
    assert count_rows(sqlite_url, "llm_calls", "WHERE status = 'ok' AND cost_usd > 0") == 2


def test_observer_cost_per_call_is_tiny() -> None:
    """The observer's own share of the wrapper's < 0.5 ms p50 budget."""
    sink = Sink()
    resp = response()

    class Instant:
        def handle(self, request: Request, ctx: CallContext) -> Response:
            return resp

        async def ahandle(self, request: Request, ctx: CallContext) -> Response:
            return resp

    observer = LedgerObserver(sink)
    observer.next = Instant()
    bare = Instant()
    provider = FakeProvider(lambda r: resp)
    request = Request(model="gpt-4o-mini", messages=[])
    timings = []
    for _ in range(3000):
        ctx = CallContext(entry="wrapper", wire="openai", target=Target(provider, "gpt-4o-mini"))
        t0 = time.perf_counter()
        observer.handle(request, ctx)
        t1 = time.perf_counter()
        bare.handle(request, ctx)
        t2 = time.perf_counter()
        timings.append((t1 - t0) - (t2 - t1))
        if len(sink.records) > 100:
            sink.records.clear()
    p50_us = statistics.median(timings) * 1e6
    assert p50_us < 50, f"observer p50 {p50_us:.1f} us per call"


def test_datetime_is_utc() -> None:
    pipeline, sink, ctx, request = setup(lambda r: response())
    pipeline.handle(request, ctx)
    assert sink.records[0].started_at <= datetime.now(UTC)


def test_price_inline_for_entries_that_answer_with_the_cost() -> None:
    sink = Sink()
    provider = FakeProvider(lambda r: response())
    pipeline = Pipeline([LedgerObserver(sink, price_inline=True)], ToProvider())
    ctx = CallContext(entry="proxy", wire="openai", target=Target(provider, "gpt-4o-mini"))
    pipeline.handle(Request(model="gpt-4o-mini", messages=[]), ctx)
    [rec] = sink.records
    assert ctx.result is rec and rec.price_source == "genai-prices"
    assert rec.cost_usd is not None and rec.cost_usd > 0
