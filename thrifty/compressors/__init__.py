"""Prompt compression: LLMLingua-2's keep/drop token classification, offline on CPU.

* :func:`compress` and :class:`CompressResult` (:mod:`.base`): compress one text.
* :class:`Compressor` (:mod:`.lingua`): the built-in compressor;
  ``Compressor.load(mode="fast"|"exact"|"turbo", model=None)``, then ``.compress(text, rate=...)``
  and ``.keep_decisions(text, rate=...)`` (per-word decisions).
* :func:`register_compressor` / :func:`load_compressor`: compressors by name.
* :mod:`.protect`: the spans that pass through byte-for-byte.
* :mod:`.question`: each sentence's relevance to a question (question-aware allocation).
* :mod:`.model`: loading keep/drop weights offline (thrifty's manifest layout or a
  transformers directory).
* :mod:`.stage`: the pipeline stage (``compress`` per call, per alias or in ``[compression]``).

Importing this package loads neither torch nor numpy; the model loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from thrifty.compressors.base import (
    CompressResult,
    compress,
    compressor_names,
    load_compressor,
    register_compressor,
)

if TYPE_CHECKING:
    from thrifty.compressors.lingua import Compressor, KeepDecisions

__all__ = [
    "CompressResult",
    "Compressor",
    "KeepDecisions",
    "compress",
    "compressor_names",
    "load_compressor",
    "register_compressor",
]


def __getattr__(name: str) -> Any:
    if name in ("Compressor", "KeepDecisions"):
        from thrifty.compressors import lingua

        return getattr(lingua, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
