"""The Contract type: its five parts, validation, checks and the OutputSpec it builds."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ValidationError

from thrifty import Contract
from thrifty.contracts import OutputCheck, OutputSpec, register_format
from thrifty.contracts.contract import (
    Calibration,
    ForbiddenPattern,
    ForbiddenTerm,
    JSONCheck,
    LengthCheck,
    PatternCheck,
    RequiredTerm,
    output_formats,
)

SCHEMA = {
    "type": "object",
    "required": ["queue", "priority"],
    "additionalProperties": False,
    "properties": {"queue": {"enum": ["billing", "bug", "other"]},
                   "priority": {"type": "integer", "minimum": 1, "maximum": 4}},
}
FALLBACK = '{"queue": "other", "priority": 4}'


def contract(**parts: Any) -> Contract:
    data: dict[str, Any] = {
        "name": "triage",
        "character": {"role": "a support triage agent"},
        "cause": {"goal": "route each ticket", "why": "misrouted tickets wait"},
        "constraint": {"rules": ["never promise refunds"]},
        "contingency": {"fallback_output": FALLBACK},
        "calibration": {"format": "json", "schema": SCHEMA, "max_tokens": 80},
    }
    data.update(parts)
    return Contract.model_validate(data)


def errors(**parts: Any) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as info:
        contract(**parts)
    return [(e["loc"] + tuple((e.get("ctx") or {}).get("at", ())), e["msg"]) for e in info.value.errors()]


def test_output_spec_carries_schema_checks_and_policy():
    c = contract(
        constraint={"require": ["queue"], "forbid": ["refund"], "max_words": 30},
        contingency={"fallback_output": FALLBACK, "reasks": 2, "fallback_models": ["openai/gpt-4o"]},
    )
    spec = c.output_spec()
    assert isinstance(spec, OutputSpec)
    assert spec.schema == SCHEMA and spec.schema_name == "triage"
    assert (spec.reasks, spec.fallback_models, spec.source) == (2, ("openai/gpt-4o",), "contract:triage")
    assert spec.fallback_output is None  # on_failure defaults to a typed error
    assert [c.name for c in spec.checks] == ["require", "forbid", "length"]
    assert all(isinstance(check, OutputCheck) for check in spec.checks)
    assert spec.detail == {"contract": "triage"}


def test_on_failure_fallback_output_puts_it_on_the_spec():
    c = contract(contingency={"fallback_output": FALLBACK, "on_failure": "fallback_output"})
    assert c.output_spec().fallback_output == FALLBACK


def test_checks_say_what_to_fix():
    assert RequiredTerm("Action items")("## Decisions\n- ship") == "the answer must contain 'Action items'; add it"
    assert RequiredTerm("Action items")("## action items") is None  # case-insensitive by default
    assert RequiredTerm("Action items", case_sensitive=True)("## action items") is not None
    assert ForbiddenTerm("ass")("a class of its own") is None  # whole words
    assert ForbiddenTerm("best")("The best tent.") == "the answer must not contain 'best'; remove it"
    assert PatternCheck(r"^- ")("- one\n- two") is None
    assert PatternCheck(r"^SELECT")("-- note\nSELECT 1") is None  # ^ matches at any line's start
    assert PatternCheck(r"\A\s*SELECT")("-- note\nSELECT 1") is not None  # \A only at the answer's
    assert "must match the regular expression /^SELECT/" in PatternCheck("^SELECT")("DROP TABLE x")
    assert ForbiddenPattern(r"(?i)\bdrop\b")("drop table x") == (
        "the answer must not match /(?i)\\bdrop\\b/, but 'drop' does; remove it")
    assert LengthCheck("words", maximum=3)("one two three four") == (
        "the answer has 4 words; the limit is 3: shorten it")
    assert LengthCheck("chars", minimum=10)("short") == "the answer has 5 characters; it needs at least 10: expand it"
    assert LengthCheck("words", 1, 3)("two words") is None
    assert JSONCheck()('{"a": 1}') is None and "not valid JSON" in JSONCheck()("{a: 1}")


def test_the_fallback_output_passes_every_check():
    c = contract(constraint={"require": ["priority 1"], "max_words": 2}, calibration={"format": "text"},
                 contingency={"fallback_output": "No ticket: nothing to triage here."})
    checks = c.checks()
    assert [check("No ticket: nothing to triage here.") for check in checks] == [None, None]
    assert all(check("something else entirely") for check in checks)


def test_the_fallback_output_as_json_may_be_written_otherwise():
    c = contract(constraint={"require": ["summary"]})
    (check,) = c.checks()
    assert check('{"priority":4,"queue":"other"}') is None
    assert check('{"priority": 3, "queue": "other"}') == "the answer must contain 'summary'; add it"


def test_json_format_without_schema_checks_json():
    c = contract(calibration={"format": "json"}, contingency={"rules": ["if unsure, say so"]})
    (check,) = c.checks()
    assert check.name == "json" and check("not json") and check("[1, 2]") is None
    assert c.output_spec().schema is None and c.output_spec().schema_name is None


def test_pydantic_model_as_schema():
    class Ticket(BaseModel):
        queue: Literal["billing", "bug", "other"]
        priority: int

    c = contract(calibration={"format": "json", "schema": Ticket})
    assert c.calibration.json_schema == Ticket.model_json_schema()
    assert c.calibration.output_model is Ticket
    assert c.output_spec().detail["model"] is Ticket
    direct = Calibration(format="json", schema=Ticket, schema_name="ticket")
    assert direct.output_model is Ticket and direct.json_schema["title"] == "Ticket"


@pytest.mark.parametrize(("parts", "loc", "fragment"), [
    ({"calibration": {"format": "jsn"}}, ("calibration", "format"), "unknown format 'jsn' (did you mean 'json'?)"),
    ({"constraint": {"patterns": ["ok", "([a"]}}, ("constraint", "patterns", 1), "invalid regular expression '([a'"),
    ({"calibration": {"format": "json", "schema": {"type": "objekt"}}}, ("calibration", "schema", "type"),
     "invalid JSON schema"),
    ({"calibration": {"format": "text", "schema": SCHEMA}}, ("calibration", "format"), "a schema needs format 'json'"),
    ({"constraint": {"min_words": 9, "max_words": 3}}, ("constraint", "min_words"), "greater than max_words"),
    ({"constraint": {}}, ("constraint",), "give at least one rule"),
    ({"contingency": {}}, ("contingency",), "give a fallback_output or at least one rule"),
    ({"contingency": {"rules": ["x"], "on_failure": "fallback_output"}}, ("contingency", "on_failure"),
     "needs a fallback_output"),
    ({"contingency": {"fallback_output": "not json"}}, ("contingency", "fallback_output"), "is not JSON"),
    ({"contingency": {"fallback_output": '{"queue": "nope", "priority": 4}'}}, ("contingency", "fallback_output"),
     "does not conform to the schema"),
    ({"constraint": {"forbid": ["  "]}}, ("constraint", "forbid", 0), "is empty"),
    ({"name": "has space"}, ("name",), "should match pattern"),
])
def test_invalid_contracts_say_where_and_what(parts, loc, fragment):
    found = errors(**parts)
    assert any(where == loc and fragment in msg for where, msg in found), found


def test_every_part_is_required():
    with pytest.raises(ValidationError) as info:
        Contract.model_validate({"name": "x"})
    missing = {e["loc"][0] for e in info.value.errors() if e["type"] == "missing"}
    assert missing == {"character", "cause", "constraint", "contingency", "calibration"}


def test_formats_are_registered():
    assert "json" in output_formats()
    register_format("toml", "TOML")
    try:
        assert contract(calibration={"format": "toml"}).calibration.format == "toml"
    finally:
        from thrifty.contracts import contract as module

        module._FORMATS.pop("toml")


def test_contract_is_frozen_and_round_trips():
    c = contract()
    with pytest.raises(ValidationError):
        c.name = "other"  # type: ignore[misc]
    again = Contract.model_validate(json.loads(c.model_dump_json(by_alias=True)))
    assert again == c
