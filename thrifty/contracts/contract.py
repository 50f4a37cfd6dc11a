"""A 5C prompt contract: Character, Cause, Constraint, Contingency, Calibration.

A :class:`Contract` says who the model is (:class:`Character`), what the task
is for (:class:`Cause`), the hard limits on the answer (:class:`Constraint`),
what to do when the input does not allow a proper answer and when an answer
breaks the contract (:class:`Contingency`), and the answer's shape
(:class:`Calibration`). It is rendered into the system prompt by
:mod:`thrifty.contracts.render`; its checkable parts become the call's
:class:`~thrifty.contracts.spec.OutputSpec` (:meth:`Contract.output_spec`),
which the structured-output stage enforces.

The checkable rules (required and forbidden terms, patterns, length bounds,
valid JSON) are :class:`~thrifty.contracts.spec.OutputCheck` objects: each
returns ``None`` for a passing answer, or what is wrong, said so that a
re-asked model can fix it. The contract's own ``fallback_output`` passes every
check: it is the answer the contract itself defines.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from thrifty.contracts.spec import OutputCheck, OutputSpec

__all__ = [
    "Calibration",
    "Cause",
    "Character",
    "Constraint",
    "Contingency",
    "Contract",
    "ForbiddenPattern",
    "ForbiddenTerm",
    "JSONCheck",
    "LengthCheck",
    "PatternCheck",
    "RequiredTerm",
    "is_fallback",
    "output_formats",
    "register_format",
]

# ---------------------------------------------------------------- output formats

#: Output formats a contract's calibration may name: ``name -> how the prompt says it``.
_FORMATS: dict[str, str] = {
    "text": "plain text",
    "json": "JSON",
    "markdown": "Markdown",
    "yaml": "YAML",
    "csv": "CSV",
    "sql": "SQL",
    "code": "code",
    "html": "HTML",
}


def register_format(name: str, phrase: str) -> None:
    """Make ``name`` a valid ``calibration.format``; ``phrase`` is how a rendered prompt names it."""
    _FORMATS[name] = phrase


def output_formats() -> dict[str, str]:
    """The registered output formats and how the prompt names each."""
    return dict(_FORMATS)


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` when a close choice exists, else an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------- checks


def _term_regex(term: str, case_sensitive: bool) -> re.Pattern[str]:
    # whole words where the term starts or ends with a word character: "ass" does not match "class"
    body = re.escape(term)
    if term[:1].isalnum() or term[:1] == "_":
        body = r"(?<!\w)" + body
    if term[-1:].isalnum() or term[-1:] == "_":
        body = body + r"(?!\w)"
    return re.compile(body, 0 if case_sensitive else re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RequiredTerm:
    """The answer must contain ``term`` (as a whole word where it starts/ends with one)."""

    term: str
    case_sensitive: bool = False
    name: str = "require"

    def __call__(self, text: str) -> str | None:
        if _term_regex(self.term, self.case_sensitive).search(text):
            return None
        return f"the answer must contain {self.term!r}; add it"


@dataclass(frozen=True, slots=True)
class ForbiddenTerm:
    """The answer must not contain ``term``."""

    term: str
    case_sensitive: bool = False
    name: str = "forbid"

    def __call__(self, text: str) -> str | None:
        if _term_regex(self.term, self.case_sensitive).search(text) is None:
            return None
        return f"the answer must not contain {self.term!r}; remove it"


@dataclass(frozen=True, slots=True)
class PatternCheck:
    """The answer must match the regular expression ``pattern`` somewhere.

    ``re.search`` with ``re.MULTILINE``: ``^`` and ``$`` match at every line's
    start and end; ``\\A`` and ``\\Z`` anchor to the whole answer's.
    """

    pattern: str
    name: str = "pattern"

    def __call__(self, text: str) -> str | None:
        if re.search(self.pattern, text, re.MULTILINE):
            return None
        return f"the answer must match the regular expression /{self.pattern}/; it does not"


@dataclass(frozen=True, slots=True)
class ForbiddenPattern:
    """The answer must not match the regular expression ``pattern`` anywhere (``re.MULTILINE``)."""

    pattern: str
    name: str = "forbid_pattern"

    def __call__(self, text: str) -> str | None:
        match = re.search(self.pattern, text, re.MULTILINE)
        if match is None:
            return None
        return f"the answer must not match /{self.pattern}/, but {match.group(0)!r} does; remove it"


@dataclass(frozen=True, slots=True)
class LengthCheck:
    """The answer's length in ``unit`` (characters or words) must lie within ``[minimum, maximum]``."""

    unit: Literal["chars", "words"]
    minimum: int | None = None
    maximum: int | None = None
    name: str = "length"

    def __call__(self, text: str) -> str | None:
        n = len(text.strip()) if self.unit == "chars" else len(text.split())
        noun = "characters" if self.unit == "chars" else "words"
        if self.maximum is not None and n > self.maximum:
            return f"the answer has {n} {noun}; the limit is {self.maximum}: shorten it"
        if self.minimum is not None and n < self.minimum:
            return f"the answer has {n} {noun}; it needs at least {self.minimum}: expand it"
        return None


@dataclass(frozen=True, slots=True)
class JSONCheck:
    """The answer must be one JSON value (for a JSON format without a schema)."""

    name: str = "json"

    def __call__(self, text: str) -> str | None:
        try:
            json.loads(text)
        except ValueError as exc:
            return f"the answer is not valid JSON ({exc}); answer with JSON only"
        return None


@dataclass(frozen=True, slots=True)
class _UnlessFallback:
    """Passes the contract's own fallback output; otherwise defers to ``check``."""

    check: OutputCheck
    fallback: str

    @property
    def name(self) -> str:
        return self.check.name

    def __call__(self, text: str) -> str | None:
        if is_fallback(text, self.fallback):
            return None
        return self.check(text)


def is_fallback(text: str, fallback: str) -> bool:
    """Whether ``text`` is the fallback output: the same text, or the same JSON value written otherwise."""
    if text.strip() == fallback.strip():
        return True
    if not text.lstrip().startswith(("{", "[")):
        return False
    try:
        return bool(json.loads(text) == json.loads(fallback))
    except ValueError:
        return False


# ---------------------------------------------------------------- JSON schema


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - an extra
        raise ImportError("contracts with a JSON schema need jsonschema: pip install 'thrifty[contracts]'") from None
    return jsonschema


def _schema_problem(schema: dict[str, Any]) -> tuple[str, tuple[str | int, ...]] | None:
    """What is wrong with ``schema`` (by its ``$schema`` draft, else 2020-12) and where in it, or ``None``."""
    jsonschema = _jsonschema()
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = tuple(exc.absolute_path)
        where = "/".join(str(p) for p in path)
        return exc.message + (f" (at /{where})" if where else ""), path
    return None


def _instance_problem(value: Any, schema: dict[str, Any]) -> str | None:
    jsonschema = _jsonschema()
    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return error.message + (f" (at /{where})" if where else "")


# ---------------------------------------------------------------- the five parts


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def problem(message: str, *at: str | int) -> PydanticCustomError:
    """A validation error whose ``ctx["at"]`` says where below the validated model it lies (for file:line)."""
    return PydanticCustomError("contract", "{message}", {"message": message, "at": at})


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("is empty")
    return text


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


Text = Annotated[str, AfterValidator(_not_blank)]
Regex = Annotated[str, AfterValidator(_not_blank), AfterValidator(_compiles)]


class Character(_Part):
    """Who the model is, and who reads its answers."""

    role: str = Field(min_length=1, description="who the model is: 'a support triage agent for Acme'")
    audience: str | None = Field(default=None, description="who reads the answer")


class Cause(_Part):
    """The goal of the task and why it matters."""

    goal: str = Field(min_length=1, description="what the answer achieves")
    why: str | None = Field(default=None, description="why it matters; lets the model weigh trade-offs")


class Constraint(_Part):
    """Hard limits: prose rules for the model, and checkable rules verified on every answer."""

    rules: list[Text] = Field(default_factory=list, description="limits said in words (not checked)")
    require: list[Text] = Field(default_factory=list, description="terms the answer must contain")
    forbid: list[Text] = Field(default_factory=list, description="terms the answer must not contain")
    patterns: list[Regex] = Field(default_factory=list, description="regular expressions the answer must match")
    forbid_patterns: list[Regex] = Field(default_factory=list, description="regular expressions it must not match")
    min_chars: int | None = Field(default=None, ge=0)
    max_chars: int | None = Field(default=None, ge=1)
    min_words: int | None = Field(default=None, ge=0)
    max_words: int | None = Field(default=None, ge=1)
    case_sensitive: bool = Field(default=False, description="whether require/forbid match case")

    @model_validator(mode="after")
    def _bounds(self) -> Constraint:
        for unit in ("chars", "words"):
            low, high = getattr(self, f"min_{unit}"), getattr(self, f"max_{unit}")
            if low is not None and high is not None and low > high:
                raise problem(f"min_{unit} ({low}) is greater than max_{unit} ({high})", f"min_{unit}")
        return self

    def is_empty(self) -> bool:
        return not any(getattr(self, f) for f in type(self).model_fields if f != "case_sensitive")

    def checks(self) -> list[OutputCheck]:
        out: list[OutputCheck] = []
        out += [RequiredTerm(t, self.case_sensitive) for t in self.require]
        out += [ForbiddenTerm(t, self.case_sensitive) for t in self.forbid]
        out += [PatternCheck(p) for p in self.patterns]
        out += [ForbiddenPattern(p) for p in self.forbid_patterns]
        if self.min_chars is not None or self.max_chars is not None:
            out.append(LengthCheck("chars", self.min_chars, self.max_chars))
        if self.min_words is not None or self.max_words is not None:
            out.append(LengthCheck("words", self.min_words, self.max_words))
        return out


class Contingency(_Part):
    """What to do when the input does not allow a proper answer, and when an answer breaks the contract.

    ``fallback_output`` is the answer to give when the input is missing,
    ambiguous or out of scope (``when`` says when, in the contract's terms).
    An answer that fails the contract's checks is re-asked with the errors up
    to ``reasks`` times, then each of ``fallback_models`` is tried; after that
    the call fails with a typed error, or (``on_failure = "fallback_output"``)
    answers ``fallback_output``.
    """

    rules: list[Text] = Field(default_factory=list, description="'if X, do Y' rules for particular situations")
    when: str = Field(
        default="the input is missing, ambiguous or out of scope", min_length=1,
        description="when to give fallback_output",
    )
    fallback_output: str | None = Field(default=None, description="the answer when the input is insufficient")
    reasks: int = Field(default=0, ge=0, le=10, description="re-asks with the errors after a failed check")
    fallback_models: list[Text] = Field(default_factory=list, description="models tried after the re-asks")
    on_failure: Literal["error", "fallback_output"] = Field(
        default="error", description="after every attempt failed: raise a typed error, or answer fallback_output"
    )

    @model_validator(mode="after")
    def _says_something(self) -> Contingency:
        if self.fallback_output is None and not self.rules:
            raise ValueError("give a fallback_output or at least one rule: what to do when the input falls short")
        if self.on_failure == "fallback_output" and self.fallback_output is None:
            raise problem("on_failure = 'fallback_output' needs a fallback_output", "on_failure")
        return self


class Calibration(_Part):
    """The answer's shape: format, JSON schema (or a pydantic model), a token bound, tone and style."""

    format: str = Field(default="text", description="a registered output format: text, json, markdown, ...")
    json_schema: dict[str, Any] | None = Field(
        default=None, alias="schema", description="the JSON schema the answer conforms to (implies JSON)"
    )
    schema_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    max_tokens: int | None = Field(default=None, ge=1, description="becomes max_tokens when a call sets none")
    tone: str | None = None
    style: list[Text] = Field(default_factory=list, description="style rules: 'bullets', 'no preamble', ...")

    _model: type[BaseModel] | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _from_pydantic(cls, data: Any, handler: Any) -> Calibration:
        # a pydantic model given as the schema: its JSON schema, and the model kept for validation
        model = None
        if isinstance(data, dict):
            for key in ("schema", "json_schema"):
                value = data.get(key)
                if isinstance(value, type) and issubclass(value, BaseModel):
                    model = value
                    data = {**data, key: value.model_json_schema()}
        result = handler(data)
        if model is not None:
            result._model = model
        return result

    @field_validator("format")
    @classmethod
    def _known_format(cls, fmt: str) -> str:
        if fmt not in _FORMATS:
            known = ", ".join(sorted(_FORMATS))
            raise ValueError(f"unknown format {fmt!r}{did_you_mean(fmt, _FORMATS)}; known formats: {known}")
        return fmt

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None:
            return None
        found = _schema_problem(schema)
        if found is not None:
            message, path = found
            raise problem(f"invalid JSON schema: {message}", *path)
        return schema

    @model_validator(mode="after")
    def _schema_means_json(self) -> Calibration:
        if self.json_schema is not None and self.format != "json":
            raise problem(f"a schema needs format 'json', not {self.format!r}", "format")
        return self

    @property
    def output_model(self) -> type[BaseModel] | None:
        """The pydantic model the schema came from, when it was given as one."""
        return self._model


# ---------------------------------------------------------------- the contract

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Contract(_Part):
    """A 5C prompt contract. Every part is required: a contract says all five explicitly."""

    name: str = Field(pattern=_NAME, description="how calls name it: letters, digits, '_', '.', '-'")
    description: str | None = Field(default=None, description="for people; not rendered")
    character: Character
    cause: Cause
    constraint: Constraint
    contingency: Contingency
    calibration: Calibration

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        if self.constraint.is_empty():
            raise problem("give at least one rule (prose or checkable)", "constraint")
        fallback = self.contingency.fallback_output
        schema = self.calibration.json_schema
        if fallback is not None and schema is not None:
            try:
                value = json.loads(fallback)
            except ValueError as exc:
                raise problem(f"is not JSON, but the schema needs JSON: {exc}", "contingency", "fallback_output") from None
            found = _instance_problem(value, schema)
            if found is not None:
                raise problem(f"does not conform to the schema: {found}", "contingency", "fallback_output")
        return self

    def checks(self) -> tuple[OutputCheck, ...]:
        """The checkable rules: constraint's, plus valid JSON for a JSON format without a schema."""
        checks = self.constraint.checks()
        if self.calibration.format == "json" and self.calibration.json_schema is None:
            checks.append(JSONCheck())
        fallback = self.contingency.fallback_output
        if fallback is not None:
            checks = [_UnlessFallback(check, fallback) for check in checks]
        return tuple(checks)

    @property
    def schema_name(self) -> str:
        """The schema's name for a ``response_format``: calibration's, else one made from the contract's name."""
        return self.calibration.schema_name or re.sub(r"[^A-Za-z0-9_-]", "_", self.name)

    def output_spec(self) -> OutputSpec:
        """The output contract the structured-output stage enforces (source ``contract:<name>``)."""
        c = self.contingency
        detail: dict[str, Any] = {"contract": self.name}
        if self.calibration.output_model is not None:
            detail["model"] = self.calibration.output_model
        return OutputSpec(
            schema=self.calibration.json_schema,
            schema_name=self.schema_name if self.calibration.json_schema is not None else None,
            checks=self.checks(),
            reasks=c.reasks,
            fallback_models=tuple(c.fallback_models),
            fallback_output=c.fallback_output if c.on_failure == "fallback_output" else None,
            source=f"contract:{self.name}",
            detail=detail,
        )

    def render(self, style: str = "thrifty") -> str:
        """The contract as system-prompt text (see :func:`thrifty.contracts.render.render`)."""
        from thrifty.contracts.render import render

        return render(self, style)
