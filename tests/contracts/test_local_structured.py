"""Structured output on the embedded local model: the openai SDK's own ``.parse()`` and
``response_format`` through the wrapper and through the proxy, decoded under a grammar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx2
import openai
import pytest
from pydantic import BaseModel

import thrifty
from tests.middleware.server.conftest import Proxy, start_proxy
from thrifty import Engine, Settings
from thrifty.contracts.grammar import grammar_cache

pytestmark = pytest.mark.model
pytest.importorskip("xgrammar")

MODEL = "local/smollm2-135m"
ASK = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]


class Capital(BaseModel):
    city: str
    country: Literal["France", "Germany", "Spain"]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(Settings.load(data_dir=tmp_path / "data"))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from start_proxy(Settings.load(data_dir=tmp_path_factory.mktemp("structured-proxy")))


class CapitalCity(Capital):
    """A schema of this test's own (its title differs), so the compile count is this test's."""


def test_parse_through_the_wrapper_n2_one_grammar(engine):
    client = thrifty.wrap(openai.OpenAI(api_key="unused"), engine=engine)
    compiles = grammar_cache().stats.compiles
    r = client.chat.completions.parse(model=MODEL, messages=ASK, response_format=CapitalCity, max_tokens=24,
                                      temperature=0, n=2)
    assert len(r.choices) == 2
    for choice in r.choices:  # one matcher per sequence: both choices complete documents
        assert isinstance(choice.message.parsed, CapitalCity), choice.message.content
        assert choice.finish_reason == "stop"
        assert choice.message.content == json.dumps(choice.message.parsed.model_dump())  # compact, in order
    assert grammar_cache().stats.compiles == compiles + 1  # one grammar for both sequences


def test_streams_with_a_response_format(engine):
    client = thrifty.wrap(openai.OpenAI(api_key="unused"), engine=engine)
    rf = {"type": "json_schema", "json_schema": {"name": "capital", "schema": Capital.model_json_schema()}}
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, response_format=rf, max_tokens=24,
                                                 temperature=0, stream=True))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert isinstance(Capital.model_validate_json("".join(deltas)), Capital)
    assert len(deltas) > 3  # the grammar enforces the whole schema: it streams as it decodes
    assert chunks[-1].choices[0].finish_reason == "stop"
    # json_object carries no output contract to validate: the constrained text streams token by token
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, response_format={"type": "json_object"},
                                                 max_tokens=6, temperature=0, stream=True))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 3 and deltas[0].startswith("{")


def test_max_tokens_too_small_ends_with_length(engine):
    client = thrifty.wrap(openai.OpenAI(api_key="unused"), engine=engine)
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, temperature=0,
                                       response_format={"type": "json_object"})
    choice = r.choices[0]
    assert choice.finish_reason == "length" and r.usage.completion_tokens == 4
    assert choice.message.content.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice.message.content)


def test_parse_and_json_object_through_the_proxy(proxy):
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="unused", max_retries=0)
    r = client.chat.completions.parse(model=MODEL, messages=ASK, response_format=Capital, max_tokens=24,
                                      temperature=0)
    assert isinstance(r.choices[0].message.parsed, Capital)
    obj = client.chat.completions.create(
        model=MODEL, max_tokens=40, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "system", "content": "Reply with a JSON object."},
                  {"role": "user", "content": "Name one colour."}],
    )
    choice = obj.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:
        assert choice.finish_reason == "length" and choice.message.content.startswith("{")


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "object", "properties": {"n": {"type": "integr"}}}, "#/properties/n/type"),
        ({"type": "array", "items": False, "minItems": 2}, "minItems"),
        ({"$ref": "https://example.com/s.json"}, "$ref"),
    ],
)
def test_invalid_schema_is_a_400_in_openais_shape(proxy, schema, says):
    client = openai.OpenAI(base_url=proxy.openai_url, api_key="unused", max_retries=0)
    rf = {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, response_format=rf)
    assert caught.value.status_code == 400
    body = httpx2.post(f"{proxy.openai_url}/chat/completions",
                       json={"model": MODEL, "messages": ASK, "max_tokens": 5, "response_format": rf}).json()
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["param"].startswith("response_format")
    assert says in error["message"], error
