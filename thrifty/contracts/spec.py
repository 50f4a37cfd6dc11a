"""What a call's output must be, and what to do when it is not.

An :class:`OutputSpec` is put on :attr:`CallContext.output
<thrifty.middleware.context.CallContext.output>` by the stage that knows the
output contract: the contracts stage (a 5C contract's Calibration, Constraint
and Contingency) or the structured-output stage (an OpenAI
``response_format`` of type ``json_schema``). The structured-output stage
enforces it: a grammar or a provider's native strict schema where possible,
then validation of every answer, then the contingency (re-ask with the errors,
fallback models, a fallback output, else a typed error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["OutputCheck", "OutputSpec"]


@runtime_checkable
class OutputCheck(Protocol):
    """A checkable rule on an answer's text (a required term, a pattern, a length bound...)."""

    name: str

    def __call__(self, text: str) -> str | None:
        """``None`` when the text passes; otherwise what is wrong, said so the model can fix it."""
        ...


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """The output contract of one call."""

    schema: dict[str, Any] | None = None  # the JSON schema the answer must conform to
    schema_name: str | None = None
    checks: tuple[OutputCheck, ...] = ()
    reasks: int = 0  # re-ask with the errors up to this many times...
    fallback_models: tuple[str, ...] = ()  # ...then try these models, in order...
    fallback_output: str | None = None  # ...then answer this; with None, raise OutputValidationError
    source: str = "response_format"  # or "contract:<name>"
    detail: dict[str, Any] = field(default_factory=dict)
