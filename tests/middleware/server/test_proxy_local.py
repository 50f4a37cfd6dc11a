"""The proxy as on a fresh machine (no provider keys: the embedded local model answers), driven by the
official SDKs and LangChain chat models, sync and async, streaming and not; the ledger matches what
the clients saw."""

from __future__ import annotations

import time

import anthropic
import httpx2
import openai
import pytest

from tests.support import poll, wait_for

pytestmark = pytest.mark.model
MSG = [{"role": "user", "content": "What is the capital of France?"}]


def new_rows(proxy, before: int, n: int, timeout: float = 15.0) -> list[dict]:
    return poll(lambda: proxy.rows()[before:], lambda rows: len(rows) >= n, timeout)


def match(row: dict, prompt: int, completion: int) -> None:
    assert (row["input_tokens"], row["output_tokens"]) == (prompt, completion), row
    assert row["provider"] == "local" and row["model_used"] == "smollm2-135m" and row["status"] == "ok"
    assert row["usage_source"] == "provider" and row["cost_usd"] == 0 and row["entry"] == "proxy"


def test_openai_sdk_sync_and_async_stream_and_not(local_proxy):
    before = len(local_proxy.rows())
    client = openai.OpenAI(base_url=local_proxy.openai_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, max_tokens=6,
                                                           temperature=0)
    r = raw.parse()
    assert r.model == "smollm2-135m" and r.choices[0].message.content
    assert raw.headers["x-thrifty-cost-usd"] == "0"
    chunks = list(client.chat.completions.create(model="default", messages=MSG, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    usage = chunks[-1].usage
    assert chunks[-1].model_extra["thrifty"]["cost_usd"] == "0"

    async def run():
        aclient = openai.AsyncOpenAI(base_url=local_proxy.openai_url, api_key="unused", max_retries=0)
        a = await aclient.chat.completions.create(model="local/smollm2-135m", messages=MSG, max_tokens=4)
        stream = await aclient.chat.completions.create(model="local/smollm2-135m", messages=MSG, max_tokens=4,
                                                       stream=True, stream_options={"include_usage": True})
        last = [c async for c in stream][-1]
        return a.usage, last.usage

    import asyncio

    a_usage, s_usage = asyncio.run(run())
    rows = new_rows(local_proxy, before, 4)
    for row, u in zip(rows, (r.usage, usage, a_usage, s_usage), strict=True):
        match(row, u.prompt_tokens, u.completion_tokens)
    assert rows[0]["model_requested"] == "gpt-4o-mini" and rows[0]["route_decision"] == "default:no-provider-keys"
    assert rows[1]["model_requested"] == "default" and rows[1]["route_decision"] == "alias:default"


def test_anthropic_sdk_sync_and_async(local_proxy):
    before = len(local_proxy.rows())
    client = anthropic.Anthropic(base_url=local_proxy.url, api_key="unused", max_retries=0)
    greedy = {"temperature": 0}  # the anthropic SDK takes it as an extra field
    m = client.messages.create(model="claude-haiku-4-5", max_tokens=6, messages=MSG, system="Answer briefly.",
                               extra_body=greedy)
    assert m.content[0].text and m.stop_reason in ("end_turn", "max_tokens")
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=6, messages=MSG, system="Answer briefly.",
                                extra_body=greedy) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == m.content[0].text

    async def run():
        aclient = anthropic.AsyncAnthropic(base_url=local_proxy.url, api_key="unused", max_retries=0)
        return await aclient.messages.create(model="default", max_tokens=4, messages=MSG)

    import asyncio

    am = asyncio.run(run())
    rows = new_rows(local_proxy, before, 3)
    for row, u in zip(rows, (m.usage, final.usage, am.usage), strict=True):
        match(row, u.input_tokens, u.output_tokens)
        assert row["wire"] == "anthropic"
    count = client.messages.count_tokens(model="claude-haiku-4-5", messages=MSG, system="Answer briefly.")
    assert count.input_tokens == m.usage.input_tokens  # exact: the local model's own tokenizer


def test_langchain_chat_models(local_proxy):
    from langchain_anthropic import ChatAnthropic
    from langchain_openai import ChatOpenAI

    before = len(local_proxy.rows())
    lc_openai = ChatOpenAI(base_url=local_proxy.openai_url, api_key="unused", model="default", max_tokens=5,
                           temperature=0, max_retries=0, stream_usage=True)
    lc_anthropic = ChatAnthropic(base_url=local_proxy.url, api_key="unused", model="claude-haiku-4-5",
                                 max_tokens=5, temperature=0, max_retries=0)
    seen = []
    for model in (lc_openai, lc_anthropic):
        message = model.invoke("Name a colour.")
        assert message.content
        seen.append(message.usage_metadata)
        chunks = list(model.stream("Name a colour."))
        total = chunks[0]
        for chunk in chunks[1:]:
            total = total + chunk
        assert total.content == message.content
        seen.append(total.usage_metadata)

    import asyncio

    async def run():
        a = await lc_openai.ainvoke("Name a fruit.")
        parts = [c async for c in lc_anthropic.astream("Name a fruit.")]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return a.usage_metadata, total.usage_metadata

    seen.extend(asyncio.run(run()))
    rows = new_rows(local_proxy, before, 6)
    assert [row["wire"] for row in rows] == ["openai", "openai", "anthropic", "anthropic", "openai", "anthropic"]
    for row, usage in zip(rows, seen, strict=True):
        match(row, usage["input_tokens"], usage["output_tokens"])


def test_n_and_logprobs_from_the_local_model(local_proxy):
    client = openai.OpenAI(base_url=local_proxy.openai_url, api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="default", messages=MSG, max_tokens=3, n=2, logprobs=True,
                                       top_logprobs=2, seed=1)
    assert len(r.choices) == 2 and all(len(c.logprobs.content) >= 1 for c in r.choices)
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 2


def test_disconnect_mid_stream_stops_the_local_model(local_proxy):
    before = len(local_proxy.rows())
    body = {"model": "default", "messages": MSG, "max_tokens": 300, "stream": True, "temperature": 0.9, "seed": 3}
    with httpx2.Client(timeout=60) as http, http.stream("POST", local_proxy.openai_url + "/chat/completions",
                                                       json=body) as response:
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data:") and '"content"' in line:
                seen += 1
                if seen == 3:
                    break
    (row,) = new_rows(local_proxy, before, 1)
    assert row["status"] == "client_disconnected" and row["stream"]
    assert 3 <= row["output_tokens"] < 60 and row["input_tokens"] > 0  # partial usage, decoding stopped
    started = time.monotonic()  # the model's lock was released: the next call does not wait for 300 tokens
    client = openai.OpenAI(base_url=local_proxy.openai_url, api_key="unused", max_retries=0)
    client.chat.completions.create(model="default", messages=MSG, max_tokens=2)
    assert time.monotonic() - started < 10


def test_the_proxy_loads_the_default_model_as_it_starts(tmp_path):
    # on a fresh machine every call goes to the local model: the first should not wait seconds for it
    from tests.middleware.server.conftest import start_proxy
    from thrifty import Settings
    from thrifty.middleware.providers.local._models import model_store

    store = model_store()
    store.clear()
    for proxy in start_proxy(Settings.load(data_dir=tmp_path / "data")):
        assert wait_for(lambda: bool(store._models), timeout=120)
        loaded = [key[0] for key in store._models]
        assert len(loaded) == 1 and ":smollm2-135m-" in loaded[0] and proxy.rows() == []  # before any call
        client = openai.OpenAI(base_url=proxy.openai_url, api_key="unused", max_retries=0)
        assert client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2).choices


@pytest.mark.slow
def test_a_prompt_too_long_for_the_local_model_is_fitted_and_answered(local_proxy):
    """fit_context against the real model's window: refused as written, answered once fitted (the shipped
    compressor, the model's own token count)."""
    passage = ("The committee met on Tuesday to review the budget. Members discussed the rising cost of "
               "repairs to the old library's roof and heating, and agreed to ask the city council for more money. ")
    messages = [{"role": "user", "content": passage * 260 + "\n\nWhat will the committee ask the city council for?"}]
    client = openai.OpenAI(base_url=local_proxy.openai_url, api_key="unused", max_retries=0, timeout=180)
    # a large max_tokens leaves a small window for the prompt, and stops at the first space, line, full stop or
    # comma a short answer
    with pytest.raises(openai.BadRequestError, match="context window of 8192 tokens; shorten the messages"):
        client.chat.completions.create(model="local/smollm2-135m", messages=messages, max_tokens=6000)
    before = len(local_proxy.rows())
    r = client.chat.completions.create(model="local/smollm2-135m", messages=messages, max_tokens=6000,
                                       stop=[" ", "\n", ".", ","],
                                       temperature=0, extra_body={"thrifty": {"compress": {"fit_context": True}}})
    assert r.choices[0].finish_reason == "stop"
    assert 0.97 * (8192 - 6000) < r.usage.prompt_tokens <= 8192 - 6000
    [row] = new_rows(local_proxy, before, 1)
    assert row["status"] == "ok" and row["input_tokens"] == r.usage.prompt_tokens and row["tokens_saved"] > 5000
