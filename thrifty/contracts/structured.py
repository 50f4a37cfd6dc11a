"""The structured-output stage: enforce a call's output contract, whatever the provider.

A call has an output contract when the contracts stage put an
:class:`~thrifty.contracts.spec.OutputSpec` on ``ctx.output``, or when its
request has a ``response_format`` of type ``json_schema`` (then the spec comes
from ``[structured]`` in the settings: re-asks, fallback models). Other calls
pass through untouched.

Per call, the request is prepared for the provider the routing chose, by the
preparer registered for its kind (:func:`register_preparer`):

- OpenAI and OpenAI-compatible servers: native strict ``json_schema``, the
  schema fitted to OpenAI's strict subset (:func:`~thrifty.contracts.schema.to_strict`);
  a caller's ``strict: false`` is respected;
- Anthropic: its native structured output (``output_config.format``, written by
  the Anthropic codec) with the schema fitted to what Anthropic enforces, or,
  with ``[structured] anthropic_mode = "tool"`` (or for a schema the native
  subset cannot express), a forced tool whose input schema is the schema; the
  tool's input comes back as the JSON text answer an OpenAI model would give.
  A call with tools of its own always gets the native format;
- the local model: the request is left as it is; the local provider masks its
  decoding with the schema's grammar.

Every answer is then validated: JSON parse, the caller's ORIGINAL schema (so
keywords a provider does not enforce are enforced here), and the spec's checks.
A failure runs the contingency: re-ask with the errors (the bad answer and a
message listing what is wrong) up to ``spec.reasks`` times, then each of
``spec.fallback_models`` once, then ``spec.fallback_output``, else
:class:`~thrifty.errors.OutputValidationError` (HTTP 422). An answer cut off at
``max_tokens`` is re-asked for a shorter answer and tried on the fallback
models the same way; when the last answer is cut off too, it is returned as
the provider gave it, with ``finish_reason`` ``"length"``: what OpenAI itself
returns, and what the SDKs' ``parse()`` report as their own error
(``openai.LengthFinishReasonError``: the length limit was reached). A re-ask
or fallback attempt that fails upstream moves on to the next fallback model
(the first attempt's own failure is the call's, as without an output
contract). Each attempt is its own child context, so the ledger has one row
per attempt under the call's id.

Streams: when a call with an output contract asks for a stream, its attempts
run unstreamed and the accepted answer is sent as a stream: a caller never sees
a half-valid document it would have to take back. The exception is a local
model whose grammar enforces every keyword of the schema and a contract with no
checks: its answer cannot fail, so it streams token by token as it decodes. Savings: none are recorded;
the contingency's cost is visible as its own ledger rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from thrifty.contracts.schema import ANTHROPIC, OPENAI_STRICT, check_schema, to_strict, validator_for
from thrifty.contracts.spec import OutputSpec
from thrifty.errors import InvalidRequestError, OutputValidationError
from thrifty.middleware.pipeline import Stage
from thrifty.types import (
    AsyncEventStream,
    Choice,
    ChoiceEnd,
    EventStream,
    Message,
    Request,
    Response,
    ResponseFormat,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolChoice,
    UsageEvent,
)

if TYPE_CHECKING:
    from thrifty.middleware.context import CallContext, Target
    from thrifty.middleware.providers.base import Provider
    from thrifty.settings import StructuredSettings

__all__ = ["Prepared", "StructuredStage", "register_preparer"]


@dataclass(slots=True)
class Prepared:
    """A request made ready for one provider, and how to read its answers back."""

    request: Request
    tool_name: str | None = None  # the answer arrives as this forced tool's input
    removed: tuple[str, ...] = ()  # schema keywords the provider does not enforce (validated here)
    nulls_added: bool = False  # optional properties were made nullable: drop the nulls from answers
    guaranteed: bool = False  # the provider's decoding enforces every keyword: an answer can only be cut short


#: ``(request, spec, settings) -> Prepared``
Preparer = Callable[[Request, OutputSpec, "StructuredSettings"], Prepared]
_PREPARERS: dict[str, Preparer] = {}


def register_preparer(kind: str, preparer: Preparer) -> None:
    """Prepare requests for providers of ``kind`` (a provider kind, or a wire name as the fallback)."""
    _PREPARERS[kind] = preparer


def _preparer(provider: Provider | None) -> Preparer:
    if provider is None:
        return _leave
    return _PREPARERS.get(provider.kind) or _PREPARERS.get(provider.wire or "local") or _leave


def _format_of(request: Request, spec: OutputSpec) -> ResponseFormat | None:
    rf = request.response_format
    if rf is not None and rf.type == "json_schema":
        return rf
    if spec.schema is None:
        return None
    return ResponseFormat("json_schema", schema=spec.schema, name=spec.schema_name or "output")


def _leave(request: Request, spec: OutputSpec, settings: StructuredSettings) -> Prepared:
    rf = _format_of(request, spec)
    if rf is not None and rf is not request.response_format:
        request = request.replace(response_format=rf)
    return Prepared(request)


def _openai(request: Request, spec: OutputSpec, settings: StructuredSettings) -> Prepared:
    rf = _format_of(request, spec)
    if rf is None or rf.schema is None or rf.strict is False:
        return _leave(request, spec, settings)
    fitted = to_strict(rf.schema, OPENAI_STRICT)
    sent = ResponseFormat("json_schema", schema=fitted.schema, name=rf.name or spec.schema_name or "output",
                          strict=True if fitted.strict else None, description=rf.description)
    return Prepared(request.replace(response_format=sent), removed=fitted.removed, nulls_added=fitted.nullable_added)


def _anthropic(request: Request, spec: OutputSpec, settings: StructuredSettings) -> Prepared:
    rf = _format_of(request, spec)
    if rf is None or rf.schema is None:
        return _leave(request, spec, settings)
    fitted = to_strict(rf.schema, ANTHROPIC)
    if request.tools or (fitted.strict and settings.anthropic_mode == "native"):
        # a forced tool would keep the model from the caller's own tools: native, as fitted as it gets
        sent = ResponseFormat("json_schema", schema=fitted.schema, name=rf.name)
        return Prepared(request.replace(response_format=sent), removed=fitted.removed)
    schema = fitted.schema if fitted.strict else rf.schema
    if schema.get("type") != "object":
        raise InvalidRequestError(
            "Anthropic models can be asked for this schema only as a tool input, and a tool input must be a "
            "JSON object: give the schema an object root", param="response_format.json_schema.schema")
    name = rf.name or spec.schema_name or "output"
    tool = Tool(name=name, description=rf.description or "Give the answer as this tool's input.",
                parameters=schema)
    sent_request = request.replace(response_format=None, tools=[tool], tool_choice=ToolChoice("tool", name=name))
    return Prepared(sent_request, tool_name=name, removed=fitted.removed)


def _local(request: Request, spec: OutputSpec, settings: StructuredSettings) -> Prepared:
    """The local provider masks its decoding with the schema's grammar; the keywords it cannot enforce are validated."""
    prepared = _leave(request, spec, settings)
    rf = prepared.request.response_format
    if rf is not None and rf.schema is not None:
        from thrifty.contracts.grammar import unenforced_keywords

        prepared.removed = tuple(str(k) for k in unenforced_keywords(rf.schema))
        prepared.guaranteed = not prepared.removed
    return prepared


register_preparer("openai", _openai)  # the OpenAI wire: OpenAI and OpenAI-compatible servers
register_preparer("anthropic", _anthropic)
register_preparer("local", _local)


# ---------------------------------------------------------------- the stage


class StructuredStage(Stage):
    """Prepares, validates and enforces a call's output contract (see the module docstring)."""

    kind = "structured"

    def __init__(self, settings: StructuredSettings, resolve: Callable[[str, Provider | None], Target]) -> None:
        self.settings = settings
        self.resolve = resolve

    @classmethod
    def from_engine(cls, engine: Any) -> StructuredStage:
        return cls(engine.settings.structured, engine.resolve)

    def _live(self, request: Request, ctx: CallContext, spec: OutputSpec) -> Request | None:
        """A streamed request whose provider's grammar enforces the whole contract: it streams as it decodes."""
        if not request.stream or spec.checks or ctx.target is None:
            return None
        prepared = _preparer(ctx.target.provider)(request, spec, self.settings)
        return prepared.request if prepared.guaranteed else None

    def _spec(self, request: Request, ctx: CallContext) -> OutputSpec | None:
        spec = ctx.output
        if spec is None:
            rf = request.response_format
            if rf is None or rf.type != "json_schema" or rf.schema is None or not self.settings.enabled:
                return None
            check_schema(rf.schema)
            spec = OutputSpec(schema=rf.schema, schema_name=rf.name, reasks=self.settings.reasks,
                              fallback_models=tuple(self.settings.fallback_models))
            ctx.output = spec
        elif spec.schema is not None:
            check_schema(spec.schema, param="contract" if spec.source.startswith("contract") else
                         "response_format.json_schema.schema")
        return spec

    # -- sync

    def handle(self, request: Request, ctx: CallContext) -> Response | EventStream:
        spec = self._spec(request, ctx)
        if spec is None:
            return self.next.handle(request, ctx)
        live = self._live(request, ctx, spec)
        if live is not None:
            return self.next.handle(live, ctx)
        run = _Run(self, request, ctx, spec)
        step: tuple[Request, CallContext] | Response = run.start()
        while not isinstance(step, Response):
            try:
                answer = self.next.handle(*step)
            except Exception as exc:
                step = run.failed(exc)
                continue
            if not isinstance(answer, Response):  # pragma: no cover - an unstreamed request gets a response
                raise TypeError(f"an unstreamed request was answered with {type(answer).__name__}")
            step = run.judge(answer)
        if request.stream:
            return EventStream(iter(_events(step)))
        return step

    # -- async

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        spec = self._spec(request, ctx)
        if spec is None:
            return await self.next.ahandle(request, ctx)
        live = self._live(request, ctx, spec)
        if live is not None:
            return await self.next.ahandle(live, ctx)
        run = _Run(self, request, ctx, spec)
        step: tuple[Request, CallContext] | Response = run.start()
        while not isinstance(step, Response):
            try:
                answer = await self.next.ahandle(*step)
            except Exception as exc:
                step = run.failed(exc)
                continue
            if not isinstance(answer, Response):  # pragma: no cover
                raise TypeError(f"an unstreamed request was answered with {type(answer).__name__}")
            step = run.judge(answer)
        if request.stream:
            return AsyncEventStream(_aevents(_events(step)))
        return step


@dataclass(slots=True)
class _Run:
    """The attempts of one call: the prepared request, the validator, what comes next on a failure."""

    stage: StructuredStage
    original: Request
    first: CallContext  # the call's own context: the first attempt's, and what the entry reads
    spec: OutputSpec
    ctx: Any = None  # the attempt running now
    prepared: Any = None
    reasks_left: int = 0
    fallbacks: list[str] = field(default_factory=list)
    attempts: int = 0
    last: Response | None = None  # the last answer that failed its checks
    cut: bool = False  # ...because it was cut off at max_tokens
    verdict: tuple[Any, tuple[list[str], str]] | None = None  # the last answer judged, and its errors

    def start(self) -> tuple[Request, CallContext]:
        self.ctx = self.first
        self.reasks_left = self.spec.reasks
        self.fallbacks = list(self.spec.fallback_models)
        return self._attempt(self._prepare(self.original, self.first), self.first)

    def _prepare(self, request: Request, ctx: CallContext) -> Prepared:
        provider = ctx.target.provider if ctx.target is not None else None
        self.prepared = _preparer(provider)(request, self.spec, self.stage.settings)
        return self.prepared

    def _attempt(self, prepared: Prepared, ctx: CallContext,
                 extra: list[Message] | None = None) -> tuple[Request, CallContext]:
        self.attempts += 1
        ctx.output_judge = self.errors_of
        request = prepared.request
        if extra:
            request = request.replace(messages=[*request.messages, *extra])
        if request.stream:
            request = request.replace(stream=False, stream_usage=False)
        return request, ctx

    def judge(self, answer: Response) -> tuple[Request, CallContext] | Response:
        """The accepted answer, the next attempt, or :class:`OutputValidationError`."""
        errors, bad = self._judged(answer)
        if not errors:
            self._finish()
            return answer
        self.last = answer
        deadline = self.first.deadline
        if deadline is not None and time.monotonic() >= deadline:
            self.reasks_left, self.fallbacks = 0, []  # no time left for another attempt
        if self.reasks_left > 0:
            self.reasks_left -= 1
            ctx = self.ctx = self.ctx.child()
            return self._attempt(self.prepared, ctx, _reask(bad, errors, self.cut))
        return self._next_model() or self._give_up(answer, errors)

    def failed(self, error: Exception) -> tuple[Request, CallContext] | Response:
        """After an attempt raised: the first attempt's error is the call's; a re-ask's or fallback's
        moves on to the next fallback model, and at the end the contingency ends as after a bad answer."""
        if self.last is None:
            self._finish()
            raise error
        step = self._next_model()
        if step is not None:
            return step
        self._finish()
        if self.spec.fallback_output is not None:
            return _with_text(self.last, self.spec.fallback_output)
        raise error

    def _next_model(self) -> tuple[Request, CallContext] | None:
        if self.fallbacks:
            name = self.fallbacks.pop(0)
            ctx = self.ctx = self.ctx.child()
            ctx.target = self.stage.resolve(name, ctx.bound_provider)
            decision = self.first.route_decision
            ctx.route_decision = f"{decision}>structured-fallback:{name}" if decision else f"structured-fallback:{name}"
            request = self.original
            if request.model != ctx.target.model:
                request = request.replace(model=ctx.target.model)
            return self._attempt(self._prepare(request, ctx), ctx)
        return None

    def _give_up(self, answer: Response, errors: list[str]) -> Response:
        self._finish()
        if self.spec.fallback_output is not None:
            return _with_text(answer, self.spec.fallback_output)
        if self.cut:
            return answer  # finish_reason "length", as the provider said
        raise OutputValidationError(
            f"no answer met the output contract in {self.attempts} attempt(s); the last one: " + "; ".join(errors),
            errors=errors, attempts=self.attempts)

    def errors_of(self, answer: Response) -> list[str]:
        """What is wrong with an attempt's answer; the ledger observer asks, to mark the attempt's row."""
        return self._judged(answer)[0]

    def _judged(self, answer: Response) -> tuple[list[str], str]:
        if self.verdict is None or self.verdict[0] is not answer:
            self.verdict = (answer, self._errors(answer))
        return self.verdict[1]

    def _errors(self, answer: Response) -> tuple[list[str], str]:
        """What is wrong with the answer (empty when it is accepted) and the answer's text.

        Translates the answer back in place: a forced tool's input becomes the
        text, and nulls the strict conversion made the model write for omitted
        optional properties are removed.
        """
        spec, tool = self.spec, self.prepared.tool_name
        self.cut = False
        for choice in answer.choices:
            message = choice.message
            if tool is not None:
                message.content = [TextPart(p.arguments) if isinstance(p, ToolCallPart) and p.name == tool else p
                                   for p in message.content]
                if choice.finish_reason == "tool_calls":
                    choice.finish_reason = "stop"
            elif any(isinstance(p, ToolCallPart) for p in message.content):
                continue  # the model called one of the caller's tools: not the final answer yet
            text = message.text()
            if choice.finish_reason == "length":
                self.cut = True
                return ["the answer was cut off at max_tokens before it was complete"], text
            errors: list[str] = []
            if spec.schema is not None:
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    return [f"the answer is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"], text
                validator = validator_for(spec.schema)
                if self.prepared.nulls_added:
                    restored = validator.restore(value)
                    if restored != value:
                        value, text = restored, json.dumps(restored, ensure_ascii=False)
                        message.content = [TextPart(text)]
                errors = validator.errors(value)
            for check in spec.checks:
                problem = check(text)
                if problem:
                    errors.append(f"{check.name}: {problem}")
            if errors:
                return errors, text
        return [], ""

    def _finish(self) -> None:
        """Leave the last attempt's facts on the call's context, for the entry to answer with."""
        self.first.adopt(self.ctx)


def _reask(bad: str, errors: list[str], cut: bool = False) -> list[Message]:
    if cut:
        note = ("Your previous answer was cut off at the output limit before it was complete. Answer again "
                "with a shorter output that fits, in the required format.")
    else:
        listing = "\n".join(f"- {e}" for e in errors)
        note = ("Your previous answer does not meet the required output format:\n" + listing +
                "\nAnswer again with only the corrected output.")
    return [Message("assistant", [TextPart(bad)]), Message("user", [TextPart(note)])]


def _with_text(answer: Response, text: str) -> Response:
    choice = Choice(0, Message("assistant", [TextPart(text)]), "stop")
    return Response(id=answer.id, model=answer.model, choices=[choice], usage=answer.usage,
                    created=answer.created, extra=answer.extra, extra_wire=answer.extra_wire)


def _events(answer: Response) -> list[StreamEvent]:
    """An accepted answer as the events of a stream."""
    events: list[StreamEvent] = [StreamStart(answer.id, answer.model, answer.created, answer.extra,
                                             answer.extra_wire)]
    for choice in answer.choices:
        text = choice.message.text()
        if text:
            events.append(TextDelta(text, choice.index))
        calls = [p for p in choice.message.content if isinstance(p, ToolCallPart)]
        for i, call in enumerate(calls):
            events.append(ToolCallDelta(i, call.arguments, call.id, call.name, choice.index))
        events.append(ChoiceEnd(choice.finish_reason or "stop", choice.index, choice.stop_sequence))
    events.append(UsageEvent(answer.usage))
    return events


async def _aevents(events: list[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event

