"""The structured-output stage through the wrapper and the proxy, against the canned OpenAI and Anthropic upstream.

The canned upstream answers a schema request with the smallest document that
meets the schema (as a provider enforcing it would); ``upstream.script(model,
[...])`` makes a model answer given texts in turn, for the re-ask paths.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
from pydantic import BaseModel, Field

import thrifty
from tests.middleware.conftest import _ledger_rows, make_settings
from tests.middleware.server.conftest import Proxy, start_proxy
from thrifty import CallContext, Engine
from thrifty.contracts.spec import OutputSpec
from thrifty.contracts.structured import StructuredStage
from thrifty.errors import OutputValidationError
from thrifty.testing import REPLY, CannedUpstream
from thrifty.types import Message, Request, ResponseFormat, TextPart

MSG = [{"role": "user", "content": "extract the person"}]


class Person(BaseModel):
    name: str
    age: int = Field(ge=0)
    email: str | None = None


def unique(prefix: str) -> str:
    """A model name of its own, so that a script never leaks into another test (the upstream is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def engine(tmp_path: Path, upstream: CannedUpstream) -> Iterator[Engine]:
    eng = Engine(make_settings(tmp_path / "data", upstream, structured={"reasks": 1}))
    yield eng
    eng.close()


def oai(engine: Engine, upstream: CannedUpstream) -> openai.OpenAI:
    return thrifty.wrap(openai.OpenAI(api_key="sk-user", base_url=upstream.url, max_retries=0), engine=engine)


def schema_format(model: type[BaseModel] = Person, **extra) -> dict:
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": model.model_json_schema(),
                                                   **extra}}


# ---------------------------------------------------------------- pass-through


def test_calls_without_an_output_contract_pass_through(engine, upstream):
    assert any(isinstance(s, StructuredStage) for s in engine.pipeline.stages)
    client = oai(engine, upstream)
    r = client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert r.choices[0].message.content == REPLY and "response_format" not in upstream.requests[-1]["body"]
    r = client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG,
                                       response_format={"type": "json_object"})
    assert r.choices[0].message.content == REPLY  # JSON mode is the provider's business
    assert upstream.requests[-1]["body"]["response_format"] == {"type": "json_object"}


def test_structured_can_be_switched_off(tmp_path, upstream):
    eng = Engine(make_settings(tmp_path / "data", upstream, structured={"enabled": False}))
    try:
        model = unique("off")
        upstream.script(model, ["not json"])
        r = oai(eng, upstream).chat.completions.create(model=f"openai/{model}", messages=MSG,
                                                       response_format=schema_format())
        assert r.choices[0].message.content == "not json"
        assert upstream.requests[-1]["body"]["response_format"] == schema_format()
    finally:
        eng.close()


# ---------------------------------------------------------------- the openai SDK's parse(), wrapper


def test_parse_through_the_wrapper_sends_the_strict_schema(engine, upstream):
    r = oai(engine, upstream).chat.completions.parse(model="openai/gpt-4o-mini", messages=MSG,
                                                     response_format=Person)
    assert r.choices[0].message.parsed == Person(name="", age=0, email=None)
    sent = upstream.requests[-1]["body"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    schema = sent["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and schema["required"] == ["name", "age", "email"]
    (row,) = _ledger_rows(engine)
    assert row["status"] == "ok" and row["attempt"] == 1 and row["parent_call_id"] is None


def test_parse_of_a_raw_schema_makes_optional_fields_nullable_and_drops_their_nulls(engine, upstream):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
              "required": ["city"]}
    model = unique("nulls")
    upstream.script(model, ['{"city": "Oslo", "zip": null}'])
    r = oai(engine, upstream).chat.completions.create(
        model=f"openai/{model}", messages=MSG,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    assert json.loads(r.choices[0].message.content) == {"city": "Oslo"}
    sent = upstream.requests[-1]["body"]["response_format"]["json_schema"]
    assert sent["strict"] is True and sent["schema"]["properties"]["zip"] == {"type": ["string", "null"]}


def test_a_reask_fixes_a_bad_answer_and_each_attempt_is_a_row(engine, upstream):
    model = unique("reask")
    upstream.script(model, ['{"name": "Ann", "age": -4, "email": null}', '{"name": "Ann", "age": 4, "email": null}'])
    r = oai(engine, upstream).chat.completions.parse(model=f"openai/{model}", messages=MSG, response_format=Person)
    assert r.choices[0].message.parsed == Person(name="Ann", age=4)
    reask = upstream.requests[-1]["body"]["messages"]
    assert reask[0] == MSG[0] and reask[1] == {"role": "assistant", "content": '{"name": "Ann", "age": -4, "email": null}'}
    assert reask[2]["role"] == "user" and "$.age" in reask[2]["content"] and "minimum" in reask[2]["content"]
    first, second = _ledger_rows(engine)
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert first["parent_call_id"] is None and second["parent_call_id"] == first["call_id"]
    assert r.id == "chatcmpl-canned"


def test_reask_then_fallback_then_a_typed_error_all_in_the_ledger(tmp_path, upstream):
    bad, other = unique("bad"), unique("other")
    upstream.script(bad, ["not json at all"])
    upstream.script(other, ['{"name": 7}'])
    eng = Engine(make_settings(tmp_path / "data", upstream,
                               structured={"reasks": 2, "fallback_models": [f"canned/{other}"]}))
    try:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            oai(eng, upstream).chat.completions.parse(model=f"openai/{bad}", messages=MSG, response_format=Person)
        body = info.value.body
        assert info.value.status_code == 422 and body["type"] == "output_validation_error"
        assert "4 attempt(s)" in body["message"] and "$.name" in body["message"]
        rows = _ledger_rows(eng)
        assert [r["attempt"] for r in rows] == [1, 2, 3, 4]
        assert [r["model_used"] for r in rows] == [bad, bad, bad, other]
        assert [r["provider"] for r in rows] == ["openai", "openai", "openai", "canned"]
        # each answer was billed, and its row says it failed the contract
        assert {(r["status"], r["error_type"]) for r in rows} == {("invalid_output", "OutputValidationError")}
        assert {r["parent_call_id"] for r in rows[1:]} == {rows[0]["call_id"]} and rows[0]["parent_call_id"] is None
        assert rows[3]["route_decision"].endswith(f"structured-fallback:canned/{other}")
        # the fallback model got the original conversation, with the strict schema
        sent = upstream.requests[-1]["body"]
        assert sent["messages"] == MSG and sent["response_format"]["json_schema"]["strict"] is True
    finally:
        eng.close()


def test_a_fallback_model_that_answers_well_ends_the_call(tmp_path, upstream):
    bad, good = unique("bad"), unique("good")
    upstream.script(bad, ["{"])
    eng = Engine(make_settings(tmp_path / "data", upstream, structured={"reasks": 0, "fallback_models": [
        f"anthropic/{good}"]}))
    try:
        raw = oai(eng, upstream).chat.completions.with_raw_response.parse(
            model=f"openai/{bad}", messages=MSG, response_format=Person)
        assert raw.parse().choices[0].message.parsed == Person(name="", age=0)
        assert upstream.requests[-1]["path"] == "/v1/messages"  # the Anthropic fallback got its native format
        assert upstream.requests[-1]["body"]["output_config"]["format"]["type"] == "json_schema"
        rows = _ledger_rows(eng)
        assert [(r["provider"], r["attempt"]) for r in rows] == [("openai", 1), ("anthropic", 2)]
    finally:
        eng.close()


def test_an_answer_cut_off_at_max_tokens_is_reasked_then_returned_as_openai_would(engine, upstream):
    model = unique("cut")
    upstream.script(model, [('{"name": "An', "length")])
    with pytest.raises(openai.LengthFinishReasonError):  # the SDK's own error: the length limit was reached
        oai(engine, upstream).chat.completions.parse(model=f"openai/{model}", messages=MSG, response_format=Person,
                                                     max_tokens=5)
    sent = [r["body"] for r in upstream.requests if r["body"].get("model") == model]
    assert len(sent) == 2 and "cut off" in sent[1]["messages"][-1]["content"]  # one re-ask, for a shorter answer
    r = oai(engine, upstream).chat.completions.create(model=f"openai/{model}", messages=MSG, max_tokens=5,
                                                      response_format=schema_format())
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == '{"name": "An'
    model = unique("cutthenok")
    upstream.script(model, [('{"name": "An', "length"), '{"name": "A", "age": 1, "email": null}'])
    r = oai(engine, upstream).chat.completions.parse(model=f"openai/{model}", messages=MSG, response_format=Person)
    assert r.choices[0].message.parsed == Person(name="A", age=1)


def test_keywords_openai_does_not_enforce_are_enforced_by_validation(engine, upstream):
    class Code(BaseModel):
        code: str = Field(min_length=4, max_length=4)

    model = unique("len")
    upstream.script(model, ['{"code": "ab"}', '{"code": "abcd"}'])
    r = oai(engine, upstream).chat.completions.parse(model=f"openai/{model}", messages=MSG, response_format=Code)
    assert r.choices[0].message.parsed == Code(code="abcd")
    first = [q for q in upstream.requests if q["body"].get("model") == model][0]["body"]
    sent = first["response_format"]["json_schema"]["schema"]["properties"]["code"]
    assert "minLength" not in sent and "minLength: 4" in sent["description"] and "maxLength: 4" in sent["description"]
    assert "too short" in upstream.requests[-1]["body"]["messages"][-1]["content"]


async def test_async_parse_and_reask(engine, upstream):
    model = unique("async")
    upstream.script(model, ["oops", '{"name": "Bo", "age": 2, "email": "b@x.io"}'])
    client = thrifty.wrap(openai.AsyncOpenAI(api_key="sk-user", base_url=upstream.url, max_retries=0), engine=engine)
    r = await client.chat.completions.parse(model=f"openai/{model}", messages=MSG, response_format=Person)
    assert r.choices[0].message.parsed == Person(name="Bo", age=2, email="b@x.io")


def test_a_stream_gets_the_validated_answer(engine, upstream):
    model = unique("stream")
    upstream.script(model, ['{"name": 1}', '{"name": "Cy", "age": 30, "email": null}'])
    client = oai(engine, upstream)
    chunks = list(client.chat.completions.create(model=f"openai/{model}", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True},
                                                 response_format=schema_format()))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert Person.model_validate_json(text) == Person(name="Cy", age=30)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    with client.chat.completions.stream(model="openai/gpt-4o-mini", messages=MSG, response_format=Person) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.parsed == Person(name="", age=0)


def test_a_failed_stream_is_an_error_before_it_starts(engine, upstream):
    model = unique("badstream")
    upstream.script(model, ["never json"])
    with pytest.raises(openai.UnprocessableEntityError):
        list(oai(engine, upstream).chat.completions.create(model=f"openai/{model}", messages=MSG, stream=True,
                                                           response_format=schema_format()))


# ---------------------------------------------------------------- a contract's OutputSpec on ctx.output


class Mentions:
    name = "mentions"

    def __init__(self, word: str) -> None:
        self.word = word

    def __call__(self, text: str) -> str | None:
        return None if self.word in text else f"the answer must mention {self.word!r}"


def _call(engine: Engine, model: str, spec: OutputSpec, stream: bool = False):
    request = Request(model=model, messages=[Message("user", [TextPart("hi")])], stream=stream)
    ctx = CallContext(entry="wrapper", wire="openai", output=spec)
    return engine.handle(request, ctx), ctx


def test_checks_and_fallback_output_of_a_contract(engine, upstream):
    model = unique("checks")
    upstream.script(model, ["plain words", "still plain"])
    spec = OutputSpec(checks=(Mentions("refund"),), reasks=1, fallback_output="ESCALATE", source="contract:triage")
    response, ctx = _call(engine, f"openai/{model}", spec)
    assert response.choices[0].message.text() == "ESCALATE"
    asked = upstream.requests[-1]["body"]["messages"][-1]["content"]
    assert "mentions: the answer must mention 'refund'" in asked
    assert "response_format" not in upstream.requests[-1]["body"]  # no schema: nothing to send
    assert ctx.result is not None and ctx.output is spec


def test_a_contract_schema_is_sent_to_the_provider(engine, upstream):
    spec = OutputSpec(schema=Person.model_json_schema(), schema_name="person", source="contract:extract")
    response, _ = _call(engine, "openai/gpt-4o-mini", spec)
    assert Person.model_validate_json(response.choices[0].message.text()) == Person(name="", age=0)
    sent = upstream.requests[-1]["body"]["response_format"]["json_schema"]
    assert sent["name"] == "person" and sent["strict"] is True
    stream, _ = _call(engine, "openai/gpt-4o-mini", spec, stream=True)
    assert "".join(getattr(e, "text", "") for e in stream) == response.choices[0].message.text()


def test_the_typed_error_carries_the_errors(engine, upstream):
    model = unique("typed")
    upstream.script(model, ["[]"])
    spec = OutputSpec(schema={"type": "object"}, reasks=0)
    with pytest.raises(OutputValidationError) as info:
        _call(engine, f"openai/{model}", spec)
    assert info.value.errors == ["at $: [] is not of type 'object'"] and info.value.attempts == 1
    assert info.value.status_code == 422


# ---------------------------------------------------------------- the proxy


@pytest.fixture
def proxy(tmp_path: Path, upstream: CannedUpstream) -> Iterator[Proxy]:
    yield from start_proxy(make_settings(tmp_path / "data", upstream, structured={"reasks": 1}))


def test_parse_through_the_proxy_to_openai_and_anthropic(proxy, upstream):
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="sk-client", max_retries=0)
    for model, path in (("openai/gpt-4o-mini", "/v1/chat/completions"), ("anthropic/claude-haiku-4-5", "/v1/messages")):
        r = client.chat.completions.parse(model=model, messages=MSG, response_format=Person)
        assert r.choices[0].message.parsed == Person(name="", age=0)
        assert upstream.requests[-1]["path"] == path
    sent = upstream.requests[-1]["body"]["output_config"]["format"]["schema"]
    assert sent["additionalProperties"] is False and "minimum" not in sent["properties"]["age"]


def test_proxy_reask_rows_and_422(proxy, upstream):
    model = unique("proxy")
    upstream.script(model, ["nope", '{"name": "Di", "age": 1, "email": null}'])
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="sk-client", max_retries=0)
    raw = client.chat.completions.with_raw_response.parse(model=f"openai/{model}", messages=MSG, response_format=Person)
    assert raw.parse().choices[0].message.parsed.name == "Di"
    rows = proxy.rows()
    assert [r["attempt"] for r in rows] == [1, 2] and rows[1]["parent_call_id"] == rows[0]["call_id"]
    assert raw.headers["x-thrifty-request-id"] == rows[0]["call_id"]
    bad = unique("proxybad")
    upstream.script(bad, ["nope"])
    answer = httpx2.post(proxy.openai_url + "/chat/completions", json={
        "model": f"openai/{bad}", "messages": MSG, "response_format": schema_format()})
    assert answer.status_code == 422 and answer.json()["error"]["type"] == "output_validation_error"
    answer = httpx2.post(proxy.url + "/v1/messages", json={
        "model": f"openai/{bad}", "max_tokens": 50, "messages": MSG,
        "output_config": {"format": {"type": "json_schema", "schema": Person.model_json_schema()}}})
    assert answer.status_code == 422 and answer.json()["type"] == "error"


@pytest.mark.parametrize("schema", [{"type": "strin"}, {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}])
def test_a_bad_schema_is_a_400_in_both_shapes_on_the_proxy(proxy, upstream, schema):
    before = len(upstream.requests)
    answer = httpx2.post(proxy.openai_url + "/chat/completions", json={
        "model": "openai/gpt-4o-mini", "messages": MSG,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == "response_format.json_schema.schema" and "invalid JSON schema" in error["message"]
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0).messages.create(
            model="anthropic/claude-haiku-4-5", max_tokens=50, messages=MSG,
            output_config={"format": {"type": "json_schema", "schema": schema}})
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "invalid JSON schema" in info.value.body["error"]["message"]
    assert len(upstream.requests) == before  # nothing reached the upstream


def test_response_format_objects_build_the_spec():
    stage = StructuredStage.__new__(StructuredStage)
    from thrifty.settings import StructuredSettings

    stage.settings = StructuredSettings(reasks=3, fallback_models=["local/x"])
    request = Request(model="m", messages=[], response_format=ResponseFormat("json_schema", schema={"type": "object"},
                                                                              name="o"))
    ctx = CallContext(entry="wrapper", wire="openai")
    spec = stage._spec(request, ctx)
    assert spec == ctx.output and spec.reasks == 3 and spec.fallback_models == ("local/x",)
    assert spec.schema == {"type": "object"} and spec.schema_name == "o" and spec.source == "response_format"
    assert stage._spec(Request(model="m", messages=[]), CallContext(entry="wrapper", wire="openai")) is None


# ---------------------------------------------------------------- the local model


@pytest.mark.model
@pytest.mark.slow
def test_parse_on_the_local_model_leaves_the_schema_to_its_grammar(engine):
    class Capital(BaseModel):
        city: str = Field(max_length=24)
        country: str = Field(max_length=24)

    client = thrifty.wrap(openai.OpenAI(api_key="unused"), engine=engine)
    r = client.chat.completions.parse(model="local/smollm2-135m", response_format=Capital, max_tokens=40,
                                      temperature=0, messages=[{"role": "user", "content": "The capital of France?"}])
    assert isinstance(r.choices[0].message.parsed, Capital) and r.choices[0].finish_reason == "stop"
    (row,) = _ledger_rows(engine)
    assert row["provider"] == "local" and row["attempt"] == 1


async def test_async_stream_gets_the_validated_answer(engine, upstream):
    model = unique("astream")
    upstream.script(model, ["{}", '{"name": "Ed", "age": 5, "email": null}'])
    client = thrifty.wrap(openai.AsyncOpenAI(api_key="sk-user", base_url=upstream.url, max_retries=0), engine=engine)
    stream = await client.chat.completions.create(model=f"openai/{model}", messages=MSG, stream=True,
                                                  response_format=schema_format())
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert Person.model_validate_json(text) == Person(name="Ed", age=5)
    assert [r["attempt"] for r in _ledger_rows(engine)] == [1, 2]


def test_no_reask_after_the_deadline(engine, upstream):
    model = unique("late")
    upstream.script(model, ["late and wrong"])
    request = Request(model=f"openai/{model}", messages=[Message("user", [TextPart("hi")])])
    ctx = CallContext(entry="wrapper", wire="openai", deadline=0.0,
                      output=OutputSpec(schema={"type": "object"}, reasks=3, fallback_models=("openai/x",)))
    with pytest.raises(OutputValidationError) as info:
        engine.handle(request, ctx)
    assert info.value.attempts == 1


def test_a_failing_fallback_model_moves_on_to_the_next(engine, upstream):
    bad, good = unique("bad"), unique("good")
    upstream.script(bad, ["no"])
    spec = OutputSpec(schema={"type": "object"}, fallback_models=("openai/fail-500", f"openai/{good}"))
    response, ctx = _call(engine, f"openai/{bad}", spec)
    assert response.choices[0].message.text() == "{}" and ctx.target.model == good
    rows = _ledger_rows(engine)
    assert [(r["model_used"], r["status"], r["attempt"]) for r in rows] == [
        (bad, "invalid_output", 1), ("fail-500", "error", 2), (good, "ok", 3)]
    spec = OutputSpec(schema={"type": "object"}, fallback_models=("openai/fail-503",), fallback_output="{}")
    response, _ = _call(engine, f"openai/{bad}", spec)
    assert response.choices[0].message.text() == "{}"
    with pytest.raises(thrifty.UpstreamError) as info:
        _call(engine, f"openai/{bad}", OutputSpec(schema={"type": "object"}, fallback_models=("openai/fail-502",)))
    assert info.value.status_code == 502
    with pytest.raises(thrifty.UpstreamError):  # the first attempt's own failure is the call's, no contingency
        _call(engine, "openai/fail-500", OutputSpec(schema={"type": "object"}, fallback_models=(f"openai/{good}",)))
