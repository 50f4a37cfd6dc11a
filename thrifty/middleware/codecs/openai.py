"""The OpenAI Chat Completions wire format, to and from the neutral types.

This module and :mod:`.anthropic` are the only code that knows a wire format.
Fields of a request or response that the neutral types do not name are kept
in ``extra`` so that an OpenAI request sent on to an OpenAI-wire upstream
keeps them unchanged.
"""

from __future__ import annotations

import time
from typing import Any

from thrifty.errors import InvalidRequestError, ThriftyError, UpstreamError
from thrifty.middleware.codecs._common import check, decode_error, non_negative_int, optional, require, sse
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
    TokenLogprob,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
    UsageEvent,
)

WIRE = "openai"

# request fields the neutral Request names; everything else travels in ``extra``
_KNOWN_REQUEST = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "stream", "stream_options", "n", "seed", "logprobs", "top_logprobs", "tools", "tool_choice",
    "parallel_tool_calls", "response_format", "user", "thrifty",
})
_KNOWN_RESPONSE = frozenset({"id", "object", "created", "model", "choices", "usage"})
_FINISH_IN = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
              "content_filter": "content_filter"}


# ------------------------------------------------------------------ requests


def decode_request(body: Any) -> tuple[Request, Any]:
    """A neutral request and the raw thrifty options from a ``/v1/chat/completions`` body."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    model = require(body, "model", str)
    raw_messages = require(body, "messages", list)
    if not raw_messages:
        raise InvalidRequestError("'messages' must contain at least one message", param="messages")
    messages = [_decode_message(m, i) for i, m in enumerate(raw_messages)]
    max_tokens = non_negative_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = non_negative_int(body, "max_tokens", minimum=1)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    else:
        stops = [check(s, str, "stop") for s in check(stop, list, "stop")]
    stream = bool(optional(body, "stream", bool))
    stream_options = optional(body, "stream_options", dict) or {}
    n = non_negative_int(body, "n", minimum=1) or 1
    tools = [_decode_tool(t, i) for i, t in enumerate(optional(body, "tools", list) or [])]
    extra = {k: v for k, v in body.items() if k not in _KNOWN_REQUEST}
    request = Request(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=optional(body, "temperature", float),
        top_p=optional(body, "top_p", float),
        stop=stops,
        stream=stream,
        stream_usage=bool(stream_options.get("include_usage")),
        n=n,
        seed=optional(body, "seed", int),
        logprobs=bool(optional(body, "logprobs", bool)),
        top_logprobs=non_negative_int(body, "top_logprobs"),
        tools=tools,
        tool_choice=_decode_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls")),
        response_format=_decode_response_format(body.get("response_format")),
        user=optional(body, "user", str),
        extra=extra,
        extra_wire=WIRE if extra else None,
    )
    return request, body.get("thrifty")


def _decode_message(raw: Any, i: int) -> Message:
    where = f"messages[{i}]."
    check(raw, dict, f"messages[{i}]")
    role = require(raw, "role", str, where)
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant", "tool", "function"):
        raise InvalidRequestError(f"field '{where}role' has unknown role {role!r}", param=f"{where}role")
    parts = _decode_content(raw.get("content"), where)
    if role == "tool":
        call_id = require(raw, "tool_call_id", str, where)
        return Message(role="tool", content=[ToolResultPart(tool_call_id=call_id, content=parts)])
    if role == "function":
        name = require(raw, "name", str, where)
        return Message(role="tool", content=[ToolResultPart(tool_call_id=name, content=parts)])
    if role == "assistant":
        for j, call in enumerate(optional(raw, "tool_calls", list, where) or []):
            cw = f"{where}tool_calls[{j}]."
            check(call, dict, cw[:-1])
            fn = require(call, "function", dict, cw)
            parts.append(ToolCallPart(
                id=require(call, "id", str, cw),
                name=require(fn, "name", str, cw + "function."),
                arguments=optional(fn, "arguments", str, cw + "function.") or "",
            ))
        if raw.get("refusal") and not parts:
            parts.append(TextPart(raw["refusal"]))
    return Message(role=role, content=parts, name=optional(raw, "name", str, where))


def _decode_content(content: Any, where: str) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    check(content, list, where + "content")
    parts: list[Part] = []
    for j, item in enumerate(content):
        pw = f"{where}content[{j}]"
        check(item, dict, pw)
        kind = item.get("type")
        if kind == "text":
            parts.append(TextPart(require(item, "text", str, pw + ".")))
        elif kind == "image_url":
            image = require(item, "image_url", dict, pw + ".")
            parts.append(ImagePart(url=require(image, "url", str, pw + ".image_url."),
                                   detail=image.get("detail")))
        elif isinstance(kind, str):
            parts.append(OpaquePart(WIRE, item))
        else:
            raise InvalidRequestError(f"field '{pw}.type' is required", param=f"{pw}.type")
    return parts


def _decode_tool(raw: Any, i: int) -> Tool:
    where = f"tools[{i}]."
    check(raw, dict, f"tools[{i}]")
    fn = require(raw, "function", dict, where)
    params = optional(fn, "parameters", dict, where + "function.")
    return Tool(
        name=require(fn, "name", str, where + "function."),
        description=optional(fn, "description", str, where + "function."),
        parameters=params if params is not None else {"type": "object", "properties": {}},
        strict=optional(fn, "strict", bool, where + "function."),
    )


def _decode_tool_choice(raw: Any, parallel: Any) -> ToolChoice | None:
    if raw is None and parallel is None:
        return None
    par = None if parallel is None else bool(check(parallel, bool, "parallel_tool_calls"))
    if raw is None:
        return ToolChoice("auto", parallel=par)
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise InvalidRequestError(f"field 'tool_choice' has unknown value {raw!r}", param="tool_choice")
        return ToolChoice(raw, parallel=par)  # type: ignore[arg-type]
    check(raw, dict, "tool_choice")
    fn = require(raw, "function", dict, "tool_choice.")
    return ToolChoice("tool", name=require(fn, "name", str, "tool_choice.function."), parallel=par)


def _decode_response_format(raw: Any) -> ResponseFormat | None:
    if raw is None:
        return None
    check(raw, dict, "response_format")
    kind = require(raw, "type", str, "response_format.")
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)  # type: ignore[arg-type]
    if kind != "json_schema":
        raise InvalidRequestError(f"field 'response_format.type' has unknown value {kind!r}",
                                  param="response_format.type")
    spec = require(raw, "json_schema", dict, "response_format.")
    return ResponseFormat(
        "json_schema",
        schema=optional(spec, "schema", dict, "response_format.json_schema."),
        name=require(spec, "name", str, "response_format.json_schema."),
        strict=optional(spec, "strict", bool, "response_format.json_schema."),
        description=optional(spec, "description", str, "response_format.json_schema."),
    )


def encode_request(request: Request, *, max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """The ``/v1/chat/completions`` body for an OpenAI-wire upstream.

    OpenAI itself wants ``max_completion_tokens`` (its reasoning models refuse
    ``max_tokens``); most OpenAI-compatible servers know only ``max_tokens``.
    """
    body: dict[str, Any] = {"model": request.model, "messages": [_encode_message(m) for m in request.messages]}
    if request.extra_wire == WIRE:
        for key, value in request.extra.items():
            body.setdefault(key, value)
    if request.max_tokens is not None:
        body[max_tokens_field] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = request.stop
    if request.n != 1:
        body["n"] = request.n
    if request.seed is not None:
        body["seed"] = request.seed
    if request.logprobs:
        body["logprobs"] = True
        if request.top_logprobs is not None:
            body["top_logprobs"] = request.top_logprobs
    if request.tools:
        body["tools"] = [_encode_tool(t) for t in request.tools]
    if request.tool_choice is not None:
        tc = request.tool_choice
        if tc.mode == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": tc.name}}
        elif request.tools or tc.mode != "auto":
            body["tool_choice"] = tc.mode
        if tc.parallel is not None and request.tools:
            body["parallel_tool_calls"] = tc.parallel
    if request.response_format is not None:
        body["response_format"] = encode_response_format(request.response_format)
    if request.user is not None:
        body["user"] = request.user
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


def encode_response_format(rf: ResponseFormat) -> dict[str, Any]:
    if rf.type != "json_schema":
        return {"type": rf.type}
    spec: dict[str, Any] = {"name": rf.name or "output"}
    if rf.schema is not None:
        spec["schema"] = rf.schema
    if rf.strict is not None:
        spec["strict"] = rf.strict
    if rf.description is not None:
        spec["description"] = rf.description
    return {"type": "json_schema", "json_schema": spec}


def _encode_tool(tool: Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description is not None:
        fn["description"] = tool.description
    if tool.strict is not None:
        fn["strict"] = tool.strict
    return {"type": "function", "function": fn}


def _encode_message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        # one OpenAI tool message per result; callers pass one result per message
        result = next((p for p in message.content if isinstance(p, ToolResultPart)), None)
        if result is not None:
            return {"role": "tool", "tool_call_id": result.tool_call_id,
                    "content": _encode_content(result.content, text_only=True)}
    out: dict[str, Any] = {"role": message.role}
    calls = [p for p in message.content if isinstance(p, ToolCallPart)]
    rest = [p for p in message.content if not isinstance(p, ToolCallPart)]
    out["content"] = _encode_content(rest, text_only=message.role in ("system", "assistant"))
    if calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
        if not rest:
            out["content"] = None
    if message.name is not None:
        out["name"] = message.name
    return out


def _encode_content(parts: list[Part], *, text_only: bool) -> Any:
    if all(isinstance(p, TextPart) for p in parts):
        if len(parts) == 1:
            return parts[0].text  # type: ignore[union-attr]
        if text_only or not parts:
            return "".join(p.text for p in parts)  # type: ignore[union-attr]
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append({"type": "text", "text": p.text})
        elif isinstance(p, ImagePart) and not text_only:
            url = p.url or f"data:{p.media_type or 'image/png'};base64,{p.data}"
            image: dict[str, Any] = {"url": url}
            if p.detail:
                image["detail"] = p.detail
            out.append({"type": "image_url", "image_url": image})
        elif isinstance(p, OpaquePart) and p.wire == WIRE:
            out.append(p.raw)
        elif isinstance(p, ToolResultPart):
            out.append({"type": "text", "text": _encode_content(p.content, text_only=True)})
    if text_only:
        return "".join(item.get("text", "") for item in out)
    return out


# ------------------------------------------------------------------ responses


def decode_usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    prompt = raw.get("prompt_tokens") or 0
    details = raw.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    out_details = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=prompt - cached,
        output_tokens=raw.get("completion_tokens") or 0,
        cache_read_tokens=cached,
        reasoning_tokens=out_details.get("reasoning_tokens") or 0,
    )


def encode_usage(usage: Usage) -> dict[str, Any]:
    prompt = usage.prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _decode_logprobs(raw: Any) -> list[TokenLogprob] | None:
    if not isinstance(raw, dict) or raw.get("content") is None:
        return None
    return [
        TokenLogprob(token=t["token"], logprob=t["logprob"], bytes=t.get("bytes"),
                     top=[(x["token"], x["logprob"]) for x in t.get("top_logprobs") or []])
        for t in raw["content"]
    ]


def _encode_logprobs(lps: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if lps is None:
        return None
    return {"content": [
        {"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
         "top_logprobs": [{"token": tok, "logprob": lp, "bytes": list(tok.encode())} for tok, lp in t.top]}
        for t in lps
    ], "refusal": None}


def decode_response(body: Any) -> Response:
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise UpstreamError("the upstream returned a malformed chat completion", body=body)
    choices = []
    for raw in body["choices"]:
        msg = raw.get("message") or {}
        parts: list[Part] = []
        if msg.get("content"):
            parts.append(TextPart(msg["content"]))
        elif msg.get("refusal"):
            parts.append(TextPart(msg["refusal"]))
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            parts.append(ToolCallPart(id=call.get("id", ""), name=fn.get("name", ""),
                                      arguments=fn.get("arguments") or ""))
        finish = raw.get("finish_reason")
        choices.append(Choice(
            index=raw.get("index", len(choices)),
            message=Message("assistant", parts),
            finish_reason=_FINISH_IN.get(finish, "stop") if finish else None,  # type: ignore[arg-type]
            logprobs=_decode_logprobs(raw.get("logprobs")),
        ))
    extra = {k: v for k, v in body.items() if k not in _KNOWN_RESPONSE}
    return Response(
        id=body.get("id", ""), model=body.get("model", ""), choices=choices,
        usage=decode_usage(body.get("usage")), created=body.get("created") or 0,
        extra=extra, extra_wire=WIRE if extra else None,
    )


def encode_response(response: Response) -> dict[str, Any]:
    choices = []
    for c in response.choices:
        text = [p.text for p in c.message.content if isinstance(p, TextPart)]
        calls = [p for p in c.message.content if isinstance(p, ToolCallPart)]
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None,
                               "refusal": None}
        if calls:
            msg["tool_calls"] = [{"id": p.id, "type": "function",
                                  "function": {"name": p.name, "arguments": p.arguments}} for p in calls]
        choices.append({"index": c.index, "message": msg, "logprobs": _encode_logprobs(c.logprobs),
                        "finish_reason": _finish_out(c.finish_reason)})
    body: dict[str, Any] = {
        "id": response.id, "object": "chat.completion", "created": response.created or int(time.time()),
        "model": response.model, "choices": choices, "usage": encode_usage(response.usage),
    }
    if response.extra_wire == WIRE:
        for key, value in response.extra.items():
            body.setdefault(key, value)
    return body


def _finish_out(reason: str | None) -> str | None:
    return None if reason is None else ("stop" if reason == "error" else reason)


# ------------------------------------------------------------------ streams


class StreamDecoder:
    """Turns an OpenAI-wire upstream's chunks into neutral stream events.

    ``done`` is set by the reader when ``[DONE]`` arrives; a stream that ends
    without it was cut off.
    """

    __slots__ = ("_started", "done")

    def __init__(self) -> None:
        self._started = False
        self.done = False

    def feed(self, event: str | None, chunk: dict[str, Any]) -> list[StreamEvent]:
        if chunk.get("error"):
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
            return [StreamError(UpstreamError(f"upstream stream error: {message}", body=chunk))]
        events: list[StreamEvent] = []
        if not self._started:
            self._started = True
            extra = {k: v for k, v in chunk.items()
                     if k not in _KNOWN_RESPONSE and k not in ("obfuscation",)}
            events.append(StreamStart(id=chunk.get("id", ""), model=chunk.get("model", ""),
                                      created=chunk.get("created") or 0, extra=extra,
                                      extra_wire=WIRE if extra else None))
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events.append(TextDelta(delta["content"], index,
                                        _decode_logprobs(choice.get("logprobs"))))
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                events.append(ToolCallDelta(tool_index=call.get("index", 0), arguments=fn.get("arguments") or "",
                                            id=call.get("id"), name=fn.get("name"), index=index))
            if choice.get("finish_reason"):
                events.append(ChoiceEnd(_FINISH_IN.get(choice["finish_reason"], "stop"), index))  # type: ignore[arg-type]
        if chunk.get("usage"):
            events.append(UsageEvent(decode_usage(chunk["usage"])))
        return events


class StreamEncoder:
    """Turns neutral stream events into OpenAI ``chat.completion.chunk`` server-sent events.

    ``facts``: the stream will end with a ``thrifty`` object (:meth:`finish`'s
    argument). It goes in the final usage chunk when the client asked for one;
    otherwise the last ``finish_reason`` chunk is held back until :meth:`finish`
    and carries it, so that no extra chunk appears in the stream.
    """

    __slots__ = ("_include_usage", "_head", "_roles_sent", "_usage", "_hold", "_held")

    def __init__(self, include_usage: bool, *, facts: bool = False) -> None:
        self._include_usage = include_usage
        self._head: dict[str, Any] = {}
        self._roles_sent: set[int] = set()
        self._usage: Usage | None = None
        self._hold = facts and not include_usage
        self._held: dict[str, Any] | None = None  # a finish_reason choice not sent yet

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        return self._release() + sse({**self._head, "choices": choices})

    def _release(self, thrifty: dict[str, Any] | None = None) -> bytes:
        held, self._held = self._held, None
        if held is None:
            return b""
        chunk = {**self._head, "choices": [held]}
        if thrifty is not None:
            chunk["thrifty"] = thrifty
        return sse(chunk)

    def _delta(self, index: int, delta: dict[str, Any], logprobs: Any = None) -> bytes:
        if index not in self._roles_sent:
            self._roles_sent.add(index)
            delta = {"role": "assistant", **delta}
        return self._chunk([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}])

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return self._delta(event.index, {"content": event.text}, _encode_logprobs(event.logprobs))
        if isinstance(event, ToolCallDelta):
            call: dict[str, Any] = {"index": event.tool_index}
            fn: dict[str, Any] = {"arguments": event.arguments}
            if event.id is not None:
                call["id"], call["type"] = event.id, "function"
            if event.name is not None:
                fn["name"] = event.name
            call["function"] = fn
            return self._delta(event.index, {"tool_calls": [call]})
        if isinstance(event, ChoiceEnd):
            out = b"" if event.index in self._roles_sent else self._delta(event.index, {"content": ""})
            end = {"index": event.index, "delta": {}, "logprobs": None,
                   "finish_reason": _finish_out(event.finish_reason)}
            if self._hold:
                out += self._release()
                self._held = end
                return out
            return out + self._chunk([end])
        if isinstance(event, StreamStart):
            self._head = {"id": event.id, "object": "chat.completion.chunk",
                          "created": event.created or int(time.time()), "model": event.model}
            if event.extra_wire == WIRE:
                self._head.update({k: v for k, v in event.extra.items() if k not in self._head})
            return b""
        if isinstance(event, UsageEvent):
            self._usage = event.usage
            return b""
        if isinstance(event, StreamError):
            return self._release() + sse({"error": error_body(event.error)["error"]})
        return b""

    def finish(self, thrifty: dict[str, Any] | None = None) -> bytes:
        """The closing chunks: the usage chunk if the client asked for it, then ``[DONE]``.

        ``thrifty``: facts about the call (request id, cost...) for the final chunk.
        """
        if self._include_usage and self._usage is not None:
            out = self._release()
            chunk = {**self._head, "choices": [], "usage": encode_usage(self._usage)}
            if thrifty is not None:
                chunk["thrifty"] = thrifty
            out += sse(chunk)
        else:
            out = self._release(thrifty)
        return out + b"data: [DONE]\n\n"


# ------------------------------------------------------------------ errors


def error_body(exc: BaseException) -> dict[str, Any]:
    """OpenAI's error JSON for an exception (thrifty's own or any other)."""
    if isinstance(exc, UpstreamError) and isinstance(exc.body, dict) and isinstance(exc.body.get("error"), dict):
        return exc.body
    if isinstance(exc, ThriftyError):
        return {"error": {"message": exc.message, "type": exc.openai_type, "param": exc.param,
                          "code": _code(exc)}}
    return {"error": {"message": "internal error in thrifty; see the server log",
                      "type": "server_error", "param": None, "code": None}}


def _code(exc: ThriftyError) -> str | None:
    name = type(exc).__name__
    return {"UnknownModelError": "model_not_found", "UnknownProviderError": "model_not_found",
            "UnknownOptionError": "unknown_parameter"}.get(name)


__all__ = ["WIRE", "decode_error", "decode_request", "decode_response", "encode_request",
           "encode_response", "error_body", "StreamDecoder", "StreamEncoder"]
