"""Token counts before a call: exact for OpenAI chat text, an estimate otherwise.

Encodings load offline. ``tiktoken.get_encoding`` downloads its BPE files on
first use, which fails here; the ``bpe-openai`` package ships the same files
(gzipped). We read them from that package, check their SHA-256 against the
hashes tiktoken itself expects (``tiktoken_ext.openai_public``), and build a
private :class:`tiktoken.Encoding` with OpenAI's split pattern and special
tokens. We chose this over seeding a ``TIKTOKEN_CACHE_DIR``: it touches no
environment variable and writes no file (tiktoken reads the cache directory
from ``os.environ`` on every load, so seeding it changes behaviour process-wide
and leaves files behind), and the hash check is the same. Encodings are built
on first use (about 0.3 s for ``o200k_base``), once, under a lock.

Counting a chat follows OpenAI's cookbook ("How to count tokens with
tiktoken"): 3 tokens per message, plus the tokens of its role, content and
name, 1 more when it has a name, and 3 to prime the reply. The cookbook checked
this rule against the API for gpt-3.5-turbo, gpt-4, gpt-4o and gpt-4o-mini; for
those models, on the ``openai`` provider, a request of plain text messages is
counted exactly (``exact=True``). Everything else is an estimate:

* tool definitions, with the cookbook's ``num_tokens_for_tools`` rule (per
  function, per property and per enum item; nested object properties are
  counted with the same rule, which the cookbook does not cover);
* images, by OpenAI's tile rule (a base charge plus one per 512-px tile after
  fitting into 2048x2048 and scaling the short side to 768) when the size can be
  read from inline image data, else the low-detail base charge (85 tokens; 2833
  for gpt-4o-mini). Models that bill images by 32-px patches (gpt-4.1-mini,
  o4-mini, ...) are estimated with the same tile rule;
* tool calls, tool results, a JSON schema response format, and parts only one
  wire understands;
* other OpenAI models (gpt-4.1, gpt-5, o-series: same rule, not verified);
* Anthropic and every other provider: Claude's tokenizer is not public, so the
  count uses ``o200k_base`` and the same message rule (plus Anthropic's
  tool-use system prompt when tools are given). Bill from the provider's
  reported usage, never from this estimate;
* ``local`` providers: the local provider counts exactly with its own tokenizer;
  here it is only an estimate.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import math
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrifty.errors import ConfigurationError
from thrifty.types import (
    ImagePart,
    OpaquePart,
    Request,
    TextPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
)

if TYPE_CHECKING:
    import tiktoken

__all__ = ["TokenCount", "count_prompt", "count_text", "encoding_for", "get_encoding", "openai_image_tokens"]


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A prompt token count; ``exact`` is False when ``n`` is an estimate."""

    n: int
    exact: bool


# ---------------------------------------------------------------- encodings

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True, slots=True)
class _Spec:
    sha256: str  # of the uncompressed .tiktoken file, as tiktoken_ext.openai_public expects
    pat_str: str
    special_tokens: dict[str, int]


# Copied from tiktoken_ext.openai_public (tiktoken 0.14); tests check they still agree.
_SPECS: dict[str, _Spec] = {
    "cl100k_base": _Spec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": _Spec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}

_encodings: dict[str, tiktoken.Encoding] = {}
_encodings_lock = threading.Lock()


def get_encoding(name: str) -> tiktoken.Encoding:
    """``"o200k_base"`` or ``"cl100k_base"``, loaded offline from bpe-openai's files."""
    encoding = _encodings.get(name)
    if encoding is None:
        if name not in _SPECS:
            raise ValueError(f"unknown encoding {name!r}; known: {', '.join(sorted(_SPECS))}")
        with _encodings_lock:
            encoding = _encodings.get(name)
            if encoding is None:
                encoding = _encodings[name] = _load_encoding(name)
    return encoding


def _load_encoding(name: str, data_dir: Path | None = None) -> tiktoken.Encoding:
    import tiktoken

    spec = _SPECS[name]
    path = (data_dir or _bpe_openai_data_dir()) / f"{name}.tiktoken.gz"
    try:
        contents = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ConfigurationError(
            f"cannot read the {name} encoding file {path}: {e}; reinstall bpe-openai "
            "(pip install --force-reinstall bpe-openai)"
        ) from e
    digest = hashlib.sha256(contents).hexdigest()
    if digest != spec.sha256:
        raise ConfigurationError(
            f"the {name} encoding file {path} has SHA-256 {digest}, expected {spec.sha256}; "
            "reinstall bpe-openai (pip install --force-reinstall bpe-openai)"
        )
    ranks: dict[bytes, int] = {}
    for line in contents.splitlines():  # the .tiktoken format: "<base64 token> <rank>" per line
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=spec.special_tokens
    )


def _bpe_openai_data_dir() -> Path:
    from importlib.util import find_spec

    # find_spec on the top-level package does not import it (nor its Rust extension)
    spec = find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "thrifty counts tokens offline from the encoding files shipped in the bpe-openai package, "
            "which is not installed: pip install bpe-openai"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


# ---------------------------------------------------------------- models


@dataclass(frozen=True, slots=True)
class _ModelInfo:
    encoding: str
    openai: bool  # an OpenAI chat model: OpenAI's message and tool rules apply
    verified: bool  # the cookbook checked the message rule against the API for this family
    image_base: int  # OpenAI image tokens: base charge (= the low-detail charge)
    image_tile: int  # ... and per 512-px tile


_O200K_CHAT = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "gpt-oss")
_CL100K_CHAT = ("gpt-4", "gpt-3.5", "gpt-35")
_CL100K_EMBEDDING = ("text-embedding-3", "text-embedding-ada-002")
# o200k families whose message rule the cookbook checked against the API (and the cl100k ones)
_O200K_VERIFIED = ("gpt-4o", "chatgpt-4o")


def _family_match(name: str, prefix: str) -> bool:
    # "o1" matches "o1" and "o1-mini", not "o1x"; "gpt-4" matches "gpt-4-0613" and "gpt-4"
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix) :]
    return not rest or not (prefix[-1].isalnum() and rest[0].isalnum())


@lru_cache(maxsize=1024)  # bounded: model names come from callers
def _model_info(model: str) -> _ModelInfo:
    name = model.strip().lower()
    if name.startswith("ft:"):  # fine-tunes: "ft:gpt-4o-mini-2024-07-18:org::id"
        name = name[3:]
    name = name.rsplit("/", 1)[-1]  # "openai/gpt-4o" as routers spell it
    if any(_family_match(name, p) for p in _O200K_CHAT):
        verified = any(_family_match(name, p) for p in _O200K_VERIFIED)
        if _family_match(name, "gpt-4o-mini"):
            return _ModelInfo("o200k_base", True, verified, 2833, 5667)
        return _ModelInfo("o200k_base", True, verified, 85, 170)
    if any(_family_match(name, p) for p in _CL100K_CHAT):  # gpt-4 and gpt-3.5: all verified
        return _ModelInfo("cl100k_base", True, True, 85, 170)
    if any(_family_match(name, p) for p in _CL100K_EMBEDDING):
        return _ModelInfo("cl100k_base", False, False, 85, 170)
    return _ModelInfo("o200k_base", False, False, 85, 170)


def encoding_for(model: str) -> tiktoken.Encoding:
    """The encoding of an OpenAI model; ``o200k_base`` as the estimator for any other model."""
    return get_encoding(_model_info(model).encoding)


def count_text(text: str, model: str) -> int:
    """Tokens in ``text`` for ``model``; special-token strings count as plain text."""
    return len(encoding_for(model).encode_ordinary(text))


# ---------------------------------------------------------------- prompts

_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3  # <|start|>assistant<|message|>

# cookbook num_tokens_for_tools
_FUNC_INIT_O200K = 7
_FUNC_INIT_CL100K = 10
_PROP_INIT = 3
_PROP_KEY = 3
_ENUM_INIT = -3
_ENUM_ITEM = 3
_FUNC_END = 12

# Anthropic adds a tool-use system prompt when tools are given (its docs: 346 tokens with
# tool_choice auto/none, 313 with any/tool, Claude 3.5+); the larger one, as an estimate
_ANTHROPIC_TOOL_SYSTEM_PROMPT = 346
_TOOL_CALL_OVERHEAD = 3


def count_prompt(request: Request, model: str, provider_kind: str) -> TokenCount:
    """Count the prompt tokens ``request`` will be billed for on ``model``.

    ``provider_kind`` is the kind of provider that serves it (``openai``,
    ``anthropic``, ``openai-compatible``, ``local``). See the module docstring
    for which counts are exact.
    """
    info = _model_info(model)
    enc = get_encoding(info.encoding)
    encode = enc.encode_ordinary
    openai_rules = info.openai and provider_kind != "anthropic"
    exact = info.verified and provider_kind == "openai"

    n = _REPLY_PRIMING
    for message in request.messages:
        n += _TOKENS_PER_MESSAGE + _role_tokens(enc, message.role)
        if message.name:
            n += len(encode(message.name)) + _TOKENS_PER_NAME
        content = message.content
        if len(content) == 1 and type(content[0]) is TextPart:
            n += len(encode(content[0].text))  # the common case, kept short
        else:
            n += _count_parts(content, encode, info)
            # how OpenAI joins several parts is not documented; other parts are estimated
            if len(content) > 1 or any(type(p) is not TextPart for p in content):
                exact = False
        if message.role == "tool":
            exact = False  # a tool message also carries its tool_call_id

    if request.tools:
        exact = False
        if openai_rules:
            n += _openai_tools_tokens(request.tools, encode, info)
        else:
            n += sum(len(encode(_tool_json(t))) for t in request.tools)
            if provider_kind == "anthropic":
                n += _ANTHROPIC_TOOL_SYSTEM_PROMPT

    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.schema is not None:
        exact = False  # structured outputs add the schema to the prompt in an undocumented form
        n += len(encode(json.dumps(fmt.schema, separators=(",", ":"))))

    if provider_kind == "local":
        exact = False  # the local provider counts exactly with its own tokenizer
    return TokenCount(n, exact)


def _role_tokens(enc: tiktoken.Encoding, role: str) -> int:
    key = (enc.name, role)
    n = _ROLE_TOKENS.get(key)
    if n is None:
        n = _ROLE_TOKENS[key] = len(enc.encode_ordinary(role))
    return n


_ROLE_TOKENS: dict[tuple[str, str], int] = {}


def _count_parts(parts: list[Any], encode: Any, info: _ModelInfo) -> int:
    n = 0
    for part in parts:
        if type(part) is TextPart:
            n += len(encode(part.text))
        elif type(part) is ImagePart:
            n += _image_tokens(part, info)
        elif type(part) is ToolCallPart:
            n += len(encode(part.name)) + len(encode(part.arguments)) + _TOOL_CALL_OVERHEAD
        elif type(part) is ToolResultPart:
            n += _count_parts(part.content, encode, info)
        elif type(part) is OpaquePart:
            # thinking blocks and the like: count what text they carry; audio/files are not counted
            for key in ("text", "thinking"):
                value = part.raw.get(key)
                if isinstance(value, str):
                    n += len(encode(value))
    return n


def _tool_json(tool: Tool) -> str:
    body: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        body["description"] = tool.description
    return json.dumps(body, separators=(",", ":"))


def _openai_tools_tokens(tools: list[Tool], encode: Any, info: _ModelInfo) -> int:
    func_init = _FUNC_INIT_O200K if info.encoding == "o200k_base" else _FUNC_INIT_CL100K
    n = 0
    for tool in tools:
        n += func_init
        description = (tool.description or "").removesuffix(".")
        n += len(encode(f"{tool.name}:{description}"))
        n += _properties_tokens(tool.parameters, encode)
    return n + _FUNC_END


def _properties_tokens(schema: dict[str, Any], encode: Any) -> int:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or not properties:
        return 0
    n = _PROP_INIT
    for key, prop in properties.items():
        n += _PROP_KEY
        if not isinstance(prop, dict):
            n += len(encode(str(key)))
            continue
        enum = prop.get("enum")
        if isinstance(enum, list):
            n += _ENUM_INIT
            for item in enum:
                n += _ENUM_ITEM + len(encode(item if isinstance(item, str) else json.dumps(item)))
        p_type = prop.get("type", "")
        if isinstance(p_type, list):
            p_type = "|".join(str(t) for t in p_type)
        description = str(prop.get("description", "")).removesuffix(".")
        n += len(encode(f"{key}:{p_type}:{description}"))
        n += _properties_tokens(prop, encode)  # nested objects (not in the cookbook)
        items = prop.get("items")
        if isinstance(items, dict):
            n += _properties_tokens(items, encode)
    return n


# ---------------------------------------------------------------- images


def _image_tokens(part: ImagePart, info: _ModelInfo) -> int:
    if part.detail == "low":
        return info.image_base
    size = _image_size(part)
    if size is None:
        return info.image_base  # size unknown: the low-detail charge, as an estimate
    return openai_image_tokens(*size, base=info.image_base, tile=info.image_tile)


def openai_image_tokens(width: int, height: int, *, base: int = 85, tile: int = 170) -> int:
    """OpenAI's tile rule for a high-detail image of ``width`` x ``height`` pixels."""
    if width <= 0 or height <= 0:
        return base
    w, h = width, height
    if max(w, h) > 2048:  # fit within 2048 x 2048
        w, h = round(w * 2048 / max(w, h)), round(h * 2048 / max(w, h))
    if min(w, h) > 768:  # then the shortest side to 768
        w, h = round(w * 768 / min(w, h)), round(h * 768 / min(w, h))
    return base + tile * math.ceil(w / 512) * math.ceil(h / 512)


_HEADER_B64_CHARS = 87_384  # ~64 KiB decoded: enough to reach a JPEG's frame header past EXIF


def _image_size(part: ImagePart) -> tuple[int, int] | None:
    data = part.data
    if data is None and part.url and part.url.startswith("data:"):
        data = part.url.partition(",")[2]
    if not data:
        return None
    chunk = data[:_HEADER_B64_CHARS]
    chunk = chunk[: len(chunk) - len(chunk) % 4]
    try:
        head = base64.b64decode(chunk)
    except (binascii.Error, ValueError):
        return None
    return _size_from_header(head)


def _size_from_header(head: bytes) -> tuple[int, int] | None:
    try:
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", head[16:24])
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            kind = head[12:16]
            if kind == b"VP8X":
                w = int.from_bytes(head[24:27], "little") + 1
                h = int.from_bytes(head[27:30], "little") + 1
                return w, h
            if kind == b"VP8 ":
                w, h = struct.unpack("<HH", head[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if kind == b"VP8L":
                bits = int.from_bytes(head[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            return None
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(head)
    except struct.error:
        return None
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", head[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            h, w = struct.unpack(">HH", head[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None
