"""Offline tiktoken encodings and prompt counts (OpenAI cookbook figures)."""

from __future__ import annotations

import base64
import gzip
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import pytest

from thrifty.errors import ConfigurationError
from thrifty.ledger import tokens
from thrifty.ledger.tokens import (
    TokenCount,
    count_prompt,
    count_text,
    encoding_for,
    get_encoding,
    openai_image_tokens,
)
from thrifty.types import (
    ImagePart,
    Message,
    OpaquePart,
    Request,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCallPart,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def msg(role: str, text: str, name: str | None = None) -> Message:
    return Message(role, [TextPart(text)], name)  # type: ignore[arg-type]


# the cookbook's example conversation ("How to count tokens with tiktoken", section 6)
COOKBOOK_CHAT = [
    msg(
        "system",
        "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    ),
    msg("system", "New synergies will help drive top-line growth.", "example_user"),
    msg("system", "Things working well together will increase revenue.", "example_assistant"),
    msg(
        "system",
        "Let's circle back when we have more bandwidth to touch base on opportunities"
        " for increased leverage.",
        "example_user",
    ),
    msg("system", "Let's talk later when we're less busy about how to do better.", "example_assistant"),
    msg("user", "This late pivot means we don't have time to boil the ocean for the client deliverable."),
]

# section 7: tools
WEATHER_TOOL = Tool(
    "get_current_weather",
    "Get the current weather in a given location",
    {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            "unit": {
                "type": "string",
                "description": "The unit of temperature to return",
                "enum": ["celsius", "fahrenheit"],
            },
        },
        "required": ["location"],
    },
)
WEATHER_CHAT = [
    msg("system", "You are a helpful assistant that can answer to questions about the weather."),
    msg("user", "What's the weather like in San Francisco?"),
]

SHORT_CHAT = [
    msg("system", "You are a helpful assistant."),
    msg("user", "What is the capital of France?"),
    msg("assistant", "The capital of France is Paris."),
]


# ---------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    ("text", "o200k", "cl100k"),
    [
        # token ids from the cookbook (section 5) and tiktoken's README
        ("hello world", [24912, 2375], [15339, 1917]),
        ("tiktoken is great!", [83, 8251, 2488, 382, 2212, 0], [83, 1609, 5963, 374, 2294, 0]),
        (
            "antidisestablishmentarianism",
            [493, 129901, 376, 160388, 21203, 2367],
            [519, 85342, 34500, 479, 8997, 2191],
        ),
        ("2 + 2 = 4", [17, 659, 220, 17, 314, 220, 19], [17, 489, 220, 17, 284, 220, 19]),
        (
            "お誕生日おめでとう",
            [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669],
            [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699],
        ),
    ],
)
def test_known_strings_have_known_tokens(text: str, o200k: list[int], cl100k: list[int]) -> None:
    assert get_encoding("o200k_base").encode(text) == o200k
    assert get_encoding("cl100k_base").encode(text) == cl100k
    assert count_text(text, "gpt-4o") == len(o200k)
    assert count_text(text, "gpt-4") == len(cl100k)


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("claude-3-5-haiku-latest", "o200k_base"),
        ("llama-3.1-8b", "o200k_base"),
    ],
)
def test_encoding_for(model: str, encoding: str) -> None:
    assert encoding_for(model).name == encoding
    assert encoding_for(model) is get_encoding(encoding)


def test_special_token_text_counts_as_plain_text() -> None:
    # a user can type "<|endoftext|>"; the API tokenizes it as text, and so must we (no exception)
    assert count_text("<|endoftext|>", "gpt-4o") > 1


def test_our_encodings_are_tiktokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same file hash, split pattern and special tokens as tiktoken_ext.openai_public."""
    from tiktoken_ext import openai_public

    for name in ("o200k_base", "cl100k_base"):
        ours = get_encoding(name)
        seen: dict[str, str | None] = {}

        def fake_load(url: str, expected_hash: str | None = None, _ours=ours, _seen=seen) -> dict[bytes, int]:
            _seen["hash"] = expected_hash
            return _ours._mergeable_ranks

        monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
        theirs = openai_public.ENCODING_CONSTRUCTORS[name]()
        assert theirs["pat_str"] == ours._pat_str
        assert theirs["special_tokens"] == ours._special_tokens
        assert seen["hash"] == tokens._SPECS[name].sha256


def test_encodings_load_with_network_disabled(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    script = textwrap.dedent(
        """
        import os, socket, sys

        def refuse(*args, **kwargs):
            raise OSError("network disabled in this test")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        env_before = dict(os.environ)

        import thrifty.ledger.tokens as tokens
        assert "tiktoken" not in sys.modules, "tiktoken imported at import time"
        assert tokens.count_text("hello world", "gpt-4o") == 2
        assert tokens.count_text("hello world", "gpt-4") == 2
        assert dict(os.environ) == env_before, "environment changed"
        assert "bpe_openai._bindings" not in sys.modules
        print("ok")
        """
    )
    env = {
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "TIKTOKEN_CACHE_DIR": str(cache),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert list(cache.iterdir()) == []  # nothing written to tiktoken's cache


def test_missing_bpe_openai_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bpe_openai", None)  # find_spec now reports it absent
    with pytest.raises(ConfigurationError, match="pip install bpe-openai"):
        tokens._load_encoding("cl100k_base")


def test_corrupt_encoding_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "cl100k_base.tiktoken.gz").write_bytes(gzip.compress(b"aGVsbG8= 0\n"))
    with pytest.raises(ConfigurationError, match="SHA-256"):
        tokens._load_encoding("cl100k_base", data_dir=tmp_path)
    (tmp_path / "o200k_base.tiktoken.gz").write_bytes(b"not gzip")
    with pytest.raises(ConfigurationError, match="reinstall bpe-openai"):
        tokens._load_encoding("o200k_base", data_dir=tmp_path)


def test_encodings_load_once_under_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = tokens._load_encoding

    def counting(name: str, data_dir: Path | None = None):  # type: ignore[no-untyped-def]
        calls.append(name)
        time.sleep(0.05)  # widen the race window
        return real(name, data_dir)

    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(tokens, "_load_encoding", counting)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(get_encoding("cl100k_base"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["cl100k_base"]
    assert len(results) == 8 and all(r is results[0] for r in results)


# ---------------------------------------------------------------- chat prompts


@pytest.mark.parametrize(
    ("model", "expected"),
    # the cookbook's figures, each equal to the prompt_tokens the OpenAI API reported
    [("gpt-3.5-turbo", 129), ("gpt-4-0613", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_cookbook_chat_counts(model: str, expected: int) -> None:
    assert count_prompt(Request(model, COOKBOOK_CHAT), model, "openai") == TokenCount(expected, True)


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_cookbook_tool_counts(model: str, expected: int) -> None:
    result = count_prompt(Request(model, WEATHER_CHAT, tools=[WEATHER_TOOL]), model, "openai")
    assert result == TokenCount(expected, False)  # the tool rule is the cookbook's approximation


def test_names_add_their_tokens_plus_one() -> None:
    plain = count_prompt(Request("gpt-4o", [msg("user", "hi")]), "gpt-4o", "openai")
    named = count_prompt(Request("gpt-4o", [msg("user", "hi", name="alice")]), "gpt-4o", "openai")
    assert named.n - plain.n == count_text("alice", "gpt-4o") + 1
    # 3 per message + role "user" (1) + "hi" (1) + 3 reply priming
    assert plain == TokenCount(8, True)


@pytest.mark.parametrize(
    ("model", "provider_kind"),
    [
        ("gpt-4o", "openai-compatible"),  # another host may bill differently
        ("gpt-4.1", "openai"),  # same rule, not checked against the API
        ("gpt-5", "openai"),
        ("o3", "openai"),
        ("claude-3-5-haiku-latest", "anthropic"),
        ("llama-3.1-8b", "openai-compatible"),
        ("smollm2-135m", "local"),
        ("gpt-4o", "local"),
    ],
)
def test_estimates_are_marked_inexact(model: str, provider_kind: str) -> None:
    result = count_prompt(Request(model, SHORT_CHAT), model, provider_kind)
    assert result.exact is False
    assert (
        result.n == count_prompt(Request("gpt-4o", SHORT_CHAT), "gpt-4o", "openai").n
    )  # same o200k estimate


def test_anthropic_tools_include_the_tool_use_system_prompt() -> None:
    model = "claude-3-5-haiku-latest"
    without = count_prompt(Request(model, WEATHER_CHAT), model, "anthropic")
    with_tools = count_prompt(Request(model, WEATHER_CHAT, tools=[WEATHER_TOOL]), model, "anthropic")
    assert with_tools.n - without.n > 346
    assert with_tools.exact is False


def test_non_text_content_makes_an_estimate() -> None:
    model = "gpt-4o"
    base = count_prompt(Request(model, [msg("user", "hi")]), model, "openai").n
    two_parts = Request(model, [Message("user", [TextPart("hi"), TextPart(" there")])])
    assert count_prompt(two_parts, model, "openai").exact is False
    call = Message("assistant", [ToolCallPart("call_1", "get_current_weather", '{"location":"Paris"}')])
    result = count_prompt(Request(model, [msg("user", "hi"), call]), model, "openai")
    assert result.exact is False and result.n > base + 3
    tool_reply = Request(model, [msg("user", "hi"), msg("tool", "sunny")])
    assert count_prompt(tool_reply, model, "openai").exact is False
    thinking = Message(
        "assistant", [OpaquePart("anthropic", {"type": "thinking", "thinking": "let me think"})]
    )
    assert count_prompt(Request(model, [thinking]), model, "openai").exact is False
    schema = ResponseFormat("json_schema", schema={"type": "object", "properties": {"a": {"type": "string"}}})
    structured = count_prompt(Request(model, [msg("user", "hi")], response_format=schema), model, "openai")
    assert structured.exact is False and structured.n > base


# ---------------------------------------------------------------- images


def test_openai_image_tile_rule() -> None:
    # OpenAI's documented examples
    assert openai_image_tokens(1024, 1024) == 765  # 768x768: 4 tiles
    assert openai_image_tokens(2048, 4096) == 1105  # 1024x2048 -> 768x1536: 6 tiles
    assert openai_image_tokens(512, 512) == 255  # one tile, no scaling
    assert openai_image_tokens(1024, 1024, base=2833, tile=5667) == 2833 + 4 * 5667  # gpt-4o-mini


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = (
        b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    )
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"


def webp_vp8x(width: int, height: int) -> bytes:
    body = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00"
    body += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


@pytest.mark.parametrize("make", [png, jpeg, gif, webp_vp8x])
def test_image_size_is_read_from_inline_data(make) -> None:  # type: ignore[no-untyped-def]
    data = base64.b64encode(make(1024, 1024)).decode()
    model = "gpt-4o"
    text_only = count_prompt(Request(model, [msg("user", "hi")]), model, "openai").n
    for part in (
        ImagePart(data=data, media_type="image/png"),
        ImagePart(url=f"data:image/png;base64,{data}"),
    ):
        request = Request(model, [Message("user", [TextPart("hi"), part])])
        result = count_prompt(request, model, "openai")
        assert result == TokenCount(text_only + 765, False)


def test_image_of_unknown_size_counts_the_low_detail_charge() -> None:
    url = ImagePart(url="https://example.com/cat.png")
    low = ImagePart(data=base64.b64encode(png(4096, 8192)).decode(), detail="low")
    for model, charge in (("gpt-4o", 85), ("gpt-4o-mini", 2833)):
        text_only = count_prompt(Request(model, [msg("user", "hi")]), model, "openai").n
        for part in (url, low):
            result = count_prompt(Request(model, [Message("user", [TextPart("hi"), part])]), model, "openai")
            assert result == TokenCount(text_only + charge, False)
