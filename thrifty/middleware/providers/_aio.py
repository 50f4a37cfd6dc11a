"""An asyncio network backend for httpx2's async transport: the providers' async HTTP path, made lean.

httpx2 (through httpcore2) reaches the network through anyio on asyncio,
whose stream layer costs more per request than the rest of an upstream call's
handling in thrifty; and it writes a request's head and body separately, two
system calls where one does. :class:`AsyncioBackend` is httpcore2's network
backend contract (connect, read, write, TLS) on a plain asyncio protocol. It
holds a request's writes until the response is read, so they leave in one
write, and it maps failures to httpcore2's exceptions, which httpx2 maps to
its own as usual. :func:`async_transport` is an ``httpx2.AsyncHTTPTransport``
on it. HTTP parsing, pooling, keep-alive and TLS are httpcore2's and ssl's,
unchanged.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore2
import httpx2

__all__ = ["AsyncioBackend", "async_transport"]

_FLUSH_AT = 64 * 1024  # writes held back are sent at once past this many bytes
_PAUSE_AT = 1024 * 1024  # stop reading from the socket while this much is unread


class _Protocol(asyncio.Protocol):
    __slots__ = ("transport", "buffer", "eof", "error", "_reader", "_writer", "_paused")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _PAUSE_AT and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter, self._reader = self._reader, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter, self._writer = self._writer, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self, max_bytes: int) -> bytes:
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self._paused and len(self.buffer) <= _PAUSE_AT // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def reader(self) -> asyncio.Future[None]:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_future()
        return self._reader

    def writer(self) -> asyncio.Future[None] | None:
        waiter = self._writer
        return None if waiter is None or waiter.done() else waiter


async def _wait(waiter: asyncio.Future[None], timeout: float | None, error: type[Exception]) -> None:
    if timeout is None:
        await waiter
        return
    expired = False

    def expire() -> None:
        nonlocal expired
        if not waiter.done():
            expired = True
            waiter.cancel()

    handle = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        await waiter
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if expired and (task is None or not task.cancelling()):
            raise error(f"no progress within {timeout:g}s") from None
        raise
    finally:
        handle.cancel()


class _Stream(httpcore2.AsyncNetworkStream):
    __slots__ = ("_transport", "_protocol", "_pending", "_pending_size", "_loop")

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._loop = asyncio.get_running_loop()  # a connection serves the loop that made it, only

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if self._protocol.error is not None or self._transport.is_closing():
            raise httpcore2.WriteError("the connection was closed before the request was sent")
        self._transport.write(data)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            self._flush()
        except RuntimeError as exc:
            raise httpcore2.WriteError(str(exc)) from exc
        protocol = self._protocol
        while not protocol.buffer:
            if protocol.eof:
                if protocol.error is not None:
                    raise httpcore2.ReadError(str(protocol.error) or type(protocol.error).__name__)
                return b""
            await _wait(protocol.reader(), timeout, httpcore2.ReadTimeout)
        return protocol.take(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._pending.append(buffer)
        self._pending_size += len(buffer)
        if self._pending_size < _FLUSH_AT:
            return  # sent with the rest of the request, when its answer is read
        try:
            self._flush()
        except RuntimeError as exc:
            raise httpcore2.WriteError(str(exc)) from exc
        waiter = self._protocol.writer()
        if waiter is not None:
            await _wait(waiter, timeout, httpcore2.WriteTimeout)
            if self._protocol.error is not None:
                raise httpcore2.WriteError(str(self._protocol.error))

    async def aclose(self) -> None:
        self._pending.clear()
        try:
            self._transport.close()
        except RuntimeError:  # its event loop is closed: nothing left to close
            pass

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            self._flush()
            transport = await asyncio.wait_for(
                loop.start_tls(self._transport, self._protocol, ssl_context, server_hostname=server_hostname),
                timeout)
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore2.ConnectTimeout(f"TLS handshake with {server_hostname} timed out") from exc
        except (OSError, ssl.SSLError, RuntimeError) as exc:
            self._transport.close()
            raise httpcore2.ConnectError(str(exc)) from exc
        if transport is None:
            raise httpcore2.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = transport  # type: ignore[assignment]  # flow control now acts on the TLS layer
        return _Stream(transport, self._protocol)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        if info == "is_readable":  # an idle kept-alive connection the server closed, or wrote to: not reusable
            return self._protocol.eof or bool(self._protocol.buffer) or not self._on_running_loop()
        return None


    def _on_running_loop(self) -> bool:
        # a client used from a later event loop (asyncio.run twice) drops the earlier loop's connections
        try:
            return asyncio.get_running_loop() is self._loop and not self._loop.is_closed()
        except RuntimeError:
            return False


class AsyncioBackend(httpcore2.AsyncNetworkBackend):
    """httpcore2's async network backend on plain asyncio (see the module docstring)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(_Protocol, host, port, local_addr=local), timeout)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        _apply(transport, socket_options)
        return _Stream(transport, protocol)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await asyncio.wait_for(loop.create_unix_connection(_Protocol, path), timeout)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"connecting to {path} timed out") from exc
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        _apply(transport, socket_options)
        return _Stream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _apply(transport: asyncio.BaseTransport, options: Iterable[Any] | None) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in options or ():
        sock.setsockopt(*option)


class _Transport(httpx2.AsyncHTTPTransport):
    def __init__(self, limits: httpx2.Limits, verify: ssl.SSLContext | str | bool) -> None:
        super().__init__(limits=limits, verify=verify)
        # the pool httpx2 builds, on the asyncio backend (httpx2 takes no backend argument)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(verify=verify), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncioBackend(),
        )


def async_transport(limits: httpx2.Limits | None = None, *,
                    verify: ssl.SSLContext | str | bool = True) -> httpx2.AsyncBaseTransport:
    """An ``httpx2.AsyncHTTPTransport`` (HTTP/1.1; ``verify`` as httpx2 takes it) on :class:`AsyncioBackend`."""
    limits = limits or httpx2.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=30.0)
    transport = _Transport(limits, verify)
    if not isinstance(getattr(transport, "_pool", None), httpcore2.AsyncConnectionPool):  # pragma: no cover
        return httpx2.AsyncHTTPTransport(limits=limits, verify=verify)  # an httpx2 whose insides moved
    return transport
