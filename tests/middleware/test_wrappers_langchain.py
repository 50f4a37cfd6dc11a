"""LangChain chat models wrapped by thrifty, against the loopback upstream and the local model."""

from __future__ import annotations

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI

import thrifty
from thrifty.testing import REPLY


def test_chat_openai_sync_stream_and_async(engine, upstream, ledger_rows):
    original = ChatOpenAI(model="gpt-4o-mini", api_key="sk-lc", base_url=upstream.url, max_retries=0)
    chat = thrifty.wrap(original, engine=engine)
    assert isinstance(chat, ChatOpenAI) and chat is not original and original.root_client is not chat.root_client
    assert chat.invoke("hello").content == REPLY
    assert "".join(c.content for c in chat.stream("hello")) == REPLY
    rows = ledger_rows(engine)
    assert [r["model_used"] for r in rows] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert all(r["entry"] == "wrapper" and r["status"] == "ok" for r in rows)


async def test_chat_openai_async(engine, upstream):
    chat = thrifty.wrap(ChatOpenAI(model="gpt-4o-mini", api_key="sk-lc", base_url=upstream.url), engine=engine)
    message = await chat.ainvoke("hello")
    assert message.content == REPLY and message.usage_metadata["output_tokens"] == len(REPLY.split())


def test_chat_anthropic(engine, upstream, ledger_rows):
    chat = thrifty.wrap(ChatAnthropic(model="claude-haiku-4-5", api_key="sk-lc", base_url=upstream.base_url,
                                      max_tokens=20), engine=engine)
    message = chat.invoke("hello")
    assert message.content == REPLY
    (row,) = ledger_rows(engine)
    assert row["wire"] == "anthropic" and row["output_tokens"] == message.usage_metadata["output_tokens"]


@pytest.mark.model
def test_chat_openai_on_the_local_model(engine, ledger_rows):
    chat = thrifty.wrap(ChatOpenAI(model="local/smollm2-135m", api_key="unused", max_tokens=8, temperature=0),
                        engine=engine)
    message = chat.invoke("Say hi.")
    (row,) = ledger_rows(engine)
    assert row["provider"] == "local" and row["output_tokens"] == message.usage_metadata["output_tokens"]
