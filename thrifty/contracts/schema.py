"""JSON schemas for structured output: check them, fit them to a provider's strict subset, validate answers.

Three steps, each prepared once per schema and cached by the schema's content:

- :func:`check_schema` rejects a schema that is not valid JSON Schema (or uses a
  remote ``$ref``) with an :class:`~thrifty.errors.InvalidRequestError` that
  names the keyword and its path.
- :func:`to_strict` converts a schema to the subset a provider enforces natively
  (:data:`OPENAI_STRICT`, :data:`ANTHROPIC`): every object gets
  ``additionalProperties: false``; for OpenAI every property is required and the
  originally optional ones become nullable; ``$defs``/``$ref`` are kept;
  keywords the provider does not support are removed from the sent schema and
  listed in :attr:`StrictSchema.removed` (they are enforced by validation, and
  named in the field's description so the model can aim for them). A schema the
  subset cannot express (a root that is not an object, a map with
  ``additionalProperties`` of a schema, a boolean sub-schema) is sent as the
  caller wrote it without strict mode, and validated all the same.
- :func:`validator_for` returns a :class:`SchemaValidator` for the caller's
  ORIGINAL schema: it parses an answer, removes the ``null`` values the strict
  conversion made the model write for omitted optional properties, and lists
  what is wrong in short messages fit for a re-ask.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from thrifty.errors import InvalidRequestError

__all__ = [
    "ANTHROPIC",
    "OPENAI_STRICT",
    "SchemaProfile",
    "SchemaValidator",
    "StrictSchema",
    "check_schema",
    "to_strict",
    "validator_for",
]

SCHEMA_PARAM = "response_format.json_schema.schema"

# keywords that describe but never constrain: dropped from a sent schema without a trace
_ANNOTATIONS = frozenset({
    "$schema", "$id", "$comment", "$anchor", "$dynamicAnchor", "$vocabulary", "default", "examples",
    "example", "deprecated", "readOnly", "writeOnly", "contentMediaType", "contentEncoding",
    "contentSchema", "discriminator", "nullable",
})
# keywords the conversion handles itself
_STRUCTURE = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "anyOf", "oneOf", "allOf",
    "enum", "const", "$ref", "$defs", "definitions", "title", "description",
})


@dataclass(frozen=True, slots=True)
class SchemaProfile:
    """What one provider's native strict mode accepts."""

    name: str
    keywords: frozenset[str]  # constraint keywords kept as they are
    formats: frozenset[str]  # string formats kept
    require_all: bool  # every property must be listed in ``required``
    root_object: bool  # the root must be an object
    any_of_from_one_of: bool = True  # ``oneOf`` sent as ``anyOf`` (a relaxation, validated after)
    min_items: frozenset[int] | None = None  # when set, only these minItems values are kept


#: OpenAI's strict structured outputs (``response_format`` json_schema with ``strict: true``).
#: Kept: ``pattern``, ``format`` (the listed ones), numeric bounds, ``multipleOf``,
#: ``minItems``/``maxItems``. Removed and validated after: string lengths,
#: ``uniqueItems``, ``contains``, ``prefixItems``, object size and name rules,
#: ``not``, ``if``/``then``/``else``, ``dependent*``, ``pattern``/``unevaluated`` properties.
OPENAI_STRICT = SchemaProfile(
    name="openai",
    keywords=frozenset({"pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                        "multipleOf", "minItems", "maxItems"}),
    formats=frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}),
    require_all=True,
    root_object=True,
)

#: Anthropic's structured outputs (``output_config.format``): optional properties
#: allowed; no numeric or string-length bounds; ``minItems`` only 0 or 1.
ANTHROPIC = SchemaProfile(
    name="anthropic",
    keywords=frozenset({"format", "minItems"}),
    formats=frozenset({"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6",
                       "uuid"}),
    require_all=False,
    root_object=False,
    min_items=frozenset({0, 1}),
)


# ---------------------------------------------------------------- checking


def check_schema(schema: Any, *, param: str = SCHEMA_PARAM) -> None:
    """Raise :class:`InvalidRequestError` when ``schema`` is not a usable JSON schema."""
    _check_cached(_key(schema), schema, param)


_last_key: tuple[Any, str] = (None, "")  # the schema object last keyed (held, so its id stays its own)


def _key(schema: Any) -> str:
    """The cache key of a schema: its canonical JSON (one call checks, converts and validates the same object)."""
    global _last_key
    last = _last_key
    if last[0] is schema:
        return last[1]
    key = json.dumps(schema, sort_keys=True, separators=(",", ":"), default=str)
    _last_key = (schema, key)
    return key


_CHECKED: OrderedDict[str, None] = OrderedDict()
_LOCK = threading.Lock()
_CACHE_SIZE = 256


def _check_cached(key: str, schema: Any, param: str) -> None:
    if key in _CHECKED:
        return
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"the JSON schema must be an object, got {type(schema).__name__}", param=param)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for as jsonschema_validator_for

    try:
        cls = jsonschema_validator_for(schema, default=Draft202012Validator)
    except Exception:  # an unknown $schema URI
        cls = Draft202012Validator
    error = best_match(cls(cls.META_SCHEMA).iter_errors(schema))
    if error is not None:
        path = [str(p) for p in error.path]
        keyword = next((p for p in reversed(path) if not p.isdigit()), error.validator)
        raise InvalidRequestError(
            f"invalid JSON schema: keyword {keyword!r} at {_pointer(path)}: {_short(error.message)}",
            param=param)
    _check_refs(schema, schema, [], param)
    with _LOCK:
        _CHECKED[key] = None
        while len(_CHECKED) > _CACHE_SIZE:
            _CHECKED.popitem(last=False)


def _check_refs(node: Any, root: dict[str, Any], path: list[str], param: str) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_refs(item, root, [*path, str(i)], param)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str):
        where = _pointer([*path, "$ref"])
        if not ref.startswith("#"):
            raise InvalidRequestError(
                f"invalid JSON schema: keyword '$ref' at {where}: only local references ('#/$defs/...') "
                f"are supported, got {ref!r}", param=param)
        if _resolve(root, ref) is None:
            raise InvalidRequestError(
                f"invalid JSON schema: keyword '$ref' at {where}: {ref!r} points at nothing in the schema",
                param=param)
    for key, value in node.items():
        if key in ("enum", "const", "examples", "default", "example"):
            continue
        _check_refs(value, root, [*path, key], param)


def _pointer(path: list[str]) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path) if path else "#"


def _resolve(root: dict[str, Any], ref: str) -> Any:
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- strict conversion


@dataclass(frozen=True, slots=True)
class StrictSchema:
    """A schema fitted to a provider's strict subset.

    ``strict``: the provider can enforce ``schema`` natively (otherwise ``schema``
    is the original, to send without strict mode). ``removed``: the keywords
    left out, as ``"keyword at #/json/pointer"``; ``nullable_added``: some optional
    property was made required and nullable (answers get those nulls removed).
    """

    schema: dict[str, Any]
    strict: bool
    removed: tuple[str, ...] = ()
    nullable_added: bool = False


class _NotExpressible(Exception):
    pass


class _Converter:
    def __init__(self, root: dict[str, Any], profile: SchemaProfile) -> None:
        self.root = root
        self.profile = profile
        self.removed: list[str] = []
        self.nullable_added = False

    def convert(self, node: Any, path: list[str], depth: int = 0) -> dict[str, Any]:
        if depth > 64:
            raise _NotExpressible("nested too deeply")
        if not isinstance(node, dict):
            raise _NotExpressible(f"boolean schema at {_pointer(path)}")
        node = dict(node)
        ref = node.get("$ref")
        if ref is not None and any(k not in _ANNOTATIONS and k != "$ref" for k in node):
            # a $ref with siblings: inline the target, the siblings winning
            target = _resolve(self.root, ref)
            if not isinstance(target, dict):
                raise _NotExpressible(f"unresolvable $ref at {_pointer(path)}")
            node.pop("$ref")
            node = {**target, **node}
            return self.convert(node, path, depth + 1)
        all_of = node.pop("allOf", None)
        if all_of is not None:
            node = self._merge_all_of(node, all_of, path)
        out: dict[str, Any] = {}
        hints: list[str] = []
        for defs_key in ("$defs", "definitions"):
            defs = node.get(defs_key)
            if isinstance(defs, dict):
                out[defs_key] = {name: self.convert(sub, [*path, defs_key, name], depth + 1)
                                 for name, sub in defs.items()}
        if ref is not None:
            out["$ref"] = ref
            return out
        for key in ("title", "description"):
            if key in node:
                out[key] = node[key]
        kind = node.get("type")
        if kind is not None:
            out["type"] = list(kind) if isinstance(kind, list) else kind
        for key in ("enum", "const"):
            if key in node:
                out[key] = node[key]
        for key in ("anyOf", "oneOf"):
            variants = node.get(key)
            if isinstance(variants, list):
                if key == "oneOf" and self.profile.any_of_from_one_of:
                    self._remove("oneOf", path, hints, note="sent as anyOf")
                out.setdefault("anyOf", []).extend(
                    self.convert(v, [*path, key, str(i)], depth + 1) for i, v in enumerate(variants))
        types = set(kind) if isinstance(kind, list) else {kind}
        if "object" in types or "properties" in node:
            self._object(node, out, path, hints, depth)
        if "array" in types or "items" in node:
            items = node.get("items")
            if isinstance(items, dict):
                out["items"] = self.convert(items, [*path, "items"], depth + 1)
            elif items is not None:
                raise _NotExpressible(f"'items' of {items!r} at {_pointer(path)}")
        for key, value in node.items():
            if key in _STRUCTURE or key in out or key in _ANNOTATIONS:
                continue
            if key in self.profile.keywords and self._keeps(key, value):
                out[key] = value
            elif key.startswith("x-"):
                continue
            else:
                self._remove(key, path, hints, value=value)
        if not any(k in out for k in ("type", "anyOf", "enum", "const", "$ref")):
            raise _NotExpressible(f"no 'type' at {_pointer(path)}")
        if hints:
            note = "(" + "; ".join(hints) + ")"
            out["description"] = f"{out['description']} {note}" if out.get("description") else note
        return out

    def _keeps(self, key: str, value: Any) -> bool:
        if key == "format":
            return value in self.profile.formats
        if key == "minItems" and self.profile.min_items is not None:
            return value in self.profile.min_items
        return True

    def _remove(self, key: str, path: list[str], hints: list[str], *, value: Any = None, note: str = "") -> None:
        self.removed.append(f"{key} at {_pointer(path)}")
        if note:
            return
        if isinstance(value, (str, int, float, bool)) or value is None:
            hints.append(f"{key}: {json.dumps(value)}")
        else:
            hints.append(f"{key}: {_short(json.dumps(value, separators=(',', ':')), 80)}")

    def _merge_all_of(self, node: dict[str, Any], all_of: Any, path: list[str]) -> dict[str, Any]:
        merged = dict(node)
        for i, part in enumerate(all_of if isinstance(all_of, list) else []):
            if isinstance(part, dict) and "$ref" in part and len(part) == 1:
                part = _resolve(self.root, part["$ref"])
            if not isinstance(part, dict):
                raise _NotExpressible(f"allOf entry at {_pointer([*path, 'allOf', str(i)])}")
            for key, value in part.items():
                if key == "properties" and isinstance(merged.get("properties"), dict):
                    merged["properties"] = {**merged["properties"], **value}
                elif key == "required" and isinstance(merged.get("required"), list):
                    merged["required"] = [*merged["required"], *(r for r in value if r not in merged["required"])]
                elif key in merged and merged[key] != value and key not in ("title", "description"):
                    raise _NotExpressible(f"allOf entries disagree on {key!r} at {_pointer(path)}")
                else:
                    merged.setdefault(key, value)
        return merged

    def _object(self, node: dict[str, Any], out: dict[str, Any], path: list[str], hints: list[str],
                depth: int) -> None:
        extra = node.get("additionalProperties")
        if extra not in (None, False):
            raise _NotExpressible(f"additionalProperties at {_pointer(path)} (a map)")
        out["additionalProperties"] = False
        props = node.get("properties")
        if not isinstance(props, dict):
            return
        required = [r for r in node.get("required") or [] if r in props]
        converted = {}
        for name, sub in props.items():
            schema = self.convert(sub, [*path, "properties", name], depth + 1)
            if self.profile.require_all and name not in required and not _allows_null(sub, self.root):
                schema = _nullable(schema)
                self.nullable_added = True
            converted[name] = schema
        out["properties"] = converted
        if self.profile.require_all:
            out["required"] = list(props)
        elif "required" in node:
            out["required"] = required


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` that also allows ``null``."""
    if "$ref" in schema or "const" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    out = dict(schema)
    if "anyOf" in out:
        out["anyOf"] = [*out["anyOf"], {"type": "null"}]
        return out
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    elif isinstance(kind, list):
        out["type"] = [*kind, "null"]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def _allows_null(node: Any, root: dict[str, Any], depth: int = 0) -> bool:
    if not isinstance(node, dict) or depth > 32:
        return node is True
    if "$ref" in node:
        target = _resolve(root, node["$ref"])
        if not _allows_null(target, root, depth + 1):
            return False
    kind = node.get("type")
    if kind is not None and "null" not in (kind if isinstance(kind, list) else [kind]):
        return False
    if "enum" in node and None not in node["enum"]:
        return False
    if "const" in node and node["const"] is not None:
        return False
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and not any(_allows_null(v, root, depth + 1) for v in node[key]):
            return False
    if isinstance(node.get("allOf"), list) and not all(_allows_null(v, root, depth + 1) for v in node["allOf"]):
        return False
    return kind is not None or any(k in node for k in ("$ref", "anyOf", "oneOf", "enum", "const", "allOf"))


_CONVERTED: OrderedDict[tuple[str, str], StrictSchema] = OrderedDict()


def to_strict(schema: dict[str, Any], profile: SchemaProfile = OPENAI_STRICT) -> StrictSchema:
    """``schema`` fitted to ``profile`` (cached by content; do not mutate the result)."""
    key = (profile.name, _key(schema))
    hit = _CONVERTED.get(key)
    if hit is not None:
        return hit
    original = copy.deepcopy(schema)
    converter = _Converter(original, profile)
    try:
        root = _resolve(original, original["$ref"]) if isinstance(original.get("$ref"), str) else original
        if profile.root_object and (not isinstance(root, dict) or root.get("type") != "object"):
            raise _NotExpressible("the root is not an object")
        converted = converter.convert(original, [])
        result = StrictSchema(converted, True, tuple(converter.removed), converter.nullable_added)
    except _NotExpressible as exc:
        result = StrictSchema(original, False, (f"strict mode: {exc}",))
    with _LOCK:
        _CONVERTED[key] = result
        while len(_CONVERTED) > _CACHE_SIZE:
            _CONVERTED.popitem(last=False)
    return result


# ---------------------------------------------------------------- validation


class SchemaValidator:
    """Validates answers against one (original) schema; build with :func:`validator_for`."""

    __slots__ = ("schema", "_subs", "_validator")

    def __init__(self, schema: dict[str, Any]) -> None:
        from jsonschema import Draft202012Validator, FormatChecker
        from jsonschema.validators import validator_for as jsonschema_validator_for

        try:
            cls = jsonschema_validator_for(schema, default=Draft202012Validator)
        except Exception:
            cls = Draft202012Validator
        self.schema = schema
        self._validator = cls(schema, format_checker=FormatChecker())
        self._subs: dict[int, Any] = {}  # validators of sub-schemas (anyOf variants), by id in ``schema``

    def errors(self, value: Any, limit: int = 5) -> list[str]:
        """What is wrong with ``value``, most relevant first, at most ``limit`` messages."""
        from jsonschema.exceptions import relevance

        found = sorted(self._validator.iter_errors(value), key=relevance)
        return [f"at {e.json_path}: {_short(e.message)}" for e in found[:limit]]

    def restore(self, value: Any) -> Any:
        """``value`` without the nulls written for optional properties the caller's schema does not allow null in."""
        return _restore(value, self.schema, self.schema, self, 0)

    def _sub(self, node: dict[str, Any]) -> Any:
        sub = self._subs.get(id(node))
        if sub is None:
            sub = self._subs[id(node)] = self._validator.evolve(schema=node)
        return sub


def _restore(value: Any, node: Any, root: dict[str, Any], validator: SchemaValidator, depth: int) -> Any:
    if not isinstance(node, dict) or depth > 64:
        return value
    if "$ref" in node:
        target = _resolve(root, node["$ref"])
        value = _restore(value, target, root, validator, depth + 1)
    for part in node.get("allOf") or []:
        value = _restore(value, part, root, validator, depth + 1)
    for key in ("anyOf", "oneOf"):
        variants = node.get(key)
        if isinstance(variants, list):
            for variant in variants:
                candidate = _restore(value, variant, root, validator, depth + 1)
                if isinstance(variant, dict) and validator._sub(variant).is_valid(candidate):
                    return candidate
    if isinstance(value, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            required = set(node.get("required") or ())
            out = {}
            for name, item in value.items():
                sub = props.get(name)
                if item is None and sub is not None and name not in required and not _allows_null(sub, root):
                    continue
                out[name] = _restore(item, sub, root, validator, depth + 1) if sub is not None else item
            value = out
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        value = [_restore(item, node["items"], root, validator, depth + 1) for item in value]
    return value


_VALIDATORS: OrderedDict[str, SchemaValidator] = OrderedDict()


def validator_for(schema: dict[str, Any]) -> SchemaValidator:
    """A prepared validator for ``schema``, cached by content."""
    key = _key(schema)
    hit = _VALIDATORS.get(key)
    if hit is not None:
        return hit
    validator = SchemaValidator(copy.deepcopy(schema))
    with _LOCK:
        _VALIDATORS[key] = validator
        while len(_VALIDATORS) > _CACHE_SIZE:
            _VALIDATORS.popitem(last=False)
    return validator
