"""Codec round trips and translations between the OpenAI and Anthropic wire formats."""

from __future__ import annotations

import json

import pytest

from thrifty.errors import InvalidRequestError, UpstreamError
from thrifty.middleware.codecs import anthropic as ac
from thrifty.middleware.codecs import openai as oc
from thrifty.middleware.codecs._common import iter_sse
from thrifty.types import (
    ChoiceEnd,
    ImagePart,
    StreamError,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolResultPart,
    Usage,
    UsageEvent,
)

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
OPENAI_CHAT = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    ],
    "tools": [TOOL],
    "tool_choice": "auto",
    "max_tokens": 100,
    "temperature": 0.5,
    "stop": "END",
    "user": "u-1",
    "service_tier": "auto",
    "thrifty": {"tags": ["x"]},
}


def test_openai_request_round_trip_keeps_unknown_fields():
    request, options = oc.decode_request(OPENAI_CHAT)
    assert options == {"tags": ["x"]}
    assert request.stop == ["END"] and request.max_tokens == 100 and request.user == "u-1"
    assert isinstance(request.messages[1].content[1], ImagePart)
    assert isinstance(request.messages[2].content[0], ToolCallPart)
    assert isinstance(request.messages[3].content[0], ToolResultPart)
    body = oc.encode_request(request)
    assert body["service_tier"] == "auto" and "thrifty" not in body
    assert body["messages"] == OPENAI_CHAT["messages"]
    assert body["tools"] == [TOOL] and body["tool_choice"] == "auto"


def test_openai_request_to_anthropic_wire():
    request, _ = oc.decode_request(OPENAI_CHAT)
    body = ac.encode_request(request)
    assert body["system"] == "You are helpful."
    assert "service_tier" not in body  # OpenAI-only fields do not leak into another wire
    user, assistant, tool_turn = body["messages"]
    assert user["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                               "data": "AAAA"}}
    assert assistant["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                     "input": {"city": "Paris"}}]
    assert tool_turn == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                                      "content": [{"type": "text", "text": "18C and sunny"}]}]}
    assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                              "input_schema": TOOL["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "auto"} and body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-1"} and body["max_tokens"] == 100


def test_anthropic_request_to_openai_wire():
    request, _ = ac.decode_request({
        "model": "claude-x", "max_tokens": 50,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                              {"type": "tool_use", "id": "t1", "name": "w", "input": {"c": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                                         {"type": "text", "text": "thanks"}]},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "tools": [{"name": "w", "input_schema": {"type": "object"}}],
        "top_k": 5,
    })
    body = oc.encode_request(request)
    assert "top_k" not in body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.",
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "w", "arguments": '{"c": 1}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    # back to Anthropic: the cache marker on the system prompt survives (prompt caching keeps hitting)
    again = ac.encode_request(request)
    assert again["system"] == [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    assert again["top_k"] == 5
    assert again["messages"][2]["content"][0]["type"] == "tool_result"
    assert again["messages"][2]["content"][1] == {"type": "text", "text": "thanks"}


@pytest.mark.parametrize(("body", "message"), [
    ([], "JSON object"),
    ({"messages": []}, "'model'"),
    ({"model": "m", "messages": []}, "at least one"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "unknown role"),
    ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}, "at least 1"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "'stop'"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "'stream' must be a boolean"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
])
def test_openai_bad_requests_name_the_field(body, message):
    with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        oc.decode_request(body)


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "'user' or 'assistant'"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "type"),
])
def test_anthropic_bad_requests_name_the_field(body, message):
    with pytest.raises(InvalidRequestError, match=message):
        ac.decode_request(body)


def test_usage_partitions_from_both_wires():
    u = oc.decode_usage({"prompt_tokens": 100, "completion_tokens": 20,
                         "prompt_tokens_details": {"cached_tokens": 60},
                         "completion_tokens_details": {"reasoning_tokens": 5}})
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens, u.reasoning_tokens) == (40, 60, 20, 5)
    assert oc.encode_usage(u)["prompt_tokens"] == 100
    a = ac.decode_usage({"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 50,
                         "cache_creation_input_tokens": 7})
    assert (a.input_tokens, a.cache_read_tokens, a.cache_write_tokens, a.prompt_tokens) == (10, 50, 7, 67)


def _replay(encoder, events) -> bytes:
    return b"".join(encoder.encode(e) for e in events) + encoder.finish()


STREAM = [
    StreamStart(id="x1", model="m"),
    TextDelta("Let me check."),
    ToolCallDelta(tool_index=0, id="call_9", name="get_weather"),
    ToolCallDelta(tool_index=0, arguments='{"city":'),
    ToolCallDelta(tool_index=0, arguments=' "Oslo"}'),
    ChoiceEnd("tool_calls"),
    UsageEvent(Usage(input_tokens=12, output_tokens=9)),
]


@pytest.mark.parametrize("codec", [oc, ac])
def test_stream_encode_then_decode_is_lossless(codec):
    encoder = codec.StreamEncoder(True) if codec is oc else codec.StreamEncoder()
    raw = _replay(encoder, STREAM).decode()
    decoder = codec.StreamDecoder()
    events = []
    for event, data in iter_sse(raw.split("\n")):
        if data == "[DONE]":
            decoder.done = True
            break
        events.extend(decoder.feed(event, json.loads(data)))
    assert decoder.done
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert text == "Let me check."
    assert calls[0].id == "call_9" and calls[0].name == "get_weather"
    assert "".join(c.arguments for c in calls) == '{"city": "Oslo"}'
    assert [e.finish_reason for e in events if isinstance(e, ChoiceEnd)] == ["tool_calls"]
    usage = [e.usage for e in events if isinstance(e, UsageEvent)][-1]
    assert (usage.input_tokens, usage.output_tokens) == (12, 9)


def _chunks(raw: bytes) -> list[dict]:
    return [json.loads(data) for _, data in iter_sse(raw.decode().split("\n")) if data != "[DONE]"]


def test_a_streams_closing_facts_go_in_its_last_chunk():
    facts = {"request_id": "r1", "cost_usd": "0.01"}
    events = [StreamStart(id="x", model="m"), TextDelta("a"), TextDelta("b", index=1), ChoiceEnd("stop"),
              ChoiceEnd("length", index=1), UsageEvent(Usage(3, 2))]
    # no usage asked for: the last finish_reason chunk is held back and carries them, no chunk is added
    encoder = oc.StreamEncoder(False, facts=True)
    plain = b"".join(encoder.encode(e) for e in events)
    chunks = _chunks(plain + encoder.finish(facts))
    assert [c["choices"][0].get("finish_reason") for c in chunks] == [None, None, "stop", "length"]
    assert [("thrifty" in c) for c in chunks] == [False, False, False, True] and chunks[-1]["thrifty"] == facts
    # usage asked for: they go in the usage chunk
    encoder = oc.StreamEncoder(True, facts=True)
    chunks = _chunks(b"".join(encoder.encode(e) for e in events) + encoder.finish(facts))
    assert chunks[-1]["usage"]["completion_tokens"] == 2 and chunks[-1]["thrifty"] == facts
    # without facts the stream is as before
    encoder = oc.StreamEncoder(False)
    assert all("thrifty" not in c for c in _chunks(b"".join(encoder.encode(e) for e in events) + encoder.finish()))
    encoder = ac.StreamEncoder()
    chunks = _chunks(b"".join(encoder.encode(e) for e in events) + encoder.finish(facts))
    delta = next(c for c in chunks if c["type"] == "message_delta")
    assert delta["thrifty"] == facts and delta["usage"]["output_tokens"] == 2


def test_stream_errors_are_inside_the_stream():
    error = UpstreamError("boom", status_code=502)
    assert b'"error"' in oc.StreamEncoder(False).encode(StreamError(error))
    out = ac.StreamEncoder().encode(StreamError(error))
    assert out.startswith(b"event: message_start") and b"event: error" in out


def test_error_bodies_have_each_wires_shape():
    from thrifty.errors import UnknownModelError

    exc = UnknownModelError("no such model", param="model")
    assert oc.error_body(exc) == {"error": {"message": "no such model", "type": "invalid_request_error",
                                            "param": "model", "code": "model_not_found"}}
    assert ac.error_body(exc) == {"type": "error", "error": {"type": "not_found_error", "message": "no such model"}}
    assert oc.error_body(RuntimeError("secret detail"))["error"]["message"].startswith("internal error")


def test_response_translation_keeps_stop_reasons():
    response = ac.decode_response({"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
                                   "content": [{"type": "text", "text": "hi"},
                                               {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
                                   "stop_reason": "tool_use", "stop_sequence": None,
                                   "usage": {"input_tokens": 3, "output_tokens": 4}})
    body = oc.encode_response(response)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "hi"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == 4
    back = ac.encode_response(oc.decode_response(body))
    assert back["stop_reason"] == "tool_use" and back["content"][1]["input"] == {"a": 1}
    assert isinstance(oc.decode_response(body).choices[0].message.content[0], TextPart)
