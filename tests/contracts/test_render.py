"""Rendering: every part labelled, deterministic bytes, and shorter than the other explicit forms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from thrifty.contracts import check_paths, load_contract, render
from thrifty.contracts.render import renderers, schema_sketch
from thrifty.ledger.tokens import count_text

EXAMPLES = Path(__file__).parents[2] / "examples" / "contracts"
TRIAGE = EXAMPLES / "support-triage.toml"


def test_thrifty_rendering_labels_every_part_in_order():
    text = render(load_contract(TRIAGE))
    labels = [line.split(":", 1)[0] for line in text.splitlines() if not line.startswith("- ")]
    assert labels == ["role", "goal", "rules", "if", "output"]
    assert "- must not contain: \"guarantee\", \"refund approved\"" in text
    assert "- length: max 80 words" in text
    assert ('- the message is not a support ticket or is empty -> answer exactly: '
            '{"queue": "other", "priority": 4, "summary": "not a support ticket"}') in text
    assert text.endswith('output: JSON {queue:"billing"|"bug"|"account"|"security"|"other", '
                         'priority:int 1..4 (1 is most urgent), summary:str<=160}; max 120 tokens; tone: neutral')


def test_other_styles_carry_the_same_parts():
    c = load_contract(TRIAGE)
    prose = render(c, "5c")
    assert [p.split(":", 1)[0] for p in prose.split("\n\n")] == [
        "Character", "Cause", "Constraint", "Contingency", "Calibration"]
    xml = render(c, "xml")
    for tag in ("character", "cause", "constraint", "contingency", "calibration"):
        assert f"<{tag}>" in xml and f"</{tag}>" in xml
    plain = render(c, "plain")
    assert "\n" not in plain and "Character" not in plain
    for text in (prose, xml, plain):
        assert "guarantee" in text and "not a support ticket" in text and "security" in text


def test_rendering_is_deterministic_across_processes():
    here = render(load_contract(TRIAGE))
    code = ("import sys; from thrifty.contracts import load_contract, render; "
            f"sys.stdout.write(render(load_contract({str(TRIAGE)!r})))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}).stdout
    assert other == here
    assert render(load_contract(TRIAGE)) == here


@pytest.mark.parametrize("path", sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".toml", ".yaml")),
                         ids=lambda p: p.stem)
def test_thrifty_is_the_shortest_explicit_form(path):
    c = load_contract(path)
    tokens = {style: count_text(render(c, style), "gpt-4o") for style in ("thrifty", "5c", "xml")}
    assert tokens["thrifty"] < tokens["5c"] < tokens["xml"], tokens


def test_examples_overall_saving_against_5c_prose():
    found, _ = check_paths([EXAMPLES])
    thrifty = sum(count_text(render(c), "gpt-4o") for c in found)
    prose = sum(count_text(render(c, "5c"), "gpt-4o") for c in found)
    assert thrifty < 0.85 * prose


@pytest.mark.parametrize(("schema", "sketch"), [
    ({"type": "string", "maxLength": 80}, "str<=80"),
    ({"type": "string", "minLength": 2, "maxLength": 80, "format": "email"}, "str(email) 2..80"),
    ({"type": ["string", "null"], "pattern": "^[A-Z]{3}$"}, "str /^[A-Z]{3}$/|null"),
    ({"type": "integer", "minimum": 1, "maximum": 4}, "int 1..4"),
    ({"type": "number", "minimum": 0}, "num>=0"),
    ({"type": "number", "exclusiveMinimum": 0}, "num>0"),
    ({"type": "array", "items": {"type": "string"}, "maxItems": 5}, "[str] max 5"),
    ({"enum": ["a", "b", 3]}, '"a"|"b"|3'),
    ({"const": "x"}, '"x"'),
    ({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}, "int|bool"),
    ({"type": "object", "properties": {"a": {"type": "string", "description": "the a"}, "b": {"type": "boolean"}},
      "required": ["a"]}, "{a:str (the a), b?:bool}"),
    ({"type": "object"}, "object"),
    ({"$defs": {"Item": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}},
      "type": "array", "items": {"$ref": "#/$defs/Item"}}, "[{id:int}]"),
    ({"type": "string", "not": {"const": ""}}, '{"type":"string","not":{"const":""}}'),
])
def test_schema_sketch(schema, sketch):
    assert schema_sketch(schema) == sketch


def test_recursive_ref_is_written_as_json():
    schema = {"$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
              "$ref": "#/$defs/Node"}
    assert schema_sketch(schema) == '{next?:{"$ref":"#/$defs/Node"}}'


def test_xml_escapes_and_unknown_style():
    c = load_contract(EXAMPLES / "sql-generation.toml")
    xml = render(c, "xml")
    assert "&lt;" not in render(c) and "<fallback when=" in xml
    assert "SELECT 'cannot be answered from the orders schema' AS note;</fallback>" in xml
    assert set(renderers()) >= {"thrifty", "5c", "xml", "plain"}
    with pytest.raises(ValueError, match="unknown rendering style 'xm' \\(did you mean 'xml'\\?\\)"):
        render(c, "xm")


def test_the_readme_example_is_what_thrifty_does():
    import re

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Prompt contracts"):readme.index("## Dashboard")]
    toml_block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    assert toml_block == TRIAGE.read_text()
    text_block = re.search(r"```text\n(.*?)\n```", section, re.S).group(1)
    c = load_contract(TRIAGE)
    assert text_block == render(c)
    counts = [count_text(render(c, style), "gpt-4o") for style in ("thrifty", "5c", "xml")]
    assert "That is {} tokens (o200k); the same contract as 5C prose takes {} and as an\nXML-tag DSL {}".format(
        *counts) in section
