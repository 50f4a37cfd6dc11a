"""The wrapped SDK clients, driven through a real loopback upstream."""

from __future__ import annotations

import anthropic
import httpx2
import openai
import pytest

import thrifty
from thrifty import Engine
from thrifty.testing import REPLY, CannedUpstream

MSG = [{"role": "user", "content": "say hello to the test"}]


def oai(engine: Engine, upstream: CannedUpstream, **kw) -> openai.OpenAI:
    return thrifty.wrap(openai.OpenAI(api_key="sk-user-key", base_url=upstream.url, **kw), engine=engine)


def ant(engine: Engine, upstream: CannedUpstream, **kw) -> anthropic.Anthropic:
    return thrifty.wrap(anthropic.Anthropic(api_key="sk-ant-user", base_url=upstream.base_url, **kw), engine=engine)


# ---------------------------------------------------------------- types and pass-through


def test_openai_returns_sdk_types_and_leaves_the_client_alone(engine, upstream):
    original = openai.OpenAI(api_key="sk-user-key", base_url=upstream.url)
    http_before = original._client
    wrapped = thrifty.wrap(original, engine=engine)
    assert isinstance(wrapped, openai.OpenAI) and wrapped is not original
    assert original._client is http_before

    r = wrapped.chat.completions.create(model="gpt-4o-mini", messages=MSG, metadata={"k": "v"}, service_tier="auto")
    assert isinstance(r, openai.types.chat.ChatCompletion)
    assert r.choices[0].message.content == REPLY
    assert r.system_fingerprint == "fp_canned"  # unknown response fields come back unchanged
    sent = upstream.requests[-1]
    assert sent["body"]["metadata"] == {"k": "v"} and sent["body"]["service_tier"] == "auto"
    assert sent["headers"]["authorization"] == "Bearer sk-user-key"
    assert "thrifty" not in sent["body"]


def test_other_endpoints_pass_through(engine, upstream):
    models = oai(engine, upstream).models.list()
    assert [m.id for m in models] == ["gpt-canned"]


def test_openai_stream_is_the_sdk_stream(engine, upstream):
    stream = oai(engine, upstream).chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
    assert isinstance(stream, openai.Stream)
    chunks = list(stream)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert upstream.requests[-1]["body"]["stream_options"] == {"include_usage": True}  # thrifty always does


def test_openai_stream_usage_when_asked(engine, upstream):
    chunks = list(oai(engine, upstream).chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(REPLY.split())


async def test_async_openai(engine, upstream):
    client = thrifty.wrap(openai.AsyncOpenAI(api_key="sk-user-key", base_url=upstream.url), engine=engine)
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert isinstance(r, openai.types.chat.ChatCompletion) and r.choices[0].message.content == REPLY
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
    assert isinstance(stream, openai.AsyncStream)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == REPLY


def test_anthropic_returns_sdk_types(engine, upstream):
    client = ant(engine, upstream)
    m = client.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=MSG, system="be brief")
    assert isinstance(m, anthropic.types.Message)
    assert m.content[0].text == REPLY and m.stop_reason == "end_turn"
    sent = upstream.requests[-1]
    assert sent["headers"]["authorization"] == "Bearer sk-ant-user" and sent["body"]["system"] == "be brief"
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=32, messages=MSG, system="be brief") as stream:
        final = stream.get_final_message()
    assert final.content[0].text == REPLY
    assert final.usage.output_tokens == len(REPLY.split()) and final.usage.input_tokens == m.usage.input_tokens


async def test_async_anthropic(engine, upstream):
    client = thrifty.wrap(anthropic.AsyncAnthropic(api_key="k", base_url=upstream.base_url), engine=engine)
    m = await client.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=MSG)
    assert isinstance(m, anthropic.types.Message)
    events = [e async for e in await client.messages.create(model="claude-haiku-4-5", max_tokens=32,
                                                            messages=MSG, stream=True)]
    assert events[0].type == "message_start" and events[-1].type == "message_stop"


# ---------------------------------------------------------------- across wires


def test_openai_client_to_anthropic_model(engine, upstream):
    r = oai(engine, upstream).chat.completions.create(
        model="anthropic/claude-haiku-4-5", messages=[{"role": "system", "content": "terse"}, *MSG], max_tokens=50)
    assert r.choices[0].message.content == REPLY and r.choices[0].finish_reason == "stop"
    sent = upstream.requests[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == "sk-ant-test"  # the configured key, never the client's own
    assert sent["body"]["system"] == "terse" and sent["body"]["max_tokens"] == 50


def test_anthropic_client_to_openai_model_stream(engine, upstream):
    with ant(engine, upstream).messages.stream(model="openai/gpt-4o-mini", max_tokens=20, messages=MSG) as s:
        final = s.get_final_message()
    assert final.content[0].text == REPLY
    assert final.usage.output_tokens == len(REPLY.split()) and final.usage.input_tokens > 0
    assert upstream.requests[-1]["path"] == "/v1/chat/completions"
    assert upstream.requests[-1]["headers"]["authorization"] == "Bearer sk-openai-test"


def test_openai_compatible_provider_by_name(engine, upstream):
    r = oai(engine, upstream).chat.completions.create(model="canned/my-model", messages=MSG, max_tokens=9)
    assert r.model == "my-model"
    assert upstream.requests[-1]["body"]["max_tokens"] == 9


# ---------------------------------------------------------------- errors in the SDK's own types


def test_unknown_option_is_bad_request(engine, upstream):
    with pytest.raises(openai.BadRequestError, match="unknown thrifty option 'tagz'"):
        oai(engine, upstream).chat.completions.create(model="gpt-4o", messages=MSG, extra_body={"thrifty": {"tagz": 1}})
    with pytest.raises(anthropic.BadRequestError, match="unknown thrifty option"):
        ant(engine, upstream).messages.create(model="c", max_tokens=5, messages=MSG, extra_body={"thrifty": {"x": 1}})


def test_bad_argument_types_are_bad_requests(engine, upstream):
    with pytest.raises(openai.BadRequestError, match="'messages'"):
        oai(engine, upstream).chat.completions.create(model="gpt-4o", messages="hello")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        oai(engine, upstream).chat.completions.create(model="gpt-4o", messages=MSG, temperature="hot")  # type: ignore[arg-type]


def test_upstream_errors_keep_their_status(engine, upstream):
    client = oai(engine, upstream, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fail-500", messages=MSG)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fail-429", messages=MSG)
    with pytest.raises(anthropic.RateLimitError):
        ant(engine, upstream, max_retries=0).messages.create(model="fail-429", max_tokens=5, messages=MSG)


def test_upstream_timeout_is_the_sdk_timeout(engine, upstream):
    client = thrifty.wrap(openai.OpenAI(api_key="k", base_url=upstream.url, max_retries=0, timeout=0.2), engine=engine)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="slow-1000", messages=MSG)


def test_stream_cut_midway_raises_inside_the_stream(engine, upstream):
    stream = oai(engine, upstream).chat.completions.create(model="cut-stream", messages=MSG, stream=True)
    with pytest.raises(openai.APIError, match="broke off"):
        list(stream)


def test_missing_provider_key_is_authentication_error(engine, upstream):
    with pytest.raises(openai.AuthenticationError, match="THRIFTY_TEST_UNSET_KEY"):
        oai(engine, upstream).chat.completions.create(model="nokey/claude-x", messages=MSG)


def test_wrap_rejects_other_objects():
    with pytest.raises(TypeError, match="thrifty.wrap"):
        thrifty.wrap(httpx2.Client())


# ---------------------------------------------------------------- ledger


def test_ledger_rows_match_what_the_sdk_saw(engine, upstream, ledger_rows):
    client = oai(engine, upstream)
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG,
                                       extra_body={"thrifty": {"tags": ["t1", "t2"], "project": "p", "user": "u"}})
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    m = ant(engine, upstream).messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG)
    rows = ledger_rows(engine)
    assert len(rows) == 3
    first, second, third = rows
    assert (first["input_tokens"], first["output_tokens"]) == (r.usage.prompt_tokens, r.usage.completion_tokens)
    assert (second["input_tokens"], second["output_tokens"]) == (chunks[-1].usage.prompt_tokens,
                                                                  chunks[-1].usage.completion_tokens)
    assert (third["input_tokens"], third["output_tokens"]) == (m.usage.input_tokens, m.usage.output_tokens)
    assert first["project"] == "p" and first["user"] == "u" and first["entry"] == "wrapper"
    assert first["provider"] == "openai" and first["model_used"] == "gpt-4o-mini" and first["status"] == "ok"
    assert first["usage_source"] == "provider" and third["wire"] == "anthropic"
    assert first["key_id"] and "sk-user-key" not in str(first)


def test_failed_attempts_write_rows(engine, upstream, ledger_rows):
    client = oai(engine, upstream, max_retries=1)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fail-500", messages=MSG)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=MSG, extra_body={"thrifty": {"nope": 1}})
    rows = ledger_rows(engine)
    failures = [r for r in rows if r["model_requested"] == "fail-500"]
    assert [r["attempt"] for r in failures] == [1, 2]  # the SDK's own retry is a second attempt
    assert all(r["status"] == "error" and r["http_status"] == 500 for r in failures)


def test_per_request_timeout_reaches_the_upstream_call(engine, upstream):
    client = oai(engine, upstream, max_retries=0)  # the client's own timeout is the SDK default
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.2).chat.completions.create(model="slow-1000", messages=MSG)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="slow-1000", messages=MSG, timeout=0.2)
