"""A loopback upstream for tests and benchmarks.

:class:`CannedUpstream` is a real HTTP server on 127.0.0.1 that answers the
OpenAI ``/v1/chat/completions`` and Anthropic ``/v1/messages`` endpoints with
canned replies, fast enough to measure thrifty's own overhead against, and with
the failures a real provider cannot produce on demand, chosen by model name:

- ``fail-<status>``: an error answer with that HTTP status, in the wire's error shape;
- ``slow-<ms>``: answer after that many milliseconds;
- ``cut-stream``: a stream that breaks off after two events;
- ``drip-<ms>``: a stream with that many milliseconds between its events (a slow model).

Structured output: a request that asks for a JSON schema (OpenAI's
``response_format`` json_schema, Anthropic's ``output_config.format``, or an
Anthropic tool forced by ``tool_choice``) is answered with the smallest JSON
document that satisfies the schema, as a provider enforcing it would.
:meth:`CannedUpstream.script` makes a model name answer given texts in turn
instead (to test what happens when an answer is wrong or cut off).

It records each request body it received in :attr:`CannedUpstream.requests`.

:class:`ServerThread` runs an ASGI app (the proxy) with uvicorn on loopback, in a thread.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = "Hello from the canned upstream."


def _prompt_size(body: dict[str, Any]) -> int:
    """A deterministic stand-in for a prompt token count: words in the messages, plus one per message."""
    words = 0
    messages = list(body.get("messages") or [])
    if body.get("system"):
        messages.append({"content": body["system"]})
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
        words += len(str(content or "").split()) + 1
    return words


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small answer, no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/").endswith("/models"):
            models = {"object": "list", "data": [{"id": "gpt-canned", "object": "model", "created": 0,
                                                  "owned_by": "canned"}]}
            return self._send(200, json.dumps(models).encode(), "application/json")
        self._send(404, b'{"error": {"message": "not found", "type": "invalid_request_error"}}', "application/json")

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.owner.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        model = str(body.get("model", ""))
        anthropic = self.path.endswith("/messages")
        if model.startswith("slow-"):
            time.sleep(int(model.split("-", 1)[1]) / 1000)
        if model.startswith("fail-"):
            status = int(model.split("-", 1)[1])
            error = ({"type": "error", "error": {"type": "api_error", "message": f"canned failure {status}"}}
                     if anthropic else {"error": {"message": f"canned failure {status}", "type": "server_error",
                                                  "param": None, "code": None}})
            extra = [("retry-after", "0")] if status == 429 else []
            return self._send(status, json.dumps(error).encode(), "application/json", extra)
        prompt = _prompt_size(body)
        text, finish = self.server.owner._reply(body, model, anthropic)
        words = text.split(" ")
        if anthropic:
            return self._anthropic(body, model, prompt, words, finish)
        return self._openai(body, model, prompt, words, finish)

    def _send(self, status: int, payload: bytes, ctype: str, extra: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(payload)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _stream(self, events: list[bytes], cut: bool, drip_s: float = 0.0) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        for i, event in enumerate(events):
            if cut and i == 2:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if drip_s and i:
                self.wfile.flush()
                time.sleep(drip_s)
            self.wfile.write(event)
        self.wfile.flush()
        self.close_connection = True

    def _openai(self, body: dict[str, Any], model: str, prompt: int, words: list[str], finish: str = "stop") -> None:
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words),
                 "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
        head = {"id": "chatcmpl-canned", "created": 1_700_000_000, "model": model, "system_fingerprint": "fp_canned"}
        if not body.get("stream"):
            reply = {**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                 "logprobs": None, "finish_reason": finish}], "usage": usage}
            return self._send(200, json.dumps(reply).encode(), "application/json")
        chunk = {**head, "object": "chat.completion.chunk"}
        events = [_data({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                               "finish_reason": None}]})]
        for i, word in enumerate(words):
            text = word if i == 0 else " " + word
            events.append(_data({**chunk, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}))
        events.append(_data({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(_data({**chunk, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        self._stream(events, model == "cut-stream", _drip(model))

    def _anthropic(self, body: dict[str, Any], model: str, prompt: int, words: list[str], finish: str = "stop") -> None:
        usage = {"input_tokens": prompt, "output_tokens": len(words), "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        stop = "max_tokens" if finish == "length" else "end_turn"
        forced = body.get("tool_choice") or {}
        if not body.get("stream") and forced.get("type") == "tool":
            try:
                arguments = json.loads(" ".join(words))
            except ValueError:
                arguments = {"text": " ".join(words)}
            reply = {"id": "msg_canned", "type": "message", "role": "assistant", "model": model,
                     "content": [{"type": "tool_use", "id": "toolu_canned", "name": forced.get("name", ""),
                                  "input": arguments}],
                     "stop_reason": "tool_use" if finish == "stop" else stop, "stop_sequence": None, "usage": usage}
            return self._send(200, json.dumps(reply).encode(), "application/json")
        if not body.get("stream"):
            reply = {"id": "msg_canned", "type": "message", "role": "assistant", "model": model,
                     "content": [{"type": "text", "text": " ".join(words)}], "stop_reason": stop,
                     "stop_sequence": None, "usage": usage}
            return self._send(200, json.dumps(reply).encode(), "application/json")
        start = {"id": "msg_canned", "type": "message", "role": "assistant", "model": model, "content": [],
                 "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
        events = [_event("message_start", {"type": "message_start", "message": start}),
                  _event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}})]
        for i, word in enumerate(words):
            text = word if i == 0 else " " + word
            events.append(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                         "delta": {"type": "text_delta", "text": text}}))
        events += [_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                   _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop,
                                                                               "stop_sequence": None},
                                            "usage": {"output_tokens": len(words)}}),
                   _event("message_stop", {"type": "message_stop"})]
        self._stream(events, model == "cut-stream", _drip(model))


def _schema_asked(body: dict[str, Any], anthropic: bool) -> Any:
    """The JSON schema a request asks its answer to follow, if any."""
    if anthropic:
        forced = body.get("tool_choice") or {}
        if forced.get("type") == "tool":
            tool = next((t for t in body.get("tools") or [] if t.get("name") == forced.get("name")), {})
            return tool.get("input_schema")
        fmt = (body.get("output_config") or {}).get("format") or body.get("output_format") or {}
        return fmt.get("schema")
    fmt = body.get("response_format") or {}
    return (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None


def smallest_instance(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """The smallest JSON value that satisfies the common keywords of ``schema`` (a stand-in answer)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 20:
        return None
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node.get(part, {}) if part and isinstance(node, dict) else node
        return smallest_instance(node, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            if any(v == {"type": "null"} for v in schema[key]):
                return None
            return smallest_instance(schema[key][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: smallest_instance(props[name], root, depth + 1)
                for name in schema.get("required") or [] if name in props}
    if kind == "array":
        return [smallest_instance(schema.get("items"), root, depth + 1) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * int(schema.get("minLength", 0))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return int(low) if kind == "integer" else low
    if kind == "boolean":
        return False
    return None


def _drip(model: str) -> float:
    return int(model.split("-", 1)[1]) / 1000 if model.startswith("drip-") else 0.0


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\n" + _data(obj)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the listen backlog: concurrency tests open hundreds of connections at once
    owner: CannedUpstream

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that gave up (a timeout test) is not an error of the upstream's
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class CannedUpstream:
    """Start with ``with CannedUpstream() as up:``; ``up.url`` is the ``/v1`` base URL."""

    def __init__(self, port: int = 0) -> None:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.owner = self
        self.requests: list[dict[str, Any]] = []
        self._scripts: dict[str, list[tuple[str, str]]] = {}
        self._script_lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, name="canned-upstream", daemon=True)

    def script(self, model: str, replies: list[str | tuple[str, str]]) -> None:
        """Answer requests for ``model`` with ``replies`` in turn (the last one repeats).

        A reply is a text, or ``(text, finish_reason)`` with ``"length"`` for an
        answer cut off at ``max_tokens``.
        """
        with self._script_lock:
            self._scripts[model] = [(r, "stop") if isinstance(r, str) else (r[0], r[1]) for r in replies]

    def _reply(self, body: dict[str, Any], model: str, anthropic: bool) -> tuple[str, str]:
        with self._script_lock:
            replies = self._scripts.get(model)
            if replies:
                return replies.pop(0) if len(replies) > 1 else replies[0]
        schema = _schema_asked(body, anthropic)
        if isinstance(schema, dict):
            return json.dumps(smallest_instance(schema)), "stop"
        return REPLY, "stop"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + "/v1"

    def start(self) -> CannedUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CannedUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerThread:
    """Runs an ASGI app (the proxy) with uvicorn on 127.0.0.1 in a thread: ``with ServerThread(app) as s:``.

    ``s.url`` is the server's root URL; ``port=0`` takes a free port. The
    app's lifespan runs: stopping the server shuts the app down (the proxy
    then flushes its ledger).
    """

    def __init__(self, app: Any, port: int = 0, **config: Any) -> None:
        import socket

        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        config.setdefault("log_level", "warning")
        config.setdefault("timeout_graceful_shutdown", 5)
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **config))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]},
                                        name="thrifty-test-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during start-up; see the log above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout:.0f}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
