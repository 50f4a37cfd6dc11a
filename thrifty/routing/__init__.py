"""Request-level routing: routers pick a call's model; model aliases are the built-in router.

See :mod:`thrifty.routing.base` for the router contract and its registry, and
:mod:`thrifty.routing.aliases` for aliases (``default``, ``fast``, ``smart``...).
"""

from thrifty.routing.aliases import DEFAULT_ALIAS, AliasRouter
from thrifty.routing.base import Route, Router, RouterFactory, build_routers, register_router, router_names

__all__ = [
    "DEFAULT_ALIAS",
    "AliasRouter",
    "Route",
    "Router",
    "RouterFactory",
    "build_routers",
    "register_router",
    "router_names",
]
