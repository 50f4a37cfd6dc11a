"""Helpers shared by the wire codecs: field checks that raise clear 400s, SSE framing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from thrifty.errors import InvalidRequestError, UpstreamError

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "an array", dict: "an object"}


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def require(body: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    """The value of a required field, checked for type, or a 400 naming the field."""
    name = f"{where}{key}"
    if key not in body or body[key] is None:
        raise InvalidRequestError(f"missing required field {name!r}", param=name)
    return check(body[key], kind, name)


def optional(body: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    value = body.get(key)
    if value is None:
        return None
    return check(value, kind, f"{where}{key}")


def check(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok and float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise InvalidRequestError(
            f"field {name!r} must be {wanted}, got {type_name(value)}", param=name
        )
    return value


def non_negative_int(body: dict[str, Any], key: str, where: str = "", minimum: int = 0) -> int | None:
    value = optional(body, key, int, where)
    if value is not None and value < minimum:
        raise InvalidRequestError(f"field {where}{key!r} must be at least {minimum}, got {value}",
                                  param=f"{where}{key}")
    return value


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    payload = dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


class SSEParser:
    """Incremental server-sent-event parser: feed it lines, get ``(event, data)`` when one ends."""

    __slots__ = ("_event", "_data")

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str | None, str] | None:
        if line == "":
            return self.end()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None

    def end(self) -> tuple[str | None, str] | None:
        out = (self._event, "\n".join(self._data)) if self._data else None
        self._event, self._data = None, []
        return out


def iter_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str]]:
    """Parse server-sent events from text lines; yields ``(event, data)``."""
    parser = SSEParser()
    for line in lines:
        if (item := parser.feed(line)) is not None:
            yield item
    if (item := parser.end()) is not None:
        yield item


async def aiter_sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str | None, str]]:
    parser = SSEParser()
    async for line in lines:
        if (item := parser.feed(line)) is not None:
            yield item
    if (item := parser.end()) is not None:
        yield item


def decode_error(status: int, content: bytes, headers: dict[str, str] | None = None) -> UpstreamError:
    """An :class:`UpstreamError` from an upstream's error answer (both wires put the text in ``error.message``)."""
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    message = content.decode("utf-8", "replace")[:500] if content else f"HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or message)
    return UpstreamError(f"upstream returned HTTP {status}: {message}", status_code=status,
                         body=body, headers=headers)
