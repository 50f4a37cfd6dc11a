"""The provider for Anthropic's Messages API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from thrifty.middleware.codecs import anthropic as codec
from thrifty.middleware.providers._http import HTTPProvider
from thrifty.middleware.providers.base import register_provider_kind

if TYPE_CHECKING:
    from thrifty.settings import ProviderConfig, Settings

ANTHROPIC_BASE_URL = "https://api.anthropic.com/v1"
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(HTTPProvider):
    kind = "anthropic"
    wire = "anthropic"
    codec = codec
    path = "/messages"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}


def _factory(name: str, config: ProviderConfig, settings: Settings) -> AnthropicProvider:
    hint = f"set {config.api_key_env}" if config.api_key_env else f"set providers.{name}.api_key"
    return AnthropicProvider(name, base_url=config.base_url or ANTHROPIC_BASE_URL, api_key=config.resolved_api_key(),
                             headers=config.headers, timeout_s=config.timeout_s,
                             pricing_id=config.pricing_id or "anthropic", key_hint=hint)


register_provider_kind("anthropic", _factory)
