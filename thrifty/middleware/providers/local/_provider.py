"""LocalProvider: runs a local model in this process, sync and async, streaming or not.

Everything heavy happens on first use: resolving the model name, the GGUF
conversion, loading (see ``_models``). Generation is CPU-bound and holds the
model's lock (one generation per model at a time, the others queue), so the
async face runs it in a worker thread of its own and the event loop is never
blocked; closing a stream, or cancelling the awaiting task, stops generation
after the current decode step and releases the lock.

``response_format`` is honoured as OpenAI honours it on its servers:
``json_schema`` and ``json_object`` constrain every decode step with a grammar
(:mod:`thrifty.contracts.grammar`), so the answer is JSON of that schema.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from thrifty.errors import InvalidRequestError, LocalModelError, ThriftyError, UpstreamTimeoutError
from thrifty.middleware.providers.base import Provider
from thrifty.middleware.providers.local._catalogue import resolve_model
from thrifty.middleware.providers.local._decode import DecodeParams, GenerationStats, generate
from thrifty.middleware.providers.local._models import LoadedModel, model_store
from thrifty.middleware.providers.local._prompt import render_prompt
from thrifty.settings import LocalModelSettings
from thrifty.types import (
    AsyncEventStream,
    Choice,
    ChoiceEnd,
    EventStream,
    FinishReason,
    Message,
    Request,
    Response,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    TokenLogprob,
    Usage,
    UsageEvent,
)

if TYPE_CHECKING:
    from thrifty.middleware.context import CallContext
    from thrifty.middleware.providers.local.hooks import DecodeHookFactory, LocalModelInfo
    from thrifty.settings import ProviderConfig, Settings

__all__ = ["DEFAULT_MAX_TOKENS", "LocalProvider", "local_provider_factory"]

#: output budget when a request sets no ``max_tokens``: this, or what the context has left if less
DEFAULT_MAX_TOKENS = 1024
MAX_N = 16
MAX_TOP_LOGPROBS = 20

T = TypeVar("T")


@dataclass(slots=True)
class _Call:
    """A validated call, ready to decode."""

    loaded: LoadedModel
    prompt_ids: list[int]
    params: DecodeParams
    hooks: Sequence[DecodeHookFactory]
    deadline: float | None

    def usage(self, stats: GenerationStats) -> Usage:
        return Usage(input_tokens=len(self.prompt_ids), output_tokens=stats.output_tokens, source="provider")


class LocalProvider(Provider):
    """Serves ``local/<model>``: an embedded catalogue model or a model file/directory path.

    ``settings`` are the ``[local]`` settings (cache directory, threads,
    dtype). Loaded models are shared by every LocalProvider in the process.
    """

    kind = "local"
    wire = None
    is_local = True
    default_model = "smollm2-135m"

    def __init__(
        self,
        name: str = "local",
        *,
        settings: LocalModelSettings | None = None,
        pricing_id: str | None = None,
    ) -> None:
        super().__init__(name, pricing_id=pricing_id)
        self.settings = settings if settings is not None else LocalModelSettings()

    # ------------------------------------------------------------------ models

    def _model(self, model: str) -> LoadedModel:
        return model_store().get(resolve_model(model), self.settings)

    def load(self, model: str) -> LocalModelInfo:
        """Load ``model`` now (it is otherwise loaded on first use) and describe it."""
        return self._model(model).info

    def estimate_prompt_tokens(self, request: Request) -> int | None:
        """The exact prompt token count (the chat-templated prompt), or None if the model can't load."""
        try:
            loaded = self._model(request.model)
        except LocalModelError:
            return None
        return len(render_prompt(loaded.tokenizer, request, loaded.name))

    def context_window(self, model: str) -> int | None:
        """The model's own context length, or None if it can't load."""
        try:
            return self._model(model).info.context_length
        except LocalModelError:
            return None

    # ------------------------------------------------------------------ sync

    def send(self, request: Request, ctx: CallContext) -> Response | EventStream:
        call = self._prepare(request, ctx)
        if request.stream:
            return EventStream(self._stream_events(call))
        return self._respond(call, cancel=None)

    # ------------------------------------------------------------------ async

    async def asend(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        call = await _in_thread(lambda: self._prepare(request, ctx), None)
        if request.stream:
            return AsyncEventStream(self._astream_events(call))
        cancel = threading.Event()
        return await _in_thread(lambda: self._respond(call, cancel), cancel)

    # ------------------------------------------------------------------ internals

    def _prepare(self, request: Request, ctx: CallContext) -> _Call:
        if ctx.deadline is not None and time.monotonic() > ctx.deadline:
            raise UpstreamTimeoutError("the call's deadline passed before the local model started")
        loaded = self._model(request.model)
        prompt_ids = render_prompt(loaded.tokenizer, request, loaded.name)
        params = _decode_params(request, len(prompt_ids), loaded.info.context_length, loaded.name)
        hooks = list(ctx.decode_hooks)
        grammar = _output_grammar(request, loaded)
        if grammar is not None:
            hooks.append(grammar)  # last: no later hook may lift its mask
        return _Call(loaded, prompt_ids, params, hooks, ctx.deadline)

    def _generate(
        self, call: _Call, stats: GenerationStats, cancel: threading.Event | None
    ) -> Generator[TextDelta | ChoiceEnd, None, None]:
        return generate(
            call.loaded,
            call.prompt_ids,
            call.params,
            call.hooks,
            stats=stats,
            cancel=cancel,
            deadline=call.deadline,
        )

    def _respond(self, call: _Call, cancel: threading.Event | None) -> Response:
        stats = GenerationStats(prompt_tokens=len(call.prompt_ids))
        builder = _ChoicesBuilder(call.params.n, call.params.logprobs)
        events = self._generate(call, stats, cancel)
        try:
            for event in events:
                builder.add(event)
        except ThriftyError:
            raise
        except Exception as exc:
            raise _generation_error(call, exc) from exc
        finally:
            events.close()
        return Response(
            id=_response_id(),
            model=call.loaded.name,
            choices=builder.choices(),
            usage=call.usage(stats),
            created=int(time.time()),
        )

    def _stream_events(self, call: _Call) -> Iterator[StreamEvent]:
        stats = GenerationStats(prompt_tokens=len(call.prompt_ids))
        yield StreamStart(id=_response_id(), model=call.loaded.name, created=int(time.time()))
        yield UsageEvent(call.usage(stats))  # the prompt's count, known before the first token
        events = self._generate(call, stats, None)
        try:
            yield from events
        except Exception as exc:  # noqa: BLE001 - after the start, errors go inside the stream
            yield UsageEvent(call.usage(stats))
            yield StreamError(exc if isinstance(exc, ThriftyError) else _generation_error(call, exc))
            return
        finally:
            events.close()
        yield UsageEvent(call.usage(stats))

    async def _astream_events(self, call: _Call) -> AsyncIterator[StreamEvent]:
        stats = GenerationStats(prompt_tokens=len(call.prompt_ids))
        yield StreamStart(id=_response_id(), model=call.loaded.name, created=int(time.time()))
        yield UsageEvent(call.usage(stats))  # the prompt's count, known before the first token
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def post(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        def work() -> None:
            events = self._generate(call, stats, cancel)
            try:
                for event in events:
                    post(event)
            except Exception as exc:  # noqa: BLE001 - handed to the stream, which maps it
                post(_Failure(exc))
            finally:
                events.close()
                post(_DONE)

        finished = _start_thread(work, loop)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    exc = item.error
                    yield UsageEvent(call.usage(stats))
                    yield StreamError(exc if isinstance(exc, ThriftyError) else _generation_error(call, exc))
                    return
                yield item
            yield UsageEvent(call.usage(stats))
        finally:
            cancel.set()
            await finished  # the worker releases the model's lock within one decode step


def local_provider_factory(name: str, config: ProviderConfig, settings: Settings) -> LocalProvider:
    """The registered factory of the ``local`` provider kind."""
    return LocalProvider(name, settings=settings.local, pricing_id=config.pricing_id)


# ---------------------------------------------------------------------- helpers


def _output_grammar(request: Request, loaded: LoadedModel) -> DecodeHookFactory | None:
    """The grammar of ``request.response_format`` (compiled once per schema), or None for free text.

    OpenAI enforces ``json_schema`` and ``json_object`` on its servers; a local
    model does the same here, by masking every decode step (see
    :mod:`thrifty.contracts.grammar`).
    """
    if request.response_format is None:
        return None
    from thrifty.contracts.grammar import grammar_cache, schema_of

    schema = schema_of(request.response_format)
    return None if schema is None else grammar_cache().compile(loaded.info, schema)


def _decode_params(request: Request, prompt_tokens: int, context: int, model: str) -> DecodeParams:
    if not 1 <= request.n <= MAX_N:
        raise InvalidRequestError(f"n must be between 1 and {MAX_N}, got {request.n}", param="n")
    temperature = 1.0 if request.temperature is None else float(request.temperature)
    if not 0.0 <= temperature <= 2.0:
        raise InvalidRequestError(
            f"temperature must be between 0 and 2, got {temperature}", param="temperature"
        )
    top_p = 1.0 if request.top_p is None else float(request.top_p)
    if not 0.0 < top_p <= 1.0:
        raise InvalidRequestError(f"top_p must be above 0 and at most 1, got {top_p}", param="top_p")
    top_logprobs = request.top_logprobs or 0
    if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRequestError(
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top_logprobs}", param="top_logprobs"
        )
    room = context - prompt_tokens
    if room < 1:
        raise InvalidRequestError(
            f"the prompt is {prompt_tokens} tokens, but model local/{model} has a context window of "
            f"{context} tokens; shorten the messages",
            param="messages",
        )
    if request.max_tokens is None:
        max_tokens = min(room, DEFAULT_MAX_TOKENS)
    else:
        max_tokens = request.max_tokens
        if max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
        if max_tokens > room:
            raise InvalidRequestError(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is "
                f"{prompt_tokens + max_tokens} tokens, more than the {context}-token context window of "
                f"model local/{model}; lower max_tokens to at most {room} or shorten the messages",
                param="max_tokens",
            )
    return DecodeParams(
        max_new_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=tuple(s for s in request.stop if s),
        n=request.n,
        seed=request.seed,
        logprobs=request.logprobs or top_logprobs > 0,
        top_logprobs=top_logprobs,
    )


class _ChoicesBuilder:
    """Collects the decode loop's events into the choices of a plain response."""

    def __init__(self, n: int, logprobs: bool) -> None:
        self._texts: list[list[str]] = [[] for _ in range(n)]
        self._logprobs: list[list[TokenLogprob]] | None = [[] for _ in range(n)] if logprobs else None
        self._ends: dict[int, ChoiceEnd] = {}

    def add(self, event: TextDelta | ChoiceEnd) -> None:
        if isinstance(event, ChoiceEnd):
            self._ends[event.index] = event
            return
        self._texts[event.index].append(event.text)
        if self._logprobs is not None and event.logprobs:
            self._logprobs[event.index].extend(event.logprobs)

    def choices(self) -> list[Choice]:
        out = []
        for index, parts in enumerate(self._texts):
            end = self._ends.get(index)
            finish: FinishReason = end.finish_reason if end else "error"
            out.append(
                Choice(
                    index=index,
                    message=Message(role="assistant", content=[TextPart("".join(parts))]),
                    finish_reason=finish,
                    stop_sequence=end.stop_sequence if end else None,
                    logprobs=self._logprobs[index] if self._logprobs is not None else None,
                )
            )
        return out


@dataclass(slots=True)
class _Failure:
    error: Exception


_DONE = object()


def _response_id() -> str:
    return f"local-{uuid.uuid4().hex[:24]}"


def _generation_error(call: _Call, exc: Exception) -> LocalModelError:
    error = LocalModelError(f"local model {call.loaded.name!r} failed while generating: {exc}")
    error.__cause__ = exc
    return error


def _start_thread(fn: Callable[[], None], loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """Run ``fn`` in a daemon thread of its own; the future resolves when it returns.

    A thread of its own, not the loop's default executor: generations queue on
    the model lock for as long as a generation takes, and must not starve the
    executor that the rest of the application (DNS look-ups, ``to_thread``) uses.
    """
    finished: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not finished.done():
            finished.set_result(None)

    def run() -> None:
        try:
            fn()
        finally:
            try:
                loop.call_soon_threadsafe(resolve)
            except RuntimeError:
                pass

    threading.Thread(target=run, name="thrifty-local-model", daemon=True).start()
    return finished


async def _in_thread(fn: Callable[[], T], cancel: threading.Event | None) -> T:
    """``await fn()`` run in its own thread; cancelling the caller sets ``cancel``."""
    loop = asyncio.get_running_loop()
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the awaiting task
            box.append((False, exc))

    finished = _start_thread(run, loop)
    try:
        await asyncio.shield(finished)
    except asyncio.CancelledError:
        if cancel is not None:
            cancel.set()
        raise
    ok, value = box[0]
    if ok:
        return value
    raise value
