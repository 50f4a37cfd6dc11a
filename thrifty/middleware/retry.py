"""Retries and fallbacks: the ``retry`` stage.

An attempt that fails with a retryable upstream error is tried again on the
same model, with exponential backoff and jitter, up to ``max_attempts``; then
the call moves to the next fallback model (set by routing, from an alias's
``fallbacks``), which gets ``max_attempts`` of its own, and so on.

Retryable: an :class:`~thrifty.errors.UpstreamError` whose status is in
``on_status``, an :class:`~thrifty.errors.UpstreamTimeoutError` when
``on_timeout``, an :class:`~thrifty.errors.UpstreamConnectionError`. Nothing
else: not the upstream's 400s, and never thrifty's own errors (bad requests,
authentication, permissions, thrifty's budgets and rate limits). The same
failures move a call on to its fallbacks.

Waits. Before retry *n* on one model the stage waits
``min(max_backoff_s, backoff_s * 2**(n-1))``, scaled by a jitter in [0.5, 1].
An upstream ``retry-after`` (or ``retry-after-ms``) header replaces that wait;
when it asks for more than ``max_backoff_s`` the model is not retried and the
call moves straight on to its next fallback (or fails with that answer, its
``retry-after`` header included). Moving to a fallback does not wait. A wait
that would end past the call's deadline (``ctx.deadline``) is not taken: the
call moves to a fallback, or, with the deadline already past or no fallback
left, fails with the last error.

Attempts and the ledger. The first attempt runs on the call's own context, so
its ledger row has the call's id (the id entries answer with, e.g. the
``x-thrifty-request-id`` header). Each later attempt gets ``ctx.child()``: a
new call id, ``parent_call_id`` = the call's id, ``attempt`` counting on
(2, 3, ...) across models, and its own ``target``; a fallback attempt's
``route_decision`` is ``<the call's decision>>fallback:<model>``. So one call
is the row with its id plus the rows whose parent it is, in attempt order.
When the call ends, the call's context gets the last attempt's ``target``,
``route_decision``, ``result`` (its ledger record) and ``upstream_ms``. The
request a fallback gets is the one earlier stages prepared for the first model,
with only the model name changed.

Streams are retried only before they deliver anything: a failure when
connecting or an error status (raised by the provider), or a stream whose
first event is a :class:`~thrifty.types.StreamError`. Once a first event has
been delivered, later errors stay inside the stream. When a stream gives up
before its first event, the last error comes as a ``StreamError`` event.

Wrapped SDK clients retry on their own (the openai and anthropic SDKs retry
429s, 5xx and connection errors twice by default), so for calls with
``entry == "wrapper"`` thrifty does not retry unless the call's alias says so:
an alias with ``fallbacks`` gets them, tried once each (``max_attempts`` 1 per
model, ``on_status``/``on_timeout`` from ``[retry]``), and an alias with its
own ``retry`` table gets those retries. ``RetryStage(retry_wrapped=True)``
(``Engine(retry=True)``) retries wrapped calls like proxied ones. Proxied
calls are retried by ``[retry]`` (2 attempts per model by default).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from thrifty.errors import UpstreamConnectionError, UpstreamError, UpstreamTimeoutError
from thrifty.middleware.context import CallContext, Target
from thrifty.middleware.pipeline import Stage
from thrifty.settings import RetrySettings
from thrifty.types import AsyncEventStream, EventStream, Request, Response, StreamError, StreamEvent

if TYPE_CHECKING:
    from thrifty.middleware.providers.base import Provider

__all__ = ["RetryStage", "is_retryable", "retry_after_s"]

Resolve = Callable[[str, "Provider | None"], Target]


def is_retryable(exc: BaseException, retry: RetrySettings) -> bool:
    """Whether ``exc`` is an upstream failure that ``retry`` says to try again (or fall back on)."""
    if isinstance(exc, UpstreamTimeoutError):
        return retry.on_timeout
    if isinstance(exc, UpstreamConnectionError):
        return True
    if isinstance(exc, UpstreamError):
        return exc.status_code in retry.on_status
    return False


def retry_after_s(exc: BaseException) -> float | None:
    """The wait the upstream asked for in ``retry-after-ms`` or ``retry-after`` (seconds or a date)."""
    headers = getattr(exc, "headers", None)
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    value = lower.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RetryStage(Stage):
    """Retries and fallbacks (see the module docstring).

    ``settings``: the engine's ``[retry]``; ``resolve``: resolves a fallback
    model name to a target (:meth:`Engine.resolve`); ``retry_wrapped``: retry
    wrapped clients' calls too; ``jitter``: a source of numbers in [0, 1).
    """

    kind = "retry"

    def __init__(
        self,
        settings: RetrySettings,
        resolve: Resolve,
        *,
        retry_wrapped: bool = False,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.resolve = resolve
        self.retry_wrapped = retry_wrapped
        self.jitter = jitter
        # wrapped calls whose alias has fallbacks but no retry table: each model once
        self._fallbacks_only = settings.model_copy(update={"max_attempts": 1})

    def _start(self, request: Request, ctx: CallContext) -> _Run | None:
        retry = ctx.retry
        if retry is None:
            if ctx.entry == "wrapper" and not self.retry_wrapped:
                if not ctx.fallbacks:
                    return None
                retry = self._fallbacks_only
            else:
                retry = self.settings
        if retry.max_attempts <= 1 and not ctx.fallbacks:
            return None
        return _Run(self, retry, request, ctx)

    # ------------------------------------------------------------------ sync

    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream:
        run = self._start(request, ctx)
        if run is None:
            return self.next.handle(request, ctx)
        try:
            result = self.next.handle(request, ctx)
        except Exception as exc:
            error = exc
        else:
            error = None
        if error is not None:
            result = self._retry(run, error)
        if isinstance(result, EventStream) and run.can_go_on():
            return EventStream(_RetryingStream(self, run, result))
        return result

    def _retry(self, run: _Run, error: Exception) -> Response | EventStream:
        """Attempts after ``error``, until one answers; raises the last error when it gives up."""
        while True:
            wait = run.failed(error)
            if wait is None:
                run.finish()
                raise error
            if wait > 0:
                time.sleep(wait)
            request, ctx = run.advance()
            try:
                result = self.next.handle(request, ctx)
            except Exception as exc:
                error = exc
                continue
            run.finish()
            return result

    # ------------------------------------------------------------------ async

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        run = self._start(request, ctx)
        if run is None:
            return await self.next.ahandle(request, ctx)
        try:
            result = await self.next.ahandle(request, ctx)
        except Exception as exc:
            error = exc
        else:
            error = None
        if error is not None:
            result = await self._aretry(run, error)
        if isinstance(result, AsyncEventStream) and run.can_go_on():
            return AsyncEventStream(_AsyncRetryingStream(self, run, result))
        return result

    async def _aretry(self, run: _Run, error: Exception) -> Response | AsyncEventStream:
        while True:
            wait = run.failed(error)
            if wait is None:
                run.finish()
                raise error
            if wait > 0:
                await asyncio.sleep(wait)
            request, ctx = run.advance()
            try:
                result = await self.next.ahandle(request, ctx)
            except Exception as exc:
                error = exc
                continue
            run.finish()
            return result


class _Run:
    """The attempts of one call: which model, how many tries on it, the attempt's context."""

    __slots__ = ("ctx", "decision", "first", "index", "request", "retry", "stage", "tries")

    def __init__(self, stage: RetryStage, retry: RetrySettings, request: Request, ctx: CallContext) -> None:
        self.stage = stage
        self.retry = retry
        self.first = ctx  # the call's own context: the first attempt's, and what the entry reads
        self.ctx = ctx  # the attempt running now
        self.request = request
        self.decision = ctx.route_decision  # the routing's, before any fallback
        self.index = 0  # 0: the routed model; i: ctx.fallbacks[i - 1]
        self.tries = 1  # attempts on the current model so far

    def can_go_on(self) -> bool:
        return self.tries < self.retry.max_attempts or self.index < len(self.first.fallbacks)

    def failed(self, error: BaseException) -> float | None:
        """The wait before the next attempt after ``error``, or None to give up."""
        retry = self.retry
        if not is_retryable(error, retry):
            return None
        deadline = self.first.deadline
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        if self.tries < retry.max_attempts:
            asked = retry_after_s(error)
            if asked is None or asked <= retry.max_backoff_s:
                wait = asked if asked is not None else self._backoff()
                if left is None or wait < left:
                    self.tries += 1
                    return wait
        if self.index < len(self.first.fallbacks):
            self.index += 1
            self.tries = 1
            return 0.0
        return None

    def _backoff(self) -> float:
        retry = self.retry
        base = min(retry.max_backoff_s, retry.backoff_s * 2 ** (self.tries - 1))
        return base * (0.5 + 0.5 * self.stage.jitter())

    def advance(self) -> tuple[Request, CallContext]:
        """The request and context of the next attempt (after :meth:`failed` said to go on)."""
        ctx = self.ctx.child()
        if self.tries == 1:  # a fallback model: resolved like a requested model name
            name = self.first.fallbacks[self.index - 1]
            ctx.target = self.stage.resolve(name, ctx.bound_provider)
            decision = self.decision
            ctx.route_decision = f"{decision}>fallback:{name}" if decision else f"fallback:{name}"
            if self.request.model != ctx.target.model:
                self.request = self.request.replace(model=ctx.target.model)
        self.ctx = ctx
        return self.request, ctx

    def finish(self) -> None:
        """Leave the last attempt's facts on the call's context, for the entry to answer with."""
        self.first.adopt(self.ctx)


class _RetryingStream:
    """A stream that is retried while it has delivered nothing, then passed through."""

    __slots__ = ("_it", "_run", "_stage", "_started", "_stream")

    def __init__(self, stage: RetryStage, run: _Run, stream: EventStream) -> None:
        self._stage = stage
        self._run = run
        self._stream = stream
        self._it: Iterator[StreamEvent] | None = None
        self._started = False

    def __iter__(self) -> _RetryingStream:
        return self

    def __next__(self) -> StreamEvent:
        if self._it is None:
            self._it = iter(self._stream)
        if self._started:
            return next(self._it)
        while True:
            event: StreamEvent | None
            try:
                event = next(self._it)
            except StopIteration:
                self._started = True
                raise
            except Exception as exc:
                event, error = None, exc
            else:
                if not isinstance(event, StreamError):
                    self._started = True
                    return event
                error = event.error
            self.close()
            try:
                stream = self._stage._retry(self._run, error)
            except Exception as exc:
                self._started = True
                self._it = iter(())
                return event if event is not None and exc is error else StreamError(exc)
            if not isinstance(stream, EventStream):  # pragma: no cover - a stream request gets a stream
                raise TypeError(f"a stream request was answered with {type(stream).__name__}")
            self._stream = stream
            self._it = iter(stream)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        try:
            if close is not None:
                close()  # the stream's own iterator, which closes the stream
        finally:
            self._stream.close()


class _AsyncRetryingStream:
    """The async twin of :class:`_RetryingStream`."""

    __slots__ = ("_it", "_run", "_stage", "_started", "_stream")

    def __init__(self, stage: RetryStage, run: _Run, stream: AsyncEventStream) -> None:
        self._stage = stage
        self._run = run
        self._stream = stream
        self._it: AsyncIterator[StreamEvent] | None = None
        self._started = False

    def __aiter__(self) -> _AsyncRetryingStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._it is None:
            self._it = self._stream.__aiter__()
        if self._started:
            return await self._it.__anext__()
        while True:
            event: StreamEvent | None
            try:
                event = await self._it.__anext__()
            except StopAsyncIteration:
                self._started = True
                raise
            except Exception as exc:
                event, error = None, exc
            else:
                if not isinstance(event, StreamError):
                    self._started = True
                    return event
                error = event.error
            await self.aclose()
            try:
                stream = await self._stage._aretry(self._run, error)
            except Exception as exc:
                self._started = True
                self._it = _empty()
                return event if event is not None and exc is error else StreamError(exc)
            if not isinstance(stream, AsyncEventStream):  # pragma: no cover
                raise TypeError(f"a stream request was answered with {type(stream).__name__}")
            self._stream = stream
            self._it = stream.__aiter__()

    async def aclose(self) -> None:
        aclose = getattr(self._it, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            await self._stream.aclose()


async def _empty() -> AsyncIterator[StreamEvent]:
    return
    yield  # pragma: no cover
