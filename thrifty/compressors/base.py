"""The compressor registry, the result type, and :func:`compress`.

A compressor is anything with ``name``, ``version``, ``mode`` and
``compress(text, rate=..., ...) -> CompressResult``. Compressors are
registered by name with a loader ``(mode, model) -> compressor``, given as a
callable or as an ``"module:attribute"`` string imported on first use; the
built-in ``llmlingua2`` is registered the same way; a loader that also takes
``precision=`` can be pinned to one. :func:`load_compressor` builds each
(name, mode, model, precision) once per process, under a lock.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from thrifty.errors import InvalidRequestError

__all__ = [
    "CompressResult",
    "Fit",
    "Progress",
    "TextCompressor",
    "compress",
    "compressor_names",
    "compress_to",
    "fit_rate",
    "load_compressor",
    "register_compressor",
]

T = TypeVar("T")

#: ``progress(done, total)``: model tokens processed so far, of ``total``.
Progress = Callable[[int, int], None]
#: The rates a token budget chooses among: hundredths (the selection's percentile is whole), from 0.02.
RATE_STEPS = 100
MIN_STEP = 2


@dataclass(frozen=True, slots=True)
class CompressResult:
    """A compressed text and what it cost and saved.

    ``tokens_before`` and ``tokens_after`` are counted with the tokenizer of
    ``target`` (:func:`thrifty.ledger.tokens.count_text`: exact for OpenAI models,
    an ``o200k_base`` estimate for others). ``skipped`` says why the text was
    returned unchanged (``"empty"``; ``"rate"``: a rate of 1; ``"short"``: nothing
    would be left; ``"protected"``: no word of it may be dropped, as all are
    protected or unreadable to the model; ``"language"``: all of it is in
    paragraphs written in none of the model's languages), or is ``None``.
    ``protected_chars`` counts the characters kept byte for byte, and
    ``foreign_chars`` those of them kept only for being in such paragraphs (not
    also as code, numbers, URLs...).
    """

    text: str
    tokens_before: int
    tokens_after: int
    rate: float
    compressor: str
    version: str
    mode: str
    ms: float
    target: str = "gpt-4o"
    skipped: str | None = None
    words_kept: int = 0
    words_total: int = 0
    protected_chars: int = 0
    foreign_chars: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    target_tokens: int | None = None

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after

    @property
    def achieved_rate(self) -> float:
        """Tokens after over tokens before (1.0 for an empty text)."""
        return self.tokens_after / self.tokens_before if self.tokens_before else 1.0

    @property
    def over_target(self) -> bool:
        """Whether a token budget was asked for and even the smallest rate did not meet it (what is
        protected takes more)."""
        return self.target_tokens is not None and self.tokens_after > self.target_tokens


class TextCompressor(Protocol):
    name: str
    version: str
    mode: str

    def compress(
        self,
        text: str,
        rate: float = 0.5,
        *,
        force_keep: Sequence[str] = (),
        patterns: Sequence[str] = (),
        protect: bool = True,
        target: str = "gpt-4o",
        progress: Progress | None = None,
    ) -> CompressResult: ...


Loader = Callable[..., TextCompressor]  # (mode, model), and precision= when one is pinned

_registry: dict[str, Loader | str] = {"llmlingua2": "thrifty.compressors.lingua:Compressor.load"}
_instances: dict[tuple[str, str, str | None, str], TextCompressor] = {}
_lock = threading.Lock()


def register_compressor(name: str, loader: Loader | str) -> None:
    """Make ``name`` a compressor: ``loader(mode, model)`` builds it (or ``"module:attr"`` naming the loader).

    A loader that takes ``precision=`` as well can be pinned to one (see :func:`load_compressor`).
    """
    with _lock:
        _registry[name] = loader
        for key in [k for k in _instances if k[0] == name]:
            del _instances[key]


def compressor_names() -> list[str]:
    return sorted(_registry)


def _resolve(loader: Loader | str) -> Loader:
    if not isinstance(loader, str):
        return loader
    module, _, attr = loader.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def load_compressor(name: str = "llmlingua2", *, mode: str = "fast", model: str | None = None,
                    precision: str = "auto") -> TextCompressor:
    """The compressor ``name`` in ``mode`` with ``model``, built once per process.

    ``precision`` other than ``"auto"`` pins what the fast and turbo modes run in (for llmlingua2:
    ``float32``, ``bfloat16`` or ``int8``) instead of the one measured fastest on this machine, so
    machines of different kinds compress alike; it is passed to the loader only when pinned.
    """
    key = (name, mode, None if model is None else str(model), precision)
    found = _instances.get(key)
    if found is not None:
        return found
    loader = _registry.get(name)
    if loader is None:
        raise InvalidRequestError(
            f"unknown compressor {name!r}; registered: {', '.join(compressor_names())}", param="compressor"
        )
    with _lock:
        found = _instances.get(key)
        if found is None:
            build = _resolve(loader)
            if precision == "auto":
                found = build(mode, model)
            else:
                try:
                    inspect.signature(build).bind(mode, model, precision=precision)
                except TypeError:
                    raise InvalidRequestError(f"compressor {name!r} cannot be pinned to a precision",
                                              param="precision") from None
                found = build(mode, model, precision=precision)
            _instances[key] = found
    return found


def _check_target_tokens(value: Any) -> int | None:
    """``value`` as a token budget (a whole number of at least 1), or ``None``; else a clear error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"target_tokens must be a whole number of tokens of at least 1, got {value!r}",
                                  param="target_tokens")
    return value


class Fit(NamedTuple, Generic[T]):
    """What :func:`fit_rate` chose: the rate, what compressing at it gave, and its tokens."""

    rate: float
    result: T
    tokens: int


def fit_rate(compress_at: Callable[[float], T], tokens: Callable[[T], int], budget: int,
             ceiling: float = 1.0) -> Fit[T]:
    """The largest rate, in hundredths from 0.02 up to ``ceiling``, at which what ``compress_at(rate)``
    returns has at most ``budget`` ``tokens``; where none has, the rate tried that left the fewest.

    The tokens left grow with the rate (a higher rate keeps a superset of the words), so a bisection
    finds it in about seven compressions, each of which reuses the model's scores of the first.
    (0.01 is left out: under ``llmlingua``'s rule its threshold is each chunk's highest score, which
    keeps nothing, so the text would come back whole.)
    """
    tried: dict[int, Fit[T]] = {}

    def fits(step: int) -> bool:
        result = compress_at(step / RATE_STEPS)
        tried[step] = Fit(step / RATE_STEPS, result, tokens(result))
        return tried[step].tokens <= budget

    top = max(MIN_STEP, min(RATE_STEPS, int(ceiling * RATE_STEPS + 1e-9)))
    good, over = MIN_STEP - 1, top  # the largest step known to fit, the smallest known not to
    if fits(top):
        good = top
    while over - good > 1:
        mid = (good + over) // 2
        if fits(mid):
            good = mid
        else:
            over = mid
    if good < MIN_STEP:
        good = min(tried, key=lambda step: (tried[step].tokens, step))
    return tried[good]


def compress_to(compress_at: Callable[[float], CompressResult], rate: float | None = None,
                target_tokens: int | None = None) -> CompressResult:
    """``compress_at(rate)`` (0.5 by default), or, given ``target_tokens``, at the rate :func:`fit_rate`
    picks for that budget, with ``rate`` the most it may keep (see :func:`compress`)."""
    if target_tokens is None:
        return compress_at(0.5 if rate is None else rate)
    ceiling = 1.0 if rate is None else check_rate(rate)
    chosen, result, _ = fit_rate(compress_at, lambda r: r.tokens_after, target_tokens, ceiling)
    skipped = "fits" if chosen >= 1.0 and result.skipped == "rate" else result.skipped
    return dataclasses.replace(result, target_tokens=target_tokens, skipped=skipped)


def check_rate(rate: Any) -> float:
    """``rate`` as a share of tokens to keep, in (0, 1]; else a clear error."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"rate must be a number in (0, 1], got {rate!r}", param="rate") from None
    if not 0.0 < value <= 1.0:
        raise InvalidRequestError(f"rate must be in (0, 1] (the share of tokens to keep), got {rate!r}",
                                  param="rate")
    return value


def compress(
    text: str,
    rate: float | None = None,
    *,
    mode: str = "fast",
    model: str | None = None,
    compressor: str = "llmlingua2",
    force_keep: Sequence[str] = (),
    patterns: Sequence[str] = (),
    protect: bool = True,
    target: str = "gpt-4o",
    progress: Progress | None = None,
    question: str | None = None,
    precision: str = "auto",
    target_tokens: int | None = None,
) -> CompressResult:
    """Compress ``text`` to about ``rate`` of its tokens, or to fit in ``target_tokens``, keeping
    protected spans byte-for-byte.

    ``rate`` is the share of the compressible text's tokens to keep (0 < rate <= 1; default 0.5);
    protected spans (:mod:`thrifty.compressors.protect`; ``protect=False`` turns the built-in ones
    off) are kept in full on top. ``target_tokens`` asks instead for at most that many tokens of
    ``target``'s tokenizer: the text comes back unchanged where it fits already (``skipped ==
    "fits"``), else compressed at the largest rate, in hundredths, that fits (``result.rate``; a
    ``rate`` given as well is the most it may keep). Where even 0.02 leaves more, as protected spans
    are kept whole, the smallest compression found comes back (``result.over_target``).

    ``mode`` is ``"fast"`` (the model in the precision measured fastest on this machine: float32,
    native bfloat16 or int8), ``"exact"`` (full precision, the same keep decisions as
    ``llmlingua``'s LLMLingua-2 path) or ``"turbo"`` (the distilled shallower model where one ships:
    faster again, for a few points of accuracy); ``precision`` pins the fast and turbo modes'
    precision instead (see :func:`load_compressor`). ``model`` is a weights directory (default:
    thrifty's shipped weights). Token counts use ``target``'s tokenizer. ``question``, the question
    the text is context for, keeps the sentences relevant to it (compressors that take no question
    are called without it).
    """
    target_tokens = _check_target_tokens(target_tokens)
    impl = load_compressor(compressor, mode=mode, model=model, precision=precision)
    extra = {} if question is None else {"question": question}

    def compress_at(at: float) -> CompressResult:
        return impl.compress(text, at, force_keep=force_keep, patterns=patterns, protect=protect,
                             target=target, progress=progress, **extra)

    return compress_to(compress_at, rate, target_tokens)
