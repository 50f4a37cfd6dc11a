"""Tokens to text: incremental detokenization, stop sequences, token bytes.

Streaming and non-streaming responses are built from the same pieces, so the
text a stream delivers is the text a plain call returns:

* :class:`IncrementalDetokenizer` turns one token at a time into text. It
  decodes a short window of recent tokens and emits only what the newest
  token added, and holds text back while it ends in an incomplete UTF-8
  character (byte-level tokenizers split characters across tokens), so it
  never emits a broken character. This is the offset scheme of Hugging Face's
  text-generation-inference.
* :class:`StopFilter` finds stop sequences in that text and holds back any
  tail that could still become the start of one, so a stream never emits text
  that a later stop would have cut.
* :class:`TokenBytes` gives the exact bytes of a token, for logprobs.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["IncrementalDetokenizer", "StopFilter", "TokenBytes"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed tokens one by one with :meth:`push`; finish with :meth:`flush`."""

    __slots__ = ("_ids", "_prefix_offset", "_read_offset", "_tokenizer")

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add a token; return the text it completes (often all of it, sometimes nothing yet)."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        if len(text) > len(prefix) and not text.endswith(_REPLACEMENT):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """The text still held back (an incomplete character is emitted as U+FFFD)."""
        if self._read_offset == len(self._ids):
            return ""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return text[len(prefix) :]


class StopFilter:
    """Cuts generated text at the first stop sequence, streaming what is safe to emit.

    :meth:`push` returns ``(text_to_emit, matched_stop)``; once a stop has
    matched the sequence is over and the text after it is discarded.
    """

    __slots__ = ("_pending", "_stops")

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def push(self, text: str) -> tuple[str, str | None]:
        if not self._stops:
            return text, None
        pending = self._pending + text
        first: tuple[int, str] | None = None
        for stop in self._stops:
            at = pending.find(stop)
            if at >= 0 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            self._pending = ""
            return pending[: first[0]], first[1]
        hold = self._held_suffix(pending)
        self._pending = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold], None

    def flush(self) -> str:
        """The held-back tail, once no more text will come."""
        out, self._pending = self._pending, ""
        return out

    def _held_suffix(self, text: str) -> int:
        """The length of the longest tail of ``text`` that is a proper prefix of a stop sequence."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TokenBytes:
    """The raw bytes each token stands for, read from the tokenizer's own vocabulary.

    Handles byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM), SentencePiece with
    byte fallback (Llama 2, Gemma: ``▁`` for space, ``<0x0A>`` for bytes) and
    added/special tokens (their literal text).
    """

    __slots__ = ("_added", "_byte_fallback", "_byte_level", "_byte_map", "_tokenizer")

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        kinds = _decoder_kinds(tokenizer)
        self._byte_level = "ByteLevel" in kinds
        self._byte_fallback = "ByteFallback" in kinds
        self._byte_map = _bytes_to_unicode() if self._byte_level else {}
        decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self._added = {int(i): str(getattr(t, "content", t)) for i, t in decoder.items()}

    def __call__(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode()
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if self._byte_level:
            try:
                return bytes(self._byte_map[c] for c in piece)
            except KeyError:
                return piece.encode()
        if self._byte_fallback and (m := _BYTE_FALLBACK.fullmatch(piece)):
            return bytes([int(m.group(1), 16)])
        return piece.replace("\u2581", " ").encode()

    def text(self, token_id: int) -> tuple[str, bytes]:
        """The token as text (an incomplete character shows as U+FFFD) and as bytes."""
        raw = self(token_id)
        return raw.decode("utf-8", errors="replace"), raw


def _decoder_kinds(tokenizer: Any) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return set()
    kinds: set[str] = set()
    stack = [decoder]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "type" in node:
                kinds.add(str(node["type"]))
            stack.extend(node.get("decoders") or [])
    return kinds
