"""The proxy's entry and exit for LLM calls: ``/v1/chat/completions``, ``/v1/messages``, ``count_tokens``.

The same steps as the wrapper's transport, through the same shared code
(:mod:`thrifty.middleware.entry`): decode the body with the wire's codec, make
the :class:`CallContext`, hand both to the engine, encode the answer. What is
the proxy's own: where the body, options, tags, project and key come from
(the HTTP request), the answer's ``x-thrifty-*`` headers and a stream's
closing facts, and stopping the call when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from time import perf_counter
from typing import TYPE_CHECKING, Any

from thrifty.errors import InvalidRequestError, ThriftyError
from thrifty.middleware.context import CallContext, Target, ThriftyOptions
from thrifty.middleware.entry import (
    JSON_HEADERS,
    SSE_HEADERS,
    Wire,
    asse_chunks,
    decode_call,
    new_context,
    parse_json,
)
from thrifty.middleware.server._asgi import (
    ClientGoneError,
    DisconnectGuard,
    Headers,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
    send_stream,
)
from thrifty.types import AsyncEventStream, Request

if TYPE_CHECKING:
    from thrifty.middleware.engine import Engine
    from thrifty.middleware.server._auth import KeyCheck
    from thrifty.middleware.server._metrics import Metrics

log = logging.getLogger("thrifty.server")

_WANTED = frozenset({b"content-length", b"authorization", b"x-api-key", b"x-thrifty-options", b"x-thrifty-tags",
                     b"x-thrifty-project"})
_JSON = [(k.encode(), v.encode()) for k, v in JSON_HEADERS]
_SSE = [(k.encode(), v.encode()) for k, v in SSE_HEADERS]
CLIENT_GONE = 499  # the status counted for a request whose client left before its answer (nginx's)


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """The request headers the proxy reads (ASGI gives their names in lower case)."""
    return {k: v for k, v in scope["headers"] if k in _WANTED}


class ModelDefaults:
    """With no provider key configured, names no configured provider serves go to the default model.

    So any client works on a fresh machine: ``gpt-4o-mini`` or
    ``claude-sonnet-4-5`` are answered by the embedded local model, and the
    ledger row says so (``route_decision = "default:no-provider-keys"``, the
    requested name kept in ``model_requested``). Aliases (``default`` among
    them), ``provider/model`` names and the local provider's own model names
    are left to routing. Inactive as soon as any provider has a key, or an
    OpenAI-compatible server is configured, or the default provider is not local.
    """

    DECISION = "default:no-provider-keys"

    def __init__(self, engine: Engine) -> None:
        settings = engine.settings
        default = settings.providers.get(settings.default_provider)
        self.active = default is not None and default.kind == "local" and not has_provider_keys(settings)
        self._engine = engine
        self._keep = frozenset(settings.aliases) | {"default"}
        self._providers = frozenset(settings.providers)
        self._model: str | None = None

    def apply(self, request: Request, ctx: CallContext) -> Request:
        if not self.active:
            return request
        name = request.model
        if not name or name in self._keep:
            return request
        prefix, slash, rest = name.partition("/")
        if slash and prefix in self._providers:
            return request
        if not slash and _is_local_model(name):
            return request
        ctx.route_decision = self.DECISION
        return request.replace(model=self.model)

    @property
    def model(self) -> str:
        if self._model is None:
            from thrifty.routing.aliases import default_model_of

            self._model = default_model_of(self._engine)
        return self._model

    def warm_up(self) -> None:
        """Load the default model, which answers every call while active, so that the first call does not
        wait seconds for it; the proxy calls it in a thread of its own as it starts. A model that fails to
        load is logged and reported by the first call that needs it, in the caller's shape."""
        if not self.active:
            return
        try:
            provider, _, model = self.model.partition("/")
            self._engine.provider(provider).load(model)  # type: ignore[attr-defined] - active: a local provider
        except Exception as exc:  # noqa: BLE001 - warming up is an optimisation
            log.warning("the default model did not load (%s: %s); it loads on its first call",
                        type(exc).__name__, exc)
            log.debug("warm-up of the default model", exc_info=True)


def has_provider_keys(settings: Any) -> bool:
    """Whether any upstream besides local models is configured to be callable."""
    for config in settings.providers.values():
        if config.kind == "openai-compatible":
            return True
        if config.kind != "local" and config.resolved_api_key():
            return True
    return False


def _is_local_model(name: str) -> bool:
    from thrifty.middleware.providers.local import CATALOGUE

    return name in CATALOGUE


def parse_options(header: bytes | None, from_body: Any) -> ThriftyOptions:
    """The call's options, from the ``x-thrifty-options`` header or the ``thrifty`` body field."""
    if header is None:
        return ThriftyOptions.parse(from_body)
    try:
        raw = json.loads(header)
    except ValueError:
        raise InvalidRequestError(
            'the x-thrifty-options header is not valid JSON; send a JSON object such as {"tags": ["nightly"]}',
            param="x-thrifty-options") from None
    options = ThriftyOptions.parse(raw)
    if from_body is not None and ThriftyOptions.parse(from_body).model_dump() != options.model_dump():
        raise InvalidRequestError(
            "thrifty options came in both the x-thrifty-options header and the 'thrifty' body field, and they "
            "differ; send them in one place", param="thrifty")
    return options


def _tags(value: bytes | None) -> list[str]:
    if not value:
        return []
    text = _utf8(value, "x-thrifty-tags")
    return [t for t in (part.strip() for part in text.split(",")) if t]


def _utf8(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(f"the {name} header is not UTF-8 text", param=name) from None


def cost_text(record: Any) -> str:
    """The cost for a header: a plain decimal, or ``unpriced``."""
    if record is None:
        return "unpriced"
    if record.price_source is None:  # an engine that does not price inline: price a copy, leave the row alone
        from thrifty.ledger.recorder import price_record

        cost = price_record(replace(record))
    else:
        cost = record.cost_usd
    if cost is None:
        return "unpriced"
    return _decimal_text(cost)


def _decimal_text(value: Decimal) -> str:
    text = f"{value.normalize():f}" if value else "0"
    return text


def _tokens_saved(ctx: CallContext) -> int:
    record = ctx.result
    if record is not None and record.tokens_saved is not None:
        return int(record.tokens_saved)
    return sum(s.tokens_saved for s in ctx.savings.values())


def _overhead_ms(ctx: CallContext) -> float:
    return max((perf_counter() - ctx.started) * 1000.0 - ctx.upstream_ms, 0.0)


def facts(ctx: CallContext) -> dict[str, Any]:
    """What a stream's final chunk says about the call (the headers' facts, known only at its end)."""
    return {"request_id": ctx.call_id, "cost_usd": cost_text(ctx.result),
            "overhead_ms": round(_overhead_ms(ctx), 3), "tokens_saved": _tokens_saved(ctx)}


def answer_headers(ctx: CallContext | None, base: Headers, *, streaming: bool = False) -> Headers:
    if ctx is None:
        return [*base, (b"x-thrifty-request-id", uuid.uuid4().hex.encode()), (b"x-thrifty-cost-usd", b"0"),
                (b"x-thrifty-overhead-ms", b"0"), (b"x-thrifty-tokens-saved", b"0")]
    cost = b"pending" if streaming else cost_text(ctx.result).encode()
    return [*base, (b"x-thrifty-request-id", ctx.call_id.encode()), (b"x-thrifty-cost-usd", cost),
            (b"x-thrifty-overhead-ms", f"{_overhead_ms(ctx):.3f}".encode()),
            (b"x-thrifty-tokens-saved", str(_tokens_saved(ctx)).encode())]


class ProxyEntry:
    """Handles the LLM endpoints of one app (see the module docstring)."""

    def __init__(self, engine: Engine, keys: KeyCheck, metrics: Metrics, *, max_body_bytes: int) -> None:
        self.engine = engine
        self.keys = keys
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.defaults = ModelDefaults(engine)

    async def _begin(self, w: Wire, headers: dict[bytes, bytes], request: Request, raw_options: Any,
                     started: float, started_at: float) -> CallContext:
        options = parse_options(headers.get(b"x-thrifty-options"), raw_options)
        key, key_id = await self.keys.identify(headers.get(b"authorization"), headers.get(b"x-api-key"))
        project = headers.get(b"x-thrifty-project")
        return new_context(
            "proxy", w, request, options,
            tags=_tags(headers.get(b"x-thrifty-tags")),
            project=(_utf8(project, "x-thrifty-project").strip() or None) if project else None,
            key_id=key_id, virtual_key=key, started=started, started_at=started_at,
        )

    async def call(self, scope: Scope, receive: Receive, send: Send, w: Wire, endpoint: str) -> None:
        """``POST /v1/chat/completions`` or ``/v1/messages``: one call through the engine."""
        started, started_at = perf_counter(), time.time()
        ctx: CallContext | None = None
        status = 500
        answered = False
        try:
            headers = request_headers(scope)
            content = await read_body(receive, self.max_body, headers.get(b"content-length"))
            request, raw_options = decode_call(w, content)
            ctx = await self._begin(w, headers, request, raw_options, started, started_at)
            request = self.defaults.apply(request, ctx)
            async with DisconnectGuard(receive) as guard:
                result = await self.engine.ahandle(request, ctx)
                if isinstance(result, AsyncEventStream):
                    status, answered = 200, True
                    encoder = w.stream_encoder(request, facts=True)
                    call_ctx = ctx
                    chunks = asse_chunks(result, encoder, lambda: facts(call_ctx))
                    await send_stream(send, answer_headers(ctx, list(_SSE), streaming=True), chunks, guard)
                    return
            body = w.encode_response(result)
            status, answered = 200, True
            await respond(send, 200, answer_headers(ctx, list(_JSON)), body)
        except ClientGoneError:
            status = CLIENT_GONE
        except Exception as exc:
            if answered:
                log.exception("error after the answer to %s had started", endpoint)
            else:
                status = await self.error(send, w, exc, ctx)
        finally:
            self._count(endpoint, status, ctx, started)

    async def count_tokens(self, scope: Scope, receive: Receive, send: Send, w: Wire, endpoint: str) -> None:
        """``POST /v1/messages/count_tokens``: the prompt's tokens, Anthropic's answer shape."""
        started, started_at = perf_counter(), time.time()
        ctx: CallContext | None = None
        status = 500
        try:
            headers = request_headers(scope)
            body = parse_json(await read_body(receive, self.max_body, headers.get(b"content-length")))
            if isinstance(body, dict) and "max_tokens" not in body:
                body = {**body, "max_tokens": 1}  # not part of a count request; the codec wants one
            request, raw_options = w.decode(body)
            ctx = await self._begin(w, headers, request, raw_options, started, started_at)
            request = self.defaults.apply(request, ctx)
            target = self._target(request, ctx)
            n = await self._count_prompt(target, request.replace(model=target.model))
            status = 200
            await respond(send, 200, answer_headers(ctx, list(_JSON)), json.dumps({"input_tokens": n}).encode())
        except ClientGoneError:
            status = CLIENT_GONE
        except Exception as exc:
            status = await self.error(send, w, exc, ctx)
        finally:
            self._count(endpoint, status, None, started)

    def _target(self, request: Request, ctx: CallContext) -> Target:
        name = request.model
        for router in getattr(self.engine, "routers", ()):
            route = router.route(request, ctx)
            if route is not None:
                name = route.model
                break
        return self.engine.resolve(name)

    async def _count_prompt(self, target: Target, request: Request) -> int:
        provider = target.provider
        if provider.is_local:  # exact, from the model's own tokenizer (loading it is slow the first time)
            return await asyncio.to_thread(provider.prompt_tokens, request, target.model)
        return provider.prompt_tokens(request, target.model)

    async def error(self, send: Send, w: Wire, exc: BaseException, ctx: CallContext | None) -> int:
        """Answer ``exc`` in the wire's error shape; an unexpected error is a 500 that tells nothing more."""
        if isinstance(exc, ThriftyError):
            status = exc.status_code
        else:
            status = 500
            log.error("internal error while serving a call", exc_info=exc)
        headers = answer_headers(ctx, list(_JSON))
        for name, value in (getattr(exc, "headers", None) or {}).items():
            headers.append((name.lower().encode("latin-1"), str(value).encode("latin-1")))
        await respond(send, status, headers, w.error_content(exc))
        return status

    def _count(self, endpoint: str, status: int, ctx: CallContext | None, started: float) -> None:
        try:
            duration = perf_counter() - started
            record = ctx.result if ctx is not None else None
            overhead = None
            if ctx is not None:
                overhead = max(duration - ctx.upstream_ms / 1000.0, 0.0)
            self.metrics.observe(endpoint, status, record, duration, overhead)
        except Exception:  # metrics never fail a call
            log.exception("could not update metrics")

