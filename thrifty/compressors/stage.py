"""The compression stage: compresses the long user and tool text of a call before it goes upstream.

It runs after routing (the token counts and the savings depend on the target
model) and passes a call through untouched unless compression is asked for:
by the call (``compress`` in the thrifty options: ``true`` or
``{"rate": 0.4, ...}``), by its alias's ``options``, or by ``[compression]
enabled = true`` in the settings; ``compress: false`` turns it off for a call.

What it compresses, by default: the text parts of user and tool messages (and
tool results inside user messages) that have at least ``min_tokens`` tokens.
Never system messages (where the contract stage puts its contract), tool
definitions, assistant tool calls, images or other non-text parts, and never
anything at or before the last prompt-cache marker (Anthropic
``cache_control``), so the cached prefix stays byte-identical.

With ``target_tokens`` (a call's option, an alias's, or ``[compression]
target_tokens``) the prompt gets a budget instead of a rate: a prompt within it
goes upstream untouched, and one over it has its parts compressed at one rate
for all, the largest in hundredths at which the whole prompt fits (a ``rate``
the call or its alias gives as well is the most it may keep). The model scores
each part once; the rates tried reuse its scores. Where even the smallest rate
leaves the prompt over the budget (its system prompt, tools, short parts or
protected spans take more), that is what is sent, recorded as
``detail["over_target"]``. The chosen rate depends on the whole prompt, so as a
conversation grows its earlier turns may compress differently from one call to
the next: a fixed ``rate`` is what keeps a provider's prompt cache matching.
With ``fit_context`` the target model's context window (its provider's
:meth:`~thrifty.middleware.providers.base.Provider.context_window`), less the
request's ``max_tokens`` or :data:`ANSWER_ROOM`, is such a budget as well, also
for calls that do not otherwise ask for compression. A budget is counted as the
provider counts the prompt before a call (exactly, for local models), else as
the ledger does.

Each part is compressed for its question (question-aware allocation, see
:mod:`thrifty.compressors.lingua`): the ``question`` option's text when the
call gives one; otherwise (unless ``question`` is ``false`` or ``[compression]
question = false``) the user text that came with it: the text parts of its own
message that are not compressed, or, when the message is long text, its last
line labelled ``Question:`` (as RAG prompt templates write it), else its last
paragraph, if that is short (at most :data:`QUESTION_WORDS` words, as in
``"...context...\n\nwho maintains it?"``); for a tool result or an
assistant message, the last user message before it that has text. A part's
question depends only on the messages up to its own, so an earlier turn
compresses the same way on every later call and provider prompt caches still
match.

It records ``ctx.savings["compression"]``: tokens of the prompt before and
after (counted with the target model's tokenizer, an estimate for non-OpenAI
models), and in ``detail`` the compressor, its version, the mode, the
precision its model ran in (``float32``, ``bfloat16`` or ``int8``), the rate
(and, where a budget chose it, ``target_tokens``, ``context_window`` where
that set it, and ``over_target`` where it was not met), the compression time
in ms, the number of parts compressed, how many of them were compressed for a
question (``question_aware``) and how many of their characters were kept
byte for byte (``protected_chars``: code, numbers, URLs..., paragraphs in
languages the model does not know), of which ``foreign_chars`` kept only for
their paragraph's language; the recorder prices the saved tokens at the
model's input price. A compressor failure sends the call on uncompressed
(recorded as ``detail["error"]``) unless ``fail_open = false``, when the call
fails with :class:`~thrifty.errors.LocalModelError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from thrifty.compressors.base import CompressResult, fit_rate
from thrifty.compressors.model import use_cache_dir
from thrifty.errors import LocalModelError, ThriftyError
from thrifty.middleware.context import CallContext, CompressOptions, Saving, ThriftyOptions
from thrifty.middleware.pipeline import Stage
from thrifty.settings import CompressionSettings
from thrifty.types import (
    AsyncEventStream,
    Message,
    OpaquePart,
    Part,
    Request,
    Response,
    TextPart,
    ToolResultPart,
)

if TYPE_CHECKING:
    from thrifty.compressors.base import TextCompressor
    from thrifty.middleware.engine import Engine

__all__ = ["CompressionStage"]

log = logging.getLogger("thrifty.compression")

TECHNIQUE = "compression"
#: The tokens left for the answer when a prompt is fitted to its context window and the request sets no
#: ``max_tokens``.
ANSWER_ROOM = 1024
#: More than the tokens a message's role and framing take in a count or a chat template (OpenAI's: 4-5;
#: a local model's: a few special tokens, and a default system prompt of some twenty tokens), for a bound
#: on a prompt's tokens from its length.
_FRAMING_TOKENS = 32
#: The longest last paragraph of a compressed user message that is taken as its question.
QUESTION_WORDS = 64
_LABELLED = re.compile(r"^[ \t]*question[ \t]*:[ \t]*(\S.*)$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class _Plan:
    rate: float
    min_tokens: int
    force_keep: tuple[str, ...]
    protect: tuple[str, ...]
    roles: frozenset[str]
    mode: str
    sentence_weight: float | None  # None: the compressor's own default
    relation_weight: float | None  # None: the compressor's own default
    question: str | bool  # a given question; True: each part's question from the messages; False: none
    target_tokens: int | None  # a budget for the prompt (rate is then the most it may keep)
    fit_context: bool  # the target model's context window, less the answer's room, is a budget too


# where a text part sits: (message index, part index, index inside a tool result or -1)
_Where = tuple[int, int, int]


class CompressionStage(Stage):
    kind = "compression"

    def __init__(self, settings: CompressionSettings | None = None) -> None:
        self.settings = settings if settings is not None else CompressionSettings()
        self.warm: tuple[str, ...] = ()  # modes that calls compress in without asking, loaded by warm_up

    @classmethod
    def from_engine(cls, engine: Engine) -> CompressionStage:
        use_cache_dir(engine.settings.local.cache_dir)  # the precision measured beside the local models' own
        stage = cls(engine.settings.compression)
        # the modes calls compress in without asking: a call's own options (none), or its alias's
        unasked = [None, *(engine.options_for(alias, ThriftyOptions()).compress for alias in engine.settings.aliases)]
        stage.warm = tuple(sorted({plan.mode for plan in map(stage._plan_for, unasked) if plan is not None}))
        return stage

    def warm_up(self) -> None:
        """Load the compressor in each mode that calls compress in without asking (the settings' when
        ``enabled``, an alias's that asks), so the first of them does not wait seconds for the model and,
        on a new machine, the measurement of its precision."""
        for mode in self.warm:
            self._compressor(mode)

    def _compressor(self, mode: str) -> TextCompressor:
        """The configured compressor in ``mode``, built once per process (see ``load_compressor``)."""
        from thrifty.compressors.base import load_compressor

        s = self.settings
        return load_compressor(s.compressor, mode=mode, model=None if s.model is None else str(s.model),
                               precision=s.precision)

    # ------------------------------------------------------------ the call

    def prepare(self, request: Request, ctx: CallContext) -> Request:
        plan = self._plan(ctx)
        if plan is None:
            return request
        return self._apply(request, ctx, plan)

    async def ahandle(self, request: Request, ctx: CallContext) -> Response | AsyncEventStream:
        plan = self._plan(ctx)
        if plan is not None:  # the model runs off the event loop
            request = await asyncio.to_thread(self._apply, request, ctx, plan)
        return await self.next.ahandle(request, ctx)

    def _plan(self, ctx: CallContext) -> _Plan | None:
        return self._plan_for(ctx.options.compress)

    def _plan_for(self, asked: CompressOptions | bool | None) -> _Plan | None:
        """What a call whose ``compress`` option is ``asked`` compresses with, or None for not at all."""
        s = self.settings
        only_fit = False  # not asked for, but on to fit the context window
        if asked is None:
            if not s.enabled and not s.fit_context:
                return None
            only_fit = not s.enabled
            asked = True
        if asked is False:
            return None
        o = asked if isinstance(asked, CompressOptions) else CompressOptions()
        target_tokens = None if only_fit else o.target_tokens if o.target_tokens is not None else s.target_tokens
        if only_fit:
            rate = 1.0
        elif o.rate is not None:
            rate = o.rate
        else:  # with a budget, only a rate the call (or its alias) gives caps it
            rate = s.rate if target_tokens is None else 1.0
        return _Plan(
            rate=rate,
            min_tokens=o.min_tokens if o.min_tokens is not None else s.min_tokens,
            force_keep=(*s.force_keep, *o.force_keep),
            protect=(*s.protect, *o.protect),
            roles=frozenset(o.roles if o.roles is not None else s.roles),
            mode=o.mode or s.mode,
            sentence_weight=o.sentence_weight if o.sentence_weight is not None else s.sentence_weight,
            relation_weight=o.relation_weight if o.relation_weight is not None else s.relation_weight,
            question=o.question if o.question is not None else s.question,
            target_tokens=target_tokens,
            fit_context=o.fit_context if o.fit_context is not None else s.fit_context,
        )

    def _apply(self, request: Request, ctx: CallContext, plan: _Plan) -> Request:
        from thrifty.ledger.tokens import count_text

        model = ctx.target.model if ctx.target is not None else request.model
        budget, window = plan.target_tokens, None
        if plan.fit_context:
            window = _context_window(ctx, model)
            if window is not None:
                room = window - (request.max_tokens if request.max_tokens is not None else ANSWER_ROOM)
                budget = room if budget is None else min(budget, room)
        if plan.rate >= 1.0 and (budget is None or _within(request, ctx, model, budget)):
            return request  # no rate asked for, and within the budget (if any): nothing to do
        found = [(where, text) for where, text in _eligible(request, plan.roles)
                 if plan.min_tokens <= 0 or count_text(text, model) >= plan.min_tokens]
        if not found:
            return request
        s = self.settings
        t0 = time.perf_counter()
        try:
            compressor = self._compressor(plan.mode)
            extra = {name: value for name, value in (("sentence_weight", plan.sentence_weight),
                                                     ("relation_weight", plan.relation_weight))
                     if value is not None}
            questions = _questions(request, found, plan.question)

            def compress_at(rate: float) -> list[CompressResult]:
                return [compressor.compress(text, rate, force_keep=plan.force_keep, patterns=plan.protect,
                                            target=model, **extra, **_asked(questions.get(where)))
                        for where, text in found]

            def tokens(results: list[CompressResult]) -> int:
                return _measure(_replace_texts(request, _texts(found, results)), ctx, model)

            over = False
            if budget is None:
                rate, results = plan.rate, compress_at(plan.rate)
            else:  # one rate for every part: the largest at which the prompt fits its budget
                rate, results, left = fit_rate(compress_at, tokens, budget, plan.rate)
                over = left > budget
        except Exception as exc:
            if not s.fail_open:
                if isinstance(exc, ThriftyError):
                    raise
                raise LocalModelError(f"prompt compression failed: {type(exc).__name__}: {exc}") from exc
            log.warning("compression failed, sending call %s uncompressed: %s", ctx.call_id, exc)
            n = self._prompt_tokens(request, ctx, model, sum(count_text(t, model) for _, t in found))
            ctx.savings[TECHNIQUE] = Saving(n, n, detail={
                "error": f"{type(exc).__name__}: {exc}", "compressor": s.compressor, "mode": plan.mode,
                "rate": plan.rate, "ms": round((time.perf_counter() - t0) * 1000, 3)})
            return request
        ms = (time.perf_counter() - t0) * 1000
        saved = sum(r.tokens_before - r.tokens_after for r in results)
        before = self._prompt_tokens(request, ctx, model, sum(r.tokens_before for r in results))
        first = results[0]
        detail = {
            "compressor": first.compressor, "version": first.version, "mode": first.mode,
            "precision": getattr(compressor, "precision", None), "rate": rate, "ms": round(ms, 3),
            "parts": len(results),
            "question_aware": len(questions), "protected_chars": sum(r.protected_chars for r in results),
            "foreign_chars": sum(r.foreign_chars for r in results)}
        if budget is not None:
            detail["target_tokens"] = budget
            if window is not None:
                detail["context_window"] = window
            if over:
                detail["over_target"] = True
                log.warning("call %s: the prompt compresses to no fewer tokens than its budget of %d allows "
                            "(what is protected or not compressed takes more)", ctx.call_id, budget)
        ctx.savings[TECHNIQUE] = Saving(before, before - saved, detail=detail)
        return _replace_texts(request, _texts(found, results))

    @staticmethod
    def _prompt_tokens(request: Request, ctx: CallContext, model: str, fallback: int) -> int:
        try:
            from thrifty.ledger.tokens import count_prompt

            kind = ctx.target.provider.kind if ctx.target is not None else ""
            return count_prompt(request, model, kind).n
        except Exception:  # noqa: BLE001 - an estimate; the part counts stand in
            log.debug("could not count the prompt", exc_info=True)
            return fallback


def _context_window(ctx: CallContext, model: str) -> int | None:
    """The target model's context window, where its provider knows it."""
    if ctx.target is None:
        return None
    try:
        return ctx.target.provider.context_window(model)
    except Exception:  # noqa: BLE001 - a model that cannot load fails the call later, with its own error
        log.debug("no context window for %s", model, exc_info=True)
        return None


def _within(request: Request, ctx: CallContext, model: str, budget: int) -> bool:
    """Whether the prompt is within ``budget`` (where it cannot be counted, it is taken as within: sent
    as written, as a compressor failure would send it)."""
    if _surely_within(request, budget):
        return True
    try:
        return _measure(request, ctx, model) <= budget
    except Exception:  # noqa: BLE001 - an estimate that failed must not fail the call
        log.warning("could not count the prompt of call %s against its budget; sent as written", ctx.call_id,
                    exc_info=True)
        return True


def _surely_within(request: Request, budget: int) -> bool:
    """Whether a prompt of plain text messages is within ``budget`` by its UTF-8 bytes alone (no token
    is shorter than a byte; :data:`_FRAMING_TOKENS` more for the prompt and each message, for roles,
    framing and a chat template's own text), so that the common prompt, far under its model's
    window, is not tokenized to find out."""
    if request.tools or request.response_format is not None:  # counted too, and not bounded here
        return False
    n = 2 * _FRAMING_TOKENS
    for message in request.messages:
        if not all(type(part) is TextPart for part in message.content):
            return False
        n += _FRAMING_TOKENS + len((message.name or "").encode("utf-8", "surrogatepass"))
        n += sum(len(p.text.encode("utf-8", "surrogatepass")) for p in message.content)
        if n > budget:
            return False
    return True


def _measure(request: Request, ctx: CallContext, model: str) -> int:
    """The prompt's tokens as its provider counts them before the call (exact for local models), or as
    the ledger estimates them."""
    if ctx.target is not None:
        return ctx.target.provider.prompt_tokens(request, model)
    from thrifty.ledger.tokens import count_prompt

    return count_prompt(request, model, "").n


def _texts(found: list[tuple[_Where, str]], results: list[CompressResult]) -> dict[_Where, str]:
    return {where: r.text for (where, _), r in zip(found, results, strict=True)}


def _has_marker(part: Part) -> bool:
    if isinstance(part, TextPart):
        return part.cache_control is not None
    if isinstance(part, OpaquePart):
        return isinstance(part.raw, dict) and part.raw.get("cache_control") is not None
    if isinstance(part, ToolResultPart):
        return any(_has_marker(p) for p in part.content)
    return False


def _eligible(request: Request, roles: frozenset[str]) -> list[tuple[_Where, str]]:
    """The text parts the stage may compress, after the last cache marker."""
    messages = request.messages
    last_marker = (-1, -1)
    for i, message in enumerate(messages):
        for j, part in enumerate(message.content):
            if _has_marker(part):
                last_marker = (i, j)
    out: list[tuple[_Where, str]] = []
    for i, message in enumerate(messages):
        if message.role == "system" or i < last_marker[0]:
            continue
        for j, part in enumerate(message.content):
            if (i, j) <= last_marker:
                continue
            if isinstance(part, TextPart):
                role = message.role
                if role in roles and part.text.strip():
                    out.append(((i, j, -1), part.text))
            elif isinstance(part, ToolResultPart) and "tool" in roles:
                for k, inner in enumerate(part.content):
                    if isinstance(inner, TextPart) and inner.text.strip():
                        out.append(((i, j, k), inner.text))
    return out


def _asked(question: str | None) -> dict[str, str]:
    return {} if question is None else {"question": question}


def _questions(request: Request, found: list[tuple[_Where, str]], asked: str | bool) -> dict[_Where, str]:
    """Each compressed part's question (see the module docstring); parts without one are left out."""
    if isinstance(asked, str):
        return {where: asked for where, _ in found} if asked.strip() else {}
    if not asked:
        return {}
    compressed = {(i, j) for (i, j, k), _ in found if k < 0}
    by_message: dict[int, str | None] = {}
    out: dict[_Where, str] = {}
    for where, _ in found:
        i = where[0]
        if i not in by_message:
            by_message[i] = _question_before(request.messages, i, compressed)
        question = by_message[i]
        if question:
            out[where] = question
    return out


def _question_before(messages: list[Message], index: int, compressed: set[tuple[int, int]]) -> str | None:
    """The question of the last user message with text at or before ``index``."""
    for i in range(index, -1, -1):
        message = messages[i]
        if message.role != "user":
            continue
        texts = [(j, p.text) for j, p in enumerate(message.content) if isinstance(p, TextPart) and p.text.strip()]
        if not texts:
            continue  # only tool results or images: the question is further back
        short = [text for j, text in texts if (i, j) not in compressed]
        if short:
            return "\n".join(short)
        labelled = [q for _, text in texts for q in _LABELLED.findall(text)]
        if labelled:
            last = labelled[-1].strip()
        else:  # the last paragraph, when there is more than one
            paragraphs = texts[-1][1].strip().split("\n\n")
            last = paragraphs[-1].strip() if len(paragraphs) > 1 else ""
        return last if last and len(last.split()) <= QUESTION_WORDS else None
    return None


def _replace_texts(request: Request, texts: dict[_Where, str]) -> Request:
    messages = list(request.messages)
    by_message: dict[int, dict[tuple[int, int], str]] = {}
    for (i, j, k), text in texts.items():
        by_message.setdefault(i, {})[(j, k)] = text
    for i, changes in by_message.items():
        message = messages[i]
        content: list[Any] = list(message.content)
        for (j, k), text in changes.items():
            part = content[j]
            if k < 0:
                content[j] = dataclasses.replace(part, text=text)
            else:
                inner = list(part.content)
                inner[k] = dataclasses.replace(inner[k], text=text)
                content[j] = dataclasses.replace(part, content=inner)
        messages[i] = Message(message.role, content, message.name)
    return request.replace(messages=messages)
