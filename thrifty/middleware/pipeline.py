"""The pipeline: stages wrap the next handler; the order is a list; it freezes once built.

A *handler* takes a neutral :class:`~thrifty.types.Request` and its
:class:`~thrifty.middleware.context.CallContext` and returns a
:class:`~thrifty.types.Response`, or an :class:`~thrifty.types.EventStream` when
``request.stream`` is set. It has a sync and an async face (``handle`` and
``ahandle``), because the wrapped SDK clients come in both kinds.

A *stage* is a handler that holds the next one. Most stages only rewrite the
request (compression, contracts, routing); they override :meth:`Stage.prepare`
and inherit both faces. Stages that act around the call (retries, validation,
the ledger observer) override ``handle`` and ``ahandle``.

The canonical order, outermost first, is :data:`STAGE_ORDER`; a pipeline
refuses stages out of that order, so a new technique slots in by name
without reshaping the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from thrifty.middleware.context import CallContext
from thrifty.types import AsyncEventStream, EventStream, Request, Response

#: Stage kinds in the order they run, outermost first (see ARCHITECTURE.md).
STAGE_ORDER: tuple[str, ...] = (
    "contracts",  # render the 5C contract, attach the output schema
    "routing",  # pick the target model (and provider)
    "compression",  # budget depends on the target model
    "structured",  # structured-output preparation, validation and reask
    "retry",  # retries and fallbacks, each attempt its own context
    "limits",  # budgets and rate limits, reserved per attempt against the attempt's model
    "ledger",  # innermost: one row per upstream attempt
)


@runtime_checkable
class Handler(Protocol):
    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream: ...

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream: ...


class Stage:
    """Base class of pipeline stages. Subclasses set ``kind`` to a name in :data:`STAGE_ORDER`."""

    kind: str = ""
    next: Handler

    def prepare(self, request: Request, ctx: CallContext) -> Request:
        """Rewrite the request before it goes on; the default passes it through."""
        return request

    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream:
        return self.next.handle(self.prepare(request, ctx), ctx)

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        return await self.next.ahandle(self.prepare(request, ctx), ctx)

    def warm_up(self) -> None:
        """Load what this stage's first calls would otherwise wait for (a model, say); called once, in a
        thread of its own, as the proxy starts or the wrapper wraps a client
        (:meth:`~thrifty.middleware.engine.Engine.warm_up_in_background`). The default does nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r}>"


class PipelineFrozenError(RuntimeError):
    pass


class Pipeline:
    """Builds the chain ``stages[0] -> stages[1] -> ... -> terminal`` once, then freezes it."""

    __slots__ = ("_stages", "_terminal", "_head")

    def __init__(self, stages: Sequence[Stage], terminal: Handler) -> None:
        ranks = []
        for stage in stages:
            if stage.kind not in STAGE_ORDER:
                raise ValueError(f"stage {stage!r} has unknown kind {stage.kind!r}; kinds: {STAGE_ORDER}")
            ranks.append(STAGE_ORDER.index(stage.kind))
        if ranks != sorted(ranks):
            order = ", ".join(s.kind for s in stages)
            raise ValueError(f"stages out of order ({order}); the order is {', '.join(STAGE_ORDER)}")
        handler: Handler = terminal
        for stage in reversed(stages):
            if getattr(stage, "next", None) is not None:
                raise ValueError(f"stage {stage!r} is already part of a pipeline")
            stage.next = handler
            handler = stage
        self._stages = tuple(stages)
        self._terminal = terminal
        self._head = handler

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream:
        return self._head.handle(request, ctx)

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        return await self._head.ahandle(request, ctx)

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "_head"):
            raise PipelineFrozenError("a pipeline is frozen once built; build a new one instead")
        object.__setattr__(self, name, value)
