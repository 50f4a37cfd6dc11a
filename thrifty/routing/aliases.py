"""Model aliases: ``default``, ``fast``, ``smart`` or any name, mapped to a model, its fallbacks and retries.

Configured in ``[aliases]`` (see :class:`~thrifty.settings.AliasConfig`)::

    [aliases.smart]
    model = "anthropic/claude-sonnet-4-5"
    fallbacks = ["openai/gpt-4o-mini", "local/smollm2-135m"]
    retry = { max_attempts = 3 }

A request for model ``smart`` goes to ``anthropic/claude-sonnet-4-5``; the
ledger row keeps ``model_requested = "smart"`` and records
``route_decision = "alias:smart"``. Model names in an alias are resolved like
names a caller sends: ``provider/model``, or a bare name for the wrapped
client's own provider (else the default provider).

- An alias may name another alias (``default = { model = "fast" }``); its own
  fallbacks and retry fields win over the named one's. A cycle is a
  :class:`~thrifty.errors.ConfigurationError`. An alias naming itself
  (``gpt-4o = { model = "gpt-4o", fallbacks = [...] }``) adds fallbacks to a
  plain model name.
- A fallback that names an alias stands for that alias's model.
- ``retry`` fields override ``[retry]`` field by field; the fields not given
  keep the ``[retry]`` values.
- ``default`` always exists: with no ``[aliases.default]`` it means the default
  provider's default model, ``<default_provider>/<default model>``, where the
  default model is ``providers.<name>.default_model`` or the provider kind's own
  (``local``: ``smollm2-135m``; the HTTP providers have none, so with
  ``default_provider = "openai"`` set ``providers.openai.default_model`` or
  ``[aliases.default]``). This holds for wrapped clients too: ``default`` is
  thrifty's default, not a model of the wrapped client's API. To give that
  built-in default fallbacks, point the alias at itself:
  ``default = { model = "default", fallbacks = [...] }``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from thrifty.errors import ConfigurationError, UnknownModelError
from thrifty.routing.base import Route, Router, register_router

if TYPE_CHECKING:
    from thrifty.middleware.context import CallContext
    from thrifty.middleware.engine import Engine
    from thrifty.settings import AliasConfig, RetrySettings
    from thrifty.types import Request

__all__ = ["DEFAULT_ALIAS", "AliasRouter", "default_model_of"]

#: the alias that exists even when none is configured
DEFAULT_ALIAS = "default"


class AliasRouter(Router):
    """Routes a request whose model is an alias name to the alias's model (see the module docstring).

    ``default_model`` gives what ``default`` means when no alias of that name is
    configured (``provider/model``); it is asked once, on first use.
    """

    name = "aliases"

    def __init__(
        self,
        aliases: Mapping[str, AliasConfig],
        retry: RetrySettings,
        default_model: Callable[[], str],
    ) -> None:
        self._aliases = dict(aliases)
        self._retry = retry
        self._default_model = default_model
        self._names = frozenset(self._aliases) | {DEFAULT_ALIAS}
        self._routes: dict[str, Route] = {}
        for name in self._aliases:  # configuration errors show when the engine is built, not per call
            self._chain(name)

    @classmethod
    def from_engine(cls, engine: Engine) -> AliasRouter:
        settings = engine.settings
        return cls(settings.aliases, settings.retry, lambda: default_model_of(engine))

    @property
    def names(self) -> frozenset[str]:
        """Every alias name this router answers to, ``default`` included."""
        return self._names

    def route(self, request: Request, ctx: CallContext) -> Route | None:
        name = request.model
        route = self._routes.get(name)
        if route is None:
            if name not in self._names:
                return None
            route = self._routes[name] = self._build(name)
        return route

    # ------------------------------------------------------------------ building

    def _chain(self, name: str) -> list[AliasConfig]:
        """The configs an alias passes through, outermost first."""
        chain: list[AliasConfig] = []
        seen = [name]
        config = self._aliases.get(name)
        while config is not None:
            chain.append(config)
            target = config.model
            if target == seen[-1]:  # an alias of a model name to itself: adds fallbacks/retries to it
                break
            if target in seen:
                raise ConfigurationError(
                    f"model aliases form a cycle: {' -> '.join([*seen, target])}; point one of them at a model"
                )
            seen.append(target)
            config = self._aliases.get(target)
        return chain

    def _model(self, name: str) -> str:
        """The model an alias name finally stands for (a non-alias name stands for itself)."""
        chain = self._chain(name)
        if not chain:
            return self._default_model() if name == DEFAULT_ALIAS else name
        last = chain[-1].model
        # reached ``default`` unconfigured, or ``default = { model = "default", fallbacks = [...] }``
        return self._default_model() if last == DEFAULT_ALIAS else last

    def _build(self, name: str) -> Route:
        chain = self._chain(name)
        fallbacks: list[str] = []
        retry_fields: dict[str, Any] = {}
        has_retry = False
        for config in chain:
            if not fallbacks and config.fallbacks:
                fallbacks = list(config.fallbacks)
            if config.retry is not None:
                has_retry = True
                for field in config.retry.model_fields_set:
                    retry_fields.setdefault(field, getattr(config.retry, field))
        retry = self._retry.model_copy(update=retry_fields) if has_retry else None
        expanded = tuple(self._model(f) if f in self._names and f != name else f for f in fallbacks)
        return Route(self._model(name), f"alias:{name}", expanded, retry)


def default_model_of(engine: Engine) -> str:
    """What ``default`` means with no alias of that name: the default provider's default model."""
    settings = engine.settings
    provider_name = settings.default_provider
    config = settings.providers.get(provider_name)
    model = config.default_model if config is not None else None
    if model is None:
        model = engine.provider(provider_name).default_model
    if model is None:
        raise UnknownModelError(
            f"the model 'default' names no alias, and the default provider {provider_name!r} has no default "
            f"model; configure [aliases.default] (model = \"provider/model\") or "
            f"providers.{provider_name}.default_model",
            param="model",
        )
    return f"{provider_name}/{model}"


register_router("aliases", AliasRouter.from_engine)
