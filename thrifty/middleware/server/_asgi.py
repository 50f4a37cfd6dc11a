"""The few ASGI pieces the proxy needs: a bounded body, a plain answer, a disconnect guard.

Written against the ASGI interface directly (no framework on the request
path): the proxy's own time per call is the point of the exercise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from thrifty.errors import InvalidRequestError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class BodyTooLargeError(InvalidRequestError):
    """The request body is over ``server.max_body_bytes`` (HTTP 413)."""

    status_code = 413
    anthropic_type = "request_too_large"


class RouteNotFoundError(InvalidRequestError):
    """No endpoint at that path (HTTP 404)."""

    status_code = 404
    anthropic_type = "not_found_error"


class MethodNotAllowedError(InvalidRequestError):
    """The endpoint exists, but not for that HTTP method (HTTP 405)."""

    status_code = 405

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.headers = {"allow": ", ".join(allowed)}


class ClientGoneError(Exception):
    """The client disconnected before it was answered; there is no one to answer."""


async def read_body(receive: Receive, limit: int, declared: bytes | None) -> bytes:
    """The whole request body, refused with a 413 as soon as it is known to exceed ``limit`` bytes."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequestError("the content-length header is not a number") from None
        if size > limit:
            raise BodyTooLargeError(_too_large(limit))
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGoneError
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLargeError(_too_large(limit))
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(_too_large(limit))
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _too_large(limit: int) -> str:
    return f"the request body is larger than this proxy's limit of {limit:,} bytes (server.max_body_bytes)"


async def respond(send: Send, status: int, headers: Headers, body: bytes) -> None:
    """A complete answer: headers, then the body in one piece."""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class DisconnectGuard:
    """Cancels the task it is entered in when the client disconnects; exits raising :class:`ClientGoneError`.

    A call waiting on an upstream, or a stream being sent, stops as soon as the
    client goes away, so a local model stops decoding and an upstream request
    is closed (their ledger rows still written, by the observer). Enter it
    once the request body is read: from then on the only message the ASGI
    server can deliver is ``http.disconnect``.
    """

    __slots__ = ("_receive", "_task", "_watcher", "_done", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._done = False
        self.gone = False

    async def __aenter__(self) -> DisconnectGuard:
        self._task = asyncio.current_task()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if not self._done and self._task is not None:
            self.gone = True
            self._task.cancel()

    def finish(self) -> None:
        """The answer is complete: a disconnect from now on is the normal end of the exchange."""
        self._done = True

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        self._done = True
        watcher = self._watcher
        if watcher is not None and not watcher.done():
            watcher.cancel()
        if self.gone:
            task = self._task
            if task is not None:
                task.uncancel()
            if kind is asyncio.CancelledError or kind is None:
                raise ClientGoneError
        return False


async def send_stream(send: Send, headers: Headers, chunks: AsyncIterator[bytes], guard: DisconnectGuard) -> None:
    """A streamed answer (server-sent events), chunk by chunk, until it ends or the client leaves."""
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        guard.finish()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
