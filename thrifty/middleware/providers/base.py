"""The provider contract and the registry of provider kinds.

A provider is the last step of the pipeline: it takes a neutral request whose
``model`` is the provider's own model name and returns a neutral response, or
an event stream when ``request.stream`` is set. Everything a provider knows of
a wire format it gets from :mod:`thrifty.middleware.codecs`.

Provider kinds are registered by name with :func:`register_provider_kind`;
the built-ins (``openai``, ``anthropic``, ``openai-compatible``, ``local``)
use the same path.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from thrifty.errors import ConfigurationError
from thrifty.types import AsyncEventStream, EventStream, Request, Response, Wire

if TYPE_CHECKING:
    from thrifty.middleware.context import CallContext
    from thrifty.settings import ProviderConfig, Settings


class Provider(abc.ABC):
    #: kind name this class is registered under
    kind: ClassVar[str] = ""
    #: the wire format the upstream speaks, or None for in-process models
    wire: ClassVar[Wire | None] = None
    #: True for models that run in this process (priced at 0, explicitly)
    is_local: ClassVar[bool] = False
    #: the model the name ``default`` means when this is the default provider (None: none)
    default_model: ClassVar[str | None] = None

    def __init__(self, name: str, *, pricing_id: str | None = None) -> None:
        self.name = name
        #: the genai-prices provider id used to price this provider's calls, None if unknown
        self.pricing_id = pricing_id

    @abc.abstractmethod
    def send(self, request: Request, ctx: CallContext) -> Response | EventStream: ...

    @abc.abstractmethod
    async def asend(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream: ...

    def estimate_prompt_tokens(self, request: Request) -> int | None:
        """A pre-call count of the prompt tokens, or None when the provider cannot count."""
        return None

    def prompt_tokens(self, request: Request, model: str) -> int:
        """The prompt's tokens before the call: the provider's own count where it has one (exact for
        local models), else the ledger's estimate for ``model``."""
        n = self.estimate_prompt_tokens(request)
        if n is not None:
            return n
        from thrifty.ledger.tokens import count_prompt

        return count_prompt(request, model, self.kind).n

    def context_window(self, model: str) -> int | None:
        """How many tokens ``model`` takes, prompt and answer together, or None when unknown: by
        default what genai-prices' table says for the model under this provider's pricing id."""
        from thrifty.ledger.pricing import context_window

        return context_window(model, pricing_id=self.pricing_id)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    async def aclose(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


ProviderFactory = Callable[["str", "ProviderConfig", "Settings"], Provider]
_KINDS: dict[str, ProviderFactory] = {}


def register_provider_kind(kind: str, factory: ProviderFactory) -> None:
    """Register a provider kind; ``factory(name, config, settings)`` builds one provider."""
    _KINDS[kind] = factory


def provider_kinds() -> dict[str, ProviderFactory]:
    _load_builtins()
    return dict(_KINDS)


def build_provider(name: str, config: ProviderConfig, settings: Settings) -> Provider:
    _load_builtins()
    try:
        factory = _KINDS[config.kind]
    except KeyError:
        raise ConfigurationError(
            f"provider {name!r} has unknown kind {config.kind!r}; known kinds: {', '.join(sorted(_KINDS))}"
        ) from None
    return factory(name, config, settings)


_loaded = False


def _load_builtins() -> None:
    # imported on first use: the local provider pulls in torch lazily, the others httpx2
    global _loaded
    if _loaded:
        return
    _loaded = True
    from thrifty.middleware.providers import anthropic, local, openai  # noqa: F401

