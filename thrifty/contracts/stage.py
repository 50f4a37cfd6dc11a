"""The contracts stage: a call made under a 5C contract gets the contract's prompt and output contract.

A call names its contract in its thrifty options (``{"contract": "support-triage"}``:
``extra_body={"thrifty": ...}`` in the wrapper, the ``x-thrifty-options``
header on the proxy, or an alias's ``options``). The stage then

* puts the rendered contract (:func:`thrifty.contracts.render.render`, style
  ``thrifty``) in a system message of its own, first, before the caller's
  own system text: the same bytes on every call, so the provider's prompt
  cache keeps hitting on it;
* sets ``max_tokens`` to the calibration's bound when the call set none;
* attaches the calibration's schema as a ``json_schema`` response format when
  the call brought no response format of its own;
* puts the contract's :class:`~thrifty.contracts.spec.OutputSpec` on
  ``ctx.output`` (source ``contract:<name>``) for the structured-output stage
  to enforce: the schema (the call's own json_schema when it brought one), the
  checks, and the contingency's re-asks, fallback models and fallback output;
* tags the ledger row ``contract:<name>``.

A name no contract has is an :class:`~thrifty.errors.UnknownContractError`
(400 in the caller's API shape). Contracts are loaded once, when the engine is
built (``[contracts]`` in the settings); a broken contract file stops the
engine from being built, with every problem as ``file:line: field: message``.

No saving is recorded: a contract adds its tokens to the prompt. Measured
against writing the same contract as 5C prose, the rendering is shorter (see
``bench/contracts.py``), but a caller that sent no contract would have sent
neither, so that difference is not a saving of the call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from thrifty.contracts.contract import Contract
from thrifty.contracts.loader import ContractRegistry
from thrifty.contracts.render import render
from thrifty.contracts.spec import OutputSpec
from thrifty.middleware.context import CallContext
from thrifty.middleware.pipeline import Stage
from thrifty.types import Message, Request, ResponseFormat, TextPart

if TYPE_CHECKING:
    from thrifty.middleware.engine import Engine
    from thrifty.settings import Settings

__all__ = ["ContractStage", "contract_paths"]


@dataclass(frozen=True, slots=True)
class _Prepared:
    contract: Contract
    prompt: str
    spec: OutputSpec


def contract_paths(settings: Settings) -> list[Path]:
    """Where ``settings`` says contracts live: ``[contracts] dir`` (default ``<data_dir>/contracts``
    when that exists) and ``paths``."""
    config = settings.contracts
    paths: list[Path] = []
    if config.dir is not None:
        paths.append(config.dir)
    elif (settings.data_dir / "contracts").is_dir():
        paths.append(settings.data_dir / "contracts")
    return paths + list(config.paths)


class ContractStage(Stage):
    """Applies the contract a call names; passes every other call through untouched."""

    kind = "contracts"

    def __init__(self, registry: ContractRegistry | Iterable[Contract] = (), *, style: str = "thrifty") -> None:
        self.registry = registry if isinstance(registry, ContractRegistry) else ContractRegistry(registry)
        # prepare once, apply per call: every contract rendered and its output contract built up front
        self._prepared = {c.name: _Prepared(c, render(c, style), c.output_spec()) for c in self.registry}

    @classmethod
    def from_engine(cls, engine: Engine) -> ContractStage:
        return cls(ContractRegistry.from_paths(contract_paths(engine.settings)))

    def prepare(self, request: Request, ctx: CallContext) -> Request:
        name = ctx.options.contract
        if not name:
            return request
        prepared = self._prepared.get(name)
        if prepared is None:
            raise self.registry.unknown(name)
        spec = prepared.spec
        if isinstance(ctx.output, OutputSpec) and ctx.output.source == spec.source:
            return request  # applied already
        changes: dict[str, object] = {"messages": [Message("system", [TextPart(prepared.prompt)]), *request.messages]}
        calibration = prepared.contract.calibration
        if request.max_tokens is None and calibration.max_tokens is not None:
            changes["max_tokens"] = calibration.max_tokens
        fmt = request.response_format
        if fmt is None and spec.schema is not None:
            changes["response_format"] = ResponseFormat("json_schema", schema=spec.schema, name=spec.schema_name)
        elif fmt is not None and fmt.type == "json_schema" and fmt.schema is not None:
            spec = dataclasses.replace(spec, schema=fmt.schema, schema_name=fmt.name)  # the call's own schema wins
        ctx.output = spec
        ctx.tags = [*ctx.tags, f"contract:{name}"]
        return request.replace(**changes)

    def __repr__(self) -> str:
        return f"<ContractStage contracts={self.registry.names()}>"
