"""What the two entries share: a call's way in (bytes to a neutral request and its context) and out.

The wrapper (an SDK client's HTTP transport) and the proxy (an ASGI app) differ
only in where the bytes of a call come from and where the answer goes. Both
use these helpers, so a request decodes, a context is built, a response or an
error is encoded and a stream is framed the same way in both:

* :func:`wire` gives the :class:`Wire` of ``"openai"`` or ``"anthropic"``: its
  codec, its stream encoder, its JSON answers and error bodies;
* :func:`decode_call` turns a request body into a neutral request and the raw
  thrifty options; :func:`new_context` makes the call's :class:`CallContext`;
* :func:`sse_chunks` and :func:`asse_chunks` frame an event stream as
  server-sent events, errors after the start going inside the stream, and end
  it with facts about the call when the entry asks for them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

from thrifty.errors import InvalidRequestError
from thrifty.middleware.context import CallContext, Entry, ThriftyOptions
from thrifty.types import AsyncEventStream, EventStream, Request, Response, StreamError
from thrifty.types import Wire as WireName

__all__ = ["Wire", "asse_chunks", "decode_call", "key_hash", "new_context", "parse_json", "sse_chunks", "wire"]

JSON_HEADERS = [("content-type", "application/json")]
SSE_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


class Wire:
    """One wire format as an entry sees it: decode a request, encode an answer, frame a stream."""

    __slots__ = ("name", "codec")

    def __init__(self, name: WireName, codec: ModuleType) -> None:
        self.name = name
        self.codec = codec

    def decode(self, body: Any) -> tuple[Request, Any]:
        return self.codec.decode_request(body)  # type: ignore[no-any-return]

    def stream_encoder(self, request: Request, *, facts: bool = False) -> Any:
        """A fresh stream encoder; ``facts``: the stream will end with a ``thrifty`` object."""
        if self.name == "openai":
            return self.codec.StreamEncoder(request.stream_usage, facts=facts)
        return self.codec.StreamEncoder()

    def encode_response(self, response: Response) -> bytes:
        return json.dumps(self.codec.encode_response(response), ensure_ascii=False).encode()

    def error_body(self, exc: BaseException) -> dict[str, Any]:
        """The wire's error JSON for ``exc`` (a generic message for anything not thrifty's own)."""
        return self.codec.error_body(exc)  # type: ignore[no-any-return]

    def error_content(self, exc: BaseException) -> bytes:
        return json.dumps(self.error_body(exc), ensure_ascii=False).encode()


_WIRES: dict[str, Wire] = {}


def wire(name: str) -> Wire:
    """The :class:`Wire` named ``"openai"`` or ``"anthropic"``."""
    found = _WIRES.get(name)
    if found is None:
        if name == "openai":
            from thrifty.middleware.codecs import openai as codec
        elif name == "anthropic":
            from thrifty.middleware.codecs import anthropic as codec
        else:
            raise ValueError(f"unknown wire {name!r}; wires: openai, anthropic")
        found = _WIRES[name] = Wire(name, codec)  # type: ignore[arg-type]
    return found


def parse_json(content: bytes) -> Any:
    """The JSON of a request body, or a 400 that says what is wrong with it."""
    if not content:
        raise InvalidRequestError("the request body is empty; send a JSON object")
    try:
        return json.loads(content)
    except UnicodeDecodeError:
        raise InvalidRequestError("the request body is not UTF-8 text; send a JSON object") from None
    except ValueError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from None


def decode_call(w: Wire, content: bytes) -> tuple[Request, Any]:
    """A neutral request and the raw thrifty options (the ``thrifty`` body field) from a body."""
    return w.decode(parse_json(content))


@functools.lru_cache(maxsize=1024)
def key_hash(secret: str) -> str:
    """What the ledger keeps of a caller's key: a short hash, never the key (cached: callers repeat keys)."""
    return hashlib.sha256(secret.removeprefix("Bearer ").encode()).hexdigest()[:16]


def new_context(
    entry: Entry,
    w: Wire,
    request: Request,
    options: ThriftyOptions,
    *,
    tags: Iterable[str] = (),
    project: str | None = None,
    **fields: Any,
) -> CallContext:
    """The call's context: options win over what the entry found elsewhere (headers, body fields).

    ``tags`` are the entry's own (a header's), merged with the options' tags;
    the user is the options', else the request's (OpenAI ``user``, Anthropic
    ``metadata.user_id``); ``fields`` go to :class:`CallContext` as they are.
    """
    merged = list(dict.fromkeys([*tags, *options.tags])) if tags else list(options.tags)
    return CallContext(
        entry=entry,
        wire=w.name,
        options=options,
        user=options.user or request.user,
        project=options.project or project,
        tags=merged,
        model_requested=request.model,
        **fields,
    )


def sse_chunks(
    events: EventStream, encoder: Any, facts: Callable[[], dict[str, Any] | None] | None = None
) -> Iterator[bytes]:
    """Server-sent events for ``events``; a failure after the start ends the stream with an error event.

    ``facts`` is called once the stream is exhausted (its ledger row written);
    what it returns ends the stream (see the codecs' ``StreamEncoder.finish``).
    """
    it = iter(events)
    try:
        for event in it:
            chunk = encoder.encode(event)
            if chunk:
                yield chunk
            if isinstance(event, StreamError):
                return
    except Exception as exc:  # a failure after the stream started goes inside it
        yield encoder.encode(StreamError(exc))
        return
    finally:
        it.close()  # type: ignore[attr-defined]
        events.close()  # closes the upstream and finalizes the row (a no-op when done)
    yield encoder.finish(facts() if facts is not None else None)


async def asse_chunks(
    events: AsyncEventStream, encoder: Any, facts: Callable[[], dict[str, Any] | None] | None = None
) -> AsyncIterator[bytes]:
    """The async twin of :func:`sse_chunks`."""
    it = events.__aiter__()
    try:
        async for event in it:
            chunk = encoder.encode(event)
            if chunk:
                yield chunk
            if isinstance(event, StreamError):
                return
    except Exception as exc:
        yield encoder.encode(StreamError(exc))
        return
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await events.aclose()  # closes the upstream and finalizes the row, also when cancelled
    yield encoder.finish(facts() if facts is not None else None)
