"""The facts of one upstream attempt, as the observer hands them to the recorder.

A :class:`LedgerRecord` is built on the request path, so it is a plain slotted
dataclass: no validation, no pricing, no I/O. The recorder prices it (when
``price_source`` is still ``None``) and writes it off the request path.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from thrifty.middleware.context import Saving
from thrifty.types import Usage

__all__ = ["LedgerRecord", "Status"]


class Status:
    """The values of ``LedgerRecord.status``."""

    OK = "ok"
    ERROR = "error"  # the upstream (or the provider adapter) failed
    CLIENT_DISCONNECTED = "client_disconnected"  # a stream was closed before its end
    CANCELLED = "cancelled"  # the call was cancelled (task cancellation, KeyboardInterrupt)
    INVALID_OUTPUT = "invalid_output"  # answered (and billed), but the answer failed its output contract


@dataclass(slots=True)
class LedgerRecord:
    """One row of ``llm_calls``, plus the call's savings, tags and optional payload."""

    call_id: str
    started_at: datetime  # timezone-aware UTC
    entry: str  # "wrapper" | "proxy"
    wire: str  # "openai" | "anthropic"
    parent_call_id: str | None = None
    attempt: int = 1
    stream: bool = False
    ttft_ms: float | None = None
    duration_ms: float | None = None
    overhead_ms: float | None = None
    provider: str | None = None
    model_requested: str | None = None
    model_used: str | None = None
    route_decision: str | None = None
    response_id: str | None = None
    key_id: str | None = None  # a hash of the key, never the key
    user: str | None = None
    project: str | None = None
    tags: list[str] = field(default_factory=list)
    input_tokens: int = 0  # uncached prompt tokens
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0  # reasoning tokens included
    reasoning_tokens: int = 0
    usage_source: str = "provider"  # "provider" | "estimate"
    cost_usd: Decimal | None = None
    price_source: str | None = None  # None: not priced yet; "unpriced": could not be priced
    price_version: str | None = None
    tokens_before_transforms: int | None = None
    tokens_saved: int | None = None
    usd_saved: Decimal | None = None
    savings: dict[str, Saving] = field(default_factory=dict)
    status: str = Status.OK
    error_type: str | None = None
    http_status: int | None = None
    # how to price it: the provider's genai-prices id, and whether the model runs in-process
    pricing_id: str | None = None
    is_local: bool = False
    # written only when the operator opts in (ledger.store_prompts)
    prompt: Any = None
    response: Any = None

    @property
    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
            source="estimate" if self.usage_source == "estimate" else "provider",
        )

    def set_usage(self, usage: Usage) -> None:
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.cache_read_tokens = usage.cache_read_tokens
        self.cache_write_tokens = usage.cache_write_tokens
        self.reasoning_tokens = usage.reasoning_tokens
        self.usage_source = usage.source

    def set_savings(self, savings: dict[str, Saving]) -> None:
        """Take the savings of each technique and their totals (tokens before = the first technique's)."""
        if not savings:
            return
        self.savings = dict(savings)
        first = next(iter(savings.values()))
        self.tokens_before_transforms = first.tokens_before
        self.tokens_saved = sum(s.tokens_saved for s in savings.values())
        usd = [s.usd_saved for s in savings.values() if s.usd_saved is not None]
        self.usd_saved = sum((_decimal(u) for u in usd), Decimal(0)) if usd else None

    # ------------------------------------------------------------ JSON (spill files)

    def to_json(self) -> str:
        """One line of a spill file."""
        data: dict[str, Any] = {"v": 1}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "savings":
                value = {
                    name: {
                        "tokens_before": s.tokens_before,
                        "tokens_after": s.tokens_after,
                        "usd_saved": None if s.usd_saved is None else str(_decimal(s.usd_saved)),
                        "detail": s.detail,
                    }
                    for name, s in value.items()
                }
            elif f.name in ("prompt", "response"):
                value = jsonable(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Decimal):
                value = str(value)
            data[f.name] = value
        return json.dumps(data, default=str, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> LedgerRecord:
        data = json.loads(line)
        data.pop("v", None)
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["started_at"] = datetime.fromisoformat(data["started_at"])
        for name in ("cost_usd", "usd_saved"):
            if data.get(name) is not None:
                data[name] = Decimal(data[name])
        data["savings"] = {
            name: Saving(
                tokens_before=s["tokens_before"],
                tokens_after=s["tokens_after"],
                usd_saved=None if s.get("usd_saved") is None else Decimal(s["usd_saved"]),  # type: ignore[arg-type]
                detail=s.get("detail") or {},
            )
            for name, s in (data.get("savings") or {}).items()
        }
        return cls(**data)


def _decimal(value: float | Decimal) -> Decimal:
    # str() first: Decimal(0.1) would keep the binary float's 55 digits
    return value if isinstance(value, Decimal) else Decimal(str(value))


def jsonable(value: Any) -> Any:
    """Neutral types (dataclasses), dicts, lists and scalars as JSON-ready data."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return str(value)
