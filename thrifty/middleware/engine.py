"""The engine: one configured pipeline, its providers and its ledger, shared by every entry.

The wrapper and the proxy differ only in how a call gets in and out; both
hand a neutral request and a :class:`CallContext` to :meth:`Engine.handle`
(or :meth:`Engine.ahandle`).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from thrifty.errors import ConfigurationError, InvalidRequestError, UnknownModelError, UnknownProviderError
from thrifty.middleware.context import CallContext, Target, ThriftyOptions
from thrifty.middleware.pipeline import STAGE_ORDER, Pipeline, Stage
from thrifty.middleware.providers.base import Provider, build_provider
from thrifty.middleware.retry import RetryStage
from thrifty.routing.base import Router, build_routers
from thrifty.settings import Settings
from thrifty.types import AsyncEventStream, EventStream, Request, Response

log = logging.getLogger(__name__)


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
    """Picks the target of a call; the first routing step.

    First the engine's routers (:mod:`thrifty.routing`; the built-in one maps
    model aliases such as ``default`` and ``fast``) are asked in order; the
    first that routes the request sets the model name, ``ctx.route_decision``,
    ``ctx.fallbacks`` and ``ctx.retry``. Then the name (the routed one, else the
    requested one) is resolved by :meth:`Engine.resolve`. The requested name
    stays in ``ctx.model_requested``.
    """

    kind = "routing"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def prepare(self, request: Request, ctx: CallContext) -> Request:
        if ctx.target is None:
            if not ctx.model_requested:
                ctx.model_requested = request.model
            name = request.model
            for router in self._engine.routers:
                route = router.route(request, ctx)
                if route is not None:
                    name = route.model
                    ctx.route_decision = route.decision
                    ctx.fallbacks = route.fallbacks
                    ctx.retry = route.retry
                    break
            ctx.target = self._engine.resolve(name, ctx.bound_provider)
        if request.model != ctx.target.model:
            request = request.replace(model=ctx.target.model)
        return request


#: The techniques' own stages, built into every engine: ``(kind, "module:Class")``.
#: Each class has ``from_engine(engine) -> Stage``, is imported only when an
#: engine is built (never torch at import), and passes a call through untouched
#: unless the call's options, its alias or the settings ask for the technique.
BUILTIN_STAGES: tuple[tuple[str, str], ...] = (
    ("contracts", "thrifty.contracts.stage:ContractStage"),
    ("compression", "thrifty.compressors.stage:CompressionStage"),
    ("structured", "thrifty.contracts.structured:StructuredStage"),
)


def _builtin_stages(engine: Engine, given: Sequence[Stage]) -> list[Stage]:
    kinds = {stage.kind for stage in given}
    built = []
    for kind, where in BUILTIN_STAGES:
        if kind in kinds:
            continue
        module, _, name = where.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # that technique is not part of this installation
        built.append(cls.from_engine(engine))
    return built


class Engine:
    """Settings, providers, routers, the frozen pipeline and the ledger recorder, built once.

    The chain is the routing step (:class:`ModelResolver`), ``stages`` and the
    techniques' own stages (:data:`BUILTIN_STAGES`, unless ``stages`` has one
    of that kind), each in its place by
    :data:`~thrifty.middleware.pipeline.STAGE_ORDER`, then a
    :class:`~thrifty.middleware.retry.RetryStage` likewise (unless ``stages``
    has a ``retry`` stage), then the ledger observer. ``retry``: ``None`` retries
    proxied calls by ``[retry]`` and wrapped clients' calls only as their alias
    says (the SDKs retry on their own); ``True`` retries wrapped calls too;
    ``False`` leaves the retry stage out. ``price_inline``: price each ledger
    record on the request path, for an entry that answers with the cost (the proxy).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        stages: Sequence[Stage] = (),
        recorder: Any = None,
        ledger: bool | None = None,
        retry: bool | None = None,
        price_inline: bool = False,
    ) -> None:
        self.settings = settings if settings is not None else Settings.load()
        self._providers: dict[str, Provider] = {}
        self._lock = threading.Lock()
        self._warming: threading.Thread | None = None
        use_ledger = self.settings.ledger.enabled if ledger is None else ledger
        self.recorder = recorder
        self.observer = None
        self.routers: tuple[Router, ...] = build_routers(self)
        self._alias_options = _alias_options(self.settings)
        chain: list[Stage] = [ModelResolver(self)]
        for stage in [*stages, *_builtin_stages(self, stages)]:
            _insert_in_order(chain, stage)
        if retry is not False and not any(stage.kind == "retry" for stage in stages):
            _insert_in_order(chain, RetryStage(self.settings.retry, self.resolve, retry_wrapped=bool(retry)))
        if use_ledger:
            from thrifty.ledger.observer import LedgerObserver
            from thrifty.ledger.recorder import Recorder

            if self.recorder is None:
                self.recorder = Recorder.from_settings(self.settings)
                self.recorder.start()
            self.observer = LedgerObserver(self.recorder, price_inline=price_inline)
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

    def options_for(self, model: str, options: ThriftyOptions) -> ThriftyOptions:
        """The call's options over its alias's ``options`` (the call's own win, field by field)."""
        base = self._alias_options.get(model)
        if base is None:
            return options
        if not options.model_fields_set:
            return base
        merged = {**base.model_dump(exclude_unset=True), **options.model_dump(exclude_unset=True)}
        return ThriftyOptions.model_validate(merged)

    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream:
        ctx.options = self.options_for(request.model, ctx.options)
        try:
            return self.pipeline.handle(request, ctx)
        except Exception as exc:
            self._record_rejected(request, ctx, exc)
            raise

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        ctx.options = self.options_for(request.model, ctx.options)
        try:
            return await self.pipeline.ahandle(request, ctx)
        except Exception as exc:
            self._record_rejected(request, ctx, exc)
            raise

    def _record_rejected(self, request: Request, ctx: CallContext, exc: Exception) -> None:
        # a call that failed before reaching a provider still gets its row
        if self.observer is not None and ctx.result is None:
            self.observer.record_failure(request, ctx, exc)

    def warm_up(self) -> None:
        """Load what the first calls would otherwise wait for: the price table that every call's cost
        needs, and each stage's models (:meth:`Stage.warm_up`: the compressor, where calls compress without
        asking). Not the tokenizers (~100 MB, loaded on first use: count_tokens, and streams that report
        no usage).

        A stage that fails to warm up is logged and left to load on its first call, which reports the
        error in the caller's shape. See :meth:`warm_up_in_background`.
        """
        try:
            from thrifty.ledger import pricing
            from thrifty.types import Usage

            pricing.price(Usage(input_tokens=1), "gpt-4o-mini", pricing_id="openai", is_local=False)
        except Exception:  # noqa: BLE001 - warming up is an optimisation
            log.debug("warm-up of the price table failed", exc_info=True)
        for stage in self.pipeline.stages:
            try:
                stage.warm_up()
            except Exception as exc:  # noqa: BLE001 - warming up is an optimisation
                log.warning("%r did not warm up (%s: %s); it loads on its first call", stage,
                            type(exc).__name__, exc)
                log.debug("warm-up of %r", stage, exc_info=True)

    def warm_up_in_background(self) -> None:
        """:meth:`warm_up` in a daemon thread, started once per engine: ``thrifty serve`` starts it as it
        starts, ``thrifty.wrap`` as it wraps a client. A call made before it is done waits only for what
        is still loading (the compressor is built once per process, under a lock)."""
        with self._lock:
            if self._warming is not None:
                return
            self._warming = threading.Thread(target=self.warm_up, name="thrifty-warm-up", daemon=True)
        self._warming.start()

    def close(self) -> None:
        for provider in list(self._providers.values()):
            provider.close()
        if self.recorder is not None:
            self.recorder.close()

    async def aclose(self) -> None:
        """:meth:`close` from an event loop: the providers' async clients closed in it, the rest off it."""
        import asyncio

        for provider in list(self._providers.values()):
            await provider.aclose()
        await asyncio.to_thread(self.close)  # closing a provider twice is harmless


def _alias_options(settings: Settings) -> dict[str, ThriftyOptions]:
    """Each alias's ``options``, validated once; a bad one names the alias."""
    parsed = {}
    for name, alias in settings.aliases.items():
        if not alias.options:
            continue
        try:
            parsed[name] = ThriftyOptions.parse(alias.options)
        except InvalidRequestError as exc:
            raise ConfigurationError(f"[aliases.{name}] options: {exc}") from None
    return parsed


def _insert_in_order(chain: list[Stage], stage: Stage) -> None:
    """Put ``stage`` before the first stage that runs after it by STAGE_ORDER."""
    rank = STAGE_ORDER.index(stage.kind)
    for i, other in enumerate(chain):
        if other.kind in STAGE_ORDER and STAGE_ORDER.index(other.kind) > rank:
            chain.insert(i, stage)
            return
    chain.append(stage)


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
