"""Question-aware allocation: how much each sentence of a context has to do with the question.

LongLLMLingua (Jiang et al., 2024) showed that compressing a context *for a
question* keeps far more of what answers it than compressing it blind. Its
signal is a causal LM's perplexity conditioned on the question, a second model
run. thrifty's compressor has no causal LM, so it uses the lexical signal a
search engine would: a sentence's relevance is the share of the question's
content terms it contains, each term weighted by its BM25 inverse sentence
frequency in the context (a term that occurs in every sentence says nothing
about which one answers). It costs one regular-expression pass over the text.

Terms are lower-cased words that are not closed-class English words
(:data:`~thrifty.compressors._data.FUNCTION_WORDS`: "what", "the", "did"...),
reduced by a light suffix rule ("moved", "moves", "move" -> "mov"), so that
inflections match; numbers and identifiers count; runs of scripts written
without spaces (Chinese, Japanese, Thai...) give their character pairs.

:func:`sentence_relevance` returns a value in [0, 1] per sentence: 0 where no
question term occurs, 1 where every one does. The compressor adds it to a
sentence's words' scores, so a sentence that answers the question is kept
nearly whole and the rest of its chunk is compressed harder (see
:mod:`thrifty.compressors.lingua`).
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np

from thrifty.compressors._data import FUNCTION_WORDS
from thrifty.compressors._scripts import SPACELESS_CHAR, SPACELESS_CLASS

__all__ = ["question_terms", "sentence_relevance"]

_WORD = re.compile(r"\w+")
_SEGMENT = re.compile(f"[{SPACELESS_CLASS}]+|[^{SPACELESS_CLASS}]+")
_SUFFIXES = ("ing", "ed", "es", "s")


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) >= 4 else word


def question_terms(text: str) -> set[str]:
    """The content terms of ``text`` (see the module docstring)."""
    out: set[str] = set()
    for match in _WORD.finditer(text):
        out.update(_terms_of(match.group().lower()))
    return out


@functools.lru_cache(maxsize=65_536)
def _terms_of(run: str) -> tuple[str, ...]:
    """The terms of one lower-cased run of word characters."""
    if not SPACELESS_CHAR.search(run):
        if run in FUNCTION_WORDS or (len(run) < 2 and not run.isdigit()) or run == "_" * len(run):
            return ()
        return (_stem(run),)
    out: list[str] = []
    for part in _SEGMENT.findall(run):  # spaceless script and the rest, as in "v2版本"
        if SPACELESS_CHAR.match(part):
            out.extend(part[i: i + 2] for i in range(max(1, len(part) - 1)))
        else:
            out.extend(_terms_of(part))
    return tuple(out)


def sentence_relevance(text: str, sentence_starts: np.ndarray, sentence_ends: np.ndarray,
                       question: str) -> np.ndarray:
    """Each sentence's relevance to ``question``, in [0, 1]; sentences are character ranges of ``text``
    (in order, not overlapping)."""
    count = len(sentence_starts)
    wanted = question_terms(question)
    if not wanted or not count:
        return np.zeros(count, dtype=np.float32)
    positions: list[int] = []
    found: list[str] = []
    for match in _WORD.finditer(text, int(sentence_starts[0]), int(sentence_ends[-1])):
        for term in _terms_of(match.group().lower()):
            if term in wanted:
                positions.append(match.start())
                found.append(term)
    sentence = np.searchsorted(sentence_starts, np.asarray(positions, dtype=np.int64), side="right") - 1
    inside = sentence_ends[sentence] > np.asarray(positions, dtype=np.int64) if positions else []
    pairs = {(int(k), t) for k, t, ok in zip(sentence.tolist(), found, inside, strict=True) if ok}
    df = dict.fromkeys(wanted, 0)
    for _, term in pairs:
        df[term] += 1
    idf = {t: math.log(1.0 + (count - n + 0.5) / (n + 0.5)) for t, n in df.items()}
    total = sum(idf.values())
    out = np.zeros(count, dtype=np.float64)
    for k, term in pairs:
        out[k] += idf[term]
    return (out / total).astype(np.float32)
