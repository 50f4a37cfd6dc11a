"""thrifty's proxy server: an OpenAI- and Anthropic-compatible ASGI app over the one engine.

``create_app(settings)`` builds the app; ``thrifty serve`` runs it with
uvicorn. Point an OpenAI client at ``http://127.0.0.1:8787/v1`` and an
Anthropic client at ``http://127.0.0.1:8787``:

* ``POST /v1/chat/completions`` and ``POST /v1/messages``: calls through the
  pipeline to any configured provider, in either wire (an OpenAI request may
  go to a Claude model, streams included); every answer carries
  ``x-thrifty-request-id``, ``x-thrifty-cost-usd``, ``x-thrifty-overhead-ms``
  and ``x-thrifty-tokens-saved``, and a stream's final chunk a ``thrifty``
  object with the same facts;
* ``POST /v1/messages/count_tokens``, ``GET /v1/models``, ``GET /healthz``,
  ``GET /metrics`` (Prometheus), ``GET /openapi.json``;
* ``GET /dashboard/`` and its JSON API under ``/dashboard/api/`` (:mod:`thrifty.dashboard`).

The proxy shares its way in and out with the client wrapper
(:mod:`thrifty.middleware.entry`); what is its own is HTTP: bounded bodies,
keys, headers, and stopping a call when its client goes away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thrifty.middleware.engine import Engine
    from thrifty.middleware.server._app import ProxyApp
    from thrifty.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> ProxyApp:
    """The proxy's ASGI app.

    ``settings``: by default :meth:`Settings.load` (config file, then
    environment); ``engine``: by default one built from ``settings`` with the
    ledger priced inline (for the cost header) and, when
    :mod:`thrifty.middleware.limits` is installed, virtual keys, budgets and
    rate limits. An app closes the engine it made when the server shuts down
    (the ledger is flushed); an engine passed in is the caller's to close.
    """
    from thrifty.middleware.engine import Engine
    from thrifty.middleware.server._app import ProxyApp
    from thrifty.middleware.server._auth import KeyCheck
    from thrifty.settings import Settings

    if settings is None:
        settings = engine.settings if engine is not None else Settings.load()
    store, stages = _limits(settings, with_stage=engine is None)
    owns = engine is None
    if engine is None:
        try:
            engine = Engine(settings, stages=stages, price_inline=True)
        except BaseException:
            for closeable in (*stages, store):
                if closeable is not None:
                    closeable.close()
            raise
    closers = [stage.close for stage in stages] + ([store.close] if store is not None else [])
    app = ProxyApp(settings, engine, owns_engine=owns, keys=KeyCheck(store), closers=closers)
    from thrifty.dashboard.app import mount

    mount(app)  # /dashboard: the page and its read-only JSON API over the ledger
    return app


def _limits(settings: Settings, *, with_stage: bool) -> tuple[Any, list[Any]]:
    """The key store and the limits stage (:mod:`thrifty.middleware.limits`), when that module is there."""
    try:
        from thrifty.middleware import limits
    except ImportError:
        return None, []
    store = limits.KeyStore.from_settings(settings)
    if not with_stage:
        return store, []
    try:
        return store, [limits.LimitsStage.from_settings(settings, keys=store)]
    except BaseException:
        store.close()
        raise
