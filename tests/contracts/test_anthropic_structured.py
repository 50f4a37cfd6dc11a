"""Structured output and Anthropic: the wire translation both ways, native output_config and the forced tool."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import anthropic
import openai
import pytest
from pydantic import BaseModel

import thrifty
from tests.middleware.conftest import _ledger_rows, make_settings
from tests.middleware.server.conftest import Proxy, start_proxy
from thrifty import Engine
from thrifty.errors import InvalidRequestError
from thrifty.middleware.codecs import anthropic as codec
from thrifty.middleware.codecs import openai as openai_codec
from thrifty.testing import CannedUpstream
from thrifty.types import Message, Request, ResponseFormat, TextPart

MSG = [{"role": "user", "content": "triage this ticket"}]


class Ticket(BaseModel):
    priority: Literal["low", "high"]
    summary: str


SCHEMA = Ticket.model_json_schema()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- the codec


def test_output_config_format_decodes_to_a_response_format_and_back():
    body = {"model": "m", "max_tokens": 10, "messages": MSG,
            "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": SCHEMA}}}
    request, _ = codec.decode_request(body)
    assert request.response_format == ResponseFormat("json_schema", schema=SCHEMA)
    assert request.extra == {"output_config": {"effort": "low"}}  # other output_config fields travel on
    out = codec.encode_request(request)
    assert out["output_config"] == {"effort": "low", "format": {"type": "json_schema", "schema": SCHEMA}}
    # to an OpenAI-wire upstream it is a json_schema response format
    assert openai_codec.encode_request(request)["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}


def test_the_older_output_format_field_is_understood():
    request, _ = codec.decode_request({"model": "m", "max_tokens": 10, "messages": MSG,
                                       "output_format": {"type": "json_schema", "schema": SCHEMA}})
    assert request.response_format.schema == SCHEMA and "output_format" not in request.extra
    assert codec.encode_request(request)["output_config"]["format"]["schema"] == SCHEMA


@pytest.mark.parametrize("body, param", [
    ({"output_config": {"format": {"type": "xml"}}}, "output_config.format.type"),
    ({"output_config": {"format": "json"}}, "output_config.format"),
    ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
    ({"output_format": {"type": "json_schema", "schema": "x"}}, "output_format.schema"),
])
def test_bad_output_formats_are_400s(body, param):
    with pytest.raises(InvalidRequestError) as info:
        codec.decode_request({"model": "m", "max_tokens": 10, "messages": MSG, **body})
    assert info.value.param == param


def test_json_mode_to_an_anthropic_model_says_what_to_do():
    request = Request("m", [Message("user", [TextPart("hi")])], response_format=ResponseFormat("json_object"))
    with pytest.raises(InvalidRequestError, match="json_schema") as info:
        codec.encode_request(request)
    assert info.value.param == "response_format"
    assert "output_config" not in codec.encode_request(request.replace(response_format=ResponseFormat("text")))


# ---------------------------------------------------------------- end to end


@pytest.fixture
def proxy(tmp_path: Path, upstream: CannedUpstream) -> Iterator[Proxy]:
    yield from start_proxy(make_settings(tmp_path / "data", upstream))


def ant(proxy: Proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0)


def test_anthropic_sdk_parse_through_the_proxy_to_anthropic_and_openai(proxy, upstream):
    for model, path in (("anthropic/claude-haiku-4-5", "/v1/messages"), ("openai/gpt-4o-mini", "/v1/chat/completions")):
        message = ant(proxy).messages.parse(model=model, max_tokens=200, messages=MSG, output_format=Ticket)
        assert message.parsed_output == Ticket(priority="low", summary="")
        assert upstream.requests[-1]["path"] == path
    sent = upstream.requests[-1]["body"]["response_format"]["json_schema"]
    assert sent["strict"] is True and sent["schema"]["required"] == ["priority", "summary"]


def test_anthropic_wire_reask_writes_rows(proxy, upstream):
    model = unique("claude")
    upstream.script(model, ['{"priority": "urgent", "summary": "x"}', '{"priority": "high", "summary": "x"}'])
    message = ant(proxy).messages.parse(model=f"anthropic/{model}", max_tokens=200, messages=MSG,
                                        output_format=Ticket)
    assert message.parsed_output == Ticket(priority="high", summary="x")
    last = upstream.requests[-1]["body"]
    assert last["messages"][1]["role"] == "assistant" and "$.priority" in last["messages"][2]["content"][0]["text"]
    assert last["output_config"]["format"]["schema"]["additionalProperties"] is False
    rows = proxy.rows()
    assert [(r["wire"], r["attempt"]) for r in rows] == [("anthropic", 1), ("anthropic", 2)]


def test_anthropic_stream_with_output_config(proxy, upstream):
    with ant(proxy).messages.stream(model="openai/gpt-4o-mini", max_tokens=200, messages=MSG,
                                    output_config={"format": {"type": "json_schema", "schema": SCHEMA}}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert Ticket.model_validate_json(text) == Ticket(priority="low", summary="")
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


@pytest.fixture
def tool_engine(tmp_path: Path, upstream: CannedUpstream) -> Iterator[Engine]:
    eng = Engine(make_settings(tmp_path / "data", upstream, structured={"anthropic_mode": "tool"}))
    yield eng
    eng.close()


def test_forced_tool_mode_answers_like_openai_would(tool_engine, upstream):
    client = thrifty.wrap(openai.OpenAI(api_key="sk-user", base_url=upstream.url, max_retries=0), engine=tool_engine)
    model = unique("tool")
    upstream.script(model, ['{"priority": "high", "summary": "disk full"}'])
    r = client.chat.completions.parse(model=f"anthropic/{model}", messages=MSG, response_format=Ticket)
    assert r.choices[0].message.parsed == Ticket(priority="high", summary="disk full")
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    sent = upstream.requests[-1]["body"]
    assert sent["tool_choice"] == {"type": "tool", "name": "Ticket"} and "output_config" not in sent
    assert sent["tools"][0]["name"] == "Ticket" and sent["tools"][0]["input_schema"]["additionalProperties"] is False
    (row,) = _ledger_rows(tool_engine)
    assert row["status"] == "ok"


def test_forced_tool_mode_reasks_and_the_anthropic_client_sees_text(tool_engine, upstream):
    client = thrifty.wrap(anthropic.Anthropic(api_key="sk-ant", base_url=upstream.base_url, max_retries=0),
                          engine=tool_engine)
    model = unique("tool")
    upstream.script(model, ['{"priority": "meh"}', '{"priority": "low", "summary": "ok"}'])
    message = client.messages.create(model=f"anthropic/{model}", max_tokens=100, messages=MSG,
                                     output_config={"format": {"type": "json_schema", "schema": SCHEMA}})
    assert message.content[0].type == "text" and json.loads(message.content[0].text) == {
        "priority": "low", "summary": "ok"}
    assert message.stop_reason == "end_turn"
    rows = _ledger_rows(tool_engine)
    assert [r["attempt"] for r in rows] == [1, 2] and rows[1]["parent_call_id"] == rows[0]["call_id"]


def test_a_schema_anthropic_can_take_only_as_a_tool_needs_an_object_root(tool_engine, upstream):
    client = thrifty.wrap(openai.OpenAI(api_key="sk-user", base_url=upstream.url, max_retries=0), engine=tool_engine)
    maps = {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "integer"}}}
    with pytest.raises(openai.BadRequestError, match="object root"):
        client.chat.completions.create(model="anthropic/claude-haiku-4-5", messages=MSG, response_format={
            "type": "json_schema", "json_schema": {"name": "counts", "schema": maps}})


def test_native_mode_sends_what_it_cannot_express_as_a_forced_tool(proxy, upstream):
    counts = {"type": "object", "properties": {"counts": {"type": "object", "additionalProperties": {"type": "integer"}}},
              "required": ["counts"]}
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="sk-client", max_retries=0)
    r = client.chat.completions.create(model="anthropic/claude-haiku-4-5", messages=MSG, response_format={
        "type": "json_schema", "json_schema": {"name": "counts", "schema": counts}})
    assert json.loads(r.choices[0].message.content) == {"counts": {}}
    sent = upstream.requests[-1]["body"]
    assert sent["tool_choice"] == {"type": "tool", "name": "counts"} and sent["tools"][0]["input_schema"] == counts


def test_a_call_with_its_own_tools_keeps_them_and_gets_the_native_format(tool_engine, upstream):
    client = thrifty.wrap(openai.OpenAI(api_key="sk-user", base_url=upstream.url, max_retries=0), engine=tool_engine)
    tools = [{"type": "function", "function": {"name": "lookup", "strict": True, "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}}]
    r = client.chat.completions.parse(model="anthropic/claude-haiku-4-5", messages=MSG, response_format=Ticket,
                                      tools=tools)
    assert r.choices[0].message.parsed == Ticket(priority="low", summary="")
    sent = upstream.requests[-1]["body"]
    assert [t["name"] for t in sent["tools"]] == ["lookup"] and "tool_choice" not in sent
    assert sent["output_config"]["format"]["schema"]["required"] == ["priority", "summary"]
