"""Per-call context and the typed per-call options.

A :class:`CallContext` is made by the entry (wrapper or proxy) for each call
and travels beside the neutral :class:`~thrifty.types.Request` through every
stage. Stages record what they did on it (the route, the savings of each
technique); the ledger observer reads it to write the call's row.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    field_validator,
)

from thrifty.errors import InvalidRequestError, UnknownOptionError
from thrifty.settings import CompressionMode

if TYPE_CHECKING:
    from thrifty.middleware.providers.base import Provider
    from thrifty.settings import RetrySettings

Entry = Literal["wrapper", "proxy"]


class CompressOptions(BaseModel):
    """``compress`` in the thrifty options: prompt compression for this call.

    Fields left unset take the ``[compression]`` settings. ``rate`` is the share
    of the compressible tokens to keep; ``min_tokens`` the shortest text part
    worth compressing; ``force_keep`` terms and ``protect`` regular expressions
    are kept as written; ``roles`` are the message roles whose text is compressed;
    ``sentence_weight`` how much a sentence's mean keep probability lifts its words
    (0: llmlingua's word-by-word rule; see :mod:`thrifty.compressors.lingua`);
    ``relation_weight`` how much the relation words ("by", "to", "than"...) are
    favoured (0: as llmlingua);
    ``question`` the question the context is compressed for (a string), ``false``
    to compress without one, ``true`` for the question found in the messages
    (see :mod:`thrifty.compressors.stage`);
    ``target_tokens`` a budget for the whole prompt: compressed only when it is
    over, and only as far as it must be (``rate``, when given too, is the most
    it may keep); ``fit_context`` the same for the target model's context
    window, less the answer's room.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float | None = Field(default=None, gt=0, le=1)
    min_tokens: int | None = Field(default=None, ge=0)
    force_keep: list[str] = Field(default_factory=list)
    protect: list[str] = Field(default_factory=list, description="regular expressions whose matches are kept")
    roles: list[Literal["user", "tool", "assistant"]] | None = None
    mode: CompressionMode | None = None
    sentence_weight: float | None = Field(default=None, ge=0, le=100)
    relation_weight: float | None = Field(default=None, ge=0, le=100)
    question: str | bool | None = None
    target_tokens: int | None = Field(default=None, ge=1)
    fit_context: StrictBool | None = None

    @field_validator("protect")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        import re

        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        return patterns


_Compress = Annotated[
    # strict: "yes", "no" or 1 are not read as true or false
    Annotated[StrictBool, Tag("bool")] | Annotated[CompressOptions, Tag("options")],
    Discriminator(lambda v: "options" if isinstance(v, dict | CompressOptions) else "bool"),
]


class ThriftyOptions(BaseModel):
    """Options a caller sets per call.

    In the wrapper: ``extra_body={"thrifty": {...}}``; in the proxy: the
    ``x-thrifty-options`` header (JSON) or a ``thrifty`` body field. Unknown keys
    are an error. Fields a caller did not set are told apart from ones set to
    ``None`` by ``model_fields_set``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tags: list[str] = Field(default_factory=list, description="labels for the ledger and dashboards")
    user: str | None = Field(default=None, description="the end user the call is made for")
    project: str | None = Field(default=None, description="the project the spend belongs to")
    compress: _Compress | None = Field(
        default=None, description="prompt compression: true, false, or options (unset: the [compression] settings)"
    )
    contract: str | None = Field(default=None, description="the name of the 5C contract the call is made under")

    @classmethod
    def parse(cls, raw: Any) -> ThriftyOptions:
        """Validate raw options, with an error that names the bad key."""
        if raw is None:
            return EMPTY_OPTIONS
        if isinstance(raw, ThriftyOptions):
            return raw
        if not isinstance(raw, dict):
            raise InvalidRequestError(
                f"thrifty options must be a JSON object, got {type(raw).__name__}", param="thrifty"
            )
        if not raw:
            return EMPTY_OPTIONS
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [str(p) for p in first["loc"]]
            tag = loc[1] if len(loc) > 1 and loc[0] == "compress" and loc[1] in ("options", "bool") else None
            if tag is not None:  # the union's tag is not a key the caller wrote
                del loc[1]
            nested = tag == "options"
            where = ".".join(loc)
            if first["type"] == "extra_forbidden":
                known = ", ".join(sorted((CompressOptions if nested else cls).model_fields))
                raise UnknownOptionError(
                    f"unknown thrifty option {where!r}; known options are: {known}",
                    param=f"thrifty.{where}",
                ) from None
            message = first["msg"]
            if tag == "bool":  # neither a boolean nor an object: say both, not only the first of the union
                message = f"expected true, false or an object of options such as {{\"rate\": 0.5}}, got {json.dumps(raw['compress'], default=str)}"
            raise InvalidRequestError(f"invalid thrifty option {where!r}: {message}", param=f"thrifty.{where}") from None


EMPTY_OPTIONS = ThriftyOptions()


@dataclass(slots=True)
class Saving:
    """What one technique saved on a call, measured against not applying it."""

    tokens_before: int
    tokens_after: int
    usd_saved: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after


@dataclass(slots=True)
class Target:
    """Where a call goes: the provider object and the model name it knows."""

    provider: Provider
    model: str


def new_call_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class CallContext:
    entry: Entry
    wire: Literal["openai", "anthropic"]
    options: ThriftyOptions = EMPTY_OPTIONS
    call_id: str = field(default_factory=new_call_id)
    parent_call_id: str | None = None
    attempt: int = 1
    key_id: str | None = None
    user: str | None = None
    project: str | None = None
    tags: list[str] = field(default_factory=list)
    deadline: float | None = None  # time.monotonic() by which the call must end
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    model_requested: str = ""
    target: Target | None = None
    bound_provider: Provider | None = None  # a wrapped client's own provider, for bare model names
    virtual_key: Any = None  # the proxy's authenticated virtual key (thrifty.middleware.limits.VirtualKey)
    route_decision: str | None = None
    # set by routing (an alias): models to try after the target fails, and the route's own retry settings
    fallbacks: tuple[str, ...] = ()
    retry: RetrySettings | None = None
    savings: dict[str, Saving] = field(default_factory=dict)
    decode_hooks: list[Any] = field(default_factory=list)
    output: Any = None  # the call's output contract (thrifty.contracts.spec.OutputSpec), when it has one
    # set per attempt by the structured-output stage: answer -> what is wrong with it (empty when accepted),
    # so that the ledger marks an answer that failed its contract
    output_judge: Any = None
    upstream_headers: dict[str, str] = field(default_factory=dict)
    upstream_timeout: dict[str, float | None] | None = None  # httpx-style timeouts the caller asked for
    # facts the ledger observer fills in, that the entry may read to answer (headers)
    upstream_ms: float = 0.0
    result: Any = None

    def adopt(self, last: CallContext) -> None:
        """Take the facts of the attempt that ended the call (``last``, a child), for the entry to answer with."""
        if last is self:
            return
        self.target = last.target
        self.route_decision = last.route_decision
        self.upstream_ms = last.upstream_ms
        if last.result is not None:
            self.result = last.result

    def child(self) -> CallContext:
        """A context for another attempt (retry, reask, fallback) of this call."""
        return CallContext(
            entry=self.entry,
            wire=self.wire,
            options=self.options,
            parent_call_id=self.parent_call_id or self.call_id,
            attempt=self.attempt + 1,
            key_id=self.key_id,
            user=self.user,
            project=self.project,
            tags=self.tags,
            deadline=self.deadline,
            model_requested=self.model_requested,
            target=self.target,
            bound_provider=self.bound_provider,
            virtual_key=self.virtual_key,
            route_decision=self.route_decision,
            fallbacks=self.fallbacks,
            retry=self.retry,
            savings=dict(self.savings),
            output=self.output,
            upstream_headers=self.upstream_headers,
            upstream_timeout=self.upstream_timeout,
        )
