"""The built-in compressor: LLMLingua-2's keep/drop token classification, run offline on CPU.

The method (Pan et al., 2024, "LLMLingua-2"), as ``llmlingua``'s
``compress_prompt_llmlingua2`` applies it, and as this module does:

1. The text is tokenized once (with character offsets) and cut into chunks of
   at most ``max_seq_len - 2`` tokens, each ending at the last ``.`` token of
   its window (or, when a window has none, at the last word start in it).
2. An encoder classifies every token of a chunk: the softmax probability of
   its ``keep`` class.
3. A word (a token and the ``##`` pieces that continue it) gets the mean of
   its tokens' probabilities.
4. In each chunk, every word is counted as many times as it has
   ``cl100k_base`` tokens, and the words whose probability is above the
   ``int(100 * (1 - rate) + 1)``-th percentile of that weighted list are kept,
   in their original order.

What thrifty adds:

* **Sentence-aware allocation** (``sentence_weight``, default
  :data:`SENTENCE_WEIGHT`): a word's score is its probability plus
  ``sentence_weight`` times how far its sentence's mean probability lies above
  the chunk's, so the words that hold an informative sentence together
  ("of", "is", "in") outlast the content words of filler sentences. Readers,
  small models especially, answer far better from a few nearly whole
  sentences than from the same number of words spread thin (see
  docs/benchmarks.md). With ``sentence_weight=0`` the selection is exactly
  ``llmlingua``'s, and the exact mode's keep decisions equal its own
  (``relation_weight=0`` too, below).

* **Relation words** (``relation_weight``, default :data:`RELATION_WEIGHT`):
  the prepositions that say how the words around them relate ("rewritten
  *by* X", "moved *to* Y", "older *than* Z", :data:`RELATION_WORDS`) get
  that much added to their keep probability, before the sentence means are
  taken, so a sentence whose clauses hold together also gains a little as a
  whole (measured better than adding it after). A keep/drop model ranks
  them with the other small words, and without them a reader of the
  compressed text takes the wrong name for the answer ("scheduler rewritten
  Aisha Okafor"); they are short, so they cost few tokens of the budget.

* **Question-aware allocation** (``question``, as in LongLLMLingua): given the
  question the context will answer, each sentence's relevance to it
  (:mod:`thrifty.compressors.question`, 0 to 1) times :data:`QUESTION_WEIGHT`
  is added to its words' scores, so the sentences that hold the answer are
  kept nearly whole. Without a question nothing changes.

* **Protected spans** (:mod:`thrifty.compressors.protect`) are kept byte-for-byte
  and left out of the percentile; ``rate`` applies to the rest. With a model
  whose manifest names the languages it was trained on, none of them written
  without spaces (thrifty's own: English), text in those scripts (Chinese,
  Japanese, Thai...) is protected too: such a tokenizer makes each character
  a word, and dropping some would break the words they spell. So is each
  paragraph clearly in a language the model does not name
  (:mod:`thrifty.compressors._language`, by stop words or script), whose
  words it would rank without knowing them.
* **The output is cut from the original text** by character offsets, never
  detokenized: case, accents, scripts and emoji come back as they were. Two kept
  words that were neighbours keep the text between them; where words were
  dropped in between, a single space (or the line breaks there were, up to two)
  stands in for them, punctuation that followed a word directly stays
  attached, and scripts written without spaces (Chinese, Japanese, Thai...) get
  none. Characters the tokenizer ignores travel with the word they touch.
* **Speed**: chunks run in batches sorted by length and padded only to the
  longest in their batch (``llmlingua`` pads every chunk to 512), the whole text
  is tokenized once (``llmlingua`` tokenizes each chunk again from detokenized
  text), chunks made only of protected spans are not run at all, and the
  post-processing is vectorised with numpy. Three modes:
  ``exact`` (float32: the same keep decisions as ``llmlingua`` for the same
  weights and settings); ``fast`` (the default: the same model in
  whichever of float32, native bfloat16 and int8 runs it fastest on this
  machine, measured once, see :func:`~thrifty.compressors.model.fast_precision`;
  99.8% of the exact mode's decisions in bfloat16, 99.3% in int8, and its
  answers); and ``turbo`` (the shallower model
  distilled from the given one when its manifest names one, as thrifty's own
  does, see :mod:`thrifty.compressors.distil`, at the fast mode's precision:
  about twice as fast again, for 94-96% of the decisions and a few points of
  QA accuracy, see docs/benchmarks.md).
* Deterministic, and cached by content hash and settings (a bounded LRU).

Where they differ from ``llmlingua``: a window without a ``.`` is cut at a word
start (``llmlingua`` may cut inside a word), and tokens the tokenizer cannot
represent (``[UNK]``) are kept (``llmlingua`` drops them from its output).

Use::

    from thrifty.compressors.lingua import Compressor
    c = Compressor.load(mode="exact", model="path/to/weights")   # or mode="fast" / "turbo", model=None
    result = c.compress(text, rate=0.5)            # CompressResult
    result = c.compress(context, rate=0.5, question="Who maintains it?")   # for a question
    d = c.keep_decisions(text, rate=0.5)           # per-word keep decisions (KeepDecisions)
"""

from __future__ import annotations

import hashlib
import re
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from thrifty.compressors._language import ParagraphLanguages
from thrifty.compressors._scripts import (
    SPACELESS_BLOCKS,
    SPACELESS_CHAR,
    SPACELESS_LANGUAGES,
    code_points,
    in_blocks,
    is_spaceless,
)
from thrifty.compressors.base import CompressResult, Progress, check_rate
from thrifty.compressors.model import PRECISIONS, LoadedModel, fast_precision, fast_variant_dir, load_model
from thrifty.compressors.protect import merge_spans, protected_spans
from thrifty.compressors.question import sentence_relevance
from thrifty.errors import InvalidRequestError
from thrifty.settings import CompressionMode

__all__ = ["QUESTION_WEIGHT", "RELATION_WEIGHT", "RELATION_WORDS", "SENTENCE_WEIGHT", "Compressor",
           "KeepDecisions"]

MODES: tuple[str, ...] = get_args(CompressionMode)
_SURROGATES = re.compile("[\ud800-\udfff]")
_CHUNK_END_TOKENS = (".", "\n")
_BATCH = 4  # chunks per model run: measured best on 2 CPU cores (32 was 1.3-1.8x slower in float32)
_SENTENCE_ENDS = frozenset((".", "!", "?", "。", "！", "？"))
_SCORED_KEPT = 8  # texts whose scores are kept for another rate (a token budget tries several)

#: The default weight of a sentence's mean keep probability in its words' scores (0: llmlingua's rule).
SENTENCE_WEIGHT = 2.0
#: The lift of a sentence that holds every term of the question (scaled by its relevance, 0 to 1).
QUESTION_WEIGHT = 2.0
#: The default lift of a relation word's score (0: llmlingua's rule).
RELATION_WEIGHT = 0.4
#: English prepositions, and the conjunctions that work as such: the words that say how the content
#: words around them relate. Matched case-insensitively, as whole one-token words.
RELATION_WORDS = frozenset("""
of in on at by for with without about against between into onto upon through during before after since until
above below to from up down out off over under within via per among across along around behind beyond
toward towards despite near than as
""".split())


@dataclass(frozen=True, slots=True)
class KeepDecisions:
    """The classifier's per-word view of a text: each word as its tokenizer pieces spell it
    (as ``llmlingua`` lists it), its character span in the text, its keep probability, and
    whether it is kept. Words that are protected or unknown to the tokenizer are not listed.
    """

    words: list[str]
    starts: np.ndarray
    ends: np.ndarray
    probs: np.ndarray
    keep: np.ndarray


@dataclass(slots=True)
class _Scored:
    """What the model and the scoring make of a text, before a rate picks the words: the same for
    every rate, so a text compressed at several (to fit a token budget) runs the model once."""

    starts: np.ndarray  # word character spans
    ends: np.ndarray
    words: list[str]
    probs: np.ndarray
    listed: np.ndarray  # bool: neither protected nor opaque
    spans: list[tuple[int, int]]  # protected spans, widened to whole words
    # per chunk with listed words: their indices, their scores, and each score repeated as many times as its
    # word has cl100k_base tokens (what the percentile is taken over, at any rate)
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    foreign_chars: int = 0  # characters of the paragraphs kept whole as in another language
    all_foreign: bool = False  # every word is in such a paragraph

    def keep(self, rate: float) -> np.ndarray:
        """Which words are kept at ``rate``: in each chunk, those scoring above the percentile of the
        weighted scores that leaves about ``rate`` of its tokens (``llmlingua``'s rule)."""
        keep = np.ones(len(self.starts), dtype=bool)
        q = int(100 * max(0.0, 1.0 - rate) + 1)
        for idx, p, weighted in self.chunks:
            threshold = np.percentile(weighted, q)
            keep[idx] = (p > threshold) | ((threshold == 1.0) & (p == threshold))
        return keep


class Compressor:
    """LLMLingua-2's method on a keep/drop token classifier (see the module docstring)."""

    name = "llmlingua2"

    def __init__(self, loaded: LoadedModel, mode: str, *, cache_size: int = 256) -> None:
        self._m = loaded
        self.mode = mode
        self.precision = loaded.precision
        self.version = f"{loaded.name}@{loaded.version}"
        self._cache: OrderedDict[tuple[Any, ...], CompressResult] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._scored: OrderedDict[tuple[Any, ...], _Scored] = OrderedDict()
        self._ntok: dict[str, int] = {}
        # a model trained on languages none of which is written without spaces keeps such text whole
        languages = set(loaded.languages)
        self._spaceless_whole = bool(languages) and not languages & SPACELESS_LANGUAGES
        self._prepare_vocab()

    @classmethod
    def load(cls, mode: str = "fast", model: str | None = None, precision: str = "auto") -> Compressor:
        """A compressor in ``mode`` (``"fast"``, ``"exact"`` or ``"turbo"``) on ``model`` (default: thrifty's
        weights; in turbo mode the student distilled from them, where their manifest names one).

        The exact mode runs in float32; the fast and turbo modes in ``precision``, where it is one of
        :data:`~thrifty.compressors.model.PRECISIONS`, else (``"auto"``) in the one measured fastest here.
        """
        if mode not in MODES:
            raise InvalidRequestError(f"unknown compression mode {mode!r}; use fast, exact or turbo", param="mode")
        if precision != "auto" and precision not in PRECISIONS:
            raise InvalidRequestError(f"unknown precision {precision!r}; use auto, {', '.join(PRECISIONS)}",
                                      param="precision")
        if mode == "turbo":  # the student distilled from the model, where its manifest names one
            student = fast_variant_dir(Path(model) if model is not None else None)
            model = str(student) if student is not None else model
        if mode == "exact":
            precision = "float32"
        elif precision == "auto":
            precision = fast_precision(model)
        return cls(load_model(model, precision=precision), mode)

    # ------------------------------------------------------------ vocabulary tables

    def _prepare_vocab(self) -> None:
        tok = self._m.tokenizer
        vocab: dict[str, int] = tok.get_vocab()
        size = max(vocab.values()) + 1
        pieces = [""] * size
        for piece, i in vocab.items():
            pieces[i] = piece
        if self._m.word_rule == "wordpiece":
            cont = np.fromiter((p.startswith("##") for p in pieces), dtype=bool, count=size)
        else:
            cont = np.fromiter(
                (not (p.startswith("▁") or p in string.punctuation) for p in pieces), dtype=bool, count=size
            )
        special = np.zeros(size, dtype=bool)
        for i in tok.all_special_ids:
            if 0 <= i < size:
                special[i] = True
        ends = np.zeros(size, dtype=bool)
        for piece in _CHUNK_END_TOKENS:
            if piece in vocab:
                ends[vocab[piece]] = True
        self._pieces = pieces
        self._cont = cont & ~special
        self._special = special
        self._ends = ends
        # a word is a sentence end when it is one of these pieces alone ("▁." for sentencepiece)
        self._sentence_ends = np.fromiter((p.lstrip("▁") in _SENTENCE_ENDS for p in pieces), dtype=bool, count=size)
        self._relation = np.fromiter((p.lstrip("▁").lower() in RELATION_WORDS for p in pieces), dtype=bool,
                                     count=size) & ~self._cont
        self._cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        self._sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self._backend = tok.backend_tokenizer
        self._backend.no_truncation()
        self._backend.no_padding()
        self._paragraphs = ParagraphLanguages(
            frozenset(self._m.languages), lambda word: self._backend.encode(word, add_special_tokens=False).ids, size)

    # ------------------------------------------------------------ public

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
        sentence_weight: float | None = None,
        question: str | None = None,
        relation_weight: float | None = None,
    ) -> CompressResult:
        """Keep about ``rate`` of the compressible tokens of ``text`` (see the module docstring),
        favouring the sentences relevant to ``question`` when one is given."""
        rate = check_rate(rate)
        weight = _check_weight(sentence_weight, "sentence_weight", SENTENCE_WEIGHT)
        relation = _check_weight(relation_weight, "relation_weight", RELATION_WEIGHT)
        if not isinstance(text, str):
            raise InvalidRequestError(f"text to compress must be a string, got {type(text).__name__}")
        question = _check_question(question)
        key = (hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(), rate, tuple(force_keep),
               tuple(patterns), protect, target, weight, relation, question, QUESTION_WEIGHT if question else 0.0)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        result = self._compress(text, rate, force_keep, patterns, protect, target, progress, weight, relation,
                                question)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def keep_decisions(
        self,
        text: str,
        rate: float = 0.5,
        *,
        protect: bool = False,
        force_keep: Sequence[str] = (),
        patterns: Sequence[str] = (),
        sentence_weight: float | None = None,
        question: str | None = None,
        relation_weight: float | None = None,
    ) -> KeepDecisions:
        """The per-word keep decisions for ``text`` (built-in protection off by default, as in ``llmlingua``;
        ``sentence_weight=0``, ``relation_weight=0`` and no ``question`` for ``llmlingua``'s selection)."""
        rate = check_rate(rate)
        a = self._score(text, force_keep, patterns, protect, None,
                        _check_weight(sentence_weight, "sentence_weight", SENTENCE_WEIGHT),
                        _check_weight(relation_weight, "relation_weight", RELATION_WEIGHT),
                        _check_question(question))
        idx = np.flatnonzero(a.listed)
        return KeepDecisions([a.words[i] for i in idx], a.starts[idx], a.ends[idx], a.probs[idx],
                             a.keep(rate)[idx])

    def foreign_paragraphs(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the paragraphs of ``text`` that :meth:`compress` keeps whole as written in none
        of the model's languages (see :mod:`thrifty.compressors._language`); always empty for a model whose
        manifest names no languages."""
        ids, offs, _ = self._tokenize(text)
        if not self._paragraphs.active or not len(ids):
            return []
        _, first, counts, starts, ends = self._word_bounds(ids, offs)
        return self._paragraphs.foreign(text, code_points(text), ids, first, counts, starts, ends)

    # ------------------------------------------------------------ the method

    def _compress(self, text: str, rate: float, force_keep: Sequence[str], patterns: Sequence[str],
                  protect: bool, target: str, progress: Progress | None, weight: float, relation: float,
                  question: str | None) -> CompressResult:
        from thrifty.ledger.tokens import count_text

        t0 = time.perf_counter()

        def unchanged(skipped: str, protected_chars: int = 0, foreign_chars: int = 0) -> CompressResult:
            n = count_text(_encodable(text), target) if text else 0
            return CompressResult(text, n, n, rate, self.name, self.version, self.mode,
                                  (time.perf_counter() - t0) * 1000, target, skipped,
                                  protected_chars=protected_chars, foreign_chars=foreign_chars)

        if not text.strip():
            return unchanged("empty")
        if rate >= 1.0:
            return unchanged("rate")
        a = self._score(text, force_keep, patterns, protect, progress, weight, relation, question)
        protected_chars = sum(e - s for s, e in a.spans)
        if not a.listed.any():  # every word protected (code, numbers, another language...) or unreadable
            return unchanged("language" if a.all_foreign else "protected", protected_chars, a.foreign_chars)
        keep = a.keep(rate)
        out = _assemble(text, a, keep)
        if not out.strip():  # everything dropped: too short to compress
            return unchanged("short")
        before = count_text(_encodable(text), target)
        after = count_text(_encodable(out), target) if out != text else before
        return CompressResult(
            out, before, after, rate, self.name, self.version, self.mode, (time.perf_counter() - t0) * 1000,
            target, None, int(keep[a.listed].sum()), int(a.listed.sum()), protected_chars, a.foreign_chars,
        )

    def _score(self, text: str, force_keep: Sequence[str], patterns: Sequence[str], protect: bool,
               progress: Progress | None, weight: float, relation: float, question: str | None) -> _Scored:
        """The text's words, protected spans and keep scores (see :class:`_Scored`), kept for the last
        few texts so that compressing one again at another rate does not run the model again."""
        key = (hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(), tuple(force_keep),
               tuple(patterns), protect, weight, relation, question, QUESTION_WEIGHT if question else 0.0)
        with self._lock:
            hit = self._scored.get(key)
            if hit is not None:
                self._scored.move_to_end(key)
                return hit
        scored = self._run_scoring(text, force_keep, patterns, protect, progress, weight, relation, question)
        with self._lock:
            self._scored[key] = scored
            while len(self._scored) > _SCORED_KEPT:
                self._scored.popitem(last=False)
        return scored

    def _run_scoring(self, text: str, force_keep: Sequence[str], patterns: Sequence[str], protect: bool,
                     progress: Progress | None, weight: float, relation: float, question: str | None) -> _Scored:
        ids, offs, tokens = self._tokenize(text)
        n = len(ids)
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return _Scored(empty, empty, [], np.zeros(0, np.float32), np.zeros(0, bool),
                           protected_spans(text, defaults=protect, force_keep=force_keep, patterns=patterns), [])
        is_start, first, counts, starts, ends = self._word_bounds(ids, offs)
        opaque = self._special[ids[first]]

        spans = protected_spans(text, defaults=protect, force_keep=force_keep, patterns=patterns)
        spaceless = protect and self._spaceless_whole and SPACELESS_CHAR.search(text)
        foreign_check = protect and self._paragraphs.active
        points = code_points(text) if spaceless or foreign_check else None
        if spaceless:
            spans = merge_spans(spans + _spaceless_runs(points[starts], starts, ends))
        foreign_chars, all_foreign = 0, False
        if foreign_check:
            foreign = self._paragraphs.foreign(text, points, ids, first, counts, starts, ends)
            if foreign:
                others = sum(e - s for s, e in spans)
                spans = merge_spans(spans + foreign)
                # what the language alone keeps (a code block or a URL is kept as such, in any language)
                foreign_chars = sum(e - s for s, e in spans) - others
                # the paragraphs are whole words: count those inside them
                bounds = np.searchsorted(starts, np.array(foreign, dtype=np.int64), side="left")
                all_foreign = int((bounds[:, 1] - bounds[:, 0]).sum()) == len(starts)
        protected = np.zeros(len(first), dtype=bool)
        if spans:
            spans, protected = _widen(spans, starts, ends)
        listed = ~protected & ~opaque

        chunks = self._chunks(ids, is_start)
        tok_probs = self._probabilities(ids, chunks, listed, first, progress)

        sums = np.add.reduceat(tok_probs, first) if n else tok_probs
        probs = (sums / counts.astype(np.float32)).astype(np.float32)
        words = self._words(tokens, first, counts)
        weights = self._oai_counts(words, listed)

        chunk_of_word = np.searchsorted(np.array([c[0] for c in chunks]), first, side="right") - 1
        bounds = np.searchsorted(chunk_of_word, np.arange(len(chunks) + 1), side="left")
        relevance = None
        if weight or question:
            ends_sentence = self._sentence_ends[ids[first]] & (counts == 1)
            sentence = np.cumsum(ends_sentence) - ends_sentence  # a sentence's "." belongs to it
            if question:
                heads = np.flatnonzero(np.diff(sentence, prepend=-1))  # each sentence's first word
                tails = np.append(heads[1:], len(first)) - 1
                relevance = QUESTION_WEIGHT * sentence_relevance(text, starts[heads], ends[tails], question)
        lift = relation * (self._relation[ids[first]] & (counts == 1)) if relation else None
        scored: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for c in range(len(chunks)):
            lo, hi = bounds[c], bounds[c + 1]
            idx = lo + np.flatnonzero(listed[lo:hi])
            if not idx.size:
                continue
            p = probs[idx]
            if lift is not None:  # before the sentence means, which it raises where clauses hold together
                p = p + lift[idx]
            if weight:
                p = _sentence_scores(p, sentence[idx], weight)
            if relevance is not None:
                p = p + relevance[sentence[idx]]
            scored.append((idx, p, np.repeat(p, weights[idx])))
        return _Scored(starts, ends, words, probs, listed, spans, scored, foreign_chars, all_foreign)

    def _word_bounds(self, ids: np.ndarray, offs: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Where words start among the tokens, each word's first token, its token count and its character span."""
        special = self._special[ids]
        is_start = ~self._cont[ids]
        is_start[0] = True
        is_start[1:] |= special[:-1]  # a piece after a special token starts a word
        first = np.flatnonzero(is_start)
        last = np.append(first[1:], len(ids)) - 1
        return is_start, first, np.diff(np.append(first, len(ids))), offs[first, 0], offs[last, 1]

    def _tokenize(self, text: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        safe = _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text
        enc = self._backend.encode(safe, add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int64)
        offs = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        return ids, offs, enc.tokens

    def _chunks(self, ids: np.ndarray, is_start: np.ndarray) -> list[tuple[int, int]]:
        """Token ranges ``[a, b)`` of the chunks, by ``llmlingua``'s rule (see the module docstring)."""
        n = len(ids)
        width = self._m.max_seq_len - 2
        ends = self._ends[ids]
        chunks = []
        st = 0
        while st < n:
            if st + width > n - 1:
                chunks.append((st, n))
                break
            ed = st + width
            hits = np.flatnonzero(ends[st + 1: ed + 1])
            if hits.size:
                cut = st + 1 + int(hits[-1]) + 1
            else:
                word_starts = np.flatnonzero(is_start[st + 1: ed + 2])
                cut = st + 1 + int(word_starts[-1]) if word_starts.size else ed + 1
            chunks.append((st, cut))
            st = cut
        return chunks

    def _probabilities(self, ids: np.ndarray, chunks: list[tuple[int, int]], listed: np.ndarray,
                       first: np.ndarray, progress: Progress | None) -> np.ndarray:
        """Each token's keep probability (1.0 where no model run was needed).

        Chunks run in batches of similar length (sorted, padded only to the longest in the
        batch, with an attention mask): fewer, larger matrix products keep the CPU busy.
        """
        import torch

        n = len(ids)
        probs = np.ones(n, dtype=np.float32)
        # chunks with nothing to decide (all protected or opaque) need no model run
        token_listed = np.repeat(listed, np.diff(np.append(first, n)))
        todo = sorted((c for c in chunks if token_listed[c[0]:c[1]].any()), key=lambda c: c[0] - c[1])
        limit = self._m.max_seq_len
        model = self._m.model
        keep = self._m.keep_label
        pad = self._pad
        done = n - sum(b - a for a, b in todo)
        with self._run_lock, torch.inference_mode():
            for k in range(0, len(todo), _BATCH):
                batch = todo[k: k + _BATCH]
                seqs = [np.concatenate(([self._cls], ids[a:b], [self._sep]))[:limit] for a, b in batch]
                width = max(len(q) for q in seqs)
                inputs = np.full((len(seqs), width), pad, dtype=np.int64)
                mask = np.zeros((len(seqs), width), dtype=np.int64)
                for r, q in enumerate(seqs):
                    inputs[r, : len(q)] = q
                    mask[r, : len(q)] = 1
                logits = model(input_ids=torch.from_numpy(inputs), attention_mask=torch.from_numpy(mask)).logits
                p = torch.softmax(logits.float(), dim=-1)[:, :, keep].numpy()
                for r, (a, b) in enumerate(batch):
                    got = p[r, 1: 1 + min(b - a, len(seqs[r]) - 1)]
                    probs[a: a + len(got)] = got
                    done += b - a
                if progress is not None:
                    progress(done, n)
        if progress is not None and not todo:
            progress(n, n)
        return probs

    def _words(self, tokens: list[str], first: np.ndarray, counts: np.ndarray) -> list[str]:
        words = [tokens[i] for i in first.tolist()]
        strip = "#" if self._m.word_rule == "wordpiece" else "▁"
        for w in np.flatnonzero(counts > 1).tolist():
            f = int(first[w])
            words[w] = words[w] + "".join(t.lstrip(strip) for t in tokens[f + 1: f + int(counts[w])])
        return words

    def _oai_counts(self, words: list[str], listed: np.ndarray) -> np.ndarray:
        """cl100k_base tokens per word (the weights of the percentile), memoised per word."""
        cache = self._ntok
        missing = {w for w, ok in zip(words, listed.tolist(), strict=True) if ok and w not in cache}
        if missing:
            from thrifty.ledger.tokens import get_encoding

            enc = get_encoding("cl100k_base")
            fresh = list(missing)
            for w, toks in zip(fresh, enc.encode_ordinary_batch(fresh, num_threads=1), strict=True):
                cache[w] = len(toks)
            if len(cache) > 500_000:
                cache.clear()
        return np.fromiter((cache.get(w, 1) for w in words), dtype=np.int64, count=len(words))


def _sentence_scores(p: np.ndarray, sentence: np.ndarray, weight: float) -> np.ndarray:
    """Keep probabilities plus ``weight`` times each word's sentence mean above the chunk mean."""
    ids = sentence - sentence.min()
    means = np.bincount(ids, weights=p) / np.maximum(np.bincount(ids), 1)
    return (p + weight * (means[ids] - p.mean())).astype(np.float32)


def _spaceless_runs(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[tuple[int, int]]:
    """Character spans of the runs of words (character spans ``starts``-``ends``, first code points
    ``codes``) that begin in a script written without spaces, each run unbroken by a gap."""
    idx = np.flatnonzero(in_blocks(codes, SPACELESS_BLOCKS))
    if not idx.size:
        return []
    head = np.ones(idx.size, dtype=bool)
    head[1:] = (np.diff(idx) != 1) | (starts[idx[1:]] != ends[idx[:-1]])
    tail = np.append(head[1:], True)
    return list(zip(starts[idx[head]].tolist(), ends[idx[tail]].tolist(), strict=True))


def _check_weight(weight: float | None, name: str, default: float) -> float:
    if weight is None:
        return default
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 100:
        raise InvalidRequestError(f"{name} must be a number from 0 to 100, got {weight!r}", param=name)
    return float(weight)


def _check_question(question: str | None) -> str | None:
    if question is None:
        return None
    if not isinstance(question, str):
        raise InvalidRequestError(f"question must be a string, got {type(question).__name__}", param="question")
    return question if question.strip() else None


def _encodable(text: str) -> str:
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text


def _widen(spans: list[tuple[int, int]], starts: np.ndarray, ends: np.ndarray
           ) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Grow each span to the whole words it touches; which words are inside a span."""
    span_starts = np.array([s for s, _ in spans], dtype=np.int64)
    span_ends = np.array([e for _, e in spans], dtype=np.int64)
    k = np.searchsorted(span_starts, ends, side="left") - 1  # the last span starting before the word ends
    valid = k >= 0
    kk = np.where(valid, k, 0)
    inside = valid & (span_ends[kk] > starts)
    if inside.any():
        grown = list(spans)
        for w in np.flatnonzero(inside).tolist():
            s, e = grown[int(kk[w])]
            grown[int(kk[w])] = (min(s, int(starts[w])), max(e, int(ends[w])))
        spans = merge_spans(grown)
    return spans, inside


def _assemble(text: str, a: _Scored, keep: np.ndarray) -> str:
    """The words ``keep`` picks and the protected spans, cut from ``text`` (see the module docstring
    for the spacing)."""
    items: list[tuple[int, int, bool]] = [(s, e, True) for s, e in a.spans]
    in_span = np.zeros(len(a.starts), dtype=bool)
    if a.spans:
        span_starts = np.array([s for s, _ in a.spans], dtype=np.int64)
        span_ends = np.array([e for _, e in a.spans], dtype=np.int64)
        k = np.searchsorted(span_starts, a.starts, side="right") - 1
        kk = np.where(k >= 0, k, 0)
        in_span = (k >= 0) & (span_ends[kk] >= a.ends)
    idx = np.flatnonzero(~in_span)  # every word not inside a protected span
    items.extend(zip(a.starts[idx].tolist(), a.ends[idx].tolist(), keep[idx].tolist(), strict=True))
    if not items:
        return text
    items.sort()
    # characters between items that are not whitespace travel with the item they touch
    starts = [s for s, _, _ in items]
    ends = [e for _, e, _ in items]
    keeps = [k for _, _, k in items]
    count = len(items)
    starts[0] = _grow_left(text, 0, starts[0])
    for i in range(count - 1):
        e, s = ends[i], starts[i + 1]
        if s > e and not (s - e == 1 and text[e] == " "):
            ends[i] = _grow_right(text, e, s)
            starts[i + 1] = _grow_left(text, ends[i], s)
    ends[-1] = _grow_right(text, ends[-1], len(text))

    out = [text[: starts[0]]]
    prev = -1  # index of the last item written
    for i in range(count):
        if not keeps[i]:
            continue
        s = starts[i]
        if prev == i - 1 and prev >= 0:
            out.append(text[ends[prev]: s])
        elif prev >= 0:
            gap = text[ends[prev]: s]
            breaks = gap.count("\n")
            if breaks:
                out.append("\n\n" if breaks > 1 else "\n")
            elif not _joins(text, ends[prev], s, gap):
                out.append(" ")
        out.append(text[s: ends[i]])
        prev = i
    out.append(text[ends[-1]:])
    return "".join(out)


def _joins(text: str, end: int, start: int, gap: str) -> bool:
    """Whether a kept item at ``start`` follows the one ending at ``end`` without a space.

    Punctuation that directly followed a word stays attached (``The big dog.`` -> ``The big.``);
    scripts written without spaces (CJK, Thai...) stay without them.
    """
    if not text[start].isalnum() and not text[start - 1].isspace():
        return True
    return not any(c.isspace() for c in gap) and (is_spaceless(text[end - 1]) or is_spaceless(text[start]))


def _grow_right(text: str, pos: int, limit: int) -> int:
    """Move ``pos`` right over non-whitespace characters, up to ``limit``."""
    while pos < limit and not text[pos].isspace():
        pos += 1
    return pos


def _grow_left(text: str, floor: int, pos: int) -> int:
    """Move ``pos`` left over non-whitespace characters, down to ``floor``."""
    while pos > floor and not text[pos - 1].isspace():
        pos -= 1
    return pos
