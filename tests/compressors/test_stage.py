"""The compression stage end to end: wrapped SDK clients and the proxy, a real ledger, a real encoder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

import thrifty
from tests.compressors.conftest import PASSAGE
from tests.middleware.conftest import make_settings
from tests.support import wait_for
from thrifty import Engine
from thrifty.testing import CannedUpstream

LONG = PASSAGE * 3
SYSTEM = "You are a careful assistant. " + PASSAGE


def _engine(tmp_path: Path, upstream: CannedUpstream, weights: Path, **compression: object) -> Engine:
    return Engine(make_settings(tmp_path / "data", upstream, compression={"model": str(weights), **compression}))


@pytest.fixture
def engine(tmp_path: Path, upstream: CannedUpstream, weights: Path) -> Iterator[Engine]:
    eng = _engine(tmp_path, upstream, weights)
    yield eng
    eng.close()


def savings(engine: Engine) -> list[dict]:
    assert engine.recorder.flush(timeout=10)
    db = sa.create_engine(engine.settings.ledger_url)
    try:
        with db.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT s.*, c.model_used FROM llm_call_savings s JOIN llm_calls c ON c.call_id = s.call_id "
                "ORDER BY c.started_at")).mappings().all()
        return [dict(r) for r in rows]
    finally:
        db.dispose()


def oai(engine: Engine, upstream: CannedUpstream) -> openai.OpenAI:
    return thrifty.wrap(openai.OpenAI(api_key="sk-test", base_url=upstream.url, max_retries=0), engine=engine)


def _sent_texts(upstream: CannedUpstream) -> list[str]:
    body = upstream.requests[-1]["body"]
    out = []
    for m in body["messages"]:
        content = m["content"] or ""
        out.append(content if isinstance(content, str) else " ".join(b.get("text", "") for b in content))
    return out


def test_wrapper_compresses_user_text_and_records_the_saving(engine, upstream):
    client = oai(engine, upstream)
    r = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": LONG}],
        extra_body={"thrifty": {"compress": {"rate": 0.5, "min_tokens": 50}}},
    )
    assert r.choices[0].message.content
    system, user = _sent_texts(upstream)
    assert system == SYSTEM  # never the system prompt
    assert len(user) < 0.8 * len(LONG)
    [row] = savings(engine)
    assert row["technique"] == "compression" and row["tokens_after"] < row["tokens_before"]
    assert row["tokens_saved"] == row["tokens_before"] - row["tokens_after"] > 50
    assert row["usd_saved"] is not None and row["usd_saved"] > 0  # gpt-4o-mini's input price
    detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
    assert detail["compressor"] == "llmlingua2" and detail["version"] == "test-random-head@0"
    assert detail["mode"] == "fast" and detail["rate"] == 0.5 and detail["ms"] > 0 and detail["parts"] == 1
    assert detail["precision"] in ("float32", "bfloat16", "int8")  # what fast_precision measured fastest here
    assert detail["protected_chars"] == detail["foreign_chars"] == 0  # no code, number, URL or other language


def test_short_prompts_and_calls_that_do_not_ask_are_untouched(engine, upstream):
    client = oai(engine, upstream)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PASSAGE}],
                                   extra_body={"thrifty": {"compress": True}})  # below min_tokens (256)
    assert _sent_texts(upstream) == [PASSAGE]
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": LONG * 2}])
    assert _sent_texts(upstream) == [LONG * 2]
    assert savings(engine) == []


def test_settings_turn_it_on_and_a_call_turns_it_off(tmp_path, upstream, weights):
    eng = _engine(tmp_path, upstream, weights, enabled=True, min_tokens=10, rate=0.4)
    try:
        client = oai(eng, upstream)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}])
        assert len(_sent_texts(upstream)[0]) < 0.8 * len(LONG)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}],
                                       extra_body={"thrifty": {"compress": False}})
        assert _sent_texts(upstream) == [LONG]
        assert len(savings(eng)) == 1
    finally:
        eng.close()


def test_anthropic_cached_prefix_and_images_are_left_alone(engine, upstream):
    client = thrifty.wrap(anthropic.Anthropic(api_key="sk-ant", base_url=upstream.base_url, max_retries=0),
                          engine=engine)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    client.messages.create(
        model="claude-3-5-haiku-latest", max_tokens=50, system=SYSTEM,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": [image, {"type": "text", "text": LONG}]},
        ],
        extra_body={"thrifty": {"compress": {"min_tokens": 50}}},
    )
    body = upstream.requests[-1]["body"]
    first, _, last = body["messages"]
    assert first["content"][0]["text"] == LONG and first["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert last["content"][0] == image
    assert len(last["content"][1]["text"]) < 0.8 * len(LONG)
    assert body["system"] in (SYSTEM, [{"type": "text", "text": SYSTEM}])


async def test_async_wrapper(engine, upstream):
    client = thrifty.wrap(openai.AsyncOpenAI(api_key="sk-test", base_url=upstream.url, max_retries=0),
                          engine=engine)
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}],
                                         extra_body={"thrifty": {"compress": {"min_tokens": 50}}})
    assert len(_sent_texts(upstream)[0]) < 0.8 * len(LONG)
    assert [r["technique"] for r in savings(engine)] == ["compression"]


def test_fail_open_sends_the_call_uncompressed_and_records_why(tmp_path, upstream):
    eng = _engine(tmp_path, upstream, tmp_path / "no-such-weights")
    try:
        r = oai(eng, upstream).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}],
            extra_body={"thrifty": {"compress": {"min_tokens": 50}}})
        assert r.choices[0].message.content
        assert _sent_texts(upstream) == [LONG]
        [row] = savings(eng)
        detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
        assert "LocalModelError" in detail["error"] and row["tokens_saved"] == 0
    finally:
        eng.close()


def test_fail_closed_fails_the_call(tmp_path, upstream):
    eng = _engine(tmp_path, upstream, tmp_path / "no-such-weights", fail_open=False)
    try:
        sent = len(upstream.requests)
        with pytest.raises(openai.APIStatusError) as info:
            oai(eng, upstream).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}],
                extra_body={"thrifty": {"compress": {"min_tokens": 50}}})
        assert info.value.status_code == 503 and "no-such-weights" in str(info.value)
        assert len(upstream.requests) == sent
    finally:
        eng.close()


def test_a_pinned_precision_reaches_the_ledger(tmp_path, upstream, weights):
    eng = _engine(tmp_path, upstream, weights, precision="int8")
    try:
        oai(eng, upstream).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}],
            extra_body={"thrifty": {"compress": {"rate": 0.5, "min_tokens": 50}}})
        [row] = savings(eng)
        detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
        assert detail["precision"] == "int8" and row["tokens_after"] < row["tokens_before"]
    finally:
        eng.close()


def test_bad_options_are_a_400(engine, upstream):
    with pytest.raises(openai.BadRequestError, match="compress") as bad:
        oai(engine, upstream).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            extra_body={"thrifty": {"compress": {"rate": 2}}})
    assert bad.value.param == "thrifty.compress.rate"  # the key as the caller wrote it
    with pytest.raises(openai.BadRequestError, match=r"unknown thrifty option 'compress.rat'; known options are: "
                                                     r"fit_context, force_keep, min_tokens, mode, protect, question, "
                                                     r"rate, relation_weight, roles, sentence_weight, target_tokens") as bad:
        oai(engine, upstream).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            extra_body={"thrifty": {"compress": {"rat": 0.5}}})
    assert bad.value.param == "thrifty.compress.rat"
    for loose in ("yes", "false", 1, 0.5):  # true, false or options: nothing is read as a boolean or a rate
        with pytest.raises(openai.BadRequestError, match=r"expected true, false or an object of options such as "
                                                         r"\{\"rate\": 0\.5\}, got ") as bad:
            oai(engine, upstream).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                extra_body={"thrifty": {"compress": loose}})
        assert bad.value.param == "thrifty.compress"
    with pytest.raises(openai.BadRequestError, match="regular expression"):
        oai(engine, upstream).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            extra_body={"thrifty": {"compress": {"protect": ["(unclosed"]}}})


def test_proxy_compresses_and_records(tmp_path, upstream, weights):
    from tests.middleware.server.conftest import start_proxy

    settings = make_settings(tmp_path / "data", upstream, compression={"model": str(weights)})
    for proxy in start_proxy(settings):
        r = httpx2.post(
            proxy.openai_url + "/chat/completions",
            json={"model": "openai/gpt-4o-mini", "messages": [{"role": "system", "content": SYSTEM},
                                                              {"role": "user", "content": LONG}]},
            headers={"x-thrifty-options": json.dumps({"compress": {"rate": 0.4, "min_tokens": 50}})},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        system, user = _sent_texts(upstream)
        assert system == SYSTEM and len(user) < 0.8 * len(LONG)
        [row] = savings(proxy.engine)
        assert row["technique"] == "compression" and row["tokens_saved"] > 0
        bad = httpx2.post(proxy.openai_url + "/chat/completions",
                          json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                          headers={"x-thrifty-options": json.dumps({"compress": {"rate": 0}})}, timeout=30)
        assert bad.status_code == 400 and "compress" in bad.text


ASKED = PASSAGE * 2 + "\n\nWhat will the next meeting focus on?"
CHAT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": LONG},
        {"role": "assistant", "content": "Noted."}, {"role": "user", "content": ASKED}]


def _prompt_tokens(body: dict) -> int:
    """The prompt tokens of an OpenAI request body, as the ledger counts them for gpt-4o-mini."""
    from thrifty.ledger.tokens import count_prompt
    from thrifty.middleware.codecs.openai import decode_request

    return count_prompt(decode_request(body)[0], "gpt-4o-mini", "openai").n


def test_a_token_budget_compresses_a_prompt_over_it_and_only_as_far_as_it_must(engine, upstream, weights):
    from thrifty.compressors.lingua import Compressor
    from thrifty.ledger.tokens import count_text

    client = oai(engine, upstream)

    def ask(**compress: object) -> list[dict]:
        client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, extra_body={"thrifty": {"compress": {
            "min_tokens": 50, "question": False, **compress}}})
        return upstream.requests[-1]["body"]["messages"]

    full = _prompt_tokens({"model": "gpt-4o-mini", "messages": CHAT})
    assert ask(target_tokens=full) == CHAT and savings(engine) == []  # within the budget: as written
    budget = int(full * 0.6)
    sent = ask(target_tokens=budget)
    [row] = savings(engine)
    detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
    rate = detail["rate"]
    assert detail["target_tokens"] == budget and "over_target" not in detail and detail["parts"] == 2
    assert row["tokens_before"] == full
    assert row["tokens_after"] == _prompt_tokens({"model": "gpt-4o-mini", "messages": sent}) <= budget
    # one rate for both parts, and the system prompt and the short reply untouched
    ref = Compressor.load("fast", str(weights))
    assert [m["content"] for m in sent] == [
        SYSTEM, ref.compress(LONG, rate, target="gpt-4o-mini").text, "Noted.",
        ref.compress(ASKED, rate, target="gpt-4o-mini").text]
    # the largest such rate: a hundredth more and the prompt would be over
    fixed = full - count_text(LONG, "gpt-4o-mini") - count_text(ASKED, "gpt-4o-mini")
    more = round(rate + 0.01, 2)
    assert fixed + sum(ref.compress(t, more, target="gpt-4o-mini").tokens_after for t in (LONG, ASKED)) > budget
    # a budget the system prompt alone is over: compressed as far as it goes, sent, and recorded as over
    ask(target_tokens=50)
    over = savings(engine)[-1]
    detail = over["detail"] if isinstance(over["detail"], dict) else json.loads(over["detail"])
    assert detail["over_target"] is True and detail["target_tokens"] == 50
    assert 50 < over["tokens_after"] < row["tokens_after"]
    # a rate given too is the most the parts keep
    capped = ask(target_tokens=full, rate=0.3)
    assert capped[1]["content"] == ref.compress(LONG, 0.3, target="gpt-4o-mini").text
    for bad in (0, -3, "many", 2.5):
        with pytest.raises(openai.BadRequestError, match="target_tokens") as info:
            ask(target_tokens=bad)
        assert info.value.param == "thrifty.compress.target_tokens"


def test_a_token_budget_through_the_proxy_and_from_the_settings(tmp_path, upstream, weights):
    from tests.middleware.server.conftest import start_proxy

    settings = make_settings(tmp_path / "data", upstream,
                             compression={"model": str(weights), "enabled": True, "target_tokens": 250})
    for proxy in start_proxy(settings):
        client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant", max_retries=0)
        short = client.messages.create(model="anthropic/claude-3-5-haiku-latest", max_tokens=50,
                                       messages=[{"role": "user", "content": PASSAGE}])
        assert short.content and upstream.requests[-1]["body"]["messages"][0]["content"] in (
            PASSAGE, [{"type": "text", "text": PASSAGE}])  # under 250 tokens: as written
        client.messages.create(model="anthropic/claude-3-5-haiku-latest", max_tokens=50,
                               messages=[{"role": "user", "content": LONG}])
        [row] = savings(proxy.engine)
        detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
        assert detail["target_tokens"] == 250 and row["tokens_before"] > 250 >= row["tokens_after"]
        assert detail["rate"] > 0.5  # only as far as it must: LONG is about 320 tokens
        # a call's own budget wins over the settings', and a bad one is an Anthropic error
        client.messages.create(model="anthropic/claude-3-5-haiku-latest", max_tokens=50,
                               messages=[{"role": "user", "content": LONG}],
                               extra_headers={"x-thrifty-options": json.dumps({"compress": {"target_tokens": 150}})})
        assert 150 >= savings(proxy.engine)[-1]["tokens_after"]
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model="anthropic/claude-3-5-haiku-latest", max_tokens=50,
                                   messages=[{"role": "user", "content": LONG}],
                                   extra_headers={"x-thrifty-options": json.dumps({"compress": {"target_tokens": 0}})})
        assert info.value.body["error"]["type"] == "invalid_request_error"
        assert "target_tokens" in info.value.body["error"]["message"]


DOCUMENT = PASSAGE * 90 + "\n\nWhat did the committee agree to ask the city council for?"


def test_fit_context_compresses_only_a_prompt_over_its_models_window(tmp_path, upstream, weights):
    eng = _engine(tmp_path, upstream, weights, fit_context=True)  # compression itself not enabled
    try:
        client = oai(eng, upstream)

        def send(text: str, **kw: object) -> list[dict]:
            client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": text}], **kw)
            return upstream.requests[-1]["body"]["messages"]

        assert send(LONG, max_tokens=500)[0]["content"] == LONG and savings(eng) == []  # it fits: as written
        full = _prompt_tokens({"model": "gpt-4", "messages": [{"role": "user", "content": DOCUMENT}]})
        assert full > 8192  # gpt-4's window, in genai-prices' table
        sent = send(DOCUMENT, max_tokens=500)
        tokens = _prompt_tokens({"model": "gpt-4", "messages": sent})
        assert 0.97 * (8192 - 500) < tokens <= 8192 - 500  # the window less the answer, and only as far as that
        [row] = savings(eng)
        detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
        assert detail["context_window"] == 8192 and detail["target_tokens"] == 8192 - 500
        assert row["tokens_before"] == full and row["tokens_after"] == tokens and 0.6 < detail["rate"] < 1
        # without max_tokens, 1,024 tokens are left for the answer; a call can turn compression off
        assert _prompt_tokens({"model": "gpt-4", "messages": send(DOCUMENT)}) <= 8192 - 1024
        assert send(DOCUMENT, extra_body={"thrifty": {"compress": False}})[0]["content"] == DOCUMENT
        # a model whose window no table gives: nothing to fit
        client.chat.completions.create(model="canned/house-model", messages=[{"role": "user", "content": DOCUMENT}])
        assert upstream.requests[-1]["body"]["messages"][0]["content"] == DOCUMENT
        assert len(savings(eng)) == 2
    finally:
        eng.close()


@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text(max_size=40)), min_size=1,
                max_size=4))
@settings(max_examples=300, deadline=None)
def test_a_prompt_is_taken_as_within_its_budget_unmeasured_only_where_it_is(messages):
    from thrifty.compressors.stage import _surely_within
    from thrifty.ledger.tokens import count_prompt
    from thrifty.types import Message, Request, TextPart

    request = Request(model="gpt-4o-mini", messages=[Message(role, [TextPart(text)]) for role, text in messages])
    n = count_prompt(request, "gpt-4o-mini", "openai").n
    assert not _surely_within(request, n - 1)


def test_a_prompt_with_tools_or_a_schema_is_always_measured():
    from thrifty.compressors.stage import _surely_within
    from thrifty.types import Message, Request, ResponseFormat, TextPart, Tool

    plain = Request(model="gpt-4o-mini", messages=[Message("user", [TextPart("hi")])])
    assert _surely_within(plain, 1_000)
    schema = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(300)}}
    assert not _surely_within(plain.replace(tools=[Tool("lookup", "", schema)]), 1_000)
    assert not _surely_within(plain.replace(response_format=ResponseFormat("json_schema", schema, "out")), 1_000)


def test_a_prompt_its_provider_cannot_count_is_sent_as_written(weights, caplog):
    from thrifty.compressors.stage import CompressionStage
    from thrifty.middleware.context import CallContext, Target
    from thrifty.middleware.providers.base import Provider
    from thrifty.settings import CompressionSettings
    from thrifty.types import Message, Request, TextPart

    class Uncountable(Provider):
        kind = "uncountable"

        def send(self, request, ctx):
            raise AssertionError("not called")

        async def asend(self, request, ctx):
            raise AssertionError("not called")

        def estimate_prompt_tokens(self, request):
            raise RuntimeError("the tokenizer is gone")

        def context_window(self, model):
            return 1_000

    stage = CompressionStage(CompressionSettings(model=str(weights), fit_context=True))
    request = Request(model="m", messages=[Message("user", [TextPart(DOCUMENT)])])
    ctx = CallContext(entry="proxy", wire="openai", target=Target(Uncountable("u"), "m"))
    assert stage.prepare(request, ctx) is request and "compression" not in ctx.savings
    assert "could not count the prompt" in caplog.text


@pytest.mark.model
def test_fit_context_counts_a_local_model_by_its_own_tokenizer(weights):
    from thrifty.compressors.stage import CompressionStage
    from thrifty.middleware.context import CallContext, Target
    from thrifty.middleware.providers.local import LocalProvider
    from thrifty.middleware.providers.local._provider import _decode_params
    from thrifty.settings import CompressionSettings, Settings
    from thrifty.types import Message, Request, TextPart

    provider = LocalProvider(settings=Settings.load().local)
    stage = CompressionStage(CompressionSettings(model=str(weights), fit_context=True))

    def fit(text: str, max_tokens: int) -> tuple[Request, Request, CallContext]:
        request = Request(model="smollm2-135m", messages=[Message("user", [TextPart(text)])], max_tokens=max_tokens)
        ctx = CallContext(entry="proxy", wire="openai", target=Target(provider, "smollm2-135m"))
        return request, stage.prepare(request, ctx), ctx

    request, fitted, ctx = fit(DOCUMENT, 200)
    assert provider.context_window("smollm2-135m") == 8192
    assert provider.estimate_prompt_tokens(request) > 8192  # the model itself would refuse it
    tokens = provider.estimate_prompt_tokens(fitted)
    assert 0.97 * (8192 - 200) < tokens <= 8192 - 200
    _decode_params(fitted, tokens, 8192, "smollm2-135m")  # and now takes it, with room for the answer
    assert ctx.savings["compression"].detail["target_tokens"] == 8192 - 200
    request, fitted, ctx = fit(LONG, 200)
    assert fitted is request and "compression" not in ctx.savings
    # a prompt is taken as within a budget without counting only where the model's own count agrees
    from thrifty.compressors.stage import _surely_within

    for text in ("", "a", "ﬁ ﬂ ﬃ " * 20, "漢字かな交じり文 " * 30, "🙂👍🏽🇫🇷 " * 30, "\u0301\u200b\ufeff" * 40, LONG):
        request = Request(model="smollm2-135m", messages=[Message("user", [TextPart(text)])])
        assert not _surely_within(request, provider.estimate_prompt_tokens(request) - 1), text


def test_an_alias_can_ask_for_compression(tmp_path, upstream, weights):
    settings = make_settings(
        tmp_path / "data", upstream, compression={"model": str(weights)},
        aliases={"cheap": {"model": "openai/gpt-4o-mini", "options": {"compress": {"rate": 0.4, "min_tokens": 50}}}},
    )
    eng = Engine(settings)
    try:
        oai(eng, upstream).chat.completions.create(model="cheap", messages=[{"role": "user", "content": LONG}])
        assert len(_sent_texts(upstream)[0]) < 0.8 * len(LONG)
        [row] = savings(eng)
        detail = row["detail"] if isinstance(row["detail"], dict) else json.loads(row["detail"])
        assert detail["rate"] == 0.4
    finally:
        eng.close()


@pytest.mark.parametrize("knob", ["sentence_weight", "relation_weight"])
def test_a_call_and_the_settings_can_choose_a_selection_weight(tmp_path, engine, upstream, weights, knob):
    from thrifty.compressors.lingua import Compressor

    client = oai(engine, upstream)
    ref = Compressor.load("fast", str(weights))
    for weight in (0, 50):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}],
            extra_body={"thrifty": {"compress": {"rate": 0.5, "min_tokens": 50, knob: weight}}})
        assert _sent_texts(upstream) == [ref.compress(LONG, 0.5, target="gpt-4o-mini", **{knob: weight}).text]
    for bad in (-1, "high"):
        with pytest.raises(openai.BadRequestError, match=knob):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}],
                extra_body={"thrifty": {"compress": {knob: bad}}})
    # the setting, and a call's option over it
    eng = _engine(tmp_path, upstream, weights, enabled=True, min_tokens=50, **{knob: 0})
    try:
        oai(eng, upstream).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}])
        assert _sent_texts(upstream) == [ref.compress(LONG, 0.5, target="gpt-4o-mini", **{knob: 0}).text]
        oai(eng, upstream).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}],
            extra_body={"thrifty": {"compress": {knob: 50}}})
        assert _sent_texts(upstream) == [ref.compress(LONG, 0.5, target="gpt-4o-mini", **{knob: 50}).text]
    finally:
        eng.close()


FACT = "Last spring the Larkspur team moved its build servers to Nairobi."
CONTEXT = PASSAGE + FACT + " " + PASSAGE * 2
ASK = "Where did the Larkspur team move its build servers?"


def _asking(**options: object) -> dict:
    return {"thrifty": {"compress": {"rate": 0.33, "min_tokens": 50, **options}}}


def test_each_part_is_compressed_for_the_question_that_came_with_it(engine, upstream, weights):
    from thrifty.compressors.lingua import Compressor

    ref = Compressor.load("fast", str(weights))

    def expect(text: str, question: str | None = None) -> str:
        return ref.compress(text, 0.33, target="gpt-4o-mini", question=question).text

    client = oai(engine, upstream)
    # one message: the context, then the question as its short last paragraph
    prompt = f"Context:\n{CONTEXT}\n\n{ASK}"
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
                                   extra_body=_asking())
    [sent] = _sent_texts(upstream)
    assert sent == expect(prompt, ASK) != expect(prompt)
    assert FACT in sent and sent.endswith(ASK)
    # a later turn leaves the earlier one compressed as before (prompt caches still match)
    client.chat.completions.create(
        model="gpt-4o-mini", extra_body=_asking(),
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": "Nairobi."},
                  {"role": "user", "content": "And who maintains the Larkspur project then?"}])
    assert _sent_texts(upstream)[0] == sent
    # parts of one message: the short part is the question
    client.chat.completions.create(
        model="gpt-4o-mini", extra_body=_asking(),
        messages=[{"role": "user", "content": [{"type": "text", "text": CONTEXT}, {"type": "text", "text": ASK}]}])
    parts = upstream.requests[-1]["body"]["messages"][0]["content"]
    assert [p["text"] for p in parts] == [expect(CONTEXT, ASK), ASK]
    # a tool result: the user's question before it
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    client.chat.completions.create(
        model="gpt-4o-mini", extra_body=_asking(),
        messages=[{"role": "user", "content": ASK}, {"role": "assistant", "content": None, "tool_calls": [call]},
                  {"role": "tool", "tool_call_id": "c1", "content": CONTEXT}])
    assert _sent_texts(upstream)[2] == expect(CONTEXT, ASK)
    # a question given by the call, or none
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": CONTEXT}],
                                   extra_body=_asking(question=ASK))
    assert _sent_texts(upstream) == [expect(CONTEXT, ASK)]
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
                                   extra_body=_asking(question=False))
    assert _sent_texts(upstream) == [expect(prompt)]
    details = [r["detail"] if isinstance(r["detail"], dict) else json.loads(r["detail"]) for r in savings(engine)]
    assert [d["question_aware"] for d in details] == [1, 1, 1, 1, 1, 0]


def test_settings_can_turn_the_question_off_and_anthropic_tool_results_get_it(tmp_path, upstream, weights):
    from thrifty.compressors.lingua import Compressor

    ref = Compressor.load("fast", str(weights))
    messages = [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "search", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": CONTEXT}]},
    ]
    for question, expected in ((True, ASK), (False, None)):
        eng = _engine(tmp_path / str(question), upstream, weights, question=question)
        try:
            client = thrifty.wrap(anthropic.Anthropic(api_key="sk-ant", base_url=upstream.base_url, max_retries=0),
                                  engine=eng)
            client.messages.create(model="claude-3-5-haiku-latest", max_tokens=50, messages=messages,
                                   extra_body=_asking())
            result = upstream.requests[-1]["body"]["messages"][2]["content"][0]["content"]
            text = result if isinstance(result, str) else result[0]["text"]
            assert text == ref.compress(CONTEXT, 0.33, target="claude-3-5-haiku-latest", question=expected).text
        finally:
            eng.close()


def test_a_labelled_question_in_a_langchain_rag_prompt(engine, upstream, weights):
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    from thrifty.compressors.lingua import Compressor

    # the shape of LangChain's common RAG prompt: instructions, the question, then the context, one message
    prompt = ChatPromptTemplate.from_messages([("human", (
        "You are an assistant for question-answering tasks. Use the following pieces of retrieved context "
        "to answer the question.\nQuestion: {question} \nContext: {context} \nAnswer:"))])
    chat = thrifty.wrap(ChatOpenAI(model="gpt-4o-mini", api_key="sk-lc", base_url=upstream.url, max_retries=0,
                                   extra_body=_asking()), engine=engine)
    (prompt | chat).invoke({"question": ASK, "context": CONTEXT})
    [sent] = _sent_texts(upstream)
    text = prompt.format_messages(question=ASK, context=CONTEXT)[0].content
    assert sent == Compressor.load("fast", str(weights)).compress(text, 0.33, target="gpt-4o-mini", question=ASK).text
    assert FACT in sent and f"Question: {ASK}" in sent


def test_the_proxy_loads_the_compressor_as_it_starts(tmp_path, upstream, weights, caplog):
    # calls that compress without asking (settings, an alias) should not wait seconds for the model
    from tests.middleware.server.conftest import start_proxy
    from thrifty.compressors import base
    from thrifty.compressors.stage import CompressionStage

    aliases = {"smart": {"model": "canned/gpt-ok", "options": {"compress": {"mode": "turbo", "rate": 0.4}}},
               "plain": {"model": "canned/gpt-ok", "options": {"compress": False}}}
    settings = make_settings(tmp_path / "data", upstream, aliases=aliases,
                             compression={"model": str(weights), "enabled": True, "mode": "exact",
                                          "precision": "float32"})
    for key in [k for k in base._instances if k[2] == str(weights)]:
        del base._instances[key]
    for proxy in start_proxy(settings):
        stage = next(s for s in proxy.app.engine.pipeline.stages if isinstance(s, CompressionStage))
        assert stage.warm == ("exact", "turbo")  # the settings' mode and the alias's, not "plain"'s
        wanted = {("llmlingua2", mode, str(weights), "float32") for mode in stage.warm}
        assert wait_for(lambda wanted=wanted: wanted <= base._instances.keys(), timeout=120)
    # nothing to warm when no call compresses unasked; a compressor that fails to load is only logged
    quiet = Engine(make_settings(tmp_path / "quiet", upstream, compression={"model": str(weights)}))
    try:
        assert next(s for s in quiet.pipeline.stages if isinstance(s, CompressionStage)).warm == ()
    finally:
        quiet.close()
    broken = Engine(make_settings(tmp_path / "broken", upstream,
                                  compression={"model": str(tmp_path / "missing"), "enabled": True}))
    try:
        broken.warm_up()
        assert "did not warm up" in caplog.text
    finally:
        broken.close()


def test_a_wrapped_client_loads_the_compressor_as_it_is_wrapped(tmp_path, upstream, weights):
    # the wrapper's first call that compresses unasked should not wait for the model either
    from thrifty.compressors import base

    key = ("llmlingua2", "exact", str(weights), "float32")
    base._instances.pop(key, None)
    engine = _engine(tmp_path, upstream, weights, enabled=True, mode="exact", precision="float32")
    try:
        sent = len(upstream.requests)
        client = oai(engine, upstream)
        warming = engine._warming
        assert warming is not None and warming.daemon
        assert wait_for(lambda: key in base._instances, timeout=120)
        assert len(upstream.requests) == sent  # loaded before any call was made
        oai(engine, upstream)
        assert engine._warming is warming  # once per engine, however many clients it wraps
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}])
        assert savings(engine)[0]["tokens_after"] < savings(engine)[0]["tokens_before"]
    finally:
        engine.close()
