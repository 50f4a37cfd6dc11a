"""The dashboard as an ASGI app: the JSON API at ``/dashboard/api/`` and the page at ``/dashboard/``.

:func:`mount` serves it on the proxy (``ProxyApp.mount``); :func:`create_app`
builds it alone over any ledger, for ``thrifty dashboard --db URL``.

Access: with an admin key configured, every request needs it (``Authorization:
Bearer <key>`` or ``x-api-key``). Without one, the dashboard answers only
loopback clients, and only while the proxy requires no virtual keys (a proxy
with keys needs ``server.admin_key`` for its dashboard). It is read-only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from thrifty.dashboard.api import DashboardAPI

__all__ = ["DashboardApp", "create_app", "mount"]

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/dashboard"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class DashboardApp:
    """Serves ``/dashboard/api/<endpoint>`` from ``engine`` and ``/dashboard/...`` from ``static_dir``.

    ``admin_key``: the secret requests must carry, or None; ``keys_required``:
    an async callable saying whether the proxy requires virtual keys (then, with
    no admin key, the dashboard is closed).
    """

    def __init__(self, engine: Engine, *, admin_key: str | None = None,
                 keys_required: Callable[[], Awaitable[bool]] | None = None,
                 static_dir: Path | None = STATIC_DIR, prefix: str = PREFIX) -> None:
        self.api = DashboardAPI(engine)
        self.engine = engine
        self._admin_key = admin_key
        self._keys_required = keys_required
        self._static = static_dir.resolve() if static_dir is not None else None
        self._prefix = prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/" or path == "":
            await _respond(send, 307, "text/plain", b"", [(b"location", f"{self._prefix}/".encode())])
            return
        if not (path == self._prefix or path.startswith(self._prefix + "/")):
            await _error(send, 404, f"nothing at {path}; the dashboard is at {self._prefix}/", None)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _error(send, 405, f"{scope['method']} is not allowed; the dashboard is read-only (GET)", None,
                         [(b"allow", b"GET, HEAD")])
            return
        refused = await self._refusal(scope)
        if refused is not None:
            await _error(send, refused[0], refused[1], None)
            return
        rest = path[len(self._prefix):]
        if rest.startswith("/api/"):
            query = scope.get("query_string", b"").decode("latin-1")
            status, content_type, body = await asyncio.to_thread(self.api.handle, rest[len("/api/"):], query)
            await _respond(send, status, content_type, body, [(b"cache-control", b"no-store")])
            return
        await self._file(send, rest)

    async def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = dict(scope.get("headers") or [])
        if self._admin_key is not None:
            from thrifty.middleware.server._auth import bearer_secret

            given = bearer_secret(headers.get(b"authorization"), headers.get(b"x-api-key")) or ""
            if hmac.compare_digest(given.encode(), self._admin_key.encode()):
                return None
            return 401, "the dashboard needs the admin key (server.admin_key) as 'Authorization: Bearer <key>'"
        if self._keys_required is not None and await self._keys_required():
            return 403, ("this proxy requires virtual keys, so its dashboard needs an admin key: "
                         "set server.admin_key and send it as a bearer token")
        client = scope.get("client")
        if client is None or client[0] in _LOOPBACK:
            return None
        return 403, ("without an admin key the dashboard answers only loopback clients; "
                     "set server.admin_key to open it to others")

    async def _file(self, send: Send, rest: str) -> None:
        if self._static is None or not self._static.is_dir():
            await _error(send, 404, "the dashboard page is not installed; the JSON API is at /dashboard/api/", None)
            return
        relative = rest.lstrip("/") or "index.html"
        target = (self._static / relative).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(self._static) or not target.is_file():
            await _error(send, 404, f"no dashboard file {rest}", None)
            return
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type in ("application/javascript", "text/javascript"):
            content_type += "; charset=utf-8"
        await _respond(send, 200, content_type, await asyncio.to_thread(target.read_bytes))


async def _respond(send: Send, status: int, content_type: str, body: bytes,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
               *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, message: str, param: str | None,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": {"message": message, "param": param}}).encode()
    await _respond(send, status, "application/json", body, extra)


def create_app(db_url: str, *, admin_key: str | None = None, static_dir: Path | None = STATIC_DIR) -> DashboardApp:
    """The dashboard alone over the ledger at ``db_url`` (``thrifty dashboard``); it connects lazily."""
    from thrifty.ledger.db import create_engine

    return DashboardApp(create_engine(db_url, must_exist=True), admin_key=admin_key, static_dir=static_dir)


def mount(proxy: Any) -> DashboardApp:
    """Serve the dashboard on ``proxy`` (a :class:`~thrifty.middleware.server._app.ProxyApp`) at /dashboard."""
    from thrifty.ledger.db import create_engine

    settings = proxy.settings
    admin = settings.server.admin_key
    store = proxy.keys.store

    async def keys_required() -> bool:
        return store is not None and bool(await store.arequired())

    engine = create_engine(settings.ledger_url)
    app = DashboardApp(engine, admin_key=admin.get_secret_value() if admin is not None else None,
                       keys_required=keys_required)
    proxy.mount(PREFIX, app)
    proxy._closers.append(engine.dispose)
    return app
