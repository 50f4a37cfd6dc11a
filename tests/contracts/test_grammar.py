"""The grammar side of structured output: which keywords XGrammar enforces, the schema checks, the
compile cache, the bitmask and the per-sequence hook. Runs on a tiny byte-level tokenizer (every byte
one token) built in memory, so no model is loaded."""

from __future__ import annotations

import json
import sys
import threading

import numpy as np
import pytest
import torch

from thrifty.contracts.grammar import (
    ANY_OBJECT,
    GrammarCache,
    GrammarHook,
    apply_bitmask,
    check_schema,
    schema_key,
    schema_of,
    unenforced_keywords,
)
from thrifty.errors import InvalidRequestError, LocalModelError
from thrifty.middleware.providers.local._text import _bytes_to_unicode
from thrifty.middleware.providers.local.hooks import LocalModelInfo
from thrifty.types import ResponseFormat

xgr = pytest.importorskip("xgrammar")

EOS = 256
VOCAB = 320  # logits padded past the tokenizer's 257 tokens, as models do


@pytest.fixture(scope="module")
def info() -> LocalModelInfo:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for char, byte in _bytes_to_unicode().items()}
    vocab["</s>"] = EOS
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    return LocalModelInfo("tiny-bytes", hf, VOCAB, frozenset({EOS}), 4096)


@pytest.fixture
def cache() -> GrammarCache:
    return GrammarCache(max_grammars=4)


def matches(cache: GrammarCache, info: LocalModelInfo, schema: dict, text: str) -> bool:
    matcher = xgr.GrammarMatcher(cache.compile(info, schema).grammar)
    return matcher.accept_string(text) and matcher.is_completed()


# (schema, an instance that breaks the keyword, the keyword listed as unenforced or None if enforced)
CASES = {
    "minLength": ({"type": "string", "minLength": 3}, '"ab"', None),
    "maxLength": ({"type": "string", "maxLength": 3}, '"abcd"', None),
    "pattern": ({"type": "string", "pattern": "^[0-9]+$"}, '"ab"', None),
    "format-email": ({"type": "string", "format": "email"}, '"ab"', None),
    "format-date": ({"type": "string", "format": "date"}, '"2024-13"', None),
    "format-date-time": ({"type": "string", "format": "date-time"}, '"ab"', None),
    "format-time": ({"type": "string", "format": "time"}, '"ab"', None),
    "format-duration": ({"type": "string", "format": "duration"}, '"zz"', None),
    "format-uuid": ({"type": "string", "format": "uuid"}, '"ab"', None),
    "format-uri": ({"type": "string", "format": "uri"}, '"a b"', None),
    "format-uri-reference": ({"type": "string", "format": "uri-reference"}, '"a b"', None),
    "format-uri-template": ({"type": "string", "format": "uri-template"}, '"{"', None),
    "format-ipv4": ({"type": "string", "format": "ipv4"}, '"ab"', None),
    "format-ipv6": ({"type": "string", "format": "ipv6"}, '"zz"', None),
    "format-hostname": ({"type": "string", "format": "hostname"}, '"a b"', None),
    "format-json-pointer": ({"type": "string", "format": "json-pointer"}, '"ab"', None),
    "format-relative-json-pointer": ({"type": "string", "format": "relative-json-pointer"}, '"ab"', None),
    "format-iri": ({"type": "string", "format": "iri"}, '"a b"', "format"),
    "format-idn-email": ({"type": "string", "format": "idn-email"}, '"ab"', "format"),
    "format-unknown": ({"type": "string", "format": "colour"}, '"ab"', "format"),
    "pattern+maxLength": ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}, '"abcdef"', "maxLength"),
    "format+minLength": ({"type": "string", "format": "email", "minLength": 30}, '"a@b.co"', "minLength"),
    "minimum": ({"type": "integer", "minimum": 5}, "3", None),
    "maximum": ({"type": "integer", "maximum": 100}, "101", None),
    "exclusiveMinimum": ({"type": "integer", "exclusiveMinimum": 5}, "5", None),
    "exclusiveMaximum": ({"type": "number", "exclusiveMaximum": 1}, "1", None),
    "number-range": ({"type": "number", "minimum": 0.5, "maximum": 1.5}, "2.5", None),
    "multipleOf-integer": ({"type": "integer", "multipleOf": 5}, "7", None),
    "multipleOf-number": ({"type": "number", "multipleOf": 0.5}, "0.3", "multipleOf"),
    "minItems": ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, "[1]", None),
    "maxItems": ({"type": "array", "items": {"type": "integer"}, "maxItems": 2}, "[1, 2, 3]", None),
    "prefixItems": ({"type": "array", "prefixItems": [{"type": "string"}], "items": False}, "[1]", None),
    "uniqueItems": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1, 1]", "uniqueItems"),
    "contains": ({"type": "array", "items": {"type": "integer"}, "contains": {"const": 3}}, "[1]", "contains"),
    "minProperties": (
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "minProperties": 1},
        "{}", None,
    ),
    "maxProperties": (
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "maxProperties": 1},
        '{"a": 1, "b": 2}', None,
    ),
    "required": ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, "{}", None),
    "additionalProperties": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        '{"a": 1, "b": 2}', None,
    ),
    "additionalProperties-schema": ({"type": "object", "additionalProperties": {"type": "integer"}}, '{"b": "s"}', None),
    "patternProperties": ({"type": "object", "patternProperties": {"^x": {"type": "integer"}}}, '{"x1": "s"}', None),
    "propertyNames": (
        {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}, "additionalProperties": True}, '{"A1": 1}', None,
    ),
    "const": ({"const": "x"}, '"y"', None),
    "enum": ({"enum": ["x", "y"]}, '"z"', None),
    "anyOf": ({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, '"s"', None),
    "oneOf": ({"oneOf": [{"type": "integer", "minimum": 0}, {"type": "integer", "maximum": 10}]}, "5", "oneOf"),
    "allOf": ({"allOf": [{"type": "integer"}, {"minimum": 3}]}, "1", "allOf"),
    "allOf-single": ({"allOf": [{"type": "integer", "minimum": 3}]}, "1", None),
    "$ref": (
        {"$defs": {"A": {"type": "integer"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/A"}},
         "required": ["a"]},
        '{"a": "s"}', None,
    ),
    "$ref-sibling": ({"$defs": {"A": {"type": "integer"}}, "$ref": "#/$defs/A", "minimum": 3}, "1", "minimum"),
    "if": (
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
         "if": {"properties": {"a": {"const": 1}}}, "then": {"required": ["b"]}},
        '{"a": 1}', "if",
    ),
    "not": ({"type": "integer", "not": {"const": 3}}, "3", "not"),
    "dependentRequired": (
        {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
         "dependentRequired": {"a": ["b"]}},
        '{"a": 1}', "dependentRequired",
    ),
    "contentEncoding": ({"type": "string", "contentEncoding": "base64"}, '"@@"', "contentEncoding"),
    "required-undeclared": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["b"]}, '{"a": 1}', "required",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_the_unenforced_list_matches_what_xgrammar_does(name, info, cache):
    schema, bad, unenforced = CASES[name]
    listed = {u.keyword for u in unenforced_keywords(schema)}
    accepted = matches(cache, info, schema, bad)
    if unenforced is None:
        assert not accepted, f"{bad} passed the grammar of {schema}"
        assert not listed, listed
    else:
        assert accepted, f"xgrammar now enforces {unenforced}: take it off the unenforced list"
        assert unenforced in listed, listed


def test_unenforced_keywords_name_their_path():
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 9},
                     "uniqueItems": True},
            "a/b": {"not": {"type": "null"}},
        },
        "$defs": {"Code": {"type": "string", "format": "iri"}},
        "minLenght": 3,
    }
    found = {(u.path, u.keyword) for u in unenforced_keywords(schema)}
    assert found == {
        ("#/properties/tags", "uniqueItems"),
        ("#/properties/tags/items", "maxLength"),
        ("#/properties/a~1b", "not"),
        ("#/$defs/Code", "format"),
        ("#", "minLenght"),  # a typo: JSON Schema would silently ignore it
    }
    assert all(str(u).startswith("#") and u.reason for u in unenforced_keywords(schema))
    assert unenforced_keywords({"type": "object", "title": "T", "description": "d", "x-note": 1}) == []


def test_compiled_schema_carries_its_unenforced_keywords(info, cache):
    compiled = cache.compile(info, CASES["uniqueItems"][0])
    assert [u.keyword for u in compiled.unenforced] == ["uniqueItems"]


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "strin"}, "'type'"),
        ({"type": "object", "properties": {"a": {"minLength": -1}}}, "#/properties/a/minLength"),
        ({"type": "array", "items": [{"type": "string"}]}, "#/items"),
        ({"type": "array", "items": False, "minItems": 2}, "minItems"),
        ({"$ref": "https://example.com/person.json"}, "points outside the schema"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}, "required": ["a"]}, "Missing"),
        (False, "must be an object"),
    ],
)
def test_invalid_schemas_are_400s_that_name_the_problem(schema, says, info, cache):
    with pytest.raises(InvalidRequestError) as caught:
        cache.compile(info, schema)
    assert caught.value.param == "response_format" and caught.value.status_code == 400
    assert says in caught.value.message
    assert ".cc:" not in caught.value.message  # XGrammar's log prefix is not part of the message


def test_check_schema_accepts_good_schemas():
    check_schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"type": "integer"}}})
    check_schema({"$ref": "#"})


def test_schema_key_ignores_keyword_order_but_not_property_order():
    a = {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer", "minimum": 1}, "y": {}}}
    b = {"properties": {"x": {"minimum": 1, "type": "integer"}, "y": {}}, "required": ["x"], "type": "object"}
    c = {"type": "object", "required": ["x"], "properties": {"y": {}, "x": {"type": "integer", "minimum": 1}}}
    assert schema_key(a) == schema_key(b) != schema_key(c)
    assert schema_key({"enum": ["a", "b"]}) != schema_key({"enum": ["b", "a"]})


def test_schema_of_response_formats():
    schema = {"type": "integer"}
    assert schema_of(ResponseFormat(type="json_schema", schema=schema, name="n")) is schema
    assert schema_of(ResponseFormat(type="json_object")) == ANY_OBJECT
    assert schema_of(ResponseFormat(type="json_schema", name="n")) == ANY_OBJECT
    assert schema_of(ResponseFormat(type="text")) is None


def test_each_schema_compiles_once_and_the_cache_is_bounded(info, cache):
    schemas = [{"type": "integer", "minimum": i} for i in range(6)]
    first = cache.compile(info, schemas[0])
    assert cache.compile(info, dict(reversed(list(schemas[0].items())))) is first  # same schema, other order
    assert (cache.stats.compiles, cache.stats.hits) == (1, 1)
    for schema in schemas[1:]:
        cache.compile(info, schema)
    assert cache.stats.compiles == 6 and cache.stats.evictions == 2  # max_grammars=4
    assert cache.compile(info, schemas[-1]) is not None and cache.stats.compiles == 6
    cache.compile(info, schemas[0])  # evicted: compiled again
    assert cache.stats.compiles == 7
    assert cache.model(info) is cache.model(info)  # the tokenizer info is built once per model


def test_concurrent_first_requests_compile_once(info, cache):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    barrier = threading.Barrier(6)
    results = []

    def go():
        barrier.wait()
        results.append(cache.compile(info, schema))

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1 and cache.stats.compiles == 1


def test_apply_bitmask_equals_xgrammars_own(info, cache):
    compiled = cache.compile(info, {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}},
                                    "required": ["n", "s"]})
    matcher = xgr.GrammarMatcher(compiled.grammar)
    bitmask = xgr.allocate_token_bitmask(1, VOCAB)
    seen = set()
    for prefix in ["", '{"n": ', '{"n": 1', '{"n": 12, "s": "ab']:  # few allowed ... almost all allowed
        matcher.reset()
        assert matcher.accept_string(prefix) or not prefix
        matcher.fill_next_token_bitmask(bitmask)
        for size in (VOCAB, VOCAB + 7):  # logits padded past the bitmask's vocabulary too
            logits = torch.randn(size)
            expected = logits.clone()
            xgr.apply_token_bitmask_inplace(expected[:VOCAB], bitmask[0], vocab_size=VOCAB)
            expected[VOCAB:] = float("-inf")
            got = apply_bitmask(logits.clone(), bitmask[0], VOCAB)
            assert torch.equal(got, expected), prefix
        seen.add(int(torch.isfinite(got).sum()))
    assert min(seen) <= 2 and max(seen) > 100
    # a half-allowed mask takes the in-between path
    half = torch.tensor(np.tile(np.array([0x0F0F0F0F], dtype=np.int32), VOCAB // 32))
    logits = torch.randn(VOCAB)
    expected = logits.clone()
    xgr.apply_token_bitmask_inplace(expected, half, vocab_size=VOCAB)
    assert torch.equal(apply_bitmask(logits, half, VOCAB), expected)


def drive(hook: GrammarHook, tokenizer, text: str) -> bool:
    """Feed ``text`` byte by byte as if sampled; True when the hook finished right after its last byte."""
    for step, token in enumerate(tokenizer.encode(text)):
        logits = hook.process([], torch.zeros(VOCAB))
        logits = torch.zeros(VOCAB) if logits is None else logits
        assert torch.isfinite(logits[token]), f"byte {step} of {text!r} was masked"
        assert not torch.isfinite(logits[EOS]), "EOS allowed mid-document"
        hook.accept(token)
        if hook.is_finished():
            return step == len(text) - 1
    return False


def test_the_hook_masks_and_finishes_when_the_document_is_complete(info, cache):
    compiled = cache.compile(info, {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    hook = compiled(info)  # a CompiledSchema is the decode-hook factory
    assert isinstance(hook, GrammarHook)
    assert drive(hook, info.tokenizer, '{"n": 42}')
    assert hook.steps == 9 and hook.mask_seconds > 0
    # a top-level integer is complete after each digit but may go on: it never ends by itself
    number = cache.compile(info, {"type": "integer"})(info)
    for token in info.tokenizer.encode("12"):
        number.process([], torch.zeros(VOCAB))
        number.accept(token)
        assert not number.is_finished()
    allowed = number.process([], torch.zeros(VOCAB))
    assert torch.isfinite(allowed[EOS]) and torch.isfinite(allowed[ord("3")])
    number.accept(EOS)
    assert number.is_finished()


def test_a_token_outside_the_grammar_is_an_error(info, cache):
    hook = cache.compile(info, ANY_OBJECT)(info)
    hook.process([], torch.zeros(VOCAB))
    with pytest.raises(LocalModelError, match="rejected token"):
        hook.accept(ord("x"))


def test_missing_xgrammar_says_how_to_install(monkeypatch, info):
    monkeypatch.setitem(sys.modules, "xgrammar", None)
    with pytest.raises(LocalModelError, match="pip install xgrammar"):
        GrammarCache().compile(info, {"type": "integer"})


def test_json_object_grammar_allows_any_object(info, cache):
    assert matches(cache, info, ANY_OBJECT, json.dumps({"a": [1, {"b": None}], "c": "d"}))
    assert not matches(cache, info, ANY_OBJECT, "[1]")
