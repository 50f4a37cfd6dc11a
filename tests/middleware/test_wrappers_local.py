"""Wrapped SDK clients against the embedded local model, with the ledger on."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import anthropic
import openai
import pytest

import thrifty

pytestmark = pytest.mark.model
MODEL = "local/smollm2-135m"
MSG = [{"role": "user", "content": "What is the capital of France?"}]


def test_openai_sync_and_stream_match_the_ledger(engine, ledger_rows):
    client = thrifty.wrap(openai.OpenAI(api_key="unused"), engine=engine)
    r = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=12, temperature=0,
                                       extra_body={"thrifty": {"tags": ["local-test"]}})
    assert isinstance(r, openai.types.chat.ChatCompletion)
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    assert r.model == "smollm2-135m"
    chunks = list(client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == r.choices[0].message.content  # greedy: the same text, streamed or not
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == r.usage.prompt_tokens
    first, second = ledger_rows(engine)
    for row, u in ((first, r.usage), (second, usage)):
        assert (row["input_tokens"], row["output_tokens"]) == (u.prompt_tokens, u.completion_tokens)
        assert row["provider"] == "local" and row["model_used"] == "smollm2-135m" and row["status"] == "ok"
        assert row["cost_usd"] == Decimal(0) and row["price_source"] == "local"
        assert row["usage_source"] == "provider"
    assert second["ttft_ms"] is not None and second["ttft_ms"] <= second["duration_ms"]


async def test_async_clients(engine, ledger_rows):
    oa = thrifty.wrap(openai.AsyncOpenAI(api_key="unused"), engine=engine)
    r = await oa.chat.completions.create(model=MODEL, messages=MSG, max_tokens=6, temperature=0)
    assert r.usage.completion_tokens <= 6
    an = thrifty.wrap(anthropic.AsyncAnthropic(api_key="unused"), engine=engine)
    events = [e async for e in await an.messages.create(model=MODEL, max_tokens=6, messages=MSG, extra_body={"temperature": 0},
                                                        stream=True)]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == r.choices[0].message.content
    start = next(e for e in events if e.type == "message_start")
    end = next(e for e in events if e.type == "message_delta")
    assert end.delta.stop_reason in ("end_turn", "max_tokens")
    rows = ledger_rows(engine)
    assert [row["wire"] for row in rows] == ["openai", "anthropic"], [(r["wire"], r["status"], r["error_type"], r["attempt"]) for r in rows]
    assert rows[1]["input_tokens"] == start.message.usage.input_tokens == r.usage.prompt_tokens
    assert rows[1]["output_tokens"] == end.usage.output_tokens


def test_anthropic_sync_message(engine):
    client = thrifty.wrap(anthropic.Anthropic(api_key="unused"), engine=engine)
    m = client.messages.create(model=MODEL, max_tokens=5, system="Answer in one word.", messages=MSG,
                               stop_sequences=["\n"])
    assert isinstance(m, anthropic.types.Message) and m.usage.output_tokens <= 5


def test_unknown_local_model_is_not_found(engine, ledger_rows):
    client = thrifty.wrap(openai.OpenAI(api_key="unused", max_retries=0), engine=engine)
    with pytest.raises(openai.NotFoundError, match="smollm2-135m"):
        client.chat.completions.create(model="local/no-such-model", messages=MSG)
    (row,) = ledger_rows(engine)
    assert row["status"] == "error" and row["error_type"] == "UnknownModelError" and row["http_status"] == 404


def test_stream_closed_early_still_writes_its_row(engine, ledger_rows):
    client = thrifty.wrap(openai.OpenAI(api_key="unused"), engine=engine)
    stream = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=200, stream=True)
    for _ in zip(range(3), stream, strict=False):
        pass
    stream.close()
    (row,) = ledger_rows(engine)
    assert row["status"] == "client_disconnected" and 0 < row["output_tokens"] < 200


def test_the_readme_example_runs(tmp_path):
    example = Path(__file__).parents[2] / "examples" / "wrap_clients.py"
    env = {**os.environ, "THRIFTY_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["openai", "stream", "anthropic"]
    assert (tmp_path / "ledger.db").exists()
