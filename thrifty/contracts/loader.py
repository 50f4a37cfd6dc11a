"""Contract files (TOML or YAML, one contract each) and the registry they are loaded into.

A contract's name is its ``name`` field, else its file's stem. Every problem
is reported as ``file:line: field: message``: for YAML the line comes from the
parser's node marks; ``tomllib`` keeps no positions, so :func:`toml_key_lines`
scans the (already valid) TOML text for the line of every key, table and array
element. A misspelt field says which field was meant.

    registry = ContractRegistry.from_paths(["contracts/"])
    registry.get("support-triage")      # UnknownContractError names the known ones
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from thrifty.contracts.contract import Contract, did_you_mean
from thrifty.errors import ContractFileError, UnknownContractError

__all__ = [
    "CONTRACT_SUFFIXES",
    "ContractRegistry",
    "Problem",
    "check_paths",
    "load_contract",
    "parse_contract",
    "toml_key_lines",
]

#: File suffixes read as contracts, and their syntax.
CONTRACT_SUFFIXES: dict[str, str] = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a contract file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


# ---------------------------------------------------------------- parsing one file


def load_contract(path: str | Path) -> Contract:
    """Read and validate one contract file; :class:`ContractFileError` lists what is wrong."""
    contract, problems = _load(Path(path))
    if problems:
        raise ContractFileError(problems)
    assert contract is not None
    return contract


def parse_contract(text: str, syntax: str, *, source: str = "<contract>", name: str | None = None) -> Contract:
    """Validate a contract written in ``syntax`` (``toml`` or ``yaml``); ``name`` if the text gives none."""
    contract, problems = _parse(text, syntax, source, name)
    if problems:
        raise ContractFileError(problems)
    assert contract is not None
    return contract


def _load(path: Path) -> tuple[Contract | None, list[Problem]]:
    syntax = CONTRACT_SUFFIXES.get(path.suffix.lower())
    if syntax is None:
        known = ", ".join(CONTRACT_SUFFIXES)
        return None, [Problem(str(path), None, "", f"not a contract file (suffixes: {known})")]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(str(path), None, "", f"cannot read it: {exc}")]
    return _parse(text, syntax, str(path), path.stem)


def _parse(text: str, syntax: str, source: str, name: str | None) -> tuple[Contract | None, list[Problem]]:
    if syntax == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            line = _toml_error_line(str(exc))
            return None, [Problem(source, line, "", f"invalid TOML: {_strip_position(str(exc))}")]
        lines = _Lines(lambda: toml_key_lines(text))
    elif syntax == "yaml":
        parsed = _parse_yaml(text, source)
        if isinstance(parsed, Problem):
            return None, [parsed]
        data, root = parsed
        lines = _Lines(lambda: _yaml_key_lines(root))
    else:
        raise ValueError(f"unknown contract syntax {syntax!r}; known: toml, yaml")
    if not isinstance(data, dict):
        return None, [Problem(source, 1, "", f"a contract is a table of fields, not {type(data).__name__}")]
    if "name" not in data and name is not None:
        data = {**data, "name": name}
    try:
        return Contract.model_validate(data), []
    except ValidationError as exc:
        return None, [_problem(source, error, lines) for error in exc.errors(include_url=False)]


class _Lines:
    """Key paths to line numbers, worked out on first use (only a file with problems needs them)."""

    def __init__(self, build: Any) -> None:
        self._build = build
        self._map: dict[Loc, int] | None = None

    def find(self, loc: Loc) -> int | None:
        if self._map is None:
            self._map = self._build()
        for end in range(len(loc), 0, -1):  # the deepest part of the path the file spells out
            line = self._map.get(loc[:end])
            if line is not None:
                return line
        return 1 if loc == () else None


def _problem(source: str, error: Any, lines: _Lines) -> Problem:
    loc: Loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    loc = loc + tuple(ctx.get("at", ()))
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _field_names(loc[:-1])
        message = f"unknown field{did_you_mean(loc[-1], known)}; known fields: {', '.join(known)}"
    elif kind == "missing":
        message = "missing: this field is required"
    else:
        message = str(ctx.get("message") or error["msg"]).removeprefix("Value error, ")
    return Problem(source, lines.find(loc), _dotted(loc), message)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_names(loc: Loc) -> list[str]:
    """The field names (as written in files) of the contract part at ``loc``."""
    model: type[BaseModel] = Contract
    for part in loc:
        if isinstance(part, int):
            continue
        field = _fields_by_alias(model).get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(_fields_by_alias(model))


def _fields_by_alias(model: type[BaseModel]) -> dict[str, Any]:
    return {info.alias or name: info for name, info in model.model_fields.items()}


# ---------------------------------------------------------------- TOML lines


def _toml_error_line(message: str) -> int | None:
    # tomllib (Python < 3.14) gives the position only in its message: "... (at line 3, column 5)"
    match = re.search(r"\(at line (\d+), column \d+\)", message)
    return int(match.group(1)) if match else None


def _strip_position(message: str) -> str:
    return re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = re.compile(r"[,\]}\n#]")


def toml_key_lines(text: str) -> dict[Loc, int]:
    """Line (1-based) of every table, key, and array element of a valid TOML document, by key path.

    Array elements are keyed by their index (``("constraint", "patterns", 1)``);
    keys of inline tables by their path. The first occurrence wins.
    """
    return _TomlScanner(text).scan()


class _TomlScanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.out: dict[Loc, int] = {}

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _advance(self, n: int = 1) -> None:
        self.line += self.s.count("\n", self.i, self.i + n)
        self.i += n

    def _skip(self, newlines: bool) -> None:
        while True:
            c = self._peek()
            if c in (" ", "\t", "\r") or (newlines and c == "\n"):
                self._advance()
            elif c == "#":
                while self._peek() not in ("", "\n"):
                    self._advance()
            else:
                return

    def _to_line_end(self) -> None:
        while self._peek() not in ("", "\n"):
            self._advance()

    def _string(self) -> str:
        q = self._peek()
        if self.s.startswith(q * 3, self.i):
            end = self.s.find(q * 3, self.i + 3)
            end = len(self.s) if end < 0 else end + 3
            while self.s.startswith(q, end):  # up to two quotes may end the content: """a"""""
                end += 1
            content = self.s[self.i + 3 : end - 3]
            self._advance(end - self.i)
            return content
        j = self.i + 1
        while j < len(self.s) and self.s[j] != q and self.s[j] != "\n":
            j += 2 if q == '"' and self.s[j] == "\\" else 1
        content = self.s[self.i + 1 : j]
        self._advance(j + 1 - self.i)
        return content

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip(False)
            c = self._peek()
            if c in ('"', "'"):
                parts.append(self._string())
            else:
                match = _BARE_KEY.match(self.s, self.i)
                if match is None:
                    return tuple(parts)
                parts.append(match.group())
                self._advance(match.end() - self.i)
            self._skip(False)
            if self._peek() != ".":
                return tuple(parts)
            self._advance()

    def _value(self, path: Loc) -> None:
        self._skip(False)
        c = self._peek()
        if c == "[":
            self._advance()
            index = 0
            while True:
                self._skip(True)
                c = self._peek()
                if c in ("]", ""):
                    self._advance()
                    return
                if c == ",":
                    self._advance()
                    continue
                self.out.setdefault((*path, index), self.line)
                self._value((*path, index))
                index += 1
        elif c == "{":
            self._advance()
            while True:
                self._skip(False)
                c = self._peek()
                if c in ("}", "", "\n"):
                    self._advance()
                    return
                if c == ",":
                    self._advance()
                    continue
                line = self.line
                key = self._key()
                if not key:
                    self._advance()
                    continue
                self.out.setdefault((*path, *key), line)
                self._skip(False)
                if self._peek() == "=":
                    self._advance()
                self._value((*path, *key))
        elif c in ('"', "'"):
            self._string()
        else:
            match = _SCALAR_END.search(self.s, self.i)
            end = len(self.s) if match is None else match.start()
            self._advance(max(end - self.i, 1 if c not in ("", "\n") else 0))

    def scan(self) -> dict[Loc, int]:
        table: Loc = ()
        while True:
            self._skip(True)
            c = self._peek()
            if c == "":
                return self.out
            line = self.line
            if c == "[":
                self._advance(2 if self.s.startswith("[[", self.i) else 1)
                table = self._key()
                for end in range(1, len(table) + 1):
                    self.out.setdefault(table[:end], line)
                self._to_line_end()
                continue
            key = self._key()
            if not key:
                self._to_line_end()
                continue
            full = (*table, *key)
            for end in range(len(table) + 1, len(full) + 1):
                self.out.setdefault(full[:end], line)
            self._skip(False)
            if self._peek() == "=":
                self._advance()
            self._value(full)


# ---------------------------------------------------------------- YAML


def _parse_yaml(text: str, source: str) -> tuple[Any, Any] | Problem:
    try:
        import yaml
    except ImportError:
        return Problem(source, None, "", "YAML contracts need PyYAML: pip install 'thrifty[contracts]'")
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        return Problem(source, line, "", f"invalid YAML: {exc.problem or exc.context}")
    except yaml.YAMLError as exc:
        return Problem(source, None, "", f"invalid YAML: {exc}")
    finally:
        loader.dispose()
    return data, root


def _yaml_key_lines(root: Any) -> dict[Loc, int]:
    import yaml

    out: dict[Loc, int] = {}

    def walk(node: Any, path: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    sub = (*path, key.value)
                    out.setdefault(sub, key.start_mark.line + 1)
                    walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                out.setdefault((*path, index), item.start_mark.line + 1)
                walk(item, (*path, index))

    if root is not None:
        walk(root, ())
    return out


# ---------------------------------------------------------------- directories and the registry


def _contract_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix.lower() in CONTRACT_SUFFIXES and p.is_file())
        else:
            yield path


def check_paths(paths: Iterable[str | Path]) -> tuple[list[Contract], list[Problem]]:
    """Load every contract file in ``paths`` (files, or directories of them): what loaded, and every problem."""
    contracts: list[Contract] = []
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for path in _contract_files(paths):
        if not path.exists():
            problems.append(Problem(str(path), None, "", "no such file or directory"))
            continue
        contract, found = _load(path)
        problems += found
        if contract is None:
            continue
        if contract.name in seen:
            problems.append(Problem(str(path), None, "name",
                                    f"contract {contract.name!r} is already defined in {seen[contract.name]}"))
            continue
        seen[contract.name] = path
        contracts.append(contract)
    return contracts, problems


class ContractRegistry:
    """Contracts by name. Built once (per engine), read on every call."""

    def __init__(self, contracts: Iterable[Contract] = ()) -> None:
        self._contracts: dict[str, Contract] = {}
        for contract in contracts:
            self.add(contract)

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> ContractRegistry:
        """Every contract in ``paths``; :class:`ContractFileError` lists every problem in every file."""
        contracts, problems = check_paths(paths)
        if problems:
            raise ContractFileError(problems)
        return cls(contracts)

    def add(self, contract: Contract) -> None:
        if contract.name in self._contracts:
            raise ValueError(f"a contract named {contract.name!r} is already registered")
        self._contracts[contract.name] = contract

    def get(self, name: str) -> Contract:
        contract = self._contracts.get(name)
        if contract is None:
            raise self.unknown(name)
        return contract

    def unknown(self, name: str) -> UnknownContractError:
        """The error for a name no contract has: it names the known ones."""
        if not self._contracts:
            message = f"unknown contract {name!r}: no contracts are loaded (see [contracts] in the settings)"
        else:
            message = (f"unknown contract {name!r}{did_you_mean(name, self._contracts)}; "
                       f"known contracts: {', '.join(self.names())}")
        return UnknownContractError(message, param="thrifty.contract")

    def names(self) -> list[str]:
        return sorted(self._contracts)

    def __contains__(self, name: object) -> bool:
        return name in self._contracts

    def __iter__(self) -> Iterator[Contract]:
        return iter([self._contracts[n] for n in self.names()])

    def __len__(self) -> int:
        return len(self._contracts)

    def __repr__(self) -> str:
        return f"<ContractRegistry {self.names()}>"
