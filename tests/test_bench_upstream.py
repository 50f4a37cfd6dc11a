"""bench/fast_upstream.py, the proxy benchmark's upstream, answers like an OpenAI server (real HTTP, real SDK)."""

from __future__ import annotations

import http.client
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "fast_upstream.py"


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, str(SCRIPT)], stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()  # type: ignore[union-attr]
        assert line.startswith("ready "), line
        yield int(line.split()[1])
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_openai_sdk_gets_the_canned_completion(port: int) -> None:
    client = openai.OpenAI(api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello from the canned upstream."
    assert reply.usage is not None and reply.usage.total_tokens == 17
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]


def test_keep_alive_chunked_bodies_and_unknown_paths(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(3):  # one connection, several requests
        conn.request("POST", "/v1/chat/completions", body=b'{"model": "m"}', headers={"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and b"canned upstream" in resp.read()
    conn.request("POST", "/v1/chat/completions", body=iter([b'{"model":', b' "m"}']), encode_chunked=True,
                 headers={"transfer-encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 200 and b"canned upstream" in resp.read()
    conn.request("GET", "/v1/nowhere")
    resp = conn.getresponse()
    assert resp.status == 404 and b"not found" in resp.read()
    conn.close()
