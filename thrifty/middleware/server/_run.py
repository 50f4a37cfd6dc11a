"""``thrifty serve``: the proxy under uvicorn (httptools and uvloop when installed)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from thrifty.middleware.server._app import ProxyApp
    from thrifty.settings import Settings

__all__ = ["app_from_environment", "run"]


def app_from_environment() -> ProxyApp:
    """The app a worker process builds (``--workers N``): settings from ``$THRIFTY_CONFIG`` and the environment."""
    from thrifty.middleware.server import create_app

    return create_app()


def run(*, host: str | None, port: int | None, config_file: str | None, workers: int, log_level: str,
        access_log: bool) -> None:
    import uvicorn

    from thrifty.errors import ThriftyError
    from thrifty.settings import Settings

    try:
        settings = Settings.load(config_file)
    except ThriftyError as exc:
        raise click.ClickException(str(exc)) from None
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    options: dict[str, Any] = {
        "host": host, "port": port, "log_level": log_level, "access_log": access_log, "lifespan": "on",
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "timeout_graceful_shutdown": 10, "server_header": False,
    }
    if workers == 1:
        from thrifty.middleware.server import create_app

        try:
            app = create_app(settings)
        except ThriftyError as exc:
            raise click.ClickException(str(exc)) from None
        _banner(settings, host, port, workers, keys_required=_keys_required(app))
        uvicorn.run(app, **options)
        return
    # each worker builds its own app (its own engine and ledger recorder) from the same settings
    if config_file:
        os.environ["THRIFTY_CONFIG"] = os.path.abspath(config_file)
    _banner(settings, host, port, workers, keys_required=_store_requires_keys(settings))
    uvicorn.run("thrifty.middleware.server._run:app_from_environment", factory=True, workers=workers, **options)


def _store_requires_keys(settings: Settings) -> bool | None:
    try:
        from thrifty.middleware.limits import KeyStore
    except ImportError:
        return None
    try:
        store = KeyStore.from_settings(settings)
    except Exception:  # noqa: BLE001 - only for the banner; the workers report real errors
        return None
    try:
        return bool(store.required())
    finally:
        store.close()


def _keys_required(app: ProxyApp) -> bool | None:
    store = app.keys.store
    if store is None:
        return None
    try:
        return bool(store.required())
    except Exception:  # noqa: BLE001 - only for the banner
        return None


def _banner(settings: Settings, host: str, port: int, workers: int, *, keys_required: bool | None) -> None:
    from thrifty.ledger.db import redacted
    from thrifty.middleware.server._calls import has_provider_keys
    from thrifty.middleware.server._info import version

    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    base = f"http://{shown}:{port}"
    lines = [
        f"thrifty {version()} proxy on {host}:{port}" + (f", {workers} workers" if workers > 1 else ""),
        f"  OpenAI API     {base}/v1        (base_url for openai clients)",
        f"  Anthropic API  {base}           (base_url for anthropic clients)",
        f"  dashboard      {base}/dashboard",
        f"  metrics        {base}/metrics   health {base}/healthz   OpenAPI {base}/openapi.json",
        f"  ledger         {redacted(settings.ledger_url)}" if settings.ledger.enabled else "  ledger         off",
    ]
    default = settings.providers.get(settings.default_provider)
    if default is not None and default.kind == "local" and not has_provider_keys(settings):
        from thrifty.middleware.providers.local import LocalProvider

        model = f"{settings.default_provider}/{default.default_model or LocalProvider.default_model}"
        lines.append(f"  upstream       no provider keys configured: model names are answered by {model}")
    if keys_required is False and not _is_loopback(host):
        lines.append(f"  WARNING        listening on {host} with no virtual keys: anyone who can reach this port "
                     "can spend through your provider keys (create one with `thrifty keys create`)")
    click.echo("\n".join(lines), err=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
