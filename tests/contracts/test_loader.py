"""Contract files: TOML and YAML, errors that name file:line and field, and the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from thrifty.contracts import ContractRegistry, check_paths, load_contract, parse_contract
from thrifty.contracts.loader import toml_key_lines
from thrifty.errors import ContractFileError, InvalidRequestError, UnknownContractError

EXAMPLES = Path(__file__).parents[2] / "examples" / "contracts"

GOOD_TOML = '''\
[character]
role = "a copywriter"

[cause]
goal = "describe the product"

[constraint]
forbid = ["best"]
max_words = 60

[contingency]
fallback_output = "No description."

[calibration]
format = "text"
tone = "warm"
'''

GOOD_YAML = '''\
name: triage
character: {role: a triage agent}
cause:
  goal: route the ticket
constraint:
  rules: [never promise refunds]
contingency:
  fallback_output: '{"queue": "other"}'
calibration:
  format: json
  schema:
    type: object
    required: [queue]
    properties:
      queue: {enum: [billing, other]}
'''


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ContractFileError) as info:
        load_contract(path)
    return [str(p) for p in info.value.problems]


def test_toml_name_is_the_file_stem(tmp_path):
    c = load_contract(write(tmp_path, "product-copy.toml", GOOD_TOML))
    assert c.name == "product-copy" and c.constraint.max_words == 60 and c.calibration.tone == "warm"


def test_yaml_name_given_in_the_file(tmp_path):
    c = load_contract(write(tmp_path, "whatever.yml", GOOD_YAML))
    assert c.name == "triage" and c.calibration.json_schema["properties"]["queue"]["enum"] == ["billing", "other"]


def test_typo_names_file_line_field_and_the_meant_field(tmp_path):
    path = write(tmp_path, "c.toml", GOOD_TOML.replace('tone = "warm"', 'tonne = "warm"'))
    assert problems_of(path) == [
        f"{path}:16: calibration.tonne: unknown field (did you mean 'tone'?); "
        "known fields: format, max_tokens, schema, schema_name, style, tone"
    ]


def test_yaml_typo_line(tmp_path):
    path = write(tmp_path, "c.yaml", GOOD_YAML.replace("  goal:", "  gaol:"))
    found = problems_of(path)
    assert f"{path}:4: cause.gaol: unknown field (did you mean 'goal'?); known fields: goal, why" in found
    assert f"{path}:3: cause.goal: missing: this field is required" in found


def test_bad_regex_names_the_element_line(tmp_path):
    text = GOOD_TOML.replace('forbid = ["best"]', "patterns = [\n  '^- ',\n  '([a-z',\n]")
    path = write(tmp_path, "c.toml", text)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:10: constraint.patterns[1]: invalid regular expression '([a-z'")


def test_bad_schema_points_into_the_schema(tmp_path):
    path = write(tmp_path, "c.yaml", GOOD_YAML.replace("queue: {enum: [billing, other]}", "queue: {type: strin}"))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:15: calibration.schema.properties.queue.type: invalid JSON schema:")


def test_unknown_format_and_fallback_not_matching_schema(tmp_path):
    path = write(tmp_path, "a.toml", GOOD_TOML.replace('format = "text"', 'format = "markdwn"'))
    assert problems_of(path) == [f"{path}:15: calibration.format: unknown format 'markdwn' (did you mean "
                                 "'markdown'?); known formats: code, csv, html, json, markdown, sql, text, yaml"]
    path = write(tmp_path, "b.yaml", GOOD_YAML.replace('{"queue": "other"}', '{"queue": "spam"}'))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:8: contingency.fallback_output: does not conform to the schema: 'spam'")


def test_syntax_errors_give_the_line(tmp_path):
    path = write(tmp_path, "a.toml", GOOD_TOML.replace('goal = "describe the product"', 'goal = describe'))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:5: invalid TOML:")
    path = write(tmp_path, "b.yaml", GOOD_YAML.replace("  goal: route the ticket", "  goal: [unclosed"))
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:") and "invalid YAML" in problem
    path = write(tmp_path, "c.yaml", "- a list\n- not a table\n")
    assert problems_of(path) == [f"{path}:1: a contract is a table of fields, not list"]


def test_parse_contract_from_text():
    c = parse_contract(GOOD_TOML, "toml", name="copy")
    assert c.name == "copy"
    with pytest.raises(ContractFileError) as info:
        parse_contract(GOOD_TOML.replace("[cause]", "[caus]"), "toml", source="inline.toml", name="copy")
    messages = [str(p) for p in info.value.problems]
    assert "inline.toml:4: caus: unknown field (did you mean 'cause'?); known fields: calibration, cause, " \
           "character, constraint, contingency, description, name" in messages


def test_toml_key_lines():
    text = '''\
# comment
name = "x"   # trailing
[a]
b = 1
c.d = "two"
e = [
  'one',   # first
  "t,w]o",
  { f = 1, g = [2, 3] },
]
h = """multi
[not a table]
line"""
[a.i]
j = { k = { l = true } }
'''
    lines = toml_key_lines(text)
    assert lines[("name",)] == 2 and lines[("a",)] == 3 and lines[("a", "b")] == 4
    assert lines[("a", "c", "d")] == 5 and lines[("a", "e")] == 6
    assert [lines[("a", "e", i)] for i in range(3)] == [7, 8, 9]
    assert lines[("a", "e", 2, "g", 1)] == 9
    assert lines[("a", "h")] == 11 and ("not a table",) not in lines
    assert lines[("a", "i")] == 14 and lines[("a", "i", "j", "k", "l")] == 15


def test_check_paths_collects_every_problem_and_duplicate_names(tmp_path):
    write(tmp_path, "one.toml", GOOD_TOML)
    write(tmp_path, "two.yaml", GOOD_YAML.replace("name: triage", "name: one"))
    write(tmp_path, "three.toml", "[character]\n")
    write(tmp_path, "notes.txt", "not a contract")
    found, problems = check_paths([tmp_path])
    assert [c.name for c in found] == ["one"]
    text = [str(p) for p in problems]
    assert any(p.startswith(f"{tmp_path / 'three.toml'}:1: character.role: missing") for p in text)
    assert f"{tmp_path / 'two.yaml'}: name: contract 'one' is already defined in {tmp_path / 'one.toml'}" in text
    with pytest.raises(ContractFileError):
        ContractRegistry.from_paths([tmp_path])


def test_registry_unknown_name_lists_the_known_ones(tmp_path):
    write(tmp_path, "product-copy.toml", GOOD_TOML)
    write(tmp_path, "triage.yaml", GOOD_YAML)
    registry = ContractRegistry.from_paths([tmp_path])
    assert registry.names() == ["product-copy", "triage"] and "triage" in registry and len(registry) == 2
    with pytest.raises(UnknownContractError) as info:
        registry.get("triag")
    assert isinstance(info.value, InvalidRequestError) and info.value.status_code == 400
    assert info.value.message == ("unknown contract 'triag' (did you mean 'triage'?); "
                                  "known contracts: product-copy, triage")
    assert info.value.param == "thrifty.contract"
    with pytest.raises(UnknownContractError, match="no contracts are loaded"):
        ContractRegistry().get("triage")


def test_every_example_contract_is_valid():
    found, problems = check_paths([EXAMPLES])
    assert problems == []
    assert len(found) >= 10
    assert sum(c.calibration.json_schema is not None for c in found) >= 5
