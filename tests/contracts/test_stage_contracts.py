"""The contracts stage through a real Engine: the wrapped SDK clients and the proxy, against the canned upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

import thrifty
from tests.middleware.conftest import _ledger_rows, make_settings
from tests.support import poll
from thrifty import Engine, Stage
from thrifty.contracts import ContractStage, OutputSpec, load_contract, render
from thrifty.errors import ContractFileError
from thrifty.middleware.server import create_app
from thrifty.testing import REPLY, CannedUpstream, ServerThread

EXAMPLES = Path(__file__).parents[2] / "examples" / "contracts"
TRIAGE = render(load_contract(EXAMPLES / "support-triage.toml"))
GREETING_TOML = '''\
[character]
role = "a concierge at a small hotel"

[cause]
goal = "greet the guest"

[constraint]
rules = ["one sentence"]

[contingency]
rules = ["if the guest's name is unknown, greet without it"]

[calibration]
format = "text"
max_tokens = 40
tone = "warm"
'''
MSG = [{"role": "user", "content": "My invoice INV-7 was charged twice."}]


class Capture(Stage):
    """Stands where the structured-output stage goes; records each call's output contract."""

    kind = "structured"

    def __init__(self) -> None:
        self.outputs: list[Any] = []
        self.tags: list[list[str]] = []

    def prepare(self, request, ctx):
        self.outputs.append(ctx.output)
        self.tags.append(list(ctx.tags))
        return request


@pytest.fixture
def contracts_dir(tmp_path: Path) -> Path:
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "greeting.toml").write_text(GREETING_TOML)
    return extra


def settings(tmp_path: Path, upstream: CannedUpstream, contracts_dir: Path, **overrides: Any):
    return make_settings(tmp_path / "data", upstream,
                         contracts={"dir": str(EXAMPLES), "paths": [str(contracts_dir / "greeting.toml")]},
                         **overrides)


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def engine(tmp_path, upstream, contracts_dir, capture) -> Iterator[Engine]:
    eng = Engine(settings(tmp_path, upstream, contracts_dir), stages=[capture])
    yield eng
    eng.close()


def oai(engine: Engine, upstream: CannedUpstream) -> openai.OpenAI:
    return thrifty.wrap(openai.OpenAI(api_key="sk-user", base_url=upstream.url, max_retries=0), engine=engine)


def sent(upstream: CannedUpstream) -> dict[str, Any]:
    return upstream.requests[-1]["body"]


# ---------------------------------------------------------------- the wrapper


def test_contract_goes_first_in_the_system_prompt_byte_identical(engine, upstream, capture):
    client = oai(engine, upstream)
    bodies = []
    for system in ("You work for Acme.", "Answer in English."):
        client.chat.completions.create(model="openai/gpt-4o-mini",
                                       messages=[{"role": "system", "content": system}, *MSG],
                                       extra_body={"thrifty": {"contract": "support-triage"}})
        bodies.append(sent(upstream))
    for body, system in zip(bodies, ("You work for Acme.", "Answer in English."), strict=True):
        assert body["messages"][0] == {"role": "system", "content": TRIAGE}
        assert body["messages"][1] == {"role": "system", "content": system}
        assert body["messages"][2] == MSG[0]
        assert "thrifty" not in body
    assert bodies[0]["messages"][0] == bodies[1]["messages"][0]  # a stable prefix for the prompt cache


def test_schema_max_tokens_and_output_spec(engine, upstream, capture):
    client = oai(engine, upstream)
    r = client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG,
                                       extra_body={"thrifty": {"contract": "support-triage"}})
    assert r.choices[0].message.content
    body = sent(upstream)
    contract = load_contract(EXAMPLES / "support-triage.toml")
    assert body["max_tokens" if "max_tokens" in body else "max_completion_tokens"] == 120
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "support-triage"
    assert body["response_format"]["json_schema"]["schema"] == contract.calibration.json_schema
    spec = capture.outputs[-1]
    assert isinstance(spec, OutputSpec) and spec.source == "contract:support-triage"
    assert spec.schema == contract.calibration.json_schema and spec.reasks == 1
    assert [c.name for c in spec.checks] == ["forbid", "forbid", "length"]
    assert "contract:support-triage" in capture.tags[-1]


def test_the_call_own_settings_win(engine, upstream, capture):
    own = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    oai(engine, upstream).chat.completions.create(
        model="openai/gpt-4o-mini", messages=MSG, max_tokens=33,
        response_format={"type": "json_schema", "json_schema": {"name": "mine", "schema": own}},
        extra_body={"thrifty": {"contract": "support-triage"}})
    body = sent(upstream)
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 33
    assert body["response_format"]["json_schema"]["name"] == "mine"
    spec = capture.outputs[-1]
    assert (spec.schema, spec.schema_name) == (own, "mine")
    assert spec.source == "contract:support-triage" and spec.checks  # the contract's checks still apply


def test_calls_without_a_contract_pass_untouched(engine, upstream, capture):
    oai(engine, upstream).chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    body = sent(upstream)
    assert body["messages"] == MSG and "response_format" not in body
    assert capture.outputs[-1] is None


def test_anthropic_wrapper_system_prefix(engine, upstream):
    client = thrifty.wrap(anthropic.Anthropic(api_key="sk-ant-user", base_url=upstream.base_url, max_retries=0),
                          engine=engine)
    m = client.messages.create(model="anthropic/claude-haiku-4-5", max_tokens=64, system="Be brief.",
                               messages=MSG, extra_body={"thrifty": {"contract": "greeting"}})
    assert m.content[0].text == REPLY
    body = sent(upstream)
    greeting = render(load_contract(Path(engine.settings.contracts.paths[0])))
    assert body["system"] == greeting + "\nBe brief."
    assert body["max_tokens"] == 64  # the call's own bound


async def test_async_wrapper(engine, upstream):
    client = thrifty.wrap(openai.AsyncOpenAI(api_key="sk-user", base_url=upstream.url, max_retries=0), engine=engine)
    await client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG,
                                         extra_body={"thrifty": {"contract": "greeting"}})
    body = sent(upstream)
    assert body["messages"][0]["role"] == "system" and body["messages"][0]["content"].startswith("role: a concierge")
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 40


def test_unknown_contract_through_the_wrapper_is_a_bad_request_with_a_row(engine, upstream):
    with pytest.raises(openai.BadRequestError) as info:
        oai(engine, upstream).chat.completions.create(model="openai/gpt-4o-mini", messages=MSG,
                                                      extra_body={"thrifty": {"contract": "suport-triage"}})
    assert "unknown contract 'suport-triage' (did you mean 'support-triage'?)" in str(info.value)
    (row,) = _ledger_rows(engine)
    assert row["status"] == "error" and row["error_type"] == "UnknownContractError"


def test_alias_options_name_the_contract(tmp_path, upstream, contracts_dir, capture):
    aliases = {"triage": {"model": "canned/gpt-canned", "options": {"contract": "support-triage"}}}
    eng = Engine(settings(tmp_path, upstream, contracts_dir, aliases=aliases), stages=[capture])
    try:
        oai(eng, upstream).chat.completions.create(model="triage", messages=MSG)
        assert sent(upstream)["messages"][0] == {"role": "system", "content": TRIAGE}
        # the call's own option wins over the alias's
        oai(eng, upstream).chat.completions.create(model="triage", messages=MSG,
                                                   extra_body={"thrifty": {"contract": "greeting"}})
        assert sent(upstream)["messages"][0]["content"].startswith("role: a concierge")
    finally:
        eng.close()


# ---------------------------------------------------------------- loading with the engine


def test_default_directory_is_data_dir_contracts(tmp_path, upstream, capture):
    data = tmp_path / "data"
    (data / "contracts").mkdir(parents=True)
    (data / "contracts" / "greeting.toml").write_text(GREETING_TOML)
    eng = Engine(make_settings(data, upstream), stages=[capture], ledger=False)
    try:
        stage = next(s for s in eng.pipeline.stages if isinstance(s, ContractStage))
        assert stage.registry.names() == ["greeting"]
    finally:
        eng.close()


def test_no_contracts_configured_means_an_empty_registry(tmp_path, upstream, capture):
    eng = Engine(make_settings(tmp_path / "data", upstream), stages=[capture], ledger=False)
    try:
        stage = next(s for s in eng.pipeline.stages if isinstance(s, ContractStage))
        assert stage.registry.names() == []
    finally:
        eng.close()


def test_a_broken_contract_file_stops_the_engine(tmp_path, upstream):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "greeting.toml").write_text(GREETING_TOML.replace('tone = "warm"', 'tones = "warm"'))
    with pytest.raises(ContractFileError) as info:
        Engine(make_settings(tmp_path / "data", upstream, contracts={"dir": str(bad)}), ledger=False)
    assert str(info.value) == (f"{bad / 'greeting.toml'}:16: calibration.tones: unknown field (did you mean "
                               "'tone'?); known fields: format, max_tokens, schema, schema_name, style, tone")


# ---------------------------------------------------------------- the proxy


@pytest.fixture
def proxy(tmp_path, upstream, contracts_dir, capture) -> Iterator[tuple[str, Engine]]:
    eng = Engine(settings(tmp_path, upstream, contracts_dir), stages=[capture], price_inline=True)
    try:
        with ServerThread(create_app(engine=eng)) as server:
            yield server.url, eng
    finally:
        eng.close()


def wait_rows(eng: Engine, n: int) -> list[dict]:
    return poll(lambda: _ledger_rows(eng), lambda rows: len(rows) >= n)


def test_proxy_header_option(proxy, upstream, capture):
    url, eng = proxy
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0)
    r = client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG,
                                       extra_headers={"x-thrifty-options": json.dumps({"contract": "greeting"})})
    assert r.choices[0].message.content == REPLY
    assert sent(upstream)["messages"][0]["content"].startswith("role: a concierge at a small hotel\n")
    assert capture.outputs[-1].source == "contract:greeting"
    (row,) = wait_rows(eng, 1)
    assert row["status"] == "ok"


def test_proxy_unknown_contract_is_400_in_both_shapes_with_rows(proxy, upstream):
    url, eng = proxy
    before = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as oai_info:
        openai.OpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0).chat.completions.create(
            model="openai/gpt-4o-mini", messages=MSG, extra_headers={"x-thrifty-options": '{"contract": "nope"}'})
    assert oai_info.value.status_code == 400
    assert oai_info.value.body["type"] == "invalid_request_error"
    assert oai_info.value.body["param"] == "thrifty.contract"
    assert oai_info.value.body["message"].startswith("unknown contract 'nope'; known contracts: article-summary,")
    with pytest.raises(anthropic.BadRequestError) as ant_info:
        anthropic.Anthropic(base_url=url, api_key="sk-client", max_retries=0).messages.create(
            model="anthropic/claude-haiku-4-5", max_tokens=16, messages=MSG,
            extra_body={"thrifty": {"contract": "nope"}})
    assert ant_info.value.status_code == 400
    assert ant_info.value.body["error"]["type"] == "invalid_request_error"
    assert "unknown contract 'nope'" in ant_info.value.body["error"]["message"]
    assert len(upstream.requests) == before  # nothing reached the provider
    rows = wait_rows(eng, 2)
    assert [(r["wire"], r["status"], r["error_type"]) for r in rows] == [
        ("openai", "error", "UnknownContractError"), ("anthropic", "error", "UnknownContractError")]


# ---------------------------------------------------------------- the stage on its own


def test_a_python_contract_with_a_pydantic_model():
    from typing import Literal

    from pydantic import BaseModel

    from thrifty import CallContext, Contract, ThriftyOptions
    from thrifty.types import Message, Request, TextPart

    class Ticket(BaseModel):
        queue: Literal["billing", "bug", "other"]
        priority: int

    contract = Contract(
        name="py-triage",
        character={"role": "a triage agent"},
        cause={"goal": "route the ticket"},
        constraint={"rules": ["one queue only"]},
        contingency={"fallback_output": '{"queue": "other", "priority": 4}'},
        calibration={"format": "json", "schema": Ticket, "max_tokens": 50},
    )
    stage = ContractStage([contract])
    ctx = CallContext(entry="wrapper", wire="openai", options=ThriftyOptions(contract="py-triage"))
    request = Request(model="m", messages=[Message("user", [TextPart("charged twice")])])
    out = stage.prepare(request, ctx)
    assert [m.role for m in out.messages] == ["system", "user"] and out.messages[0].text() == render(contract)
    assert len(request.messages) == 1  # the caller's request is not changed in place
    assert out.max_tokens == 50
    assert (out.response_format.type, out.response_format.name) == ("json_schema", "py-triage")
    assert out.response_format.schema == Ticket.model_json_schema()
    assert ctx.output.detail["model"] is Ticket and ctx.tags == ["contract:py-triage"]
    assert stage.prepare(out, ctx) is out  # applied once, also if the request comes round again
    plain = CallContext(entry="wrapper", wire="openai")
    assert stage.prepare(request, plain) is request and plain.output is None


def test_with_the_built_in_structured_stage_the_answer_meets_the_contract(tmp_path, upstream, contracts_dir):
    eng = Engine(settings(tmp_path, upstream, contracts_dir))  # every built-in stage, enforcement included
    try:
        r = oai(eng, upstream).chat.completions.create(model="openai/gpt-4o-mini", messages=MSG,
                                                       extra_body={"thrifty": {"contract": "support-triage"}})
        answer = json.loads(r.choices[0].message.content)
        assert set(answer) == {"queue", "priority", "summary"} and 1 <= answer["priority"] <= 4
        assert sent(upstream)["messages"][0] == {"role": "system", "content": TRIAGE}
        (row,) = _ledger_rows(eng)
        assert row["status"] == "ok"
    finally:
        eng.close()
