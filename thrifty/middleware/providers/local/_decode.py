"""The decode loop: prefill, then one token at a time with the KV cache.

This is thrifty's own loop rather than ``model.generate`` because per-token
techniques run inside it (see :mod:`.hooks`): grammar masks and token-level
small/large routing need the logits of every step.

:func:`generate` yields the same :class:`~thrifty.types.TextDelta` and
:class:`~thrifty.types.ChoiceEnd` events for streaming and non-streaming calls
(a plain call just collects them), so both return the same text for the same
seed. ``n`` choices are decoded one after another from one prefill: the KV
cache is cropped back to the prompt between choices.

Sampling: temperature 0 is greedy (argmax); otherwise logits are divided by
the temperature, cut to the smallest set of tokens whose probability reaches
``top_p``, and sampled with a ``torch.Generator`` seeded from ``seed`` (a fresh
random seed when there is none), so a seed reproduces the output on the same
machine, dtype and library versions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from thrifty.errors import LocalModelError, UpstreamTimeoutError
from thrifty.middleware.providers.local._deps import torch_mod, transformers_mod
from thrifty.middleware.providers.local._text import IncrementalDetokenizer, StopFilter
from thrifty.middleware.providers.local.hooks import DecodeHook, DecodeHookFactory
from thrifty.types import ChoiceEnd, FinishReason, TextDelta, TokenLogprob

if TYPE_CHECKING:
    import torch

    from thrifty.middleware.providers.local._models import LoadedModel

__all__ = ["DecodeParams", "GenerationStats", "generate"]

#: prompts longer than this are prefilled in chunks, which bounds attention memory
PREFILL_CHUNK = 1024
_LOCK_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class DecodeParams:
    """Validated sampling parameters of one call."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(slots=True)
class GenerationStats:
    """Counts the loop fills in as it runs; read them once it has ended."""

    prompt_tokens: int
    output_tokens: int = 0
    started: float = 0.0  # perf_counter when the lock was taken
    first_token: float = 0.0  # perf_counter when the first token was sampled


def generate(
    loaded: LoadedModel,
    prompt_ids: Sequence[int],
    params: DecodeParams,
    hook_factories: Sequence[DecodeHookFactory] = (),
    *,
    stats: GenerationStats | None = None,
    cancel: threading.Event | None = None,
    deadline: float | None = None,
) -> Generator[TextDelta | ChoiceEnd, None, None]:
    """Decode ``params.n`` choices after ``prompt_ids``, yielding text deltas and choice ends.

    The model's lock is taken at the first ``next()`` and released when the
    iterator ends or is closed. Setting ``cancel`` ends it after the current
    step without a ChoiceEnd; passing ``deadline`` (a ``time.monotonic()``
    value) makes it raise UpstreamTimeoutError once that time has passed.
    """
    stats = stats if stats is not None else GenerationStats(prompt_tokens=len(prompt_ids))
    if not _acquire(loaded.lock, cancel, deadline):
        return
    try:
        stats.started = time.perf_counter()
        yield from _generate_locked(loaded, list(prompt_ids), params, hook_factories, stats, cancel, deadline)
    finally:
        loaded.lock.release()


def _acquire(lock: threading.Lock, cancel: threading.Event | None, deadline: float | None) -> bool:
    while not lock.acquire(timeout=_LOCK_POLL_S):
        if cancel is not None and cancel.is_set():
            return False
        _check_deadline(deadline)
    return True


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise UpstreamTimeoutError("the local model did not finish before the call's deadline")


def _generate_locked(
    loaded: LoadedModel,
    prompt_ids: list[int],
    params: DecodeParams,
    hook_factories: Sequence[DecodeHookFactory],
    stats: GenerationStats,
    cancel: threading.Event | None,
    deadline: float | None,
) -> Generator[TextDelta | ChoiceEnd, None, None]:
    torch = torch_mod()
    cache = transformers_mod().DynamicCache()
    generator = torch.Generator()
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    prompt_logits = _prefill(loaded, prompt_ids, cache, cancel, deadline)
    if prompt_logits is None:
        return
    for index in range(params.n):
        if index > 0:
            if getattr(cache, "is_croppable", True):
                # a negative count removes that many tokens, in old and new transformers alike
                surplus = cache.get_seq_length() - len(prompt_ids)
                if surplus > 0:
                    cache.crop(-surplus)
            else:
                cache = transformers_mod().DynamicCache()
                _prefill(loaded, prompt_ids, cache, cancel, deadline)
        choice = _Choice(loaded, index, params, [f(loaded.info) for f in hook_factories], generator, stats)
        ended = yield from choice.run(prompt_logits.clone(), cache, cancel, deadline)
        if not ended:
            return


def _prefill(
    loaded: LoadedModel,
    prompt_ids: list[int],
    cache: Any,
    cancel: threading.Event | None,
    deadline: float | None,
) -> torch.Tensor | None:
    logits = None
    for start in range(0, len(prompt_ids), PREFILL_CHUNK):
        if cancel is not None and cancel.is_set():
            return None
        _check_deadline(deadline)
        logits = _forward(loaded, prompt_ids[start : start + PREFILL_CHUNK], cache)
    return logits


def _forward(loaded: LoadedModel, ids: list[int], cache: Any) -> torch.Tensor:
    """The next-token logits after ``ids`` (1-D float32, an ordinary tensor hooks may modify)."""
    torch = torch_mod()
    kwargs: dict[str, Any] = {loaded.cache_kwarg: cache, "use_cache": True}
    if loaded.keeps_logits:
        kwargs["logits_to_keep"] = 1
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.tensor([ids], dtype=torch.long), **kwargs)
        logits = out.logits[0, -1].to(torch.float32)
    return logits.clone()  # outside inference mode: a normal tensor, writable in place


class _Choice:
    """The decoding of one sequence: sampling, hooks, detokenization, stops."""

    def __init__(
        self,
        loaded: LoadedModel,
        index: int,
        params: DecodeParams,
        hooks: list[DecodeHook],
        generator: torch.Generator,
        stats: GenerationStats,
    ) -> None:
        self.loaded = loaded
        self.index = index
        self.params = params
        self.hooks = hooks
        self.generator = generator
        self.stats = stats
        self.tokens: list[int] = []

    def run(
        self, logits: torch.Tensor, cache: Any, cancel: threading.Event | None, deadline: float | None
    ) -> Generator[TextDelta | ChoiceEnd, None, bool]:
        """Yield this choice's events; return False when cancelled before its end."""
        params, eos = self.params, self.loaded.info.eos_token_ids
        detok = IncrementalDetokenizer(self.loaded.tokenizer)
        stops = StopFilter(list(params.stop))
        pending: list[TokenLogprob] = []
        finish: FinishReason = "length"
        stop_sequence: str | None = None
        for step in range(params.max_new_tokens):
            if cancel is not None and cancel.is_set():
                return False
            _check_deadline(deadline)
            if step:
                logits = _forward(self.loaded, [self.tokens[-1]], cache)
            token = self._pick(logits)
            self.tokens.append(token)
            self.stats.output_tokens += 1
            if not self.stats.first_token:
                self.stats.first_token = time.perf_counter()
            for hook in self.hooks:
                hook.accept(token)
            if token in eos:
                finish = "stop"
                break
            if params.logprobs:
                pending.append(self._logprob(logits, token))
            text, matched = stops.push(detok.push(token))
            if text:
                yield TextDelta(text=text, index=self.index, logprobs=pending or None)
                pending = []
            if matched is not None:
                finish, stop_sequence = "stop", matched
                break
            if any(hook.is_finished() for hook in self.hooks):
                finish = "stop"
                break
        if stop_sequence is None:
            text, matched = stops.push(detok.flush())
            if matched is not None:
                finish, stop_sequence = "stop", matched
            else:
                text += stops.flush()
            if text or pending:
                yield TextDelta(text=text, index=self.index, logprobs=pending or None)
        elif pending:
            yield TextDelta(text="", index=self.index, logprobs=pending)
        yield ChoiceEnd(finish_reason=finish, index=self.index, stop_sequence=stop_sequence)
        return True

    def _pick(self, raw: torch.Tensor) -> int:
        """Run the hooks over the logits, then sample. ``raw`` stays the model's own logits."""
        torch = torch_mod()
        logits = raw
        if self.hooks:
            logits = raw.clone() if self.params.logprobs else raw
            for hook in self.hooks:
                changed = hook.process(self.tokens, logits)
                if changed is not None:
                    logits = changed
            if not bool(torch.isfinite(logits).any()):
                raise LocalModelError(
                    f"a decode hook left no token possible at step {len(self.tokens)} of local model "
                    f"{self.loaded.name!r}; the hook's grammar or mask is wrong"
                )
        params = self.params
        if params.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > params.top_p
            sorted_probs[outside] = 0.0
            pick = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[pick])
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _logprob(self, raw: torch.Tensor, token: int) -> TokenLogprob:
        torch = torch_mod()
        logprobs = torch.log_softmax(raw, dim=-1)
        text, raw_bytes = self.loaded.token_bytes.text(token)
        top: list[tuple[str, float]] = []
        if self.params.top_logprobs:
            values, ids = torch.topk(logprobs, self.params.top_logprobs)
            names = self.loaded.token_bytes
            top = [(names.text(int(i))[0], float(v)) for v, i in zip(values, ids, strict=True)]
        return TokenLogprob(token=text, logprob=float(logprobs[token]), bytes=list(raw_bytes), top=top)
