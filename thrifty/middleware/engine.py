"""The engine: one configured pipeline, its providers and its ledger, shared by every entry.

The wrapper and the proxy differ only in how a call gets in and out; both
hand a neutral request and a :class:`CallContext` to :meth:`Engine.handle`
(or :meth:`Engine.ahandle`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from thrifty.errors import UnknownModelError, UnknownProviderError
from thrifty.middleware.context import CallContext, Target
from thrifty.middleware.pipeline import Pipeline, Stage
from thrifty.middleware.providers.base import Provider, build_provider
from thrifty.settings import Settings
from thrifty.types import AsyncEventStream, EventStream, Request, Response


class Dispatch:
    """The pipeline's last handler: hands the request to the provider the routing stage chose."""

    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream:
        return _target(ctx).provider.send(request, ctx)

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        return await _target(ctx).provider.asend(request, ctx)


def _target(ctx: CallContext) -> Target:
    if ctx.target is None:
        raise RuntimeError("no target: the pipeline has no routing stage")
    return ctx.target


class ModelResolver(Stage):
    """Resolves ``provider/model`` names to a provider; the first routing step.

    A name whose prefix is a configured provider goes there; any other name goes
    to the wrapped client's own provider when there is one (so
    ``meta-llama/Llama-3`` reaches an OpenAI-compatible client unchanged), else
    to the default provider.
    """

    kind = "routing"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def prepare(self, request: Request, ctx: CallContext) -> Request:
        if ctx.target is None:
            ctx.target = self._engine.resolve(request.model, ctx.bound_provider)
            if not ctx.model_requested:
                ctx.model_requested = request.model
        if request.model != ctx.target.model:
            request = request.replace(model=ctx.target.model)
        return request


class Engine:
    """Settings, providers, the frozen pipeline and the ledger recorder, built once."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        stages: Sequence[Stage] = (),
        recorder: Any = None,
        ledger: bool | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings.load()
        self._providers: dict[str, Provider] = {}
        self._lock = threading.Lock()
        use_ledger = self.settings.ledger.enabled if ledger is None else ledger
        self.recorder = recorder
        self.observer = None
        chain: list[Stage] = [ModelResolver(self), *stages]
        if use_ledger:
            from thrifty.ledger.observer import LedgerObserver
            from thrifty.ledger.recorder import Recorder

            if self.recorder is None:
                self.recorder = Recorder(self.settings.ledger_url, self.settings.ledger)
                self.recorder.start()
            self.observer = LedgerObserver(self.recorder)
            chain.append(self.observer)
        self.pipeline = Pipeline(chain, Dispatch())

    # -- providers

    def provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is not None:
            return provider
        config = self.settings.providers.get(name)
        if config is None:
            known = ", ".join(sorted(self.settings.providers))
            raise UnknownProviderError(f"unknown provider {name!r}; configured providers: {known}", param="model")
        with self._lock:
            provider = self._providers.get(name)
            if provider is None:
                provider = build_provider(name, config, self.settings)
                self._providers[name] = provider
        return provider

    def resolve(self, model: str, bound: Provider | None = None) -> Target:
        prefix, slash, rest = model.partition("/")
        if slash and rest:
            if bound is not None and prefix == bound.name:
                return Target(bound, rest)
            if prefix in self.settings.providers:
                return Target(self.provider(prefix), rest)
        if bound is not None:
            return Target(bound, model)
        if not model:
            raise UnknownModelError("the model name is empty", param="model")
        if slash and rest:
            known = ", ".join(sorted(self.settings.providers))
            raise UnknownProviderError(
                f"unknown provider {prefix!r} in model {model!r}; configured providers: {known}", param="model")
        return Target(self.provider(self.settings.default_provider), model)

    # -- calls

    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream:
        try:
            return self.pipeline.handle(request, ctx)
        except Exception as exc:
            self._record_rejected(request, ctx, exc)
            raise

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        try:
            return await self.pipeline.ahandle(request, ctx)
        except Exception as exc:
            self._record_rejected(request, ctx, exc)
            raise

    def _record_rejected(self, request: Request, ctx: CallContext, exc: Exception) -> None:
        # a call that failed before reaching a provider still gets its row
        if self.observer is not None and ctx.result is None:
            self.observer.record_failure(request, ctx, exc)

    def close(self) -> None:
        for provider in list(self._providers.values()):
            provider.close()
        if self.recorder is not None:
            self.recorder.close()


_default: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The process's engine for wrapped clients, built from :meth:`Settings.load` on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Engine()
    return _default
