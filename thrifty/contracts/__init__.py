"""5C prompt contracts and structured-output enforcement.

A :class:`Contract` (Character, Cause, Constraint, Contingency, Calibration)
is written in a TOML or YAML file, loaded into a :class:`ContractRegistry`,
rendered into the system prompt of the calls that name it, and enforced on
their answers through the :class:`~thrifty.contracts.spec.OutputSpec` it puts
on the call.
"""

from thrifty.contracts.contract import (
    Calibration,
    Cause,
    Character,
    Constraint,
    Contingency,
    Contract,
    register_format,
)
from thrifty.contracts.loader import ContractRegistry, Problem, check_paths, load_contract, parse_contract
from thrifty.contracts.render import register_renderer, render
from thrifty.contracts.spec import OutputCheck, OutputSpec
from thrifty.contracts.stage import ContractStage

__all__ = [
    "Calibration",
    "Cause",
    "Character",
    "Constraint",
    "Contingency",
    "Contract",
    "ContractRegistry",
    "ContractStage",
    "OutputCheck",
    "OutputSpec",
    "Problem",
    "check_paths",
    "load_contract",
    "parse_contract",
    "register_format",
    "register_renderer",
    "render",
]
