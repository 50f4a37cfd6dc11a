"""The asyncio network backend under httpx2: plain and TLS, streamed, timed out, cancelled, reused."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest

from thrifty.middleware.providers._aio import async_transport
from thrifty.testing import REPLY


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(4):
                part = f"data: {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        out = json.dumps({"size": len(body), "port": self.client_address[1]}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[tuple[str, ssl.SSLContext]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    where: Path = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://localhost:{server.server_address[1]}", ssl.create_default_context(cafile=str(cert))
    server.shutdown()


async def test_tls_bodies_chunked_streams_and_connection_reuse(tls_server):
    url, trust = tls_server
    async with httpx2.AsyncClient(transport=async_transport(verify=trust)) as client:
        answers = [await client.post(url + "/echo", content=b"x" * size) for size in (5, 300_000)]
        assert [a.json()["size"] for a in answers] == [5, 300_000]
        assert answers[0].json()["port"] == answers[1].json()["port"]  # one kept-alive connection
        async with client.stream("POST", url + "/chunked", content=b"{}") as response:
            lines = [line async for line in response.aiter_lines() if line]
        assert lines == [f"data: {i}" for i in range(4)]


async def test_an_untrusted_certificate_is_refused(tls_server):
    url, _ = tls_server
    async with httpx2.AsyncClient(transport=async_transport()) as client:
        with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.post(url + "/echo", content=b"{}")


async def test_timeouts_cancellation_and_refused_connections(upstream):
    async with httpx2.AsyncClient(transport=async_transport()) as client:
        started = time.monotonic()
        with pytest.raises(httpx2.ReadTimeout):
            await client.post(upstream.url + "/chat/completions", json={"model": "slow-1500"}, timeout=0.3)
        assert time.monotonic() - started < 1.2
        task = asyncio.create_task(client.post(upstream.url + "/chat/completions", json={"model": "slow-800"}))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        r = await client.post(upstream.url + "/chat/completions", json={"model": "m", "messages": []})
        assert r.json()["choices"][0]["message"]["content"] == REPLY  # the pool recovered
        with pytest.raises(httpx2.ConnectError):
            await client.post("http://127.0.0.1:9/nothing-listens-here", content=b"{}")


def test_one_client_across_event_loops(upstream):
    client = httpx2.AsyncClient(transport=async_transport())

    async def call() -> str:
        r = await client.post(upstream.url + "/chat/completions", json={"model": "m", "messages": []}, timeout=5)
        return r.json()["choices"][0]["message"]["content"]

    assert asyncio.run(call()) == REPLY
    assert asyncio.run(call()) == REPLY  # the first loop's connection is not reused from the second
