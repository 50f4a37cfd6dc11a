"""JSON schemas: checking, the strict conversions (OpenAI, Anthropic) and answer validation."""

from __future__ import annotations

import copy
import enum
from typing import Literal, Union

import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from thrifty.contracts.schema import ANTHROPIC, OPENAI_STRICT, check_schema, to_strict, validator_for
from thrifty.errors import InvalidRequestError

# ---------------------------------------------------------------- models the openai SDK converts too


class Address(BaseModel):
    street: str
    city: str
    zip: str | None = None


class Color(enum.StrEnum):
    red = "red"
    green = "green"


class LineItem(BaseModel):
    sku: str
    quantity: int = Field(ge=1, le=100)
    price: float = Field(gt=0, description="unit price in USD")


class Order(BaseModel):
    id: int
    status: Literal["open", "shipped", "closed"]
    color: Color
    shipping: Address
    billing: Address | None = None
    items: list[LineItem]
    notes: list[str] | None = None
    discount: Union[int, float, None] = None


class Tree(BaseModel):
    label: str
    children: list[Tree]
    parent: Tree | None = None


class Described(BaseModel):
    home: Address = Field(description="where the customer lives")
    tags: dict[str, str] | None = None


@pytest.mark.parametrize("model", [Address, LineItem, Order, Tree])
def test_pydantic_models_convert_like_the_openai_sdk(model):
    ours = to_strict(model.model_json_schema(), OPENAI_STRICT)
    assert ours.strict and not ours.removed and not ours.nullable_added
    assert ours.schema == to_strict_json_schema(model)


def test_a_ref_with_siblings_is_inlined_like_the_openai_sdk():
    class Customer(BaseModel):
        home: Address = Field(description="where the customer lives")

    ours = to_strict(Customer.model_json_schema())
    assert ours.schema == to_strict_json_schema(Customer)
    home = ours.schema["properties"]["home"]
    assert "$ref" not in home and home["description"] == "where the customer lives"
    assert home["additionalProperties"] is False and home["required"] == ["street", "city", "zip"]


def test_conversion_does_not_touch_the_callers_schema():
    schema = Order.model_json_schema()
    before = copy.deepcopy(schema)
    to_strict(schema)
    to_strict(schema, ANTHROPIC)
    assert schema == before


# ---------------------------------------------------------------- what the openai SDK leaves to the API


def test_optional_properties_become_required_and_nullable():
    schema = {"type": "object", "properties": {
        "a": {"type": "string"},
        "b": {"type": "integer"},
        "c": {"$ref": "#/$defs/C"},
        "d": {"enum": ["x", "y"], "type": "string"},
        "e": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    }, "required": ["a"], "$defs": {"C": {"type": "object", "properties": {"k": {"type": "boolean"}}}}}
    out = to_strict(schema)
    props = out.schema["properties"]
    assert out.strict and out.nullable_added
    assert out.schema["required"] == ["a", "b", "c", "d", "e"] and out.schema["additionalProperties"] is False
    assert props["a"] == {"type": "string"}
    assert props["b"] == {"type": ["integer", "null"]}
    assert props["c"] == {"anyOf": [{"$ref": "#/$defs/C"}, {"type": "null"}]}
    assert props["d"] == {"enum": ["x", "y", None], "type": ["string", "null"]}
    assert props["e"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}  # already nullable: unchanged
    assert out.schema["$defs"]["C"] == {"type": "object", "additionalProperties": False,
                                       "properties": {"k": {"type": ["boolean", "null"]}}, "required": ["k"]}


def test_a_pydantic_default_makes_the_field_nullable_where_the_sdk_makes_it_required():
    class Settings(BaseModel):
        retries: int = 3

    sdk = to_strict_json_schema(Settings)["properties"]["retries"]
    ours = to_strict(Settings.model_json_schema())
    assert sdk == {"default": 3, "title": "Retries", "type": "integer"}
    assert ours.schema["properties"]["retries"] == {"title": "Retries", "type": ["integer", "null"]}
    # the model's null for the omitted field is removed again, so pydantic applies its default
    validator = validator_for(Settings.model_json_schema())
    assert validator.restore({"retries": None}) == {}
    assert Settings.model_validate(validator.restore({"retries": None})).retries == 3


def test_unsupported_keywords_are_removed_remembered_and_described():
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 20, "pattern": "^[A-Z]"},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "minItems": 1},
        "when": {"type": "string", "format": "date"},
        "site": {"type": "string", "format": "uri"},
        "meta": {"type": "object", "properties": {"a": {"type": "integer"}}, "minProperties": 1},
        "score": {"type": "number", "minimum": 0, "maximum": 1, "not": {"const": 0.5}},
    }, "required": ["name", "tags", "when", "site", "meta", "score"], "$schema": "https://json-schema.org/draft/2020-12/schema"}
    out = to_strict(schema)
    props = out.schema["properties"]
    assert out.strict and "$schema" not in out.schema
    assert set(out.removed) == {"minLength at #/properties/name", "maxLength at #/properties/name",
                                "uniqueItems at #/properties/tags", "format at #/properties/site",
                                "minProperties at #/properties/meta", "not at #/properties/score"}
    assert props["name"] == {"type": "string", "pattern": "^[A-Z]", "description": "(minLength: 2; maxLength: 20)"}
    assert props["tags"]["minItems"] == 1 and "uniqueItems" not in props["tags"]
    assert props["when"]["format"] == "date" and "format" not in props["site"]
    assert props["score"]["minimum"] == 0 and props["score"]["maximum"] == 1
    # ...and the validator of the original schema still enforces them
    errors = validator_for(schema).errors({"name": "A", "tags": ["x", "x"], "when": "2024-01-01",
                                           "site": "s", "meta": {}, "score": 0.5})
    assert any("name" in e and "too short" in e for e in errors)
    assert any("tags" in e and "non-unique" in e for e in errors)
    assert any("meta" in e for e in errors) and any("score" in e for e in errors)


def test_one_of_is_sent_as_any_of_and_all_of_is_merged():
    schema = {"type": "object", "properties": {
        "pet": {"oneOf": [{"type": "object", "properties": {"bark": {"type": "boolean"}}, "required": ["bark"]},
                          {"type": "object", "properties": {"meow": {"type": "boolean"}}, "required": ["meow"]}]},
        "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                           {"properties": {"b": {"type": "string"}}, "required": ["b"]}]},
    }, "required": ["pet", "both"]}
    out = to_strict(schema)
    pet, both = out.schema["properties"]["pet"], out.schema["properties"]["both"]
    assert out.strict and "oneOf at #/properties/pet" in out.removed
    assert [v["required"] for v in pet["anyOf"]] == [["bark"], ["meow"]]
    assert all(v["additionalProperties"] is False for v in pet["anyOf"])
    assert "allOf" not in both and both["required"] == ["a", "b"] and set(both["properties"]) == {"a", "b"}


@pytest.mark.parametrize("schema, why", [
    ({"type": "array", "items": {"type": "string"}}, "root is not an object"),
    ({"type": "object", "properties": {"m": {"type": "object", "additionalProperties": {"type": "integer"}}}},
     "additionalProperties"),
    ({"type": "object", "properties": {"anything": {}}}, "no 'type'"),
    ({"type": "object", "properties": {"yes": True}}, "boolean schema"),
])
def test_schemas_the_strict_subset_cannot_express_are_sent_as_written(schema, why):
    out = to_strict(schema)
    assert not out.strict and out.schema == schema and why in out.removed[0]


def test_maps_make_the_strict_subset_fail_for_pydantic_dicts():
    out = to_strict(Described.model_json_schema())
    assert not out.strict  # dict[str, str] cannot be expressed; OpenAI would refuse the SDK's version


def test_the_anthropic_subset_keeps_optional_properties_and_drops_bounds():
    out = to_strict(LineItem.model_json_schema(), ANTHROPIC)
    assert out.strict and not out.nullable_added
    props = out.schema["properties"]
    assert out.schema["additionalProperties"] is False and out.schema["required"] == ["sku", "quantity", "price"]
    assert "minimum" not in props["quantity"] and "exclusiveMinimum" not in props["price"]
    assert props["price"]["description"] == "unit price in USD (exclusiveMinimum: 0)"
    assert set(out.removed) == {"minimum at #/properties/quantity", "maximum at #/properties/quantity",
                                "exclusiveMinimum at #/properties/price"}
    address = to_strict(Address.model_json_schema(), ANTHROPIC).schema
    assert address["required"] == ["street", "city"]  # optional stays optional
    arrays = to_strict({"type": "object", "properties": {
        "one": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "two": {"type": "array", "items": {"type": "string"}, "minItems": 2}}}, ANTHROPIC)
    assert arrays.schema["properties"]["one"]["minItems"] == 1 and "minItems" not in arrays.schema["properties"]["two"]
    assert to_strict({"type": "array", "items": {"type": "string"}}, ANTHROPIC).strict  # any root


def test_conversions_are_cached_by_content():
    assert to_strict(Order.model_json_schema()) is to_strict(Order.model_json_schema())
    assert validator_for(Order.model_json_schema()) is validator_for(Order.model_json_schema())


# ---------------------------------------------------------------- checking


@pytest.mark.parametrize("schema, words", [
    ({"type": "strin"}, ["'type'", "#/type"]),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": "zero"}}},
     ["'minimum'", "#/properties/a/minimum"]),
    ({"type": "object", "required": "a"}, ["'required'", "#/required"]),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}, ["'$ref'", "points at nothing"]),
    ({"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}, ["only local references"]),
    ({"anyOf": {"type": "string"}}, ["'anyOf'"]),
])
def test_an_invalid_schema_is_a_400_naming_the_keyword_and_path(schema, words):
    with pytest.raises(InvalidRequestError) as info:
        check_schema(schema)
    assert info.value.status_code == 400 and info.value.param == "response_format.json_schema.schema"
    for word in words:
        assert word in info.value.message


def test_valid_schemas_pass_the_check():
    for model in (Address, Order, Tree, Described):
        check_schema(model.model_json_schema())
    check_schema({"type": "object", "properties": {"a": {"$ref": "#"}}})
    with pytest.raises(InvalidRequestError, match="must be an object"):
        check_schema(["not", "a", "schema"])


# ---------------------------------------------------------------- validation


def test_validation_messages_are_short_and_name_the_path():
    validator = validator_for(Order.model_json_schema())
    errors = validator.errors({"id": "7", "status": "lost", "color": "red", "items": [{"sku": "a", "quantity": 0,
                                                                                        "price": 1}]})
    assert len(errors) <= 5 and all(e.startswith("at $") and len(e) < 200 for e in errors)
    joined = "\n".join(errors)
    assert "$.id" in joined and "$.status" in joined and "shipping" in joined
    assert validator.errors({"id": "y" * 10_000}, limit=1)[0].endswith("...")
    assert validator.errors(Order(id=1, status="open", color=Color.red, shipping=Address(street="s", city="c"),
                                  items=[]).model_dump(mode="json")) == []


def test_restore_removes_nulls_only_where_the_original_schema_forbids_them():
    validator = validator_for(Order.model_json_schema())
    answer = {"id": 1, "status": "open", "color": "red", "billing": None, "notes": None, "discount": None,
              "shipping": {"street": "s", "city": "c", "zip": None},
              "items": [{"sku": "a", "quantity": 1, "price": 2.0}]}
    assert validator.restore(answer) == answer  # every null here is allowed by the model's schema
    strict = {"type": "object", "properties": {
        "a": {"type": "integer"},
        "nested": {"type": "array", "items": {"$ref": "#/$defs/N"}},
        "either": {"anyOf": [{"type": "object", "properties": {"x": {"type": "string"}}},
                             {"type": "integer"}]}},
        "required": ["nested"],
        "$defs": {"N": {"type": "object", "properties": {"k": {"type": "string"}, "n": {"type": ["string", "null"]}}}}}
    v = validator_for(strict)
    assert v.restore({"a": None, "nested": [{"k": None, "n": None}], "either": {"x": None}}) == {
        "nested": [{"n": None}], "either": {}}
    assert v.errors(v.restore({"a": None, "nested": [{"k": None}], "either": 3})) == []
