"""Request-level routers and their registry.

A :class:`Router` looks at a request and its context and either picks the
model (a :class:`Route`) or passes, leaving the request to the next router.
The engine builds its routers once, from the registry, and its first routing
step (:class:`~thrifty.middleware.engine.ModelResolver`) asks them in order;
the first route wins. A route's ``model`` is then resolved like a model name
a caller sent (``provider/model``, or a bare name for the wrapped client's own
provider or the default provider).

Routers are registered by name with :func:`register_router`; the built-in
``aliases`` router uses the same path and comes first. A router factory
receives the engine (its settings, providers and resolution) and returns
``None`` when it has nothing configured, so an unused router costs nothing per
call::

    class Cheapest(Router):
        name = "cheapest"
        def route(self, request, ctx):
            return Route("local/smollm2-135m", "cheapest") if request.model == "cheap" else None

    register_router("cheapest", lambda engine: Cheapest())
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from thrifty.middleware.context import CallContext
    from thrifty.middleware.engine import Engine
    from thrifty.settings import RetrySettings
    from thrifty.types import Request

__all__ = ["Route", "Router", "RouterFactory", "build_routers", "register_router", "router_names"]


@dataclass(frozen=True, slots=True)
class Route:
    """A router's choice for one request.

    ``model`` is resolved like a requested model name; ``decision`` is what the
    ledger's ``route_decision`` records (``alias:fast``); ``fallbacks`` are
    model names tried in order when the model fails with a retryable upstream
    error; ``retry`` overrides the engine's retry settings for this call.
    """

    model: str
    decision: str
    fallbacks: tuple[str, ...] = ()
    retry: RetrySettings | None = None


class Router(abc.ABC):
    """Picks the model of a request, or returns ``None`` to pass it on to the next router."""

    #: the name the router is registered under
    name: ClassVar[str] = ""

    @abc.abstractmethod
    def route(self, request: Request, ctx: CallContext) -> Route | None: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


RouterFactory = Callable[["Engine"], "Router | None"]
_ROUTERS: dict[str, RouterFactory] = {}


def register_router(name: str, factory: RouterFactory) -> None:
    """Register a router; ``factory(engine)`` builds it, or returns None when it is not configured.

    Routers are asked in the order they were registered (built-ins first);
    registering a name again replaces that router in its place.
    """
    _load_builtins()
    _ROUTERS[name] = factory


def router_names() -> list[str]:
    """The registered routers, in the order they are asked."""
    _load_builtins()
    return list(_ROUTERS)


def build_routers(engine: Engine) -> tuple[Router, ...]:
    """The routers configured for ``engine``, in order (built once, when the engine is made)."""
    _load_builtins()
    built = (factory(engine) for factory in _ROUTERS.values())
    return tuple(router for router in built if router is not None)


_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from thrifty.routing import aliases  # noqa: F401 - registers "aliases"
