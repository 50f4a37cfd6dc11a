"""Providers that speak the OpenAI Chat Completions wire: OpenAI itself and any OpenAI-compatible server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from thrifty.middleware.codecs import openai as codec
from thrifty.middleware.providers._http import HTTPProvider
from thrifty.middleware.providers.base import register_provider_kind
from thrifty.types import Request

if TYPE_CHECKING:
    from thrifty.settings import ProviderConfig, Settings

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider(HTTPProvider):
    """OpenAI's own API (``max_completion_tokens``, priced as ``openai``)."""

    kind = "openai"
    wire = "openai"
    codec = codec
    path = "/chat/completions"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"}

    def encode(self, request: Request) -> dict[str, Any]:
        return codec.encode_request(request, max_tokens_field="max_completion_tokens")


class OpenAICompatibleProvider(OpenAIProvider):
    """Any server with an OpenAI-compatible ``/chat/completions`` (vLLM, Ollama, llama.cpp, ...)."""

    kind = "openai-compatible"

    def encode(self, request: Request) -> dict[str, Any]:
        return codec.encode_request(request, max_tokens_field="max_tokens")


def _build(cls: type[OpenAIProvider], default_url: str | None, default_pricing: str | None):  # noqa: ANN202
    def factory(name: str, config: ProviderConfig, settings: Settings) -> OpenAIProvider:
        base_url = config.base_url or default_url
        if base_url is None:
            from thrifty.errors import ConfigurationError

            raise ConfigurationError(f"provider {name!r} of kind {cls.kind!r} needs a base_url")
        hint = f"set {config.api_key_env}" if config.api_key_env else f"set providers.{name}.api_key"
        api_key = config.resolved_api_key()
        if api_key is None and cls is OpenAICompatibleProvider:
            api_key = "not-needed"  # most local servers ignore the key; send a placeholder
        return cls(name, base_url=base_url, api_key=api_key, headers=config.headers, timeout_s=config.timeout_s,
                   pricing_id=config.pricing_id or default_pricing, key_hint=hint)

    return factory


register_provider_kind("openai", _build(OpenAIProvider, OPENAI_BASE_URL, "openai"))
register_provider_kind("openai-compatible", _build(OpenAICompatibleProvider, None, None))
