"""``thrifty.wrap``: a drop-in copy of an OpenAI or Anthropic SDK client that runs through thrifty.

The wrapped client is the SDK's own class (``isinstance(wrapped, openai.OpenAI)``
holds), made with the SDK's ``copy(http_client=...)``; the caller's client is
never modified. Chat completions (``/chat/completions``) and messages
(``/v1/messages``) go through thrifty's pipeline; every other endpoint goes to
the original client's HTTP client unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import urlsplit

import httpx2

from thrifty.middleware.engine import Engine, default_engine
from thrifty.middleware.wrappers._transport import AsyncWrapperTransport, Binding, WrapperTransport

if TYPE_CHECKING:
    import anthropic
    import openai

__all__ = ["wrap"]

C = TypeVar("C")


@overload
def wrap(client: openai.OpenAI, *, engine: Engine | None = None) -> openai.OpenAI: ...
@overload
def wrap(client: openai.AsyncOpenAI, *, engine: Engine | None = None) -> openai.AsyncOpenAI: ...
@overload
def wrap(client: anthropic.Anthropic, *, engine: Engine | None = None) -> anthropic.Anthropic: ...
@overload
def wrap(client: anthropic.AsyncAnthropic, *, engine: Engine | None = None) -> anthropic.AsyncAnthropic: ...


def wrap(client: Any, *, engine: Engine | None = None) -> Any:
    """A copy of ``client`` whose chat calls run through thrifty (``engine``: the process default).

    ``client`` is an openai or anthropic SDK client (sync or async), or a LangChain
    ``ChatOpenAI`` / ``ChatAnthropic`` chat model.

    Model names: ``provider/model`` picks a configured provider (``local/smollm2-135m``,
    ``anthropic/claude-sonnet-4-5``); a bare name, or a prefix naming the client's own
    provider, goes to the wrapped client's own API with its own key and base URL.
    Per-call options go in ``extra_body={"thrifty": {...}}``.
    """
    from thrifty.middleware.wrappers.langchain import is_langchain_model, wrap_langchain

    if is_langchain_model(client):
        return wrap_langchain(client, engine if engine is not None else default_engine(), wrap)
    kind, is_async = _client_kind(client)
    engine = engine if engine is not None else default_engine()
    engine.warm_up_in_background()  # the price table, and the compressor where calls compress unasked
    if kind == "openai":
        binding = _openai_binding(client, is_async)
    else:
        binding = _anthropic_binding(client, is_async)
    if is_async:
        http: httpx2.Client | httpx2.AsyncClient = httpx2.AsyncClient(transport=AsyncWrapperTransport(engine, binding))
    else:
        http = httpx2.Client(transport=WrapperTransport(engine, binding))
    return client.copy(http_client=http)


def _client_kind(client: Any) -> tuple[str, bool]:
    module = type(client).__module__.split(".")[0]
    if module == "openai":
        import openai

        if isinstance(client, openai.OpenAI):
            return "openai", False
        if isinstance(client, openai.AsyncOpenAI):
            return "openai", True
    elif module == "anthropic":
        import anthropic

        if isinstance(client, anthropic.Anthropic):
            return "anthropic", False
        if isinstance(client, anthropic.AsyncAnthropic):
            return "anthropic", True
    raise TypeError(
        f"thrifty.wrap() takes an openai.OpenAI, openai.AsyncOpenAI, anthropic.Anthropic or "
        f"anthropic.AsyncAnthropic client, or a LangChain ChatOpenAI/ChatAnthropic, not {type(client).__module__}.{type(client).__qualname__}"
    )


def _http_clients(client: Any, is_async: bool) -> tuple[Any, Any]:
    # the SDK's own HTTP client keeps the caller's proxies, certificates and limits
    own = getattr(client, "_client", None)
    if is_async:
        own = own if isinstance(own, httpx2.AsyncClient) else httpx2.AsyncClient()
        return None, own
    own = own if isinstance(own, httpx2.Client) else httpx2.Client()
    return own, None


def _timeout_s(client: Any) -> float:
    timeout = getattr(client, "timeout", None)
    if isinstance(timeout, (int, float)):
        return float(timeout)
    read = getattr(timeout, "read", None)
    return float(read) if isinstance(read, (int, float)) else 600.0


def _openai_binding(client: Any, is_async: bool) -> Binding:
    from thrifty.middleware.codecs import openai as codec
    from thrifty.middleware.providers.openai import OpenAICompatibleProvider, OpenAIProvider

    base = str(client.base_url).rstrip("/")
    host = urlsplit(base).hostname or ""
    cls = OpenAIProvider if host == "api.openai.com" else OpenAICompatibleProvider
    sync, aio = _http_clients(client, is_async)
    provider = cls("openai", base_url=base, url=base + "/chat/completions", forward_client_headers=True,
                   timeout_s=_timeout_s(client), pricing_id="openai" if cls is OpenAIProvider else None,
                   client=sync, async_client=aio)
    return Binding("openai", codec, "/chat/completions", provider, aio if is_async else sync)


def _anthropic_binding(client: Any, is_async: bool) -> Binding:
    from thrifty.middleware.codecs import anthropic as codec
    from thrifty.middleware.providers.anthropic import AnthropicProvider

    base = str(client.base_url).rstrip("/")
    sync, aio = _http_clients(client, is_async)
    provider = AnthropicProvider("anthropic", base_url=base, url=base + "/v1/messages", forward_client_headers=True,
                                 timeout_s=_timeout_s(client), pricing_id="anthropic", client=sync, async_client=aio)
    return Binding("anthropic", codec, "/v1/messages", provider, aio if is_async else sync)
