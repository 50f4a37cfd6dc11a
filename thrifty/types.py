"""Provider-neutral request, response, usage and stream-event types.

Codecs translate the OpenAI and Anthropic wire formats to and from these
types; every other part of thrifty (pipeline stages, providers, the ledger)
works on them only. They are plain slotted dataclasses: cheap to build and
copy, because one is built for every call.

Fields that one wire format has and the neutral model does not name are kept
in ``extra`` (keyed by field name, tagged with the wire they came from in
``extra_wire``) so that a request or response that leaves in the wire format it
arrived in passes them through unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union

Role = Literal["system", "user", "assistant", "tool"]
Wire = Literal["openai", "anthropic"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]
UsageSource = Literal["provider", "estimate"]


# ---------------------------------------------------------------- content parts


@dataclass(slots=True)
class TextPart:
    text: str
    cache_control: dict[str, Any] | None = None  # Anthropic prompt-cache marker, kept as-is


@dataclass(slots=True)
class ImagePart:
    """An image given by URL (``https:`` or ``data:``) or by base64 data."""

    url: str | None = None
    data: str | None = None  # base64
    media_type: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class ToolCallPart:
    """A call the assistant made: ``arguments`` is the JSON text of the arguments."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ToolResultPart:
    """The result of a tool call, sent back by the caller."""

    tool_call_id: str
    content: list[Part]
    is_error: bool = False


@dataclass(slots=True)
class OpaquePart:
    """A part only one wire format understands (thinking blocks, audio, files...).

    It travels unchanged to a provider of the same wire and is dropped, with
    nothing invented in its place, when translated to the other one.
    """

    wire: Wire
    raw: dict[str, Any]


Part = Union[TextPart, ImagePart, ToolCallPart, ToolResultPart, OpaquePart]


@dataclass(slots=True)
class Message:
    role: Role
    content: list[Part]
    name: str | None = None

    def text(self) -> str:
        """The concatenated text of the message's text parts."""
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


@dataclass(slots=True)
class ToolChoice:
    """``auto``, ``none``, ``required`` (any tool), or ``tool`` with ``name``."""

    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None
    parallel: bool | None = None


@dataclass(slots=True)
class ResponseFormat:
    """What shape the output must have: free text, any JSON, or a JSON schema."""

    type: Literal["text", "json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None
    description: str | None = None


# ---------------------------------------------------------------- request


@dataclass(slots=True)
class Request:
    model: str
    messages: list[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    stream_usage: bool = False  # the client asked for a final usage event in its stream
    n: int = 1
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    extra_wire: Wire | None = None

    def replace(self, **changes: Any) -> Request:
        return dataclasses.replace(self, **changes)

    def system_text(self) -> str:
        return "\n".join(m.text() for m in self.messages if m.role == "system")


# ---------------------------------------------------------------- response


@dataclass(slots=True)
class Usage:
    """Billed token counts, partitioned so that no token is counted twice.

    ``input_tokens`` are prompt tokens read neither from nor into the provider's
    prompt cache; the whole prompt is ``input + cache_read + cache_write``.
    ``reasoning_tokens`` are part of ``output_tokens`` (they are billed as output).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    source: UsageSource = "provider"

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            "estimate" if "estimate" in (self.source, other.source) else "provider",
        )


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int] | None = None
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class Choice:
    index: int
    message: Message
    finish_reason: FinishReason | None
    stop_sequence: str | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class Response:
    id: str
    model: str
    choices: list[Choice]
    usage: Usage
    created: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    extra_wire: Wire | None = None


# ---------------------------------------------------------------- streaming


@dataclass(slots=True)
class StreamStart:
    id: str
    model: str
    created: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    extra_wire: Wire | None = None


@dataclass(slots=True)
class TextDelta:
    text: str
    index: int = 0
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a tool call: the first piece of a call carries ``id`` and ``name``."""

    tool_index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None
    index: int = 0


@dataclass(slots=True)
class ChoiceEnd:
    finish_reason: FinishReason
    index: int = 0
    stop_sequence: str | None = None


@dataclass(slots=True)
class UsageEvent:
    """Usage so far; the last one in a stream is the billed total."""

    usage: Usage


@dataclass(slots=True)
class StreamError:
    """The upstream failed after the stream had started."""

    error: Exception


StreamEvent = Union[StreamStart, TextDelta, ToolCallDelta, ChoiceEnd, UsageEvent, StreamError]


class EventStream:
    """A response stream: iterate it for events; ``close()`` it to stop early.

    ``on_close`` callbacks run exactly once, when the stream is exhausted,
    fails or is closed, which is how accounting is finalized on disconnect.
    """

    __slots__ = ("_events", "_on_close", "_closed")

    def __init__(self, events: Iterator[StreamEvent]) -> None:
        self._events = events
        self._on_close: list[Callable[[], None]] = []
        self._closed = False

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def __iter__(self) -> Iterator[StreamEvent]:
        try:
            yield from self._events
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._events, "close", None)
        try:
            if close is not None:
                close()
        finally:
            for callback in self._on_close:
                callback()


class AsyncEventStream:
    """The async twin of :class:`EventStream`."""

    __slots__ = ("_events", "_on_close", "_closed")

    def __init__(self, events: AsyncIterator[StreamEvent]) -> None:
        self._events = events
        self._on_close: list[Callable[[], None]] = []
        self._closed = False

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        try:
            async for event in self._events:
                yield event
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._events, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            for callback in self._on_close:
                callback()


class StreamWatcher(Protocol):
    """What a :class:`Tap` reports to: each event, whether the stream ran out, and its failure."""

    exhausted: bool
    error: BaseException | None

    def see(self, event: StreamEvent) -> None: ...


class Tap:
    """Passes a stream's events through, showing each to a watcher; closing it closes the stream.

    Stages that account for a stream (the ledger observer, the limits stage)
    wrap it in a tap and finalize their accounts in ``on_close``.
    """

    __slots__ = ("_inner", "_it", "_watcher")

    def __init__(self, inner: EventStream, watcher: StreamWatcher) -> None:
        self._inner = inner
        self._watcher = watcher
        self._it: Iterator[StreamEvent] | None = None

    def __iter__(self) -> Tap:
        return self

    def __next__(self) -> StreamEvent:
        if self._it is None:
            self._it = iter(self._inner)
        try:
            event = next(self._it)
        except StopIteration:
            self._watcher.exhausted = True
            raise
        except Exception as exc:
            self._watcher.error = exc
            raise
        self._watcher.see(event)
        return event

    def close(self) -> None:
        try:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
        finally:
            self._inner.close()  # also when never iterated


class AsyncTap:
    """The async twin of :class:`Tap`."""

    __slots__ = ("_inner", "_it", "_watcher")

    def __init__(self, inner: AsyncEventStream, watcher: StreamWatcher) -> None:
        self._inner = inner
        self._watcher = watcher
        self._it: AsyncIterator[StreamEvent] | None = None

    def __aiter__(self) -> AsyncTap:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._it is None:
            self._it = self._inner.__aiter__()
        try:
            event = await self._it.__anext__()
        except StopAsyncIteration:
            self._watcher.exhausted = True
            raise
        except Exception as exc:
            self._watcher.error = exc
            raise
        self._watcher.see(event)
        return event

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._it, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            await self._inner.aclose()
