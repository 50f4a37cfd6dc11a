"""Training data for the keep/drop compressor: an offline English corpus and teacher labels.

The corpus is built from text that every install of thrifty's environment
carries, so it needs no download:

* ``pydoc`` topics: the Python language reference as plain text
  (``pydoc_data.topics``);
* docstrings of the Python standard library and of the installed packages
  (module, class and function docstrings, read with :mod:`ast` from the
  source files, never imported), one document per source file;
* the long descriptions (READMEs) of the installed distributions, with code
  blocks removed.

Each document is cut into paragraphs; paragraphs that look like code, tables
or lists of symbols are dropped; what remains is joined into passages of
:data:`MIN_WORDS` to :data:`MAX_WORDS` words, deduplicated, and split by
document into a training and a held-out part (a document's passages all go to
one side; the split is a seeded hash, so it is reproducible).

Teacher labels follow LLMLingua-1: a causal LM reads the passage and each
token's surprisal (``-log p(token | left context)``) is its information. A
word's information is the sum over the LM tokens that start inside it; the
words (as the encoder's tokenizer splits them) with the highest information are
labelled keep, the rest drop, at a fixed keep rate per passage.

With the ``function-words`` prior (the default since ``minilm-keep-v2``),
words of English's closed classes (articles, pronouns, prepositions,
conjunctions, auxiliaries, a few adverbs; never negations such as "not",
"no", "without" or "only") and bare punctuation rank below every other word,
and surprisal orders the words within each class. Surprisal alone
drops the predictable second half of a name or a phrase ("shared *memory*"),
which is content; the closed classes are what a human (or the GPT-4 of the
LLMLingua-2 paper) removes first.

Everything heavy (torch, transformers) is imported inside functions.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_WORDS",
    "MIN_WORDS",
    "LabelledPassage",
    "Passage",
    "build_corpus",
    "is_prose",
    "label_words",
    "passages_from_text",
    "read_jsonl",
    "split_passages",
    "word_spans",
    "write_jsonl",
]

MIN_WORDS = 80
MAX_WORDS = 300

#: English closed-class words: what the ``function-words`` prior ranks below content words.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every either all both
i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves one ones
who whom whose which what whatever whichever whoever
and or but so yet if then than because although though while whereas unless until since as
whether once
of in on at by for with about against between into through during before after above below
to from up down out off over under again further upon onto within via per among
amongst across along around behind beyond toward towards despite like near
be am is are was were been being have has had having do does did doing done
will would shall should can could may might must ought
very too also just quite rather such own same other another more most much many
there here where when how why s t d ll m re ve
""".split())

PRIORS = ("none", "function-words")
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |#|[-=~^*+]{3,}\s*$|\||def |class |import |from \S+ import )")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


@dataclass(frozen=True)
class Passage:
    """One passage of the corpus; ``doc`` names the document it came from."""

    id: str
    doc: str
    text: str


@dataclass(frozen=True)
class LabelledPassage:
    """A passage with its words' character spans, teacher scores and keep labels."""

    id: str
    doc: str
    text: str
    spans: list[tuple[int, int]]
    scores: list[float]
    labels: list[int]


def _normalise_paragraph(paragraph: str) -> str:
    return " ".join(paragraph.split())


def is_prose(paragraph: str) -> bool:
    """True for a paragraph of running English text (not code, a table or a symbol list)."""
    lines = [line for line in paragraph.splitlines() if line.strip()]
    if not lines:
        return False
    if sum(1 for line in lines if _CODE_LINE.match(line)) > len(lines) // 4:
        return False
    if sum(1 for line in lines if line.startswith("    ")) > len(lines) // 2:
        return False
    if re.search(r"[-=~]{4,}", paragraph) or paragraph.count(" : ") >= 2:
        return False  # section underlines; numpydoc parameter lists
    text = _normalise_paragraph(paragraph)
    tokens = text.split()
    if len(tokens) < 12:
        return False
    wordlike = sum(1 for token in tokens if _WORD.fullmatch(token.strip(".,;:()\"'!?")))
    if wordlike / len(tokens) < 0.7:
        return False
    symbols = sum(text.count(c) for c in "{}[]=<>_|\\`@")
    return symbols / len(text) < 0.02 and text.count(". ") + text.endswith(".") >= 1


def passages_from_text(doc: str, text: str) -> Iterator[Passage]:
    """Cut one document into passages of whole prose paragraphs, MIN_WORDS to MAX_WORDS words each."""
    current: list[str] = []
    count = 0
    seen: set[str] = set()

    def flush() -> Passage | None:
        if count < MIN_WORDS:
            return None
        body = "\n\n".join(current)
        digest = hashlib.sha256(body.encode()).hexdigest()[:16]
        return Passage(id=digest, doc=doc, text=body)

    for raw in re.split(r"\n\s*\n", text):
        if not is_prose(raw):
            passage = flush()
            if passage is not None:
                yield passage
            current, count = [], 0
            continue
        paragraph = _normalise_paragraph(raw)
        words = len(paragraph.split())
        if words > MAX_WORDS or paragraph in seen:
            continue
        seen.add(paragraph)
        if count + words > MAX_WORDS:
            passage = flush()
            if passage is not None:
                yield passage
            current, count = [], 0
        current.append(paragraph)
        count += words
    passage = flush()
    if passage is not None:
        yield passage


def _pydoc_documents() -> Iterator[tuple[str, str]]:
    from pydoc_data import topics

    for name in sorted(topics.topics):
        yield f"pydoc:{name}", topics.topics[name]


def _docstring_documents(root: Path, label: str) -> Iterator[tuple[str, str]]:
    """One document per source file: its docstrings of at least 20 words, as paragraphs in file order."""
    skip = {"test", "tests", "testing", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip.intersection(rel.parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        nodes: list[Any] = [tree]
        nodes += [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
        nodes.sort(key=lambda n: getattr(n, "lineno", 0))
        docs = [doc for node in nodes if (doc := ast.get_docstring(node)) and len(doc.split()) >= 20]
        if docs:
            yield f"{label}:{rel.as_posix()}", "\n\n".join(docs)


def _metadata_documents(root: Path) -> Iterator[tuple[str, str]]:
    """The long descriptions (READMEs) of installed distributions, from their METADATA files."""
    for path in sorted(root.glob("*.dist-info/METADATA")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        _, _, body = text.partition("\n\n")
        body = re.sub(r"```.*?```", "\n\n", body, flags=re.S)
        body = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", body)
        yield f"readme:{path.parent.name.split('-')[0]}", body


def build_corpus(stdlib: Path | None = None, site_packages: Path | None = None) -> list[Passage]:
    """Every passage of the offline corpus, deduplicated, in a fixed order.

    ``stdlib`` and ``site_packages`` default to this interpreter's; pass
    ``site_packages=Path()``-like empty folders to leave a source out.
    """
    paths = sysconfig.get_paths()
    lib = Path(stdlib) if stdlib is not None else Path(paths["stdlib"])
    site = Path(site_packages) if site_packages is not None else Path(paths["purelib"])
    seen: set[str] = set()
    passages: list[Passage] = []
    sources = _chain(
        _pydoc_documents() if stdlib is None else iter(()),
        _docstring_documents(lib, "stdlib"),
        _metadata_documents(site),
        _docstring_documents(site, "site"),
    )
    for doc, text in sources:
        for passage in passages_from_text(doc, text):
            if passage.id not in seen:
                seen.add(passage.id)
                passages.append(passage)
    return passages


def _chain(*iterables: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for iterable in iterables:
        yield from iterable


def split_passages(passages: Sequence[Passage], *, seed: int, heldout: float) -> tuple[list[Passage], list[Passage]]:
    """Split by document (seeded hash): about ``heldout`` of the documents go to the second list."""
    train: list[Passage] = []
    held: list[Passage] = []
    for passage in passages:
        bucket = int(hashlib.sha256(f"{seed}:{passage.doc}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (held if bucket < heldout else train).append(passage)
    return train, held


def word_spans(tokenizer: Any, text: str, max_len: int = 512) -> list[tuple[int, int]]:
    """Character spans of the words the encoder sees (its pre-tokenizer's words), up to ``max_len`` tokens."""
    enc = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=max_len)
    spans: list[tuple[int, int]] = []
    last = None
    for word_id, (start, end) in zip(enc.word_ids(), enc["offset_mapping"], strict=True):
        if word_id is None:
            continue
        if word_id != last:
            spans.append((start, end))
            last = word_id
        else:
            spans[-1] = (spans[-1][0], end)
    return spans


def token_surprisal(model: Any, tokenizer: Any, text: str) -> tuple[list[tuple[int, int]], list[float]]:
    """Each LM token's character span and its surprisal in nats (the first token gets the mean)."""
    import torch

    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = enc["input_ids"]
    if not ids:
        return [], []
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    target = torch.tensor(ids[1:])
    values = (-logprobs.gather(1, target[:, None])[:, 0]).tolist()
    first = sum(values) / len(values) if values else 0.0
    return [tuple(o) for o in enc["offset_mapping"]], [first, *values]


def label_words(
    spans: Sequence[tuple[int, int]],
    token_spans: Sequence[tuple[int, int]],
    token_scores: Sequence[float],
    *,
    keep_rate: float,
    text: str = "",
    prior: str = "none",
) -> tuple[list[float], list[int]]:
    """Word scores (sum of the surprisal of LM tokens starting in the word) and top-``keep_rate`` labels.

    An LM token that starts with whitespace counts from its first non-space
    character. Ties are broken by position (earlier first), so labels are
    deterministic. ``prior`` is ``"none"`` (surprisal alone) or
    ``"function-words"`` (see the module docstring).
    """
    scores = [0.0] * len(spans)
    starts = [s for s, _ in spans]
    j = 0
    for (start, end), value in zip(token_spans, token_scores, strict=True):
        while start < end and text[start : start + 1].isspace():
            start += 1
        while j + 1 < len(spans) and starts[j + 1] <= start:
            j += 1
        if spans and spans[j][0] <= start < spans[j][1]:
            scores[j] += value
        elif spans and j + 1 < len(spans) and start < spans[j + 1][0] and start >= spans[j][1]:
            continue  # whitespace or text outside the encoder's words
    return scores, labels_from_scores(spans, scores, keep_rate=keep_rate, text=text, prior=prior)


def is_function_word(word: str) -> bool:
    """A closed-class English word, or a word with no letter or digit (punctuation)."""
    return word.lower() in FUNCTION_WORDS or not any(ch.isalnum() for ch in word)


def _order(spans: Sequence[tuple[int, int]], scores: Sequence[float], text: str, prior: str) -> list[int]:
    """Word indices from most to least worth keeping: by ``prior`` class, then score, then position."""
    if prior not in PRIORS:
        raise ValueError(f"unknown label prior {prior!r}; use one of {', '.join(PRIORS)}")
    low = [prior == "function-words" and is_function_word(text[s:e]) for s, e in spans]
    return sorted(range(len(spans)), key=lambda i: (low[i], -scores[i], i))


def rank_targets(
    spans: Sequence[tuple[int, int]], scores: Sequence[float], *, text: str, prior: str = "none"
) -> list[float]:
    """Each word's place in the teacher's order as a keep target in [0, 1] (1: kept first, 0: dropped first).

    Trained on these, a model's keep probability ranks the words as the teacher
    does at every rate, not only at the one a hard label was cut at.
    """
    order = _order(spans, scores, text, prior)
    targets = [1.0] * len(spans)
    last = max(1, len(order) - 1)
    for place, i in enumerate(order):
        targets[i] = round(1.0 - place / last, 4)
    return targets


def labels_from_scores(
    spans: Sequence[tuple[int, int]], scores: Sequence[float], *, keep_rate: float, text: str, prior: str = "none"
) -> list[int]:
    """The top ``keep_rate`` of the words by score, under ``prior`` (ties: earlier first)."""
    order = _order(spans, scores, text, prior)
    keep = math.ceil(keep_rate * len(spans))
    labels = [0] * len(spans)
    for i in order[:keep]:
        labels[i] = 1
    return labels


def write_jsonl(path: Path, rows: Iterable[Any]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(asdict(row) if hasattr(row, "__dataclass_fields__") else row) + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
