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

import importlib
import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from thrifty.errors import InvalidRequestError

__all__ = [
    "CompressResult",
    "Progress",
    "TextCompressor",
    "compress",
    "compressor_names",
    "load_compressor",
    "register_compressor",
]

#: ``progress(done, total)``: model tokens processed so far, of ``total``.
Progress = Callable[[int, int], None]


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

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after

    @property
    def achieved_rate(self) -> float:
        """Tokens after over tokens before (1.0 for an empty text)."""
        return self.tokens_after / self.tokens_before if self.tokens_before else 1.0


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


def compress(
    text: str,
    rate: float = 0.5,
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
) -> CompressResult:
    """Compress ``text`` to about ``rate`` of its tokens, keeping protected spans byte-for-byte.

    ``rate`` is the share of the compressible text's tokens to keep (0 < rate <= 1);
    protected spans (:mod:`thrifty.compressors.protect`; ``protect=False``
    turns the built-in ones off) are kept in full on top. ``mode`` is ``"fast"``
    (the model in the precision measured fastest on this machine: float32,
    native bfloat16 or int8),
    ``"exact"`` (full precision, the same keep decisions as ``llmlingua``'s
    LLMLingua-2 path) or ``"turbo"`` (the distilled shallower model where one
    ships: faster again, for a few points of accuracy); ``precision`` pins the fast and turbo
    modes' precision instead (see :func:`load_compressor`). ``model`` is a weights directory (default:
    thrifty's shipped weights). Token counts use ``target``'s tokenizer. ``question``, the
    question the text is context for, keeps the sentences relevant to it (compressors
    that take no question are called without it).
    """
    impl = load_compressor(compressor, mode=mode, model=model, precision=precision)
    extra = {} if question is None else {"question": question}
    return impl.compress(text, rate, force_keep=force_keep, patterns=patterns, protect=protect,
                         target=target, progress=progress, **extra)
