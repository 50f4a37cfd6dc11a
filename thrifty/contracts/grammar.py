"""Grammar-constrained JSON on local models: XGrammar, compiled once per schema, one matcher per sequence.

The local provider honours ``response_format`` itself, the way OpenAI does on
its servers: at every decode step the tokens that cannot continue a document
of the schema are masked out of the logits, so the answer parses and conforms
by construction. The work is split by how often it must be done:

* per model (once): XGrammar's ``TokenizerInfo`` and a ``GrammarCompiler``
  (150-500 ms), kept by :class:`GrammarCache` under the model's name;
* per schema (once): the compiled grammar (10-30 ms), kept in a bounded LRU
  keyed by :func:`schema_key`, a hash of the schema that ignores the order of
  keywords but keeps the order of ``properties`` (the grammar writes them in
  that order);
* per sequence: a :class:`GrammarHook` (an ``xgrammar.GrammarMatcher`` and its
  bitmask), one for each of the ``n`` choices;
* per token: fill the bitmask (a few microseconds) and apply it to the logits
  (:func:`apply_bitmask`, tens of microseconds on a CPU).

Output is compact JSON: no free whitespace between tokens (``", "`` and
``": "`` separators), so a small model cannot drift into an endless run of
newlines. Objects without ``additionalProperties`` get no properties beyond
those declared (XGrammar's strict mode); an object that declares no
properties stays open. A sequence ends as soon as the document is complete
(nothing but an end-of-sequence token could follow); an end-of-sequence token
is only possible once it is complete. When ``max_tokens`` runs out first the
choice ends with ``finish_reason="length"`` and an unfinished document.
There is no default bound on string or array lengths: a bound would cut
legitimate answers short without saying so. Bound them in the schema
(``maxLength``, ``maxItems``) where a small model may ramble.

XGrammar does not enforce every JSON Schema keyword (it ignores, for example,
``uniqueItems``, ``not``, ``if``/``then``/``else`` and the length bounds of a
string that also has a ``pattern``). :func:`unenforced_keywords` lists what a
schema asks for that the grammar will not guarantee, so the structured-output
stage validates and re-asks for exactly those; nothing is dropped silently.
A schema that is not valid JSON Schema, or that XGrammar cannot compile, is an
:class:`~thrifty.errors.InvalidRequestError` (HTTP 400) with
``param="response_format"`` naming the problem.

XGrammar is optional (``pip install xgrammar``) and imported on first use.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from thrifty.errors import InvalidRequestError, LocalModelError

if TYPE_CHECKING:
    import torch

    from thrifty.middleware.providers.local.hooks import LocalModelInfo
    from thrifty.types import ResponseFormat

__all__ = [
    "ANY_OBJECT",
    "CompiledSchema",
    "GrammarCache",
    "GrammarHook",
    "UnenforcedKeyword",
    "apply_bitmask",
    "check_schema",
    "grammar_cache",
    "schema_key",
    "schema_of",
    "unenforced_keywords",
]

INSTALL_HINT = "pip install xgrammar"
#: what ``response_format={"type": "json_object"}`` asks for: any JSON object
ANY_OBJECT: dict[str, Any] = {"type": "object"}
#: compiled grammars kept per model (least recently used dropped first)
DEFAULT_MAX_GRAMMARS = 128
#: the formats XGrammar turns into a grammar (checked by tests/contracts/test_grammar.py)
ENFORCED_FORMATS = frozenset(
    {
        "date", "date-time", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri",
        "uri-reference", "uri-template", "uuid", "json-pointer", "relative-json-pointer",
    }
)  # fmt: skip
_PARAM = "response_format"


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as exc:
        raise LocalModelError(
            f"structured output on local models needs the 'xgrammar' package; {INSTALL_HINT}"
        ) from exc
    return xgrammar


# ---------------------------------------------------------------------- the schema


def schema_of(response_format: ResponseFormat) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` asks for; ``None`` for free text.

    ``json_object`` is any JSON object; a ``json_schema`` without a schema is
    the same.
    """
    if response_format.type == "text":
        return None
    if response_format.type == "json_schema" and response_format.schema is not None:
        return response_format.schema
    return ANY_OBJECT


def schema_key(schema: Mapping[str, Any] | bool) -> str:
    """A hash of the schema that keyword order does not change (``properties`` order does)."""
    canonical = json.dumps(_canonical(schema), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# keywords whose value maps names to subschemas, in an order that matters (properties) or not
_ORDERED_MAPS = frozenset({"properties"})
_SCHEMA_MAPS = frozenset({"patternProperties", "$defs", "definitions", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_VALUES = frozenset(
    {
        "items", "additionalProperties", "unevaluatedProperties", "unevaluatedItems", "contains",
        "propertyNames", "not", "if", "then", "else", "additionalItems", "contentSchema",
    }
)  # fmt: skip


def _canonical(schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key in sorted(schema):
        value = schema[key]
        if key in _ORDERED_MAPS and isinstance(value, Mapping):
            value = [[name, _canonical(sub)] for name, sub in value.items()]
        elif key in _SCHEMA_MAPS and isinstance(value, Mapping):
            value = {name: _canonical(value[name]) for name in sorted(value)}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            value = [_canonical(sub) for sub in value]
        elif key in _SCHEMA_VALUES:
            value = _canonical(value)
        out[key] = value  # instance values (const, enum, default...) are kept as given
    return out


def check_schema(schema: Any) -> None:
    """Raise InvalidRequestError (param ``response_format``) unless ``schema`` is a usable JSON Schema.

    Checks it against the JSON Schema 2020-12 meta-schema (with the
    ``jsonschema`` package, when installed) and refuses references that point
    outside the schema (they cannot be resolved offline).
    """
    if not isinstance(schema, Mapping):
        raise InvalidRequestError(
            f"the JSON schema must be an object, got {type(schema).__name__}", param=_PARAM
        )
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(jsonschema.Draft202012Validator.META_SCHEMA).iter_errors(schema)
        )
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path)
            keyword = next((str(p) for p in reversed(error.absolute_path) if isinstance(p, str)), "")
            raise InvalidRequestError(
                f"invalid JSON schema{f' at #/{where}' if where else ''}"
                f"{f' (keyword {keyword!r})' if keyword else ''}: {error.message}",
                param=_PARAM,
            )
    for path, sub in _walk(schema, "#"):
        ref = sub.get("$ref")
        if isinstance(ref, str) and not (ref == "#" or ref.startswith("#/")):
            raise InvalidRequestError(
                f"the JSON schema's $ref {ref!r} at {path} points outside the schema; only local "
                "references ('#/$defs/...') are supported: put the referenced schema under $defs",
                param=_PARAM,
            )


# ---------------------------------------------------------------------- unenforced keywords


@dataclass(frozen=True, slots=True)
class UnenforcedKeyword:
    """A keyword of a schema that the grammar does not guarantee; validate the answer for it."""

    path: str  # a JSON pointer into the schema ("#/properties/tags")
    keyword: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.keyword} ({self.reason})"


# keywords that carry no constraint (annotations, identifiers) or that XGrammar enforces
_ANNOTATIONS = frozenset(
    {
        "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
        "$comment", "$schema", "$id", "$anchor", "$vocabulary", "discriminator",
    }
)  # fmt: skip
_ENFORCED = frozenset(
    {
        "type", "enum", "const", "properties", "required", "additionalProperties",
        "patternProperties", "propertyNames", "minProperties", "maxProperties",
        "unevaluatedProperties", "items", "prefixItems", "additionalItems", "unevaluatedItems",
        "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
        "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "anyOf", "oneOf", "allOf", "$ref",
        "$defs", "definitions", "nullable",
    }
)  # fmt: skip
_NEVER_ENFORCED = {
    "uniqueItems": "the grammar does not stop repeated items",
    "contains": "the grammar does not require a matching item",
    "minContains": "the grammar does not count matching items",
    "maxContains": "the grammar does not count matching items",
    "not": "negated schemas are not turned into a grammar",
    "if": "conditional schemas (if/then/else) are not turned into a grammar",
    "then": "conditional schemas (if/then/else) are not turned into a grammar",
    "else": "conditional schemas (if/then/else) are not turned into a grammar",
    "dependentRequired": "dependencies between properties are not turned into a grammar",
    "dependentSchemas": "dependencies between properties are not turned into a grammar",
    "dependencies": "dependencies between properties are not turned into a grammar",
    "contentEncoding": "string contents are not decoded",
    "contentMediaType": "string contents are not decoded",
    "contentSchema": "string contents are not decoded",
    "$dynamicRef": "dynamic references are not resolved",
    "$dynamicAnchor": "dynamic references are not resolved",
    "$recursiveRef": "recursive references are not resolved",
    "$recursiveAnchor": "recursive references are not resolved",
}


def unenforced_keywords(schema: Mapping[str, Any]) -> list[UnenforcedKeyword]:
    """The keywords of ``schema`` that grammar-constrained decoding does not enforce.

    An answer decoded under the schema's grammar is valid JSON and satisfies
    every other keyword; for these it must be validated. Unknown keywords are
    listed too (JSON Schema ignores them, which is often a typo's doing). The
    list is what XGrammar 0.2.9 does, checked keyword by keyword by the tests.
    """
    found: list[UnenforcedKeyword] = []
    for path, sub in _walk(schema, "#"):
        found.extend(_unenforced_here(path, sub))
    return found


def _unenforced_here(path: str, schema: Mapping[str, Any]) -> Iterator[UnenforcedKeyword]:
    def out(keyword: str, reason: str) -> UnenforcedKeyword:
        return UnenforcedKeyword(path, keyword, reason)

    constraining = [k for k in schema if k not in _ANNOTATIONS and k not in ("$defs", "definitions")]
    for keyword in schema:
        if keyword in _NEVER_ENFORCED:
            yield out(keyword, _NEVER_ENFORCED[keyword])
        elif keyword not in _ENFORCED and keyword not in _ANNOTATIONS and not keyword.startswith("x-"):
            yield out(keyword, "not a JSON Schema keyword the grammar knows; it is ignored")
    if "pattern" in schema or "format" in schema:
        for keyword in ("minLength", "maxLength"):
            if keyword in schema:
                yield out(keyword, "string length bounds are not enforced together with pattern or format")
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt not in ENFORCED_FORMATS:
        yield out("format", f"format {fmt!r} is not turned into a grammar")
    multiple = schema.get("multipleOf")
    if multiple is not None and not (
        schema.get("type") == "integer" and isinstance(multiple, (int, float)) and float(multiple).is_integer()
    ):
        yield out("multipleOf", "multipleOf is only enforced on integers, by an integer")
    one_of = schema.get("oneOf")
    if isinstance(one_of, list) and len(one_of) > 1:
        yield out("oneOf", "the grammar allows any branch (as anyOf); matching exactly one is not checked")
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and (len(all_of) > 1 or len(constraining) > 1):
        yield out("allOf", "only an allOf of one schema with no other keywords beside it is enforced")
    if "$ref" in schema:
        for keyword in constraining:
            if keyword != "$ref":
                yield out(keyword, "keywords beside a $ref are not enforced")
    required = schema.get("required")
    properties = schema.get("properties")
    if isinstance(required, list) and isinstance(properties, Mapping) and not _open_object(schema):
        for name in required:
            if name not in properties:
                yield out("required", f"required property {name!r} is not among the declared properties")


def _open_object(schema: Mapping[str, Any]) -> bool:
    extra = schema.get("additionalProperties")
    return bool(schema.get("patternProperties")) or extra is True or isinstance(extra, Mapping)


def _walk(schema: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every subschema (a mapping) of ``schema`` with its JSON pointer, depth first."""
    if not isinstance(schema, Mapping):
        return
    yield path, schema
    for key, value in schema.items():
        here = f"{path}/{_escape(key)}"
        if key in _ORDERED_MAPS or key in _SCHEMA_MAPS:
            if isinstance(value, Mapping):
                for name, sub in value.items():
                    yield from _walk(sub, f"{here}/{_escape(name)}")
        elif key in _SCHEMA_LISTS:
            if isinstance(value, list):
                for index, sub in enumerate(value):
                    yield from _walk(sub, f"{here}/{index}")
        elif key in _SCHEMA_VALUES:
            yield from _walk(value, here)


def _escape(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


# ---------------------------------------------------------------------- compiling, cached


@dataclass(frozen=True, slots=True, eq=False)
class CompiledSchema:
    """A schema's grammar for one model, ready to make matchers from."""

    key: str
    grammar: Any  # xgrammar.CompiledGrammar
    unenforced: tuple[UnenforcedKeyword, ...]
    compile_seconds: float
    model: _ModelGrammars

    def hook(self, info: LocalModelInfo | None = None) -> GrammarHook:
        """A new hook for one sequence; this object is itself a decode-hook factory."""
        return GrammarHook(self)

    __call__ = hook


@dataclass(slots=True)
class CacheStats:
    compiles: int = 0
    hits: int = 0
    evictions: int = 0


class _ModelGrammars:
    """One model's tokenizer info, compiler and compiled grammars."""

    def __init__(self, info: LocalModelInfo, max_grammars: int) -> None:
        xgr = _xgrammar()
        import numpy as np

        self.name = info.name
        self.vocab_size = info.vocab_size
        self.stop_ids = sorted(info.eos_token_ids)
        started = time.perf_counter()
        self.tokenizer_info = xgr.TokenizerInfo.from_huggingface(
            info.tokenizer, vocab_size=info.vocab_size, stop_token_ids=self.stop_ids
        )
        # thrifty keeps its own bounded cache, keyed by the canonical hash
        self.compiler = xgr.GrammarCompiler(
            self.tokenizer_info, max_threads=max(1, min(4, os.cpu_count() or 1)), cache_enabled=False
        )
        self.prepare_seconds = time.perf_counter() - started
        words = -(-info.vocab_size // 32)
        stop_bits = np.zeros(words * 32, dtype=bool)
        stop_bits[[i for i in self.stop_ids if i < info.vocab_size]] = True
        #: the bitmask words of every token that is not an end-of-sequence token
        self.not_stop = ~np.packbits(stop_bits, bitorder="little").view(np.int32)
        self.max_grammars = max_grammars
        self.grammars: OrderedDict[str, CompiledSchema] = OrderedDict()
        self.lock = threading.Lock()
        self.compile_locks: dict[str, threading.Lock] = {}


class GrammarCache:
    """Tokenizer infos per model and compiled grammars per (model, schema), thread-safe and bounded."""

    def __init__(self, max_grammars: int = DEFAULT_MAX_GRAMMARS) -> None:
        if max_grammars < 1:
            raise ValueError("max_grammars must be at least 1")
        self.max_grammars = max_grammars
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._models: dict[str, _ModelGrammars] = {}
        self._model_locks: dict[str, threading.Lock] = {}

    def model(self, info: LocalModelInfo) -> _ModelGrammars:
        """The model's XGrammar state, built on first use (once, also under concurrent first calls)."""
        with self._lock:
            found = self._models.get(info.name)
            if found is not None:
                return found
            lock = self._model_locks.setdefault(info.name, threading.Lock())
        with lock:
            with self._lock:
                found = self._models.get(info.name)
            if found is None:
                found = _ModelGrammars(info, self.max_grammars)
                with self._lock:
                    self._models[info.name] = found
        return found

    def compile(self, info: LocalModelInfo, schema: Mapping[str, Any]) -> CompiledSchema:
        """The compiled grammar of ``schema`` for the model, compiled on the first request for it.

        Raises InvalidRequestError for a schema that is not valid JSON Schema or
        that XGrammar cannot turn into a grammar.
        """
        model = self.model(info)
        key = schema_key(schema)
        found = self._cached(model, key)
        if found is not None:
            return found
        with model.lock:
            lock = model.compile_locks.setdefault(key, threading.Lock())
        with lock:  # two first requests for one schema compile it once
            found = self._cached(model, key)
            if found is not None:
                return found
            try:
                compiled = self._compile(model, key, schema)
                with model.lock:
                    model.grammars[key] = compiled
                    self.stats.compiles += 1
                    while len(model.grammars) > model.max_grammars:
                        model.grammars.popitem(last=False)
                        self.stats.evictions += 1
            finally:  # after the grammar is in the cache, so a later request finds it there
                with model.lock:
                    model.compile_locks.pop(key, None)
        return compiled

    def _cached(self, model: _ModelGrammars, key: str) -> CompiledSchema | None:
        with model.lock:
            found = model.grammars.get(key)
            if found is not None:
                model.grammars.move_to_end(key)
                self.stats.hits += 1
            return found

    def _compile(self, model: _ModelGrammars, key: str, schema: Mapping[str, Any]) -> CompiledSchema:
        check_schema(schema)
        unenforced = tuple(unenforced_keywords(schema))
        text = json.dumps(schema, ensure_ascii=False)
        started = time.perf_counter()
        try:
            grammar = model.compiler.compile_json_schema(text, any_whitespace=False, strict_mode=True)
        except (RuntimeError, ValueError) as exc:  # XGrammar's conversion errors
            raise InvalidRequestError(
                f"the JSON schema cannot be turned into a grammar: {_xgrammar_message(exc)}", param=_PARAM
            ) from exc
        return CompiledSchema(key, grammar, unenforced, time.perf_counter() - started, model)

    def clear(self) -> None:
        """Forget every model's state and grammar."""
        with self._lock:
            self._models.clear()
            self._model_locks.clear()


_LOG_PREFIX = re.compile(r"^\s*\[[0-9:]+\]\s+\S+:\d+:\s*")


def _xgrammar_message(exc: Exception) -> str:
    """XGrammar's message without its log prefix (time, source file and line)."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return _LOG_PREFIX.sub("", text)


@functools.cache
def grammar_cache() -> GrammarCache:
    """The process's grammar cache, created on first use."""
    return GrammarCache()


# ---------------------------------------------------------------------- per sequence, per token


class GrammarHook:
    """The decode hook of one sequence: masks the logits to what the grammar allows next.

    ``mask_seconds`` and ``steps`` add up the time spent filling and applying
    masks, for benchmarks.
    """

    __slots__ = ("_filled", "bitmask", "mask_seconds", "matcher", "model", "steps")

    def __init__(self, compiled: CompiledSchema) -> None:
        xgr = _xgrammar()
        self.model = compiled.model
        self.matcher = xgr.GrammarMatcher(compiled.grammar)
        self.bitmask = xgr.allocate_token_bitmask(1, self.model.vocab_size)
        self._filled = False
        self.mask_seconds = 0.0
        self.steps = 0

    def process(self, token_ids: list[int], logits: torch.Tensor) -> torch.Tensor | None:
        started = time.perf_counter()
        if not self._filled:
            self.matcher.fill_next_token_bitmask(self.bitmask)
        self._filled = False
        out = apply_bitmask(logits, self.bitmask[0], self.model.vocab_size)
        self.mask_seconds += time.perf_counter() - started
        self.steps += 1
        return out

    def accept(self, token_id: int) -> None:
        if not self.matcher.accept_token(token_id):
            raise LocalModelError(
                f"the grammar rejected token {token_id} that the sampler picked for local model "
                f"{self.model.name!r}; another decode hook must have changed the masked logits"
            )

    def is_finished(self) -> bool:
        """True once the document is complete and nothing but an end-of-sequence token may follow."""
        if self.matcher.is_terminated():
            return True
        if not self.matcher.is_completed():
            return False
        started = time.perf_counter()
        self.matcher.fill_next_token_bitmask(self.bitmask)
        self._filled = True  # the next step's mask, kept for process()
        words = self.bitmask[0].numpy()
        done = not (words & self.model.not_stop).any()
        self.mask_seconds += time.perf_counter() - started
        return done


_OFFSETS: Any = None
#: below this share of bitmask words with any allowed token, a mask is applied by gathering them
_SPARSE_SHARE = 0.25
#: above this share of fully allowed words, XGrammar's kernel (it skips those) is the fastest
_DENSE_SHARE = 0.75


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``logits`` (1-D, CPU float32) with the tokens the bitmask forbids set to -inf.

    Three ways, picked by how many tokens are allowed (measured in
    bench/structured.py): few (after a key, inside a number or an enum): a new
    tensor of -inf with the allowed entries copied in; most (inside a string):
    XGrammar's own CPU kernel, which skips fully allowed words; in between:
    unpack the bits and mask in place. Logits padded past ``vocab_size`` are
    masked too.
    """
    global _OFFSETS
    import numpy as np
    import torch as torch_

    if logits.dtype != torch_.float32 or logits.dim() != 1 or not logits.is_contiguous():
        _xgrammar().apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size)
        return logits
    words = bitmask.numpy()
    size = logits.shape[-1]
    live = np.flatnonzero(words)
    if len(live) < _SPARSE_SHARE * len(words):
        if _OFFSETS is None:
            _OFFSETS = np.arange(32, dtype=np.int64)
        bits = np.unpackbits(words[live].view(np.uint8), bitorder="little").reshape(len(live), 32).view(bool)
        ids = (live[:, None] * 32 + _OFFSETS)[bits]
        ids = ids[ids < min(size, vocab_size)]
        out = np.full(size, -np.inf, dtype=np.float32)
        source = logits.numpy()
        out[ids] = source[ids]
        return torch_.from_numpy(out)
    if size == vocab_size and np.count_nonzero(words == -1) >= _DENSE_SHARE * len(words):
        _xgrammar().apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size)
        return logits
    allowed = np.unpackbits(words.view(np.uint8), bitorder="little", count=min(size, vocab_size)).view(bool)
    target = logits.numpy()
    np.copyto(target[: len(allowed)], -np.inf, where=~allowed)
    if size > len(allowed):
        target[len(allowed) :] = -np.inf
    return logits
