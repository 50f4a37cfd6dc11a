"""What the OpenAI-wire and Anthropic-wire providers share: an HTTP client and error mapping.

The provider encodes the neutral request with its wire's codec, posts it,
and decodes the answer (JSON or server-sent events) back to neutral types.
Transport failures map to :class:`UpstreamTimeoutError` and
:class:`UpstreamConnectionError`; HTTP error answers to :class:`UpstreamError`
with the upstream's status and body, so callers see the upstream's own error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx2

from thrifty.errors import AuthenticationError, UpstreamConnectionError, UpstreamError, UpstreamTimeoutError
from thrifty.middleware.codecs._common import aiter_sse, decode_error, dumps, iter_sse
from thrifty.middleware.providers.base import Provider
from thrifty.types import AsyncEventStream, EventStream, Request, Response, StreamEvent

if TYPE_CHECKING:
    from thrifty.middleware.context import CallContext

# request headers never forwarded upstream (hop-by-hop, or set by the HTTP client)
_DROP_HEADERS = frozenset({"host", "content-length", "content-type", "connection", "transfer-encoding",
                           "accept-encoding", "keep-alive", "upgrade", "te", "trailer"})


def forwardable_headers(headers: Any) -> dict[str, str]:
    """The headers of an SDK's request worth sending on to the upstream it was meant for."""
    return {k: v for k, v in headers.items() if k.lower() not in _DROP_HEADERS and not k.lower().startswith("x-thrifty")}


class HTTPProvider(Provider):
    """A provider reached over HTTP in one wire format (set ``codec`` and ``path`` in subclasses)."""

    codec: ModuleType
    path: str

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        url: str | None = None,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 600.0,
        pricing_id: str | None = None,
        forward_client_headers: bool = False,
        client: httpx2.Client | None = None,
        async_client: httpx2.AsyncClient | None = None,
        key_hint: str = "",
    ) -> None:
        super().__init__(name, pricing_id=pricing_id)
        self.base_url = base_url.rstrip("/")
        self.url = url or self.base_url + self.path
        self._parsed_url = httpx2.URL(self.url)  # parsed once, not per call
        self._api_key = api_key
        self._headers = dict(headers or {})
        self._timeout = httpx2.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._forward = forward_client_headers
        self._client = client
        self._async_client = async_client
        self._owns_clients = client is None, async_client is None
        self._key_hint = key_hint

    # -- wiring

    def auth_headers(self, api_key: str) -> dict[str, str]:
        raise NotImplementedError

    def encode(self, request: Request) -> dict[str, Any]:
        return self.codec.encode_request(request)

    def _request_headers(self, ctx: CallContext) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self._forward:
            headers.update(ctx.upstream_headers)
        headers.update(self._headers)
        if self._api_key is not None:
            headers.update(self.auth_headers(self._api_key))
        elif not self._forward:
            raise AuthenticationError(
                f"no API key for provider {self.name!r}: {self._key_hint or 'configure providers.' + self.name + '.api_key'}"
            )
        return headers

    def _timeout_for(self, ctx: CallContext) -> httpx2.Timeout:
        asked = ctx.upstream_timeout
        if asked and self._forward:
            return httpx2.Timeout(**{k: asked.get(k) for k in ("connect", "read", "write", "pool")})
        return self._timeout

    @property
    def client(self) -> httpx2.Client:
        if self._client is None:
            self._client = httpx2.Client(timeout=self._timeout)
        return self._client

    @property
    def async_client(self) -> httpx2.AsyncClient:
        if self._async_client is None:
            from thrifty.middleware.providers._aio import async_transport

            # httpx2 on a plain-asyncio network backend: the same client, less time per call (see _aio)
            self._async_client = httpx2.AsyncClient(timeout=self._timeout, transport=async_transport())
        return self._async_client

    # -- sync

    def _build(self, client: httpx2.Client | httpx2.AsyncClient, request: Request, ctx: CallContext) -> httpx2.Request:
        return client.build_request(
            "POST", self._parsed_url, content=dumps(self.encode(request)), headers=self._request_headers(ctx),
            timeout=self._timeout_for(ctx),
        )

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        """Map the HTTP client's failures to thrifty's upstream errors."""
        try:
            yield
        except httpx2.TimeoutException as exc:
            raise UpstreamTimeoutError(f"provider {self.name!r} did not answer in time: {exc}") from exc
        except httpx2.TransportError as exc:
            raise UpstreamConnectionError(f"cannot reach provider {self.name!r} at {self.base_url}: {exc}") from exc

    def send(self, request: Request, ctx: CallContext) -> Response | EventStream:
        http_request = self._build(self.client, request, ctx)
        with self._transport_errors():
            answer = self.client.send(http_request, stream=request.stream)
        if answer.status_code >= 400:
            answer.read()
            answer.close()
            raise decode_error(answer.status_code, answer.content, _error_headers(answer))
        if not request.stream:
            return self.codec.decode_response(_json(answer.content, self.name))
        return EventStream(self._events(answer))

    def _events(self, answer: httpx2.Response) -> Iterator[StreamEvent]:
        decoder = self.codec.StreamDecoder()
        try:
            for event, data in iter_sse(answer.iter_lines()):
                if data.startswith("[DONE]"):
                    decoder.done = True
                    break
                yield from _feed(decoder, event, data, self.name)
            if not decoder.done:
                yield from _stream_failure(self.name, EOFError("the stream ended before its final event"))
        except httpx2.TransportError as exc:
            yield from _stream_failure(self.name, exc)
        finally:
            answer.close()

    # -- async

    async def asend(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        client = self.async_client
        http_request = self._build(client, request, ctx)
        with self._transport_errors():
            answer = await client.send(http_request, stream=request.stream)
        if answer.status_code >= 400:
            await answer.aread()
            await answer.aclose()
            raise decode_error(answer.status_code, answer.content, _error_headers(answer))
        if not request.stream:
            return self.codec.decode_response(_json(answer.content, self.name))
        return AsyncEventStream(self._aevents(answer))

    async def _aevents(self, answer: httpx2.Response) -> AsyncIterator[StreamEvent]:
        decoder = self.codec.StreamDecoder()
        try:
            async for event, data in aiter_sse(answer.aiter_lines()):
                if data.startswith("[DONE]"):
                    decoder.done = True
                    break
                for item in _feed(decoder, event, data, self.name):
                    yield item
            if not decoder.done:
                for item in _stream_failure(self.name, EOFError("the stream ended before its final event")):
                    yield item
        except httpx2.TransportError as exc:
            for item in _stream_failure(self.name, exc):
                yield item
        finally:
            await answer.aclose()

    def close(self) -> None:
        if self._owns_clients[0] and self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        self.close()
        if self._owns_clients[1] and self._async_client is not None:
            await self._async_client.aclose()


def _json(content: bytes, name: str) -> Any:
    try:
        return json.loads(content)
    except ValueError as exc:
        raise UpstreamError(f"provider {name!r} answered with something that is not JSON") from exc


def _feed(decoder: Any, event: str | None, data: str, name: str) -> list[StreamEvent]:
    try:
        payload = json.loads(data)
    except ValueError:
        return list(_stream_failure(name, ValueError(f"bad event data {data[:80]!r}")))
    if event == "error" and not (isinstance(payload, dict) and payload.get("type")):
        payload = {"type": "error", "error": payload}
    if isinstance(payload, dict):
        return decoder.feed(event, payload)
    return []


def _stream_failure(name: str, exc: Exception) -> Iterator[StreamEvent]:
    from thrifty.types import StreamError

    error = (UpstreamTimeoutError(f"provider {name!r} stopped sending mid-stream: {exc}")
             if isinstance(exc, httpx2.TimeoutException)
             else UpstreamConnectionError(f"provider {name!r} broke off the stream: {exc}"))
    error.__cause__ = exc
    yield StreamError(error)


def _error_headers(answer: httpx2.Response) -> dict[str, str]:
    keep = ("retry-after", "retry-after-ms", "x-request-id", "request-id")
    return {k: v for k, v in answer.headers.items() if k.lower() in keep or k.lower().startswith("x-ratelimit")}
