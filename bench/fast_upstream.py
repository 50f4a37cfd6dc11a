"""A fast canned OpenAI-compatible upstream for proxy benchmarks: raw asyncio, stdlib only.

``thrifty.testing.CannedUpstream`` (a thread per connection, http.server
parsing) costs a few hundred microseconds of Python per request, which is
enough to make it the bottleneck when a proxy is driven at thousands of
requests a second on two cores. This responder parses just enough HTTP/1.1
(request line, ``content-length`` or a chunked body, keep-alive) to answer
``POST .../chat/completions`` with one fixed, non-streaming completion (the
same reply as ``CannedUpstream``'s) and ``GET .../models`` with one model; it
uses uvloop when installed. Run it in its own process:

    python bench/fast_upstream.py --port 18001

It prints ``ready <port>`` on stdout once it listens (on 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys

REPLY = "Hello from the canned upstream."
_COMPLETION = json.dumps({
    "id": "chatcmpl-canned", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY, "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
              "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
    "system_fingerprint": "fp_canned",
}).encode()
_MODELS = json.dumps({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 0,
                                                  "owned_by": "canned"}]}).encode()
_NOT_FOUND = b'{"error": {"message": "not found", "type": "invalid_request_error", "param": null, "code": null}}'


def _answer(status: bytes, body: bytes, close: bool) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + (b"\r\nconnection: close" if close else b"") + b"\r\n\r\n" + body)


_ANSWERS = {
    (b"POST", b"chat"): _answer(b"200 OK", _COMPLETION, False),
    (b"GET", b"models"): _answer(b"200 OK", _MODELS, False),
}
_MISSING = _answer(b"404 Not Found", _NOT_FOUND, False)


def _route(method: bytes, path: bytes) -> bytes:
    path = path.split(b"?", 1)[0].rstrip(b"/")
    if path.endswith(b"/chat/completions"):
        return _ANSWERS.get((method, b"chat"), _MISSING)
    if path.endswith(b"/models"):
        return _ANSWERS.get((method, b"models"), _MISSING)
    return _MISSING


class _Responder(asyncio.Protocol):
    __slots__ = ("_buf", "_transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]
        self._buf = bytearray()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            lines = head.split(b"\r\n")
            method, path = lines[0].split(b" ", 2)[:2]
            length, chunked, close = 0, False, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if chunked:
                stop = buf.find(b"\r\n0\r\n\r\n", end + 4)
                if stop < 0 and buf[end + 4:end + 9] != b"0\r\n\r\n":
                    return
                total = (stop + 7) if stop >= 0 else end + 9
            else:
                total = end + 4 + length
                if len(buf) < total:
                    return
            del buf[:total]
            answer = _route(method, path)
            if close:
                self._transport.write(answer.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))
                self._transport.close()
                return
            self._transport.write(answer)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Responder, "127.0.0.1", port, backlog=1024, reuse_address=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await stop
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one, printed)")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args.port))
    else:
        uvloop.run(_serve(args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
