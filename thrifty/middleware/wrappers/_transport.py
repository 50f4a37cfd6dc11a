"""The HTTP transport a wrapped SDK client talks to.

``thrifty.wrap(client)`` returns a copy of the SDK client whose HTTP client
has this transport. The SDK builds its request as usual; the transport decodes
it with the wire's codec, runs thrifty's pipeline, and answers with the wire's
JSON or server-sent events, which the SDK parses into its own types (streams
included) and maps to its own exceptions. Requests to other endpoints
(embeddings, files, ...) go to the original client's HTTP client untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx2

from thrifty.errors import ThriftyError, UpstreamConnectionError, UpstreamTimeoutError
from thrifty.middleware.context import CallContext, ThriftyOptions
from thrifty.middleware.engine import Engine
from thrifty.middleware.entry import (
    JSON_HEADERS,
    SSE_HEADERS,
    asse_chunks,
    decode_call,
    key_hash,
    new_context,
    sse_chunks,
    wire,
)
from thrifty.middleware.providers._http import HTTPProvider, forwardable_headers
from thrifty.types import AsyncEventStream, EventStream, Request, Response


@dataclass(slots=True)
class Binding:
    """What ties a wrapped client to thrifty: its wire, its endpoint and its own provider."""

    wire: str
    codec: ModuleType
    endpoint: str  # path suffix of the intercepted endpoint
    provider: HTTPProvider
    passthrough: httpx2.Client | httpx2.AsyncClient


class _Entry:
    """The wrapper's way in and out: an SDK's httpx2 request in, an httpx2 response out.

    Everything else (decoding, the context, encoding, stream framing) is
    :mod:`thrifty.middleware.entry`, shared with the proxy.
    """

    def __init__(self, engine: Engine, binding: Binding) -> None:
        self.engine = engine
        self.binding = binding
        self.wire = wire(binding.wire)

    def intercepts(self, request: httpx2.Request) -> bool:
        return request.method == "POST" and request.url.path.endswith(self.binding.endpoint)

    def begin(self, request: httpx2.Request) -> tuple[Request, CallContext]:
        neutral, raw_options = decode_call(self.wire, request.content)
        headers = request.headers
        retries = headers.get("x-stainless-retry-count")
        ctx = new_context(
            "wrapper",
            self.wire,
            neutral,
            ThriftyOptions.parse(raw_options),
            attempt=int(retries) + 1 if retries and retries.isdigit() else 1,
            key_id=self._key_id(headers),
            bound_provider=self.binding.provider,
            upstream_headers=forwardable_headers(headers),
            upstream_timeout=request.extensions.get("timeout"),
        )
        return neutral, ctx

    def _key_id(self, headers: httpx2.Headers) -> str | None:
        secret = headers.get("authorization") or headers.get("x-api-key")
        if not secret:
            return None
        return key_hash(secret)

    def headers(self, ctx: CallContext, base: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [*base, ("x-thrifty-request-id", ctx.call_id)]

    def answer(self, result: Response, ctx: CallContext) -> httpx2.Response:
        return httpx2.Response(200, headers=self.headers(ctx, JSON_HEADERS), content=self.wire.encode_response(result))

    def stream(self, result: EventStream | AsyncEventStream, neutral: Request, ctx: CallContext) -> httpx2.Response:
        encoder = self.wire.stream_encoder(neutral)
        body = _AsyncSSEBody(result, encoder) if isinstance(result, AsyncEventStream) else _SSEBody(result, encoder)
        return httpx2.Response(200, headers=self.headers(ctx, SSE_HEADERS), stream=body)

    def error(self, exc: Exception, ctx: CallContext | None) -> httpx2.Response:
        if isinstance(exc, UpstreamTimeoutError):
            raise httpx2.ReadTimeout(exc.message) from exc
        if isinstance(exc, UpstreamConnectionError):
            raise httpx2.ConnectError(exc.message) from exc
        if not isinstance(exc, ThriftyError):
            raise exc
        headers = list(JSON_HEADERS)
        if ctx is not None:
            headers.append(("x-thrifty-request-id", ctx.call_id))
        headers.extend(getattr(exc, "headers", {}).items())
        return httpx2.Response(exc.status_code, headers=headers, content=self.wire.error_content(exc))


class _SSEBody(httpx2.SyncByteStream):
    def __init__(self, events: EventStream, encoder: Any) -> None:
        self._events = events
        self._encoder = encoder

    def __iter__(self) -> Iterator[bytes]:
        return sse_chunks(self._events, self._encoder)

    def close(self) -> None:
        self._events.close()


class _AsyncSSEBody(httpx2.AsyncByteStream):
    def __init__(self, events: AsyncEventStream, encoder: Any) -> None:
        self._events = events
        self._encoder = encoder

    def __aiter__(self) -> AsyncIterator[bytes]:
        return asse_chunks(self._events, self._encoder)

    async def aclose(self) -> None:
        await self._events.aclose()


class WrapperTransport(httpx2.BaseTransport):
    def __init__(self, engine: Engine, binding: Binding) -> None:
        self._entry = _Entry(engine, binding)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        entry = self._entry
        if not entry.intercepts(request):
            return _forward(entry.binding.passthrough, request)  # type: ignore[arg-type]
        ctx = None
        try:
            request.read()
            neutral, ctx = entry.begin(request)
            result = entry.engine.handle(neutral, ctx)
        except Exception as exc:
            return entry.error(exc, ctx)
        if isinstance(result, EventStream):
            return entry.stream(result, neutral, ctx)
        return entry.answer(result, ctx)

    def close(self) -> None:
        pass


class AsyncWrapperTransport(httpx2.AsyncBaseTransport):
    def __init__(self, engine: Engine, binding: Binding) -> None:
        self._entry = _Entry(engine, binding)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        entry = self._entry
        if not entry.intercepts(request):
            return await _aforward(entry.binding.passthrough, request)  # type: ignore[arg-type]
        ctx = None
        try:
            await request.aread()
            neutral, ctx = entry.begin(request)
            result = await entry.engine.ahandle(neutral, ctx)
        except Exception as exc:
            return entry.error(exc, ctx)
        if isinstance(result, AsyncEventStream):
            return entry.stream(result, neutral, ctx)
        return entry.answer(result, ctx)

    async def aclose(self) -> None:
        pass


def _forward(client: httpx2.Client, request: httpx2.Request) -> httpx2.Response:
    answer = client.send(request, stream=True)
    return httpx2.Response(answer.status_code, headers=answer.headers, stream=answer.stream,
                           extensions=answer.extensions)


async def _aforward(client: httpx2.AsyncClient, request: httpx2.Request) -> httpx2.Response:
    answer = await client.send(request, stream=True)
    return httpx2.Response(answer.status_code, headers=answer.headers, stream=answer.stream,
                           extensions=answer.extensions)
