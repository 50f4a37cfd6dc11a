"""The ledger observer: the innermost pipeline stage, one ledger row per upstream attempt.

It times the upstream call, reads usage from the response (or from the last
:class:`~thrifty.types.UsageEvent` of a stream), and hands a
:class:`~thrifty.ledger.record.LedgerRecord` to the recorder. It does no
database work, no pricing and no token counting on the way through: the
recorder prices records in its own thread. The record is also left in
``ctx.result`` for the entry (for cost or savings headers; call
:func:`thrifty.ledger.recorder.price_record` to price it inline).

Streams are passed through event by event; their row is finalized exactly once,
when the stream closes: ``ok`` when exhausted, ``error`` after a
:class:`~thrifty.types.StreamError` or an exception, ``client_disconnected``
when closed early. A stream without a usage event (closed early, or from an
upstream that reports none) gets estimated usage (``usage_source =
"estimate"``), counted from the prompt and the streamed text.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from time import perf_counter
from typing import Protocol

from thrifty.ledger.record import LedgerRecord, Status
from thrifty.middleware.context import CallContext
from thrifty.middleware.pipeline import Stage
from thrifty.types import (
    AsyncEventStream,
    AsyncTap,
    EventStream,
    Request,
    Response,
    StreamError,
    StreamEvent,
    StreamStart,
    Tap,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

__all__ = ["LedgerObserver", "RecordSink"]

log = logging.getLogger("thrifty.ledger")


class RecordSink(Protocol):
    """Where the observer sends records: a :class:`~thrifty.ledger.recorder.Recorder`, or any ``submit``."""

    def submit(self, record: LedgerRecord) -> None: ...


class LedgerObserver(Stage):
    """Writes one ledger row per upstream attempt (see the module docstring).

    ``store_prompts`` attaches the request and the response to each record (the
    recorder writes them only if its settings opt in); by default it follows
    the recorder's ``store_prompts``. ``price_inline`` prices each record before
    handing it over, for an entry that answers with the cost (the proxy's
    headers); otherwise the recorder prices it off the request path. An entry
    reads ``ctx.result`` but must not change it: the recorder owns it once submitted.
    """

    kind = "ledger"

    def __init__(
        self, recorder: RecordSink, *, store_prompts: bool | None = None, price_inline: bool = False
    ) -> None:
        self.recorder = recorder
        self.price_inline = price_inline
        self._submit = recorder.submit if not price_inline else self._price_and_submit
        if store_prompts is None:
            store_prompts = bool(getattr(recorder, "store_prompts", False))
        self.store_prompts = store_prompts

    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream:
        t_call = perf_counter()
        try:
            result = self.next.handle(request, ctx)
        except Exception as exc:
            self._failed(request, ctx, t_call, exc, Status.ERROR)
            raise
        except BaseException as exc:
            self._failed(request, ctx, t_call, exc, Status.CANCELLED)
            raise
        if isinstance(result, Response):
            self._succeeded(request, ctx, t_call, result)
            return result
        if isinstance(result, EventStream):
            return self._tap(request, ctx, t_call, result)
        return result

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        t_call = perf_counter()
        try:
            result = await self.next.ahandle(request, ctx)
        except Exception as exc:
            self._failed(request, ctx, t_call, exc, Status.ERROR)
            raise
        except BaseException as exc:  # CancelledError: the caller went away mid-call
            self._failed(request, ctx, t_call, exc, Status.CANCELLED)
            raise
        if isinstance(result, Response):
            self._succeeded(request, ctx, t_call, result)
            return result
        if isinstance(result, AsyncEventStream):
            return self._atap(request, ctx, t_call, result)
        return result

    def _price_and_submit(self, record: LedgerRecord) -> None:
        from thrifty.ledger.recorder import price_record

        price_record(record)
        self.recorder.submit(record)

    def record_failure(self, request: Request, ctx: CallContext, exc: BaseException) -> None:
        """Write the row of a call that failed before it reached this stage (an unknown model, say)."""
        status = Status.ERROR if isinstance(exc, Exception) else Status.CANCELLED
        self._failed(request, ctx, perf_counter(), exc, status)

    # ------------------------------------------------------------ rows

    def _record(self, request: Request, ctx: CallContext, t_call: float, now: float) -> LedgerRecord:
        target = ctx.target
        if target is not None:
            provider = target.provider
            provider_name: str | None = provider.name
            pricing_id = provider.pricing_id
            is_local = provider.is_local
            model: str | None = target.model
        else:
            provider_name = pricing_id = None
            is_local = False
            model = request.model
        options = ctx.options
        tags = ctx.tags
        if options.tags:
            tags = [*tags, *options.tags]
        record = LedgerRecord(
            call_id=ctx.call_id,
            started_at=datetime.fromtimestamp(ctx.started_at, UTC),
            entry=ctx.entry,
            wire=ctx.wire,
            parent_call_id=ctx.parent_call_id,
            attempt=ctx.attempt,
            stream=request.stream,
            duration_ms=(now - ctx.started) * 1000.0,
            overhead_ms=(t_call - ctx.started) * 1000.0,
            provider=provider_name,
            model_requested=ctx.model_requested or request.model,
            model_used=model,
            route_decision=ctx.route_decision,
            key_id=ctx.key_id,
            user=ctx.user or options.user,
            project=ctx.project or options.project,
            tags=list(tags),
            pricing_id=pricing_id,
            is_local=is_local,
        )
        if ctx.savings:
            record.set_savings(ctx.savings)
        if self.store_prompts:
            record.prompt = request
        ctx.upstream_ms = (now - t_call) * 1000.0
        ctx.result = record
        return record

    def _succeeded(self, request: Request, ctx: CallContext, t_call: float, response: Response) -> None:
        try:
            record = self._record(request, ctx, t_call, perf_counter())
            usage = response.usage
            record.input_tokens = usage.input_tokens
            record.output_tokens = usage.output_tokens
            record.cache_read_tokens = usage.cache_read_tokens
            record.cache_write_tokens = usage.cache_write_tokens
            record.reasoning_tokens = usage.reasoning_tokens
            record.usage_source = usage.source
            if response.model:
                record.model_used = response.model
            record.response_id = response.id or None
            if self.store_prompts:
                record.response = response
            if ctx.output_judge is not None and _fails_contract(ctx, response):
                record.status = Status.INVALID_OUTPUT
                record.error_type = "OutputValidationError"
            self._submit(record)
        except Exception:
            log.exception("ledger: could not record call %s", ctx.call_id)

    def _failed(
        self, request: Request, ctx: CallContext, t_call: float, exc: BaseException, status: str
    ) -> None:
        try:
            record = self._record(request, ctx, t_call, perf_counter())
            record.status = status
            record.error_type = type(exc).__name__
            record.http_status = _http_status(exc)
            self._submit(record)
        except Exception:
            log.exception("ledger: could not record failed call %s", ctx.call_id)

    # ------------------------------------------------------------ streams

    def _tap(self, request: Request, ctx: CallContext, t_call: float, inner: EventStream) -> EventStream:
        account = _StreamAccount(self, request, ctx, t_call)
        stream = EventStream(Tap(inner, account))
        stream.on_close(account.finalize)
        return stream

    def _atap(
        self, request: Request, ctx: CallContext, t_call: float, inner: AsyncEventStream
    ) -> AsyncEventStream:
        account = _StreamAccount(self, request, ctx, t_call)
        stream = AsyncEventStream(AsyncTap(inner, account))
        stream.on_close(account.finalize)
        return stream


class _StreamAccount:
    """What a stream carried so far; becomes the row when the stream closes."""

    __slots__ = (
        "ctx",
        "error",
        "exhausted",
        "finalized",
        "first_token_at",
        "observer",
        "record",
        "request",
        "t_call",
        "texts",
        "tool_args",
        "usage",
    )

    def __init__(self, observer: LedgerObserver, request: Request, ctx: CallContext, t_call: float) -> None:
        self.observer = observer
        self.request = request
        self.ctx = ctx
        self.t_call = t_call
        self.record: LedgerRecord | None = None
        try:
            self.record = observer._record(request, ctx, t_call, perf_counter())
        except Exception:
            log.exception("ledger: could not start the record of stream %s", ctx.call_id)
        self.first_token_at: float | None = None
        self.usage: Usage | None = None
        self.texts: list[str] = []
        self.tool_args: list[str] = []
        self.error: BaseException | None = None
        self.exhausted = False
        self.finalized = False

    def see(self, event: StreamEvent) -> None:
        if isinstance(event, TextDelta):
            if self.first_token_at is None:
                self.first_token_at = perf_counter()
            self.texts.append(event.text)
        elif isinstance(event, ToolCallDelta):
            if self.first_token_at is None:
                self.first_token_at = perf_counter()
            if event.name:
                self.tool_args.append(event.name)
            self.tool_args.append(event.arguments)
        elif isinstance(event, UsageEvent):
            self.usage = event.usage
        elif isinstance(event, StreamStart):
            record = self.record
            if record is not None:
                if event.model:
                    record.model_used = event.model
                record.response_id = event.id or None
        elif isinstance(event, StreamError):
            self.error = event.error

    def finalize(self) -> None:
        if self.finalized:
            return
        self.finalized = True
        record = self.record
        if record is None:
            return
        try:
            self._finish(record)
            self.observer._submit(record)
        except Exception:
            log.exception("ledger: could not record stream %s", self.ctx.call_id)

    def _finish(self, record: LedgerRecord) -> None:
        ctx = self.ctx
        now = perf_counter()
        record.duration_ms = (now - ctx.started) * 1000.0
        ctx.upstream_ms = (now - self.t_call) * 1000.0
        if self.first_token_at is not None:
            record.ttft_ms = (self.first_token_at - ctx.started) * 1000.0
        if self.error is not None:
            record.status = Status.ERROR
            record.error_type = type(self.error).__name__
            record.http_status = _http_status(self.error)
        elif self.exhausted:
            record.status = Status.OK
        else:
            record.status = Status.CLIENT_DISCONNECTED
        streamed = "".join(self.texts)
        if self.usage is not None:
            record.set_usage(self.usage)
            if not self.exhausted and (streamed or self.tool_args):
                # closed early: the last usage event may predate the last tokens sent
                output = self._count_output(streamed, record)
                if output is not None and output > record.output_tokens:
                    record.output_tokens = output
                    record.usage_source = "estimate"
        elif streamed or self.tool_args or record.status != Status.ERROR:
            self._estimate(streamed, record)
        if self.observer.store_prompts:
            record.response = {"text": streamed, "tool_calls": "".join(self.tool_args) or None}

    def _model(self, record: LedgerRecord) -> str:
        return record.model_used or record.model_requested or self.request.model

    def _count_output(self, streamed: str, record: LedgerRecord) -> int | None:
        try:
            from thrifty.ledger.tokens import count_text

            model = self._model(record)
            n = count_text(streamed, model) if streamed else 0
            if self.tool_args:
                n += count_text("".join(self.tool_args), model)
            return n
        except Exception:
            log.debug("ledger: could not count streamed tokens", exc_info=True)
            return None

    def _estimate(self, streamed: str, record: LedgerRecord) -> None:
        """Usage for a stream that reported none: the prompt and the streamed text, counted here."""
        output = self._count_output(streamed, record)
        prompt: int | None = None
        try:
            from thrifty.ledger.tokens import count_prompt

            target = self.ctx.target
            kind = target.provider.kind if target is not None else ""
            prompt = count_prompt(self.request, self._model(record), kind).n
        except Exception:
            log.debug("ledger: could not count prompt tokens", exc_info=True)
        if output is None and prompt is None:
            return
        record.input_tokens = prompt or 0
        record.output_tokens = output or 0
        record.usage_source = "estimate"


def _fails_contract(ctx: CallContext, response: Response) -> bool:
    """Whether the answer fails the output contract the structured-output stage judges it by."""
    try:
        return bool(ctx.output_judge(response))
    except Exception:
        log.exception("ledger: could not judge the answer of call %s", ctx.call_id)
        return False


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else None
