"""The proxy on loopback, driven by the official SDK clients, against the canned upstream."""

from __future__ import annotations

import json

import anthropic
import httpx2
import openai
import pytest

from tests.support import poll
from thrifty.testing import REPLY

MSG = [{"role": "user", "content": "say hello to the test"}]
HEADERS = ("x-thrifty-request-id", "x-thrifty-cost-usd", "x-thrifty-overhead-ms", "x-thrifty-tokens-saved")


def oai(proxy, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.openai_url, api_key="sk-client", max_retries=0, **kw)


def ant(proxy, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0, **kw)


def wait_rows(proxy, n: int, timeout: float = 10.0) -> list[dict]:
    return poll(proxy.rows, lambda rows: len(rows) >= n, timeout)


# ---------------------------------------------------------------- calls, headers, ledger


def test_openai_call_headers_and_row(proxy, upstream):
    raw = oai(proxy).chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=MSG, user="end-user-1", metadata={"k": "v"})
    r = raw.parse()
    assert isinstance(r, openai.types.chat.ChatCompletion) and r.choices[0].message.content == REPLY
    assert r.system_fingerprint == "fp_canned"  # unknown response fields come back
    assert all(raw.headers.get(h) for h in HEADERS)
    assert upstream.requests[-1]["body"]["metadata"] == {"k": "v"}  # unknown request fields go on
    assert upstream.requests[-1]["headers"]["authorization"] == "Bearer sk-openai-test"  # never the client's key
    (row,) = proxy.rows()
    assert row["call_id"] == raw.headers["x-thrifty-request-id"]
    assert (row["entry"], row["wire"], row["provider"], row["status"]) == ("proxy", "openai", "openai", "ok")
    assert row["input_tokens"] == r.usage.prompt_tokens and row["output_tokens"] == r.usage.completion_tokens
    assert row["user"] == "end-user-1" and row["key_id"] and "sk-client" not in row["key_id"]
    assert float(raw.headers["x-thrifty-cost-usd"]) == pytest.approx(float(row["cost_usd"])) and row["cost_usd"] > 0
    assert float(raw.headers["x-thrifty-overhead-ms"]) >= 0 and raw.headers["x-thrifty-tokens-saved"] == "0"


def test_openai_stream_final_chunk_carries_the_facts(proxy):
    raw = oai(proxy).chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-thrifty-cost-usd"] == "pending" and raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    last = chunks[-1]
    assert last.usage is not None and last.usage.completion_tokens == len(REPLY.split())
    facts = last.model_extra["thrifty"]
    (row,) = proxy.rows()
    assert facts["request_id"] == raw.headers["x-thrifty-request-id"] == row["call_id"]
    assert float(facts["cost_usd"]) == pytest.approx(float(row["cost_usd"])) and facts["tokens_saved"] == 0
    assert (row["input_tokens"], row["output_tokens"]) == (last.usage.prompt_tokens, last.usage.completion_tokens)
    assert row["stream"] and row["status"] == "ok" and row["ttft_ms"] is not None


def test_openai_stream_without_usage_gets_facts_on_its_last_chunk(proxy):
    chunks = list(oai(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, stream=True))
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)  # no extra chunk appears
    assert chunks[-1].choices[0].finish_reason == "stop" and "request_id" in chunks[-1].model_extra["thrifty"]
    assert all("thrifty" not in c.model_extra for c in chunks[:-1])


def test_anthropic_call_and_stream(proxy, upstream):
    client = ant(proxy)
    raw = client.messages.with_raw_response.create(model="anthropic/claude-haiku-4-5", max_tokens=32, messages=MSG,
                                                   system="be brief", metadata={"user_id": "u-7"})
    m = raw.parse()
    assert isinstance(m, anthropic.types.Message) and m.content[0].text == REPLY and m.stop_reason == "end_turn"
    assert all(raw.headers.get(h) for h in HEADERS)
    assert upstream.requests[-1]["body"]["system"] == "be brief"
    assert upstream.requests[-1]["headers"]["x-api-key"] == "sk-ant-test"
    with client.messages.stream(model="anthropic/claude-haiku-4-5", max_tokens=32, messages=MSG) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.content[0].text == REPLY and final.usage.output_tokens == len(REPLY.split())
    delta = next(e for e in events if e.type == "message_delta")
    rows = proxy.rows()
    assert [r["user"] for r in rows] == ["u-7", None]
    assert delta.model_extra["thrifty"]["request_id"] == rows[1]["call_id"]
    assert (rows[1]["input_tokens"], rows[1]["output_tokens"]) == (final.usage.input_tokens, final.usage.output_tokens)


async def test_async_clients(proxy):
    oa = openai.AsyncOpenAI(base_url=proxy.openai_url, api_key="k", max_retries=0)
    r = await oa.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert r.choices[0].message.content == REPLY
    stream = await oa.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == REPLY
    an = anthropic.AsyncAnthropic(base_url=proxy.url, api_key="k", max_retries=0)
    m = await an.messages.create(model="anthropic/claude-haiku-4-5", max_tokens=20, messages=MSG)
    assert m.content[0].text == REPLY
    async with an.messages.stream(model="anthropic/claude-haiku-4-5", max_tokens=20, messages=MSG) as s:
        final = await s.get_final_message()
    assert final.content[0].text == REPLY
    assert [r["status"] for r in proxy.rows()] == ["ok"] * 4


def test_across_wires_streams_included(proxy, upstream):
    r = oai(proxy).chat.completions.create(model="anthropic/claude-haiku-4-5", max_tokens=40,
                                           messages=[{"role": "system", "content": "terse"}, *MSG])
    assert r.choices[0].message.content == REPLY and upstream.requests[-1]["path"] == "/v1/messages"
    with ant(proxy).messages.stream(model="openai/gpt-4o-mini", max_tokens=20, messages=MSG) as s:
        final = s.get_final_message()
    assert final.content[0].text == REPLY and final.usage.output_tokens == len(REPLY.split())
    assert upstream.requests[-1]["path"] == "/v1/chat/completions"
    rows = proxy.rows()
    assert [(r["wire"], r["provider"]) for r in rows] == [("openai", "anthropic"), ("anthropic", "openai")]


def test_tools_response_format_n_stop_logprobs_reach_the_upstream(proxy, upstream):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    schema = {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True}}
    oai(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, tools=tools, tool_choice="auto",
                                       response_format=schema, n=2, stop=["END"], logprobs=True, top_logprobs=2)
    body = upstream.requests[-1]["body"]
    assert body["tools"][0]["function"]["name"] == "get_weather" and body["tool_choice"] == "auto"
    strict = {"name": "out", "schema": {"type": "object", "additionalProperties": False}, "strict": True}
    assert body["response_format"] == {"type": "json_schema", "json_schema": strict}  # OpenAI's strict subset
    assert body["n"] == 2 and body["stop"] == ["END"]
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    ant(proxy).messages.create(model="anthropic/claude-haiku-4-5", max_tokens=10, messages=MSG, tools=[
        {"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto"}, stop_sequences=["END"])
    body = upstream.requests[-1]["body"]
    assert body["tools"][0]["name"] == "get_weather" and body["stop_sequences"] == ["END"]


# ---------------------------------------------------------------- options, tags, user, project


def test_options_from_header_or_body_tags_and_project(proxy):
    client = oai(proxy)
    client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=MSG,
        extra_headers={"x-thrifty-options": json.dumps({"tags": ["a"], "user": "opt-user"}),
                       "x-thrifty-tags": "b, c", "x-thrifty-project": "proj-h"})
    client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, user="wire-user",
                                   extra_body={"thrifty": {"project": "proj-b", "tags": ["d"]}})
    first, second = proxy.rows()
    assert (first["user"], first["project"]) == ("opt-user", "proj-h")
    assert (second["user"], second["project"]) == ("wire-user", "proj-b")
    db_tags = _tags(proxy)
    assert db_tags[first["call_id"]] == {"a", "b", "c"} and db_tags[second["call_id"]] == {"d"}


def _tags(proxy) -> dict[str, set[str]]:
    import sqlalchemy as sa

    db = sa.create_engine(proxy.engine.settings.ledger_url)
    try:
        with db.connect() as conn:
            found: dict[str, set[str]] = {}
            for call_id, tag in conn.execute(sa.text("SELECT call_id, tag FROM llm_call_tags")):
                found.setdefault(call_id, set()).add(tag)
            return found
    finally:
        db.dispose()


@pytest.mark.parametrize(("headers", "body", "fragment"), [
    ({"x-thrifty-options": "{not json"}, None, "x-thrifty-options header is not valid JSON"),
    ({"x-thrifty-options": '{"tags": ["a"]}'}, {"tags": ["b"]}, "they differ"),
    ({}, {"colour": "red"}, "unknown thrifty option 'colour'"),
    ({"x-thrifty-options": "[1]"}, None, "must be a JSON object"),
])
def test_bad_options_are_400s(proxy, headers, body, fragment):
    extra = {"extra_body": {"thrifty": body}} if body is not None else {}
    with pytest.raises(openai.BadRequestError) as info:
        oai(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, extra_headers=headers, **extra)
    assert fragment in info.value.body["message"]


def test_same_options_in_both_places_are_fine(proxy):
    opts = {"tags": ["x"]}
    oai(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, extra_body={"thrifty": opts},
                                       extra_headers={"x-thrifty-options": json.dumps(opts)})


# ---------------------------------------------------------------- failures


def test_upstream_cut_mid_stream_ends_with_an_error_event_and_a_row(proxy):
    with pytest.raises(openai.APIError) as info:
        list(oai(proxy).chat.completions.create(model="openai/cut-stream", messages=MSG, stream=True))
    assert "broke off" in str(info.value.message)
    events = []
    with pytest.raises(anthropic.APIStatusError), ant(proxy).messages.stream(
            model="anthropic/cut-stream", max_tokens=20, messages=MSG) as s:
        for event in s:
            events.append(event)
    rows = wait_rows(proxy, 2)
    assert [(r["status"], r["error_type"]) for r in rows] == [("error", "UpstreamConnectionError")] * 2


def test_upstream_error_status_and_body_reach_the_client(proxy):
    with pytest.raises(openai.InternalServerError) as info:
        oai(proxy).chat.completions.create(model="openai/fail-500", messages=MSG)
    assert info.value.status_code == 500 and "canned failure 500" in info.value.message
    assert info.value.response.headers["x-thrifty-request-id"]
    with pytest.raises(anthropic.RateLimitError):
        ant(proxy).messages.create(model="anthropic/fail-429", max_tokens=5, messages=MSG)
    rows = proxy.rows()
    assert rows and all(r["status"] == "error" for r in rows)


def test_client_disconnect_mid_stream_cancels_the_upstream_and_keeps_the_row(proxy, upstream):
    body = {"model": "openai/drip-300", "messages": MSG, "stream": True}
    with httpx2.Client(timeout=10) as http, http.stream("POST", proxy.openai_url + "/chat/completions",
                                                       json=body) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
    (row,) = wait_rows(proxy, 1)
    assert row["status"] == "client_disconnected" and row["input_tokens"] > 0 and row["output_tokens"] >= 1
    assert row["duration_ms"] < 1200  # a full drip-300 stream takes ~2 s: the upstream call was closed


def test_client_that_leaves_a_waiting_call_gets_a_row(proxy):
    with pytest.raises(httpx2.ReadTimeout), httpx2.Client(timeout=0.3) as http:
        http.post(proxy.openai_url + "/chat/completions", json={"model": "openai/slow-1500", "messages": MSG})
    (row,) = wait_rows(proxy, 1)
    assert row["status"] in ("cancelled", "client_disconnected")


def _post(proxy, path: str, content: bytes | None = None, **kw) -> httpx2.Response:
    return httpx2.post(proxy.url + path, content=content, timeout=10, **kw)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize(("content", "fragment"), [
    (b"{bad json", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"model": 5, "messages": [], "max_tokens": 5}', "'model' must be a string"),
    (b'{"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}', "missing required field 'model'"),
    (b'{"model": "openai/x", "max_tokens": 5}', "missing required field 'messages'"),
    (b'{"model": "openai/x", "max_tokens": 5, "messages": "hi"}', "'messages' must be an array"),
    (b"\xff\xfe{}", "not"),
])
def test_bad_input_is_a_4xx_in_the_callers_shape(proxy, path, content, fragment):
    r = _post(proxy, path, content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    body = r.json()
    error = body["error"]
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and error["type"] == "invalid_request_error"
    else:
        assert error["type"] == "invalid_request_error" and "param" in error
    assert fragment in error["message"] and "Traceback" not in r.text
    assert r.headers["x-thrifty-request-id"]


def test_unknown_model_and_provider_are_404s_with_rows(proxy):
    with pytest.raises(openai.NotFoundError) as info:
        oai(proxy).chat.completions.create(model="nope/gpt-4o", messages=MSG)
    assert "unknown provider 'nope'" in info.value.message
    with pytest.raises(anthropic.NotFoundError):
        ant(proxy).messages.create(model="local/no-such-model", max_tokens=5, messages=MSG)
    rows = proxy.rows()
    assert [r["error_type"] for r in rows] == ["UnknownProviderError", "UnknownModelError"]


def test_missing_provider_key_is_a_401(proxy):
    with pytest.raises(anthropic.AuthenticationError) as info:
        ant(proxy).messages.create(model="nokey/claude-haiku-4-5", max_tokens=5, messages=MSG)
    assert "THRIFTY_TEST_UNSET_KEY" in info.value.message


def test_body_over_the_limit_is_a_413(proxy):
    limit = proxy.engine.settings.server.max_body_bytes
    big = json.dumps({"model": "openai/x", "messages": [{"role": "user", "content": "x" * (limit + 10)}]}).encode()
    r = _post(proxy, "/v1/chat/completions", big)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]
    r = _post(proxy, "/v1/messages", big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    def chunks():  # no content-length: refused as the body arrives
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    r = httpx2.post(proxy.url + "/v1/chat/completions", content=chunks(), timeout=10)
    assert r.status_code == 413


def test_wrong_path_and_method(proxy):
    r = httpx2.get(proxy.url + "/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx2.get(proxy.url + "/v1/messages")
    assert r.status_code == 405 and r.json()["type"] == "error" and r.headers["allow"] == "POST"
    r = httpx2.post(proxy.url + "/v1/models", json={})
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_an_internal_error_is_a_500_that_tells_nothing(proxy, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(proxy.engine, "ahandle", boom)
    r = _post(proxy, "/v1/chat/completions", json.dumps({"model": "openai/x", "messages": MSG}).encode())
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "secret internals" in caplog.text  # logged for the operator
    r = _post(proxy, "/v1/messages", json.dumps({"model": "x", "max_tokens": 1, "messages": MSG}).encode())
    assert r.status_code == 500 and r.json() == {"type": "error", "error": {
        "type": "api_error", "message": "internal error in thrifty; see the server log"}}


# ---------------------------------------------------------------- other endpoints


def test_count_tokens(proxy):
    r = _post(proxy, "/v1/messages/count_tokens", json.dumps(
        {"model": "anthropic/claude-haiku-4-5", "messages": MSG, "system": "be brief"}).encode())
    assert r.status_code == 200 and r.json()["input_tokens"] > 5
    count = ant(proxy).messages.count_tokens(model="openai/gpt-4o-mini", messages=MSG)
    assert count.input_tokens > 0
    r = _post(proxy, "/v1/messages/count_tokens", json.dumps({"model": "nope/x", "messages": MSG}).encode())
    assert r.status_code == 404 and r.json()["type"] == "error"
    assert proxy.rows() == []  # counting calls no model


def test_models_list_reads_in_both_sdks(proxy):
    ids = [m.id for m in oai(proxy).models.list()]
    assert "local/smollm2-135m" in ids and "default" in ids
    assert any(i.startswith("openai/gpt-4o") for i in ids) and any(i.startswith("anthropic/claude") for i in ids)
    page = ant(proxy).models.list()
    assert [m.id for m in page.data] == ids


def test_health_and_metrics(proxy):
    oai(proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    with pytest.raises(openai.NotFoundError):
        oai(proxy).chat.completions.create(model="nope/x", messages=MSG)
    health = httpx2.get(proxy.url + "/healthz").json()
    assert health["status"] == "ok" and health["ledger"]["enabled"] and "buffered_rows" in health["ledger"]
    text = httpx2.get(proxy.url + "/metrics").text
    assert 'thrifty_requests_total{endpoint="chat_completions",model="gpt-4o-mini",provider="openai",status="200"} 1.0' in text
    assert 'thrifty_requests_total{endpoint="chat_completions",model="",provider="",status="404"} 1.0' in text
    assert 'thrifty_tokens_total{model="gpt-4o-mini",partition="output",provider="openai"} 5.0' in text
    assert "thrifty_cost_usd_total" in text and "thrifty_overhead_seconds_bucket" in text
    assert "thrifty_ledger_buffered_rows" in text and "thrifty_request_duration_seconds_count" in text


def test_openapi_document(proxy):
    doc = httpx2.get(proxy.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.1") and {"/v1/chat/completions", "/v1/messages",
                                                  "/v1/messages/count_tokens", "/v1/models"} <= set(doc["paths"])


def test_cors_is_off_by_default(proxy):
    r = httpx2.options(proxy.url + "/v1/chat/completions",
                       headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in r.headers
