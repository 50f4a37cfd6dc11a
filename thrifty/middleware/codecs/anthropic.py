"""The Anthropic Messages wire format, to and from the neutral types.

Anthropic's tool results live in user messages; in the neutral model each is a
``tool`` message, and consecutive tool/user messages merge back into one user
turn on the way out. Blocks only Anthropic understands (thinking, documents,
server tools) travel as :class:`~thrifty.types.OpaquePart`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from thrifty.errors import InvalidRequestError, ThriftyError, UpstreamError
from thrifty.middleware.codecs._common import check, decode_error, optional, require, sse
from thrifty.types import (
    Choice,
    ChoiceEnd,
    ImagePart,
    Message,
    OpaquePart,
    Part,
    Request,
    Response,
    ResponseFormat,
    StreamError,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
    UsageEvent,
)

WIRE = "anthropic"
#: ``max_tokens`` sent to Anthropic when a request from another wire names none (Anthropic requires one)
DEFAULT_MAX_TOKENS = 4096

_KNOWN_REQUEST = frozenset({
    "model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p", "stream",
    "tools", "tool_choice", "metadata", "output_format", "thrifty",
})
_KNOWN_RESPONSE = frozenset({"id", "type", "role", "content", "model", "stop_reason", "stop_sequence", "usage"})
_STOP_IN = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
            "pause_turn": "stop", "refusal": "content_filter", "model_context_window_exceeded": "length"}
_STOP_OUT = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal",
             "error": "end_turn"}


# ------------------------------------------------------------------ requests


def decode_request(body: Any) -> tuple[Request, Any]:
    """A neutral request and the raw thrifty options from a ``/v1/messages`` body."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    model = require(body, "model", str)
    max_tokens = require(body, "max_tokens", int)
    if max_tokens < 1:
        raise InvalidRequestError("field 'max_tokens' must be at least 1", param="max_tokens")
    raw_messages = require(body, "messages", list)
    messages: list[Message] = []
    system = body.get("system")
    if system is not None:
        parts = _decode_blocks(system, "system")
        messages.append(Message("system", parts))
    for i, raw in enumerate(raw_messages):
        messages.extend(_decode_message(raw, i))
    stops = [check(s, str, "stop_sequences") for s in optional(body, "stop_sequences", list) or []]
    tools: list[Tool] = []
    server_tools: list[Any] = []
    for i, raw in enumerate(optional(body, "tools", list) or []):
        check(raw, dict, f"tools[{i}]")
        if "input_schema" in raw and raw.get("type") in (None, "custom"):
            tools.append(Tool(name=require(raw, "name", str, f"tools[{i}]."),
                              description=optional(raw, "description", str, f"tools[{i}]."),
                              parameters=require(raw, "input_schema", dict, f"tools[{i}].")))
        else:
            server_tools.append(raw)
    extra = {k: v for k, v in body.items() if k not in _KNOWN_REQUEST}
    if server_tools:
        extra["tools"] = server_tools
    metadata = optional(body, "metadata", dict) or {}
    if set(metadata) - {"user_id"}:
        extra["metadata"] = metadata
    response_format = _decode_output_format(body, extra)
    request = Request(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=optional(body, "temperature", float),
        top_p=optional(body, "top_p", float),
        stop=stops,
        stream=bool(optional(body, "stream", bool)),
        stream_usage=True,
        tools=tools,
        tool_choice=_decode_tool_choice(body.get("tool_choice")),
        response_format=response_format,
        user=optional(metadata, "user_id", str, "metadata."),
        extra=extra,
        extra_wire=WIRE if extra else None,
    )
    return request, body.get("thrifty")


def _decode_message(raw: Any, i: int) -> list[Message]:
    where = f"messages[{i}]."
    check(raw, dict, f"messages[{i}]")
    role = require(raw, "role", str, where)
    if role not in ("user", "assistant"):
        raise InvalidRequestError(f"field '{where}role' must be 'user' or 'assistant', got {role!r}",
                                  param=f"{where}role")
    if "content" not in raw:
        raise InvalidRequestError(f"missing required field '{where}content'", param=f"{where}content")
    parts = _decode_blocks(raw["content"], where + "content")
    results = [p for p in parts if isinstance(p, ToolResultPart)]
    if not results:
        return [Message(role, parts)]  # type: ignore[arg-type]
    out = [Message("tool", [r]) for r in results]
    rest = [p for p in parts if not isinstance(p, ToolResultPart)]
    if rest:
        out.append(Message(role, rest))  # type: ignore[arg-type]
    return out


def _decode_blocks(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    check(content, list, where)
    parts: list[Part] = []
    for j, block in enumerate(content):
        bw = f"{where}[{j}]"
        check(block, dict, bw)
        kind = require(block, "type", str, bw + ".")
        if kind == "text":
            parts.append(TextPart(require(block, "text", str, bw + "."), block.get("cache_control")))
        elif kind == "image" and isinstance(block.get("source"), dict):
            src = block["source"]
            if src.get("type") == "base64":
                parts.append(ImagePart(data=src.get("data"), media_type=src.get("media_type")))
            elif src.get("type") == "url":
                parts.append(ImagePart(url=src.get("url")))
            else:
                parts.append(OpaquePart(WIRE, block))
        elif kind == "tool_use":
            parts.append(ToolCallPart(id=require(block, "id", str, bw + "."), name=require(block, "name", str, bw + "."),
                                      arguments=json.dumps(block.get("input") or {}, ensure_ascii=False)))
        elif kind == "tool_result":
            inner = block.get("content")
            parts.append(ToolResultPart(
                tool_call_id=require(block, "tool_use_id", str, bw + "."),
                content=[] if inner is None else _decode_blocks(inner, bw + ".content"),
                is_error=bool(block.get("is_error")),
            ))
        else:
            parts.append(OpaquePart(WIRE, block))
    return parts


def _decode_tool_choice(raw: Any) -> ToolChoice | None:
    if raw is None:
        return None
    check(raw, dict, "tool_choice")
    kind = require(raw, "type", str, "tool_choice.")
    mode = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}.get(kind)
    if mode is None:
        raise InvalidRequestError(f"field 'tool_choice.type' has unknown value {kind!r}", param="tool_choice.type")
    disable = raw.get("disable_parallel_tool_use")
    return ToolChoice(mode, name=raw.get("name") if mode == "tool" else None,  # type: ignore[arg-type]
                      parallel=None if disable is None else not disable)


def _decode_output_format(body: dict[str, Any], extra: dict[str, Any]) -> ResponseFormat | None:
    """Anthropic's structured output (``output_config.format``, or the older ``output_format``) as a response format.

    The other ``output_config`` fields (``effort``...) stay in ``extra``.
    """
    config = optional(body, "output_config", dict)
    fmt, where = None, "output_config.format"
    if config is not None and config.get("format") is not None:
        fmt = check(config["format"], dict, where)
        rest = {k: v for k, v in config.items() if k != "format"}
        if rest:
            extra["output_config"] = rest
        else:
            extra.pop("output_config", None)
    elif body.get("output_format") is not None:
        fmt, where = check(body["output_format"], dict, "output_format"), "output_format"
    if fmt is None:
        return None
    kind = require(fmt, "type", str, where + ".")
    if kind != "json_schema":
        raise InvalidRequestError(f"field '{where}.type' has unknown value {kind!r}; expected 'json_schema'",
                                  param=f"{where}.type")
    return ResponseFormat("json_schema", schema=require(fmt, "schema", dict, where + "."))


def _encode_output_format(rf: ResponseFormat | None, body: dict[str, Any]) -> None:
    if rf is None or rf.type == "text":
        return
    if rf.type != "json_schema" or rf.schema is None:
        raise InvalidRequestError(
            "Anthropic models have no JSON mode; give response_format a json_schema (type 'json_schema' "
            "with a schema) to get JSON from them", param="response_format")
    config = body.get("output_config")
    body["output_config"] = {**(config if isinstance(config, dict) else {}),
                             "format": {"type": "json_schema", "schema": rf.schema}}


def encode_request(request: Request) -> dict[str, Any]:
    """The ``/v1/messages`` body for an Anthropic upstream.

    A ``json_schema`` response format becomes Anthropic's native structured
    output, ``output_config.format`` (the structured-output stage first fits the
    schema to what Anthropic enforces).
    """
    if request.n != 1:
        raise InvalidRequestError("Anthropic models return one choice per request; set n to 1", param="n")
    if request.logprobs:
        raise InvalidRequestError("Anthropic models do not return logprobs; drop 'logprobs'", param="logprobs")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "system":
            system.extend(_encode_blocks(message.content))
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _encode_blocks(message.content)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    body: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
                            "messages": turns}
    if system:
        if any("cache_control" in b or b.get("type") != "text" for b in system):
            body["system"] = system
        else:
            body["system"] = "\n".join(b["text"] for b in system)
    extra_tools: list[Any] = []
    if request.extra_wire == WIRE:
        for key, value in request.extra.items():
            if key == "tools":
                extra_tools = value
            else:
                body.setdefault(key, value)
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    tools = [_encode_tool(t) for t in request.tools] + list(extra_tools)
    if tools:
        body["tools"] = tools
    if request.tool_choice is not None and (tools or request.tool_choice.mode == "none"):
        tc = request.tool_choice
        choice: dict[str, Any] = {"type": {"auto": "auto", "required": "any", "tool": "tool", "none": "none"}[tc.mode]}
        if tc.mode == "tool":
            choice["name"] = tc.name
        if tc.parallel is not None and tc.mode != "none":
            choice["disable_parallel_tool_use"] = not tc.parallel
        body["tool_choice"] = choice
    if request.user is not None:
        body["metadata"] = {**(body.get("metadata") or {}), "user_id": request.user}
    _encode_output_format(request.response_format, body)
    if request.stream:
        body["stream"] = True
    return body


def _encode_tool(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters}
    if tool.description is not None:
        out["description"] = tool.description
    return out


def _encode_blocks(parts: list[Part]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            if not p.text and p.cache_control is None:
                continue  # Anthropic rejects empty text blocks
            block: dict[str, Any] = {"type": "text", "text": p.text}
            if p.cache_control is not None:
                block["cache_control"] = p.cache_control
            out.append(block)
        elif isinstance(p, ImagePart):
            out.append({"type": "image", "source": _image_source(p)})
        elif isinstance(p, ToolCallPart):
            try:
                args = json.loads(p.arguments) if p.arguments else {}
            except ValueError:
                raise InvalidRequestError(
                    f"tool call {p.id!r} has arguments that are not JSON; Anthropic needs a JSON object"
                ) from None
            out.append({"type": "tool_use", "id": p.id, "name": p.name, "input": args})
        elif isinstance(p, ToolResultPart):
            block = {"type": "tool_result", "tool_use_id": p.tool_call_id,
                     "content": _encode_blocks(p.content)}
            if p.is_error:
                block["is_error"] = True
            out.append(block)
        elif isinstance(p, OpaquePart) and p.wire == WIRE:
            out.append(p.raw)
    return out


def _image_source(p: ImagePart) -> dict[str, Any]:
    if p.data is not None:
        return {"type": "base64", "media_type": p.media_type or "image/png", "data": p.data}
    url = p.url or ""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[5:].split(";")[0] or "image/png"
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


# ------------------------------------------------------------------ responses


def decode_usage(raw: Any, into: Usage | None = None) -> Usage:
    usage = into or Usage()
    if not isinstance(raw, dict):
        return usage
    if raw.get("input_tokens") is not None:
        usage.input_tokens = raw["input_tokens"]
    if raw.get("output_tokens") is not None:
        usage.output_tokens = raw["output_tokens"]
    if raw.get("cache_read_input_tokens") is not None:
        usage.cache_read_tokens = raw["cache_read_input_tokens"]
    if raw.get("cache_creation_input_tokens") is not None:
        usage.cache_write_tokens = raw["cache_creation_input_tokens"]
    return usage


def encode_usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens}


def decode_response(body: Any) -> Response:
    if not isinstance(body, dict) or not isinstance(body.get("content"), list):
        raise UpstreamError("the upstream returned a malformed message", body=body)
    parts = _decode_blocks(body["content"], "content")
    stop = body.get("stop_reason")
    extra = {k: v for k, v in body.items() if k not in _KNOWN_RESPONSE}
    return Response(
        id=body.get("id", ""), model=body.get("model", ""),
        choices=[Choice(0, Message("assistant", parts), _STOP_IN.get(stop, "stop") if stop else None,  # type: ignore[arg-type]
                        stop_sequence=body.get("stop_sequence"))],
        usage=decode_usage(body.get("usage")), created=int(time.time()),
        extra=extra, extra_wire=WIRE if extra else None,
    )


def _stop_out(reason: str | None, stop_sequence: str | None) -> str | None:
    if reason is None:
        return None
    if reason == "stop" and stop_sequence:
        return "stop_sequence"
    return _STOP_OUT.get(reason, "end_turn")


def encode_response(response: Response) -> dict[str, Any]:
    choice = response.choices[0] if response.choices else Choice(0, Message("assistant", []), "stop")
    content = _encode_blocks(choice.message.content)
    body: dict[str, Any] = {
        "id": response.id, "type": "message", "role": "assistant", "model": response.model,
        "content": content, "stop_reason": _stop_out(choice.finish_reason, choice.stop_sequence),
        "stop_sequence": choice.stop_sequence, "usage": encode_usage(response.usage),
    }
    if response.extra_wire == WIRE:
        for key, value in response.extra.items():
            body.setdefault(key, value)
    return body


# ------------------------------------------------------------------ streams


class StreamDecoder:
    """Turns Anthropic's stream events into neutral ones (usage arrives in two halves).

    ``done`` is set by ``message_stop``; a stream that ends without it was cut off.
    """

    __slots__ = ("_usage", "_tool_blocks", "_tools_seen", "done")

    def __init__(self) -> None:
        self.done = False
        self._usage = Usage()
        self._tool_blocks: dict[int, int] = {}  # content block index -> tool index
        self._tools_seen = 0

    def feed(self, event: str | None, data: dict[str, Any]) -> list[StreamEvent]:
        kind = data.get("type") or event
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [TextDelta(delta.get("text", ""))]
            if delta.get("type") == "input_json_delta":
                tool = self._tool_blocks.get(data.get("index", 0), 0)
                return [ToolCallDelta(tool_index=tool, arguments=delta.get("partial_json", ""))]
            return []
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                tool = self._tools_seen
                self._tools_seen += 1
                self._tool_blocks[data.get("index", 0)] = tool
                return [ToolCallDelta(tool_index=tool, id=block.get("id"), name=block.get("name"))]
            if block.get("type") == "text" and block.get("text"):
                return [TextDelta(block["text"])]
            return []
        if kind == "message_start":
            message = data.get("message") or {}
            decode_usage(message.get("usage"), self._usage)
            return [StreamStart(id=message.get("id", ""), model=message.get("model", ""),
                                created=int(time.time())), UsageEvent(_copy(self._usage))]
        if kind == "message_delta":
            delta = data.get("delta") or {}
            decode_usage(data.get("usage"), self._usage)
            events: list[StreamEvent] = []
            if delta.get("stop_reason"):
                events.append(ChoiceEnd(_STOP_IN.get(delta["stop_reason"], "stop"),  # type: ignore[arg-type]
                                        stop_sequence=delta.get("stop_sequence")))
            events.append(UsageEvent(_copy(self._usage)))
            return events
        if kind == "message_stop":
            self.done = True
            return []
        if kind == "error":
            self.done = True
            err = data.get("error") or {}
            return [StreamError(UpstreamError(f"upstream stream error: {err.get('message', 'unknown')}",
                                              body=data))]
        return []


def _copy(usage: Usage) -> Usage:
    return Usage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                 usage.cache_write_tokens, usage.reasoning_tokens, usage.source)


class StreamEncoder:
    """Turns neutral stream events into Anthropic's server-sent events.

    ``message_start`` carries the usage known at the start (often none from an
    OpenAI-wire upstream); the closing ``message_delta`` carries the full usage,
    which the anthropic SDK folds into its final message.
    """

    __slots__ = ("_message", "_started", "_block", "_block_kind", "_tool_blocks", "_stop", "_stop_seq", "_usage")

    def __init__(self) -> None:
        self._message: dict[str, Any] = {}
        self._started = False
        self._block = -1
        self._block_kind: str | None = None
        self._tool_blocks: dict[int, int] = {}
        self._stop: str | None = None
        self._stop_seq: str | None = None
        self._usage = Usage()

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message = {"id": self._message.get("id", ""), "type": "message", "role": "assistant", "content": [],
                   "model": self._message.get("model", ""), "stop_reason": None, "stop_sequence": None,
                   "usage": encode_usage(self._usage)}
        return sse({"type": "message_start", "message": message}, "message_start")

    def _close_block(self) -> bytes:
        if self._block_kind is None:
            return b""
        self._block_kind = None
        return sse({"type": "content_block_stop", "index": self._block}, "content_block_stop")

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self._block += 1
        self._block_kind = kind
        return out + sse({"type": "content_block_start", "index": self._block, "content_block": block},
                         "content_block_start")

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            if event.index != 0:
                return b""
            out = self._start()
            if self._block_kind != "text":
                out += self._open("text", {"type": "text", "text": ""})
            return out + sse({"type": "content_block_delta", "index": self._block,
                              "delta": {"type": "text_delta", "text": event.text}}, "content_block_delta")
        if isinstance(event, ToolCallDelta):
            if event.index != 0:
                return b""
            out = self._start()
            if event.id is not None or event.tool_index not in self._tool_blocks:
                out += self._open("tool_use", {"type": "tool_use", "id": event.id or f"toolu_{event.tool_index}",
                                               "name": event.name or "", "input": {}})
                self._tool_blocks[event.tool_index] = self._block
            if event.arguments:
                out += sse({"type": "content_block_delta", "index": self._tool_blocks[event.tool_index],
                            "delta": {"type": "input_json_delta", "partial_json": event.arguments}},
                           "content_block_delta")
            return out
        if isinstance(event, StreamStart):
            self._message = {"id": event.id, "model": event.model}
            return b""
        if isinstance(event, UsageEvent):
            self._usage = event.usage
            return b""
        if isinstance(event, ChoiceEnd):
            if event.index == 0:
                self._stop, self._stop_seq = event.finish_reason, event.stop_sequence
            return b""
        if isinstance(event, StreamError):
            body = error_body(event.error)
            return self._start() + sse(body, "error")
        return b""

    def finish(self, thrifty: dict[str, Any] | None = None) -> bytes:
        """The closing events; ``thrifty`` (facts about the call) goes in the final ``message_delta``."""
        out = self._start() + self._close_block()
        delta: dict[str, Any] = {"type": "message_delta",
                                 "delta": {"stop_reason": _stop_out(self._stop or "stop", self._stop_seq),
                                           "stop_sequence": self._stop_seq},
                                 "usage": encode_usage(self._usage)}
        if thrifty is not None:
            delta["thrifty"] = thrifty
        out += sse(delta, "message_delta")
        return out + sse({"type": "message_stop"}, "message_stop")


# ------------------------------------------------------------------ errors


def error_body(exc: BaseException) -> dict[str, Any]:
    """Anthropic's error JSON for an exception."""
    if isinstance(exc, UpstreamError) and isinstance(exc.body, dict) and exc.body.get("type") == "error":
        return exc.body
    if isinstance(exc, ThriftyError):
        return {"type": "error", "error": {"type": exc.anthropic_type, "message": exc.message}}
    return {"type": "error", "error": {"type": "api_error", "message": "internal error in thrifty; see the server log"}}


__all__ = ["WIRE", "decode_error", "decode_request", "decode_response", "encode_request",
           "encode_response", "error_body", "StreamDecoder", "StreamEncoder"]
