"""The proxy's informational endpoints: models, health, metrics, its OpenAPI document, its index."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thrifty.middleware.engine import Engine
    from thrifty.settings import Settings

__all__ = ["health", "model_list", "version"]


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("thrifty")
    except PackageNotFoundError:
        return "0+unknown"


def model_list(engine: Engine, *, default_route: str | None) -> bytes:
    """``GET /v1/models``: OpenAI's list shape with Anthropic's fields, so either SDK can read it.

    Aliases (``default`` first), the embedded local models, and the models
    genai-prices knows for each configured provider that has a key.
    """
    settings = engine.settings
    created = int(time.time())
    seen: dict[str, dict[str, Any]] = {}

    def add(model_id: str, owner: str, description: str | None = None) -> None:
        if model_id in seen:
            return
        item: dict[str, Any] = {"id": model_id, "object": "model", "created": created, "owned_by": owner,
                                "type": "model", "display_name": model_id,
                                "created_at": datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if description:
            item["description"] = description
        seen[model_id] = item

    if default_route is not None:
        add("default", "thrifty", f"alias of {default_route}")
    for name, alias in settings.aliases.items():
        add(name, "thrifty", f"alias of {alias.model}")
    for provider_name, config in settings.providers.items():
        if config.kind == "local":
            from thrifty.middleware.providers.local import CATALOGUE

            for model in CATALOGUE.values():
                add(f"{provider_name}/{model.name}", "thrifty", model.description)
    for provider_name, config in settings.providers.items():
        if config.kind in ("openai", "anthropic") and config.resolved_api_key():
            pricing_id = config.pricing_id or config.kind
            for model_id in _known_models(pricing_id):
                add(f"{provider_name}/{model_id}", provider_name)
    data = list(seen.values())
    body = {"object": "list", "data": data, "has_more": False,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
    return json.dumps(body).encode()


def _known_models(pricing_id: str) -> list[str]:
    try:
        from genai_prices.data import providers
    except Exception:  # noqa: BLE001 - the list is a convenience
        return []
    for provider in providers:
        if provider.id == pricing_id:
            return [m.id for m in provider.models]
    return []


def health(engine: Engine, settings: Settings) -> bytes:
    """``GET /healthz``: up, and the ledger recorder's state (``degraded`` while its database is down)."""
    recorder = engine.recorder
    ledger: dict[str, Any] = {"enabled": recorder is not None}
    healthy = True
    if recorder is not None:
        healthy = bool(getattr(recorder, "healthy", True))
        ledger.update(healthy=healthy, buffered_rows=int(getattr(recorder, "buffered", 0)),
                      spilled_rows=int(getattr(recorder, "spilled", 0)),
                      written_rows=int(getattr(recorder, "written", 0)),
                      rejected_rows=int(getattr(recorder, "rejected", 0)))
    body = {"status": "ok" if healthy else "degraded", "version": version(), "ledger": ledger}
    return json.dumps(body).encode()


def index(version_text: str) -> bytes:
    """``GET /``: where things are."""
    return json.dumps({
        "name": "thrifty", "version": version_text,
        "openai_base_url": "/v1", "anthropic_base_url": "/",
        "endpoints": ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/models",
                      "/healthz", "/metrics", "/openapi.json"],
        "dashboard": "/dashboard",
    }).encode()
