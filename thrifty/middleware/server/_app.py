"""The proxy's ASGI application: a route table, the lifespan, and a last line of defence for errors."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from collections.abc import Awaitable, Callable

from thrifty.errors import AuthenticationError, ThriftyError
from thrifty.middleware.engine import Engine
from thrifty.middleware.entry import Wire, wire
from thrifty.middleware.server import _info
from thrifty.middleware.server._asgi import (
    Message,
    MethodNotAllowedError,
    Receive,
    RouteNotFoundError,
    Scope,
    Send,
    respond,
)
from thrifty.middleware.server._auth import KeyCheck, bearer_secret
from thrifty.middleware.server._calls import ProxyEntry, request_headers
from thrifty.middleware.server._metrics import Metrics
from thrifty.middleware.server._openapi import openapi_document
from thrifty.settings import Settings

log = logging.getLogger("thrifty.server")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Route = Callable[[Scope, Receive, Send], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]


class ProxyApp:
    """thrifty's proxy as an ASGI application; build it with :func:`thrifty.middleware.server.create_app`.

    ``engine`` is the app's engine (``app.engine``); the app closes it on
    shutdown when it made it. ``mount(prefix, app)`` serves another ASGI app
    under a path prefix (the dashboard), before the server starts.
    """

    def __init__(self, settings: Settings, engine: Engine, *, owns_engine: bool, keys: KeyCheck,
                 closers: list[Callable[[], None]] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.keys = keys
        self.metrics = Metrics(engine.recorder)
        self._owns_engine = owns_engine
        self._closers = list(closers or [])  # the limits stage and key store made with the engine
        self._version = _info.version()
        self._entry = ProxyEntry(engine, keys, self.metrics, max_body_bytes=settings.server.max_body_bytes)
        self._openai, self._anthropic = wire("openai"), wire("anthropic")
        self._openapi = json.dumps(openapi_document(self._version)).encode()
        self._models: bytes | None = None
        self._mounts: list[tuple[str, ASGIApp]] = []
        self._started = False
        self._closed = False
        entry = self._entry
        self._routes: dict[str, dict[str, Route]] = {
            "/v1/chat/completions": {"POST": self._call(entry.call, self._openai, "chat_completions")},
            "/v1/messages": {"POST": self._call(entry.call, self._anthropic, "messages")},
            "/v1/messages/count_tokens": {"POST": self._call(entry.count_tokens, self._anthropic, "count_tokens")},
            "/v1/models": {"GET": self._list_models},
            "/healthz": {"GET": self._health},
            "/metrics": {"GET": self._metrics},
            "/openapi.json": {"GET": self._openapi_json},
            "/": {"GET": self._index},
        }
        self._http: ASGIApp = self._dispatch
        origins = settings.server.cors_origins
        if origins:
            self._http = _cors(self._dispatch, origins)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    def mount(self, prefix: str, app: ASGIApp) -> None:
        """Serve ``app`` under ``prefix`` (e.g. ``/dashboard``); only before the server starts."""
        if self._started:
            raise RuntimeError("mount() before the server starts")
        self._mounts.append((prefix.rstrip("/"), app))

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        methods = self._routes.get(path)
        if methods is None:
            for prefix, app in self._mounts:
                if path == prefix or path.startswith(prefix + "/"):
                    await app(scope, receive, send)
                    return
            await self._refuse(send, path, RouteNotFoundError(
                f"no endpoint at {path}; this proxy serves /v1/chat/completions, /v1/messages, "
                "/v1/messages/count_tokens, /v1/models, /healthz, /metrics and /openapi.json"))
            return
        handler = methods.get(scope["method"])
        if handler is None:
            allowed = tuple(methods)
            await self._refuse(send, path, MethodNotAllowedError(
                f"{scope['method']} is not allowed on {path}; use {' or '.join(allowed)}", allowed))
            return
        await handler(scope, receive, send)

    def _wire_of(self, path: str) -> Wire:
        return self._anthropic if path.startswith("/v1/messages") else self._openai

    async def _refuse(self, send: Send, path: str, exc: ThriftyError) -> None:
        headers = list(_JSON)
        for name, value in (getattr(exc, "headers", None) or {}).items():
            headers.append((name.encode(), value.encode()))
        await respond(send, exc.status_code, headers, self._wire_of(path).error_content(exc))

    # ------------------------------------------------------------------ routes

    def _call(self, method: Callable[..., Awaitable[None]], w: Wire, endpoint: str) -> Route:
        async def route(scope: Scope, receive: Receive, send: Send) -> None:
            await method(scope, receive, send, w, endpoint)

        return route

    async def _safely(self, send: Send, path: str, produce: Callable[[], tuple[int, list[tuple[bytes, bytes]], bytes]]
                      ) -> None:
        try:
            status, headers, body = produce()
        except ThriftyError as exc:
            await self._refuse(send, path, exc)
            return
        except Exception as exc:
            log.error("internal error on %s", path, exc_info=exc)
            await respond(send, 500, list(_JSON), self._wire_of(path).error_content(exc))
            return
        await respond(send, status, headers, body)

    async def _list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope)
        try:
            await self.keys.identify(headers.get(b"authorization"), headers.get(b"x-api-key"))
        except ThriftyError as exc:
            await self._refuse(send, "/v1/models", exc)
            return

        def produce() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            if self._models is None:
                self._models = _info.model_list(self.engine, default_route=_default_route(self.engine))
            return 200, list(_JSON), self._models

        await self._safely(send, "/v1/models", produce)

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._safely(send, "/healthz", lambda: (200, list(_JSON), _info.health(self.engine, self.settings)))

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        def produce() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            admin = self.settings.server.admin_key
            if admin is not None:
                headers = request_headers(scope)
                given = bearer_secret(headers.get(b"authorization"), headers.get(b"x-api-key")) or ""
                if not hmac.compare_digest(given.encode(), admin.get_secret_value().encode()):
                    raise AuthenticationError("/metrics needs the admin key (server.admin_key) as a bearer token")
            body, content_type = self.metrics.render()
            return 200, [(b"content-type", content_type.encode())], body

        await self._safely(send, "/metrics", produce)

    async def _openapi_json(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, list(_JSON), self._openapi)

    async def _index(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, list(_JSON), _info.index(self._version))

    # ------------------------------------------------------------------ lifespan

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.aclose()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which logs it
                    await send({"type": "lifespan.shutdown.failed", "message": f"closing thrifty failed: {exc}"})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    def startup(self) -> None:
        """Warm what the first calls would otherwise wait for (the price table, the stages' models and,
        with no provider keys, the local default model), off the event loop."""
        if self._started:
            return
        self._started = True
        self.engine.warm_up_in_background()
        if self._entry.defaults.active:  # no provider keys: every call goes to the local default model
            threading.Thread(target=self._entry.defaults.warm_up, name="thrifty-warm-up-model", daemon=True).start()

    async def aclose(self) -> None:
        """Flush the ledger and close the upstream clients (when the app made its engine), and the key store."""
        if self._closed:
            return
        self._closed = True
        if self._owns_engine:
            await self.engine.aclose()
        for close in self._closers:
            await asyncio.to_thread(close)

    def close(self) -> None:
        """:meth:`aclose` outside an event loop."""
        if self._closed:
            return
        self._closed = True
        if self._owns_engine:
            self.engine.close()
        for close in self._closers:
            close()


def _default_route(engine: Engine) -> str | None:
    try:
        from thrifty.routing.aliases import default_model_of

        return default_model_of(engine)
    except Exception:  # noqa: BLE001 - no default model: the list just lacks "default"
        return None


def _cors(app: ASGIApp, origins: list[str]) -> ASGIApp:
    from starlette.middleware.cors import CORSMiddleware

    return CORSMiddleware(  # type: ignore[return-value]
        app,  # type: ignore[arg-type]
        allow_origins=origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["authorization", "x-api-key", "content-type", "anthropic-version", "anthropic-beta",
                       "x-thrifty-options", "x-thrifty-tags", "x-thrifty-project"],
        expose_headers=["x-thrifty-request-id", "x-thrifty-cost-usd", "x-thrifty-overhead-ms",
                        "x-thrifty-tokens-saved"],
        allow_credentials=False,  # keys travel in headers; cookies are never accepted cross-origin
    )
