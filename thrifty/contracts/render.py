"""Render a contract into system-prompt text.

Four styles, registered by name (:func:`register_renderer` adds more):

``thrifty``
    the default, and what the contracts stage sends: one labelled line or
    list per 5C part, in a fixed order, in as few tokens as stay unambiguous::

        role: a support triage agent for Acme Billing; for: the support leads
        goal: route each ticket to one queue with a priority; why: a misrouted ticket waits a day
        rules:
        - never promise refunds
        - must not contain: "guarantee"
        - length: max 60 words
        if:
        - the input is not a support ticket -> answer exactly: {"queue":"other","priority":4}
        output: JSON {queue:"billing"|"bug"|"other", priority:int 1..4}; max 120 tokens; tone: neutral

    ``role`` is the Character, ``goal`` the Cause, ``rules`` the Constraint,
    ``if`` the Contingency and ``output`` the Calibration. A JSON schema is
    written as a type sketch (``{name:str<=80, tags?:[str] max 5}``: ``?``
    marks an optional property, ``a|b`` a choice, ``1..4`` a range); a schema
    part the sketch cannot say is written as compact JSON.
``5c``
    the same content as 5C prose: a labelled paragraph per part, in sentences.
``xml``
    the same content as an XML-tag DSL.
``plain``
    the same content as one unlabelled paragraph of prose.

Every renderer is deterministic (the same contract gives the same bytes),
which keeps the rendered contract a stable prefix for provider prompt caching.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from thrifty.contracts.contract import Contract, did_you_mean, output_formats

__all__ = ["register_renderer", "render", "renderers", "schema_sketch"]

Renderer = Callable[[Contract], str]
_RENDERERS: dict[str, Renderer] = {}


def register_renderer(name: str, renderer: Renderer) -> None:
    """Add a rendering style (it must be deterministic)."""
    _RENDERERS[name] = renderer


def renderers() -> list[str]:
    return sorted(_RENDERERS)


def render(contract: Contract, style: str = "thrifty") -> str:
    """``contract`` as prompt text in ``style`` (``thrifty``, ``5c``, ``xml``, ``plain``)."""
    renderer = _RENDERERS.get(style)
    if renderer is None:
        raise ValueError(f"unknown rendering style {style!r}{did_you_mean(style, _RENDERERS)}; "
                         f"known: {', '.join(renderers())}")
    return renderer(contract)


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _length(low: int | None, high: int | None, unit: str) -> str:
    if low is not None and high is not None:
        return f"{low}-{high} {unit}"
    return f"max {high} {unit}" if high is not None else f"min {low} {unit}"


def _lengths(contract: Contract) -> list[tuple[int | None, int | None, str]]:
    c = contract.constraint
    out = []
    if c.min_words is not None or c.max_words is not None:
        out.append((c.min_words, c.max_words, "words"))
    if c.min_chars is not None or c.max_chars is not None:
        out.append((c.min_chars, c.max_chars, "characters"))
    return out


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?", ":")) else text + "."


# ---------------------------------------------------------------- the schema sketch

_IGNORED = {"title", "$schema", "$id", "$comment", "examples", "default", "$defs", "definitions",
            "additionalProperties", "description"}
_TYPES = {"string": "str", "integer": "int", "number": "num", "boolean": "bool", "null": "null",
          "object": "object", "array": "array"}


def schema_sketch(schema: dict[str, Any]) -> str:
    """A terse type sketch of a JSON schema; parts it cannot say exactly are compact JSON."""
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return _sketch(schema, defs, ())


def _sketch(schema: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> str:
    if not isinstance(schema, dict):
        return _compact(schema)
    text = _sketch_bare(schema, defs, seen)
    description = schema.get("description")
    if isinstance(description, str) and description:
        text += f" ({description})"
    return text


def _sketch_bare(schema: dict[str, Any], defs: dict[str, Any], seen: tuple[str, ...]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str) and len(schema.keys() - _IGNORED) == 1:
        name = ref.rsplit("/", 1)[-1]
        if ref.startswith(("#/$defs/", "#/definitions/")) and name in defs and name not in seen:
            return _sketch(defs[name], defs, (*seen, name))
        return _compact(schema)
    if "const" in schema:
        return _compact(schema["const"])
    if "enum" in schema and isinstance(schema["enum"], list):
        return "|".join(_compact(v) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and len(schema.keys() - _IGNORED) == 1:
            return "|".join(_sketch(s, defs, seen) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):  # each type with the keywords that apply to it: "str<=80|null"
        applicable = [_KNOWN_BY_TYPE.get(k) for k in kind if isinstance(k, str)]
        if len(applicable) != len(kind) or None in applicable:
            return _compact(schema)
        if schema.keys() - _IGNORED - {"type"} - set().union(*applicable):
            return _compact(schema)
        return "|".join(_sketch_bare({"type": k, **{key: v for key, v in schema.items() if key in known}},
                                     defs, seen) for k, known in zip(kind, applicable, strict=True))
    known = _KNOWN_BY_TYPE.get(kind) if isinstance(kind, str) else None
    if known is None or not (schema.keys() - _IGNORED - {"type"}) <= known:
        return _compact(schema)
    if kind == "object":
        return _sketch_object(schema, defs, seen)
    if kind == "array":
        items = schema.get("items")
        inner = _sketch(items, defs, seen) if isinstance(items, dict) else "any"
        return f"[{inner}]" + _range(schema.get("minItems"), schema.get("maxItems"), words=True)
    text = _TYPES[kind]
    if kind == "string":
        if "format" in schema:
            text += f"({schema['format']})"
        text += _range(schema.get("minLength"), schema.get("maxLength"))
        if "pattern" in schema:
            text += f" /{schema['pattern']}/"
    elif kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if "exclusiveMinimum" in schema or "exclusiveMaximum" in schema:
            if "exclusiveMinimum" in schema:
                text += f">{schema['exclusiveMinimum']}"
            if "exclusiveMaximum" in schema:
                text += f"<{schema['exclusiveMaximum']}"
        else:
            text += _range(low, high, numeric=True)
    return text


_KNOWN_BY_TYPE: dict[str, set[str]] = {
    "object": {"properties", "required"},
    "array": {"items", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "boolean": set(),
    "null": set(),
}


def _range(low: Any, high: Any, *, words: bool = False, numeric: bool = False) -> str:
    """`` 1..4``; ``<=200`` / ``>=0`` (values, lengths); `` max 5`` / `` min 1`` (``words``: item counts)."""
    if low is not None and high is not None:
        return f" {low}..{high}"
    if high is not None:
        return f" max {high}" if words else f"<={high}"
    if low is not None and (numeric or low):
        return f" min {low}" if words else f">={low}"
    return ""


def _sketch_object(schema: dict[str, Any], defs: dict[str, Any], seen: tuple[str, ...]) -> str:
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return "object"
    required = set(schema.get("required") or ())
    fields = []
    for key, sub in properties.items():
        mark = "" if key in required else "?"
        fields.append(f"{key}{mark}:{_sketch(sub, defs, seen)}")
    return "{" + ", ".join(fields) + "}"


# ---------------------------------------------------------------- thrifty


def _unless_if(rule: str) -> str:
    # under the "if:" label a rule's own leading "if" says nothing more
    return rule[3:].lstrip() if rule[:3].lower() == "if " else rule


def _render_thrifty(contract: Contract) -> str:
    ch, ca, co, cg, cb = (contract.character, contract.cause, contract.constraint, contract.contingency,
                          contract.calibration)
    lines = [f"role: {ch.role}" + (f"; for: {ch.audience}" if ch.audience else "")]
    lines.append(f"goal: {ca.goal}" + (f"; why: {ca.why}" if ca.why else ""))
    rules = list(co.rules)
    if co.require:
        rules.append("must contain: " + ", ".join(_q(t) for t in co.require))
    if co.forbid:
        rules.append("must not contain: " + ", ".join(_q(t) for t in co.forbid))
    rules += [f"must match: /{p}/" for p in co.patterns]
    rules += [f"must not match: /{p}/" for p in co.forbid_patterns]
    lengths = _lengths(contract)
    if lengths:
        rules.append("length: " + "; ".join(_length(*x) for x in lengths))
    lines.append("rules:")
    lines += [f"- {r}" for r in rules]
    lines.append("if:")
    lines += [f"- {_unless_if(r)}" for r in cg.rules]
    if cg.fallback_output is not None:
        lines.append(f"- {cg.when} -> answer exactly: {cg.fallback_output}")
    out = output_formats()[cb.format]
    if cb.json_schema is not None:
        out += " " + schema_sketch(cb.json_schema)
    parts = [out]
    if cb.max_tokens is not None:
        parts.append(f"max {cb.max_tokens} tokens")
    if cb.tone:
        parts.append(f"tone: {cb.tone}")
    parts += cb.style
    lines.append("output: " + "; ".join(parts))
    return "\n".join(lines)


# ---------------------------------------------------------------- 5C prose


def _constraint_sentences(contract: Contract) -> list[str]:
    co = contract.constraint
    out = [_sentence(r) for r in co.rules]
    out += [f"Your response must include the term {_q(t)}." for t in co.require]
    out += [f"Your response must not include the term {_q(t)}." for t in co.forbid]
    out += [f"Your response must match the regular expression {_q(p)}." for p in co.patterns]
    out += [f"Your response must not match the regular expression {_q(p)}." for p in co.forbid_patterns]
    for low, high, unit in _lengths(contract):
        if low is not None and high is not None:
            out.append(f"Your response must be between {low} and {high} {unit} long.")
        elif high is not None:
            out.append(f"Your response must be at most {high} {unit} long.")
        else:
            out.append(f"Your response must be at least {low} {unit} long.")
    return out


def _contingency_sentences(contract: Contract) -> list[str]:
    cg = contract.contingency
    out = [_sentence(r) for r in cg.rules]
    if cg.fallback_output is not None:
        out.append(f"If {cg.when}, respond with exactly the following and nothing else: {cg.fallback_output}")
    return out


def _calibration_sentences(contract: Contract) -> list[str]:
    cb = contract.calibration
    out = [f"Format your response as {output_formats()[cb.format]}."]
    if cb.json_schema is not None:
        out.append(f"Your response must be a JSON value that conforms to this JSON schema: {_json(cb.json_schema)}")
    if cb.max_tokens is not None:
        out.append(f"Keep your response under {cb.max_tokens} tokens.")
    if cb.tone:
        out.append(f"Use this tone: {cb.tone}.")
    out += [_sentence(s) for s in cb.style]
    return out


def _render_5c(contract: Contract) -> str:
    ch, ca = contract.character, contract.cause
    character = f"You are {ch.role}." + (f" Your audience is {ch.audience}." if ch.audience else "")
    cause = f"Your goal is to {ca.goal}." + (f" This matters because {ca.why}." if ca.why else "")
    return "\n\n".join([
        f"Character: {character}",
        f"Cause: {cause}",
        "Constraint: " + " ".join(_constraint_sentences(contract)),
        "Contingency: " + " ".join(_contingency_sentences(contract)),
        "Calibration: " + " ".join(_calibration_sentences(contract)),
    ])


# ---------------------------------------------------------------- plain prose


def _render_plain(contract: Contract) -> str:
    ch, ca = contract.character, contract.cause
    parts = [f"You are {ch.role}" + (f", writing for {ch.audience}." if ch.audience else ".")]
    parts.append(f"Your goal is to {ca.goal}" + (f", because {ca.why}." if ca.why else "."))
    parts += _constraint_sentences(contract)
    parts += _contingency_sentences(contract)
    parts += _calibration_sentences(contract)
    return " ".join(parts)


# ---------------------------------------------------------------- XML DSL


def _tag(name: str, text: str, indent: str) -> str:
    return f"{indent}<{name}>{escape(text)}</{name}>"


def _render_xml(contract: Contract) -> str:
    ch, ca, co, cg, cb = (contract.character, contract.cause, contract.constraint, contract.contingency,
                          contract.calibration)
    i1, i2 = "  ", "    "
    lines = ["<contract>", f"{i1}<character>", _tag("role", ch.role, i2)]
    if ch.audience:
        lines.append(_tag("audience", ch.audience, i2))
    lines += [f"{i1}</character>", f"{i1}<cause>", _tag("goal", ca.goal, i2)]
    if ca.why:
        lines.append(_tag("why", ca.why, i2))
    lines += [f"{i1}</cause>", f"{i1}<constraint>"]
    lines += [_tag("rule", r, i2) for r in co.rules]
    lines += [_tag("required_term", t, i2) for t in co.require]
    lines += [_tag("forbidden_term", t, i2) for t in co.forbid]
    lines += [_tag("pattern", p, i2) for p in co.patterns]
    lines += [_tag("forbidden_pattern", p, i2) for p in co.forbid_patterns]
    for low, high, unit in _lengths(contract):
        attrs = f' unit="{unit}"' + (f' min="{low}"' if low is not None else "") + (
            f' max="{high}"' if high is not None else "")
        lines.append(f"{i2}<length{attrs}/>")
    lines += [f"{i1}</constraint>", f"{i1}<contingency>"]
    lines += [_tag("rule", r, i2) for r in cg.rules]
    if cg.fallback_output is not None:
        lines.append(f"{i2}<fallback when={quoteattr(cg.when)}>{escape(cg.fallback_output)}</fallback>")
    lines += [f"{i1}</contingency>", f"{i1}<calibration>", _tag("format", cb.format, i2)]
    if cb.json_schema is not None:
        lines.append(_tag("schema", _json(cb.json_schema), i2))
    if cb.max_tokens is not None:
        lines.append(_tag("max_tokens", str(cb.max_tokens), i2))
    if cb.tone:
        lines.append(_tag("tone", cb.tone, i2))
    lines += [_tag("style", s, i2) for s in cb.style]
    lines += [f"{i1}</calibration>", "</contract>"]
    return "\n".join(lines)


for _name, _fn in (("thrifty", _render_thrifty), ("5c", _render_5c), ("xml", _render_xml),
                   ("plain", _render_plain)):
    register_renderer(_name, _fn)
