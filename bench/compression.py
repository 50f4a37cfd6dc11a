"""Prompt compression: does the compressed context still answer the question, and how fast is it?

Commands:

    .venv/bin/python bench/compression.py build-eval     # writes bench/data/compression_qa.jsonl
    .venv/bin/python bench/compression.py build-eval --set dev --seed 1   # bench/data/compression_dev.jsonl
    .venv/bin/python bench/compression.py teachers       # teacher labelings compared on the dev set
    .venv/bin/python bench/compression.py sentences      # sentence_weight values compared on the dev set
    .venv/bin/python bench/compression.py relations      # relation_weight values compared on the dev set
    .venv/bin/python bench/compression.py questions      # question weights compared on the dev set
    .venv/bin/python bench/compression.py run            # prints a table, writes bench/results/compression.json
    .venv/bin/python bench/compression.py ceiling        # the model's least time per 1k tokens on this CPU
    .venv/bin/python bench/compression.py student-fit    # the turbo student on trained vs held-out passages
    .venv/bin/python bench/compression.py languages      # English paragraphs taken for another language
    .venv/bin/python bench/compression.py qa-pair        # two runtimes' QA, asked where their outputs differ
    .venv/bin/python bench/compression.py first-call     # the proxy's first compressed call, warmed up or not
    .venv/bin/python bench/compression.py budget         # target_tokens: its cost, and how well it fills a budget

``build-eval`` makes the evaluation set from held-out passages of the
compressor's training corpus (documents that training never saw; the corpus and
its split come from ``python -m thrifty.compressors.train corpus``): into each
passage one templated fact sentence is written at a seeded sentence boundary
(a name, city, language, animal ... about a fictional project), with a question
whose answer is that short phrase, verbatim in the passage. The rest of the
passage is real text the compressor must drop around the fact. No model is
involved, so the set is exact and reproducible. ``--set dev`` builds the same
kind of items from training passages that were never labelled, for choosing
teachers and models without looking at the evaluation set.

``run`` compresses each passage at keep rates 0.5 and 0.33 with: thrifty's
compressor (exact mode; fast mode, the same model in the precision measured
fastest here, see ``thrifty.compressors.model.fast_precision``; turbo mode, the
distilled student; ``thrifty-bf16`` and ``thrifty-int8``, the full model forced
to bfloat16 or int8, for reference whatever the fast mode chose; ``thrifty-onnx``,
the exact mode's model run by ONNX Runtime, for reference where ``onnxruntime`` and
``onnx`` are installed), random word dropping at the same rate (seeded),
LLMLingua-1 (the ``llmlingua`` package with a local causal LM),
LongLLMLingua (its question-aware method, same causal LM) and
``llmlingua``'s own LLMLingua-2 path on thrifty's weights; the ``-q`` variants
of thrifty's modes compress each passage for its question (question-aware
allocation; every question names the fictional project its fact sentence
names, so the lexical relevance finds that sentence: an upper bound for
questions that share a name or term with their answer's sentence); and reports the
achieved rate (tokens after / before, cl100k), answer-span survival (the gold
answer still present in the compressed text) and the QA model's accuracy (the
gold answer contained in its answer), both compared as SQuAD's evaluation
compares answers (lower-cased, punctuation and articles removed), on the
original and on each compressed context. It also times each compressor on a
~10k-token prompt (ms per 1k tokens, in one process) and measures the
keep-decision agreement of each other thrifty runtime with the exact mode.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import models as bench_models  # noqa: E402

EVAL_PATH = ROOT / "bench" / "data" / "compression_qa.jsonl"
#: The development set: the same kind of items from training-corpus passages that were never labelled
#: (beyond the first ``--skip`` the model is trained on), for choosing between teachers and models
#: without looking at the evaluation set.
DEV_PATH = ROOT / "bench" / "data" / "compression_dev.jsonl"
RESULTS = ROOT / "bench" / "results" / "compression.json"
RATES = (0.5, 0.33)
QA_MODEL = "qwen-0.5b"
WORK = Path.home() / ".cache" / "thrifty" / "compressor-train"


# ---------------------------------------------------------------- text helpers


def normalise(text: str) -> str:
    """How answers and spans are compared, as SQuAD's evaluation does: lower-case, punctuation to
    spaces, the articles a/an/the removed, whitespace collapsed ("A ring-buffer." == "ring buffer")."""
    return " ".join(w for w in re.sub(r"[^0-9a-z]+", " ", text.lower()).split() if w not in ("a", "an", "the"))


def contains(haystack: str, needle: str) -> bool:
    n = normalise(needle)
    return bool(n) and f" {n} " in f" {normalise(haystack)} "


def count_tokens(text: str) -> int:
    from thrifty.ledger.tokens import get_encoding

    return len(get_encoding("cl100k_base").encode(text))


def keep_mask(original: str, compressed: str) -> list[bool]:
    """Which of the original's normalised words survive, matching the compressed ones in order.

    Both texts are normalised first (see :func:`normalise`), so outputs that
    differ in case or spacing around punctuation (llmlingua's) compare fairly.
    """
    words = normalise(original).split()
    kept = normalise(compressed).split()
    mask = [False] * len(words)
    j = 0
    for i, word in enumerate(words):
        if j < len(kept) and word == kept[j]:
            mask[i] = True
            j += 1
    return mask


# ---------------------------------------------------------------- local LLM (QA and question writing)


class LocalLM:
    """A local instruct model from ``bench/models.py``, greedy decoding."""

    def __init__(self, name: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = bench_models.model_dir(name)
        if not (path / "config.json").is_file():
            raise SystemExit(f"the bench model {name!r} is missing: run make bench-models")
        from thrifty.compressors.model import native_bfloat16

        self.name = name
        # bfloat16 where the CPU has it natively (half the memory); emulated it is 5x slower
        self.dtype = "bfloat16" if native_bfloat16() else "float32"
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                          dtype=getattr(torch, self.dtype))
        self.model.eval()

    def chat(self, system: str, user: str, max_new_tokens: int) -> str:
        import torch

        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


QA_SYSTEM = "Answer the question using the context. Reply with only the answer: a short phrase, no sentence."


def qa_prompt(context: str, question: str) -> str:
    return f"Context:\n{context}\n\nQuestion: {question}"


def answer(lm: LocalLM, context: str, question: str) -> str:
    return lm.chat(QA_SYSTEM, qa_prompt(context, question), max_new_tokens=24)


# ---------------------------------------------------------------- building the evaluation set

# One fact is written into each held-out passage (a needle among real text):
# (fact sentence, question, answer) templates; the slots are filled from the
# word lists below with a seeded generator. Answers are ordinary words and
# names (no numbers, IDs or quoted strings, which thrifty always keeps).
TEMPLATES = (
    ("The {project} project is maintained by {person}.", "Who maintains the {project} project?", "{person}"),
    ("Last spring the {project} team moved its build servers to {city}.",
     "Where did the {project} team move its build servers?", "{city}"),
    ("The logo of the {project} toolkit is a {colour} {animal}.",
     "What animal is in the logo of the {project} toolkit?", "{animal}"),
    ("The first version of {project} was written in {language} by a student in {city}.",
     "In which language was the first version of {project} written?", "{language}"),
    ("Every release of {project} is named after a {kind}; the next one is called {codename}.",
     "What is the next release of {project} called?", "{codename}"),
    ("{person} designed the caching layer of {project}, which keeps its entries in {store}.",
     "Where does the caching layer of {project} keep its entries?", "{store}"),
    ("The {project} documentation recommends {editor} as the editor for new contributors.",
     "Which editor does the {project} documentation recommend for new contributors?", "{editor}"),
    ("In {project}, the scheduler was rewritten by {person} after a long outage.",
     "Who rewrote the scheduler in {project}?", "{person}"),
)
SLOTS = {
    "project": ["Orion", "Bramble", "Kestrel", "Marlow", "Quill", "Tamarack", "Vesper", "Halcyon", "Juniper",
                "Larkspur", "Meridian", "Nimbus", "Pellucid", "Sorrel", "Thistle", "Wicklow"],
    "person": ["Maria Chen", "Tomas Eriksen", "Aisha Okafor", "Lena Brandt", "Rafael Souza", "Yuki Tanaka",
               "Olivia Hart", "Samir Haddad", "Greta Lindqvist", "Daniel Moreau", "Priya Raman", "Ivan Petrov"],
    "city": ["Lisbon", "Tallinn", "Montreal", "Osaka", "Valencia", "Nairobi", "Krakow", "Adelaide", "Bergen",
             "Porto", "Ljubljana", "Santiago"],
    "colour": ["green", "orange", "purple", "silver", "crimson", "yellow"],
    "animal": ["heron", "badger", "otter", "falcon", "tortoise", "lynx", "beaver", "octopus", "pelican"],
    "language": ["Haskell", "Fortran", "Pascal", "OCaml", "Erlang", "Smalltalk", "Lua", "Perl"],
    "kind": ["mountain", "river", "star", "tree"],
    "codename": ["Aconcagua", "Danube", "Betelgeuse", "Sequoia", "Matterhorn", "Orinoco", "Rigel", "Baobab"],
    "store": ["a ring buffer", "shared memory", "a sorted skiplist", "a trie", "a write-ahead log"],
    "editor": ["Emacs", "Vim", "Kate", "Helix", "Geany", "Nano"],
}


def make_question(passage: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Write one templated fact into ``passage`` at a sentence boundary; return the QA item."""
    fact, question, gold = rng.choice(TEMPLATES)
    values = {slot: rng.choice(options) for slot, options in SLOTS.items()}
    fact, question, gold = (t.format(**values) for t in (fact, question, gold))
    text = passage["text"]
    cuts = [m.end() for m in re.finditer(r"[.!?] (?=[A-Z])", text)]
    cut = rng.choice(cuts) if cuts else len(text)
    body = f"{text[:cut].rstrip()} {fact} {text[cut:].lstrip()}".strip()
    return {"id": passage["id"], "doc": passage["doc"], "passage": body, "question": question, "answer": gold}


def set_path(name: str) -> Path:
    return DEV_PATH if name == "dev" else EVAL_PATH


def read_set(name: str, limit: int = 0) -> list[dict[str, Any]]:
    path = set_path(name)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def build_eval(args: argparse.Namespace) -> None:
    from thrifty.compressors import _data

    source = "heldout.jsonl" if args.set == "eval" else "train.jsonl"
    held = _data.read_jsonl(Path(args.work) / source)
    if args.set == "dev":
        held = held[args.skip :]  # training passages the model is not trained on
    held.sort(key=lambda p: p["id"])
    rng = random.Random(args.seed)
    rng.shuffle(held)
    rows: list[dict[str, Any]] = []
    per_doc: dict[str, int] = {}
    for passage in held:
        if len(rows) >= args.size:
            break
        if per_doc.get(passage["doc"], 0) >= 2 or not 100 <= len(passage["text"].split()) <= 300:
            continue
        per_doc[passage["doc"]] = per_doc.get(passage["doc"], 0) + 1
        row = make_question(passage, rng)
        if row["answer"] in row["passage"] and not contains(row["question"], row["answer"]):
            rows.append(row)
    out = set_path(args.set)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    command = f"python bench/compression.py build-eval --size {args.size} --seed {args.seed}"
    if args.set == "eval":
        meta = {
            "command": command,
            "source": "held-out passages of python -m thrifty.compressors.train corpus (documents not used in training)",
            "heldout_sha256": hashlib.sha256((Path(args.work) / source).read_bytes()).hexdigest(),
        }
    else:
        meta = {
            "command": f"{command} --set dev --skip {args.skip}",
            "source": f"training passages after the first {args.skip} (never labelled, so never trained on)",
            "train_sha256": hashlib.sha256((Path(args.work) / source).read_bytes()).hexdigest(),
        }
    meta |= {"eval_sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "questions": len(rows)}
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} questions to {out}")


# ---------------------------------------------------------------- compressors


@contextlib.contextmanager
def tiktoken_cache() -> Iterator[None]:
    """Seed a private tiktoken cache with cl100k_base from bpe-openai (llmlingua loads it at start-up)."""
    from thrifty.ledger.tokens import _bpe_openai_data_dir

    tmp = Path(tempfile.mkdtemp(prefix="thrifty-tiktoken-"))
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    data = gzip.decompress((_bpe_openai_data_dir() / "cl100k_base.tiktoken.gz").read_bytes())
    (tmp / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(tmp)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def full_model_dir(weights: Path, target: Path) -> Path:
    """A complete token-classification model directory: the base encoder with thrifty's delta applied.

    The directory name contains ``bert-base-multilingual-cased`` because
    llmlingua picks its word-merging rule (WordPiece ``##`` pieces) by that substring.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from thrifty.compressors.train import LABELS, base_dir

    out = target / "bert-base-multilingual-cased-thrifty"
    out.mkdir(parents=True, exist_ok=True)
    model = AutoModelForTokenClassification.from_pretrained(
        str(base_dir()), local_files_only=True, num_labels=2,
        id2label=dict(enumerate(LABELS)), label2id={k: i for i, k in enumerate(LABELS)},
    )
    delta = load_file(str(weights / "delta.safetensors"))
    state = model.state_dict()
    for name, tensor in delta.items():
        state[name] = tensor.to(torch.float32)
    model.load_state_dict(state)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base_dir()), local_files_only=True).save_pretrained(str(out))
    return out


#: ``compress(text, rate, question)``: the compressed text (methods that take no question ignore it).
Compress = Callable[[str, float, str], str]


def random_drop(seed: int) -> Compress:
    def run(text: str, rate: float, question: str = "") -> str:
        words = text.split()
        rng = random.Random(f"{seed}:{hashlib.sha256(text.encode()).hexdigest()}:{rate}")
        keep = set(rng.sample(range(len(words)), max(1, round(rate * len(words)))))
        return " ".join(w for i, w in enumerate(words) if i in keep)

    return run


def thrifty_compressor(mode: str) -> Any:
    """thrifty's compressor in ``mode`` on its shipped weights, or None when the runtime is missing.

    ``bf16`` and ``int8`` are not modes: the full six-layer model forced to that precision, a reference
    for speed and agreement whichever precision the fast mode measured fastest here.
    """
    try:
        from thrifty.compressors import Compressor
        from thrifty.compressors.model import default_model_dir
    except ImportError:
        return None
    if mode in ("bf16", "int8"):
        from thrifty.compressors.model import load_model

        return Compressor(load_model(default_model_dir(), precision="bfloat16" if mode == "bf16" else mode), "fast")
    if mode == "onnx":
        return onnx_compressor()
    return Compressor.load(mode=mode)


class _OnnxModel:
    """An ONNX Runtime session called as the compressor calls its transformers model."""

    def __init__(self, session: Any) -> None:
        import torch

        self.session = session
        self._from_numpy = torch.from_numpy

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        return types.SimpleNamespace(logits=self._from_numpy(self.session.run(None, feeds)[0]))


def onnx_compressor() -> Any:
    """The exact mode's float32 model exported to ONNX and run by ONNX Runtime, its graph fused for BERT
    (attention, bias-GELU, skip-layer-norm), or None where ``onnxruntime`` and ``onnx`` are not installed.

    A reference for the choice of runtime, not part of thrifty: it needs both packages and a few
    seconds of export and graph optimisation on first use.
    """
    import copy
    import dataclasses

    try:
        import onnxruntime
        import torch
        from onnxruntime.transformers import optimizer

        from thrifty.compressors import Compressor
        from thrifty.compressors.model import load_model
    except ImportError:
        return None
    loaded = load_model(None, precision="float32")
    model = copy.deepcopy(loaded.model)
    model.set_attn_implementation("eager")  # the pattern the BERT fusions recognise
    config = model.config

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.full((2, 16), loaded.tokenizer.cls_token_id or 0, dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "logits": {0: "batch", 1: "tokens"}}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        raw, fused = Path(tmp) / "model.onnx", Path(tmp) / "fused.onnx"
        torch.onnx.export(Logits().eval(), (ids, torch.ones_like(ids)), str(raw), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"], dynamic_axes=axes)
        optimizer.optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                                 hidden_size=config.hidden_size, opt_level=0).save_model_to_file(str(fused))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(fused), options, providers=["CPUExecutionProvider"])
    return Compressor(dataclasses.replace(loaded, model=_OnnxModel(session)), "fast")


def machine() -> dict[str, str]:
    """What the speed figures were measured on: the CPU, torch's vector ISA, the fast mode's precision."""
    import torch

    from thrifty.compressors.model import fast_precision
    from thrifty.middleware.providers.local._models import cpu_name

    return {"cpu": cpu_name(), "cores": str(os.cpu_count()),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "fast_mode_precision": fast_precision()}


#: llmlingua's selection rule: thrifty's sentence and relation weights off
LLMLINGUA_RULE = {"sentence_weight": 0.0, "relation_weight": 0.0}


def as_function(compressor: Any, plain: bool = False, asks: bool = False) -> Compress:
    weights = LLMLINGUA_RULE if plain else {}

    def run(text: str, rate: float, question: str = "") -> str:
        return compressor.compress(text, rate=rate, question=question if asks else None, **weights).text

    return run


def llmlingua2(model_dir: Path) -> Compress:
    from llmlingua import PromptCompressor

    pc = PromptCompressor(model_name=str(model_dir), use_llmlingua2=True, device_map="cpu")

    def run(text: str, rate: float, question: str = "") -> str:
        return pc.compress_prompt(text, rate=rate, use_context_level_filter=False)["compressed_prompt"]

    return run


class _LegacyCacheModel:
    """A causal LM that takes and returns key/value caches as lists of ``[key, value]`` pairs.

    llmlingua 0.2.2's LLMLingua-1 path slices caches that way; transformers 5
    passes ``Cache`` objects. This adapter converts both ways and forwards
    everything else to the model.
    """

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, *args: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
        from types import SimpleNamespace

        from transformers import DynamicCache

        if past_key_values is not None and not hasattr(past_key_values, "layers"):
            past_key_values = DynamicCache(ddp_cache_data=[(k, v) for k, v in past_key_values])
        out = self._model(*args, past_key_values=past_key_values, **kwargs)
        cache = getattr(out, "past_key_values", None)
        legacy = None if cache is None else [[k, v] for k, v, *_ in cache]
        return SimpleNamespace(logits=out.logits, past_key_values=legacy)


def _causal_compressor(lm_dir: Path) -> Any:
    from llmlingua import PromptCompressor

    pc = PromptCompressor(model_name=str(lm_dir), device_map="cpu")
    pc.model = _LegacyCacheModel(pc.model)
    return pc


def llmlingua1(lm_dir: Path) -> Compress:
    pc = _causal_compressor(lm_dir)

    def run(text: str, rate: float, question: str = "") -> str:
        return pc.compress_prompt(
            [text], rate=rate, use_sentence_level_filter=False, use_context_level_filter=False,
            use_token_level_filter=True,
        )["compressed_prompt"]

    return run


def longllmlingua(lm_dir: Path) -> Compress:
    """LongLLMLingua's question-aware token-level compression (perplexity conditioned on the question,
    contrasted with the unconditioned one) on one context; the question is not appended to the output."""
    pc = _causal_compressor(lm_dir)

    def run(text: str, rate: float, question: str = "") -> str:
        return pc.compress_prompt(
            [text], question=question, rate=rate, rank_method="longllmlingua", condition_in_question="after_condition",
            condition_compare=True, use_sentence_level_filter=False, use_context_level_filter=False,
            use_token_level_filter=True, concate_question=False,
        )["compressed_prompt"]

    return run


# ---------------------------------------------------------------- teachers


def compare_teachers(args: argparse.Namespace) -> None:
    """Each teacher used directly as the compressor on the evaluation set: answer-span survival per rate."""
    import torch

    from thrifty.compressors import _data, train

    torch.set_num_threads(args.threads)
    rows = read_set(args.set, args.limit)
    tokenizer = train._tokenizer()
    out: dict[str, Any] = {}
    known = {"smollm2-135m": "smollm2-135m", "qwen-0.5b": str(bench_models.model_dir("qwen-0.5b"))}
    teachers = {name: known[name] for name in args.teachers.split(",")}
    for label, name in teachers.items():
        model, lm_tokenizer = train.load_teacher(name)
        started = time.perf_counter()
        scored = []
        for r in rows:
            spans = _data.word_spans(tokenizer, r["passage"], 10**6)
            token_spans, token_scores = _data.token_surprisal(model, lm_tokenizer, r["passage"])
            scored.append((spans, token_spans, token_scores))
        seconds = time.perf_counter() - started
        for prior in args.priors.split(","):
            entry: dict[str, Any] = {"seconds_per_passage": round(seconds / len(rows), 3)}
            for rate in RATES:
                hits = 0
                for r, (spans, token_spans, token_scores) in zip(rows, scored, strict=True):
                    _, labels = _data.label_words(spans, token_spans, token_scores, keep_rate=rate,
                                                  text=r["passage"], prior=prior)
                    text = " ".join(r["passage"][s:e] for (s, e), k in zip(spans, labels, strict=True) if k)
                    hits += contains(text, r["answer"])
                entry[f"span_survival@{rate}"] = round(hits / len(rows), 3)
            out[f"{label} prior={prior}"] = entry
            print(label, prior, json.dumps(entry), flush=True)
        del model
    path = RESULTS.with_name("compression_teachers.json")
    path.write_text(json.dumps({"set": args.set, "questions": len(rows), "teachers": out}, indent=2) + "\n",
                    encoding="utf-8")


# ---------------------------------------------------------------- sentence weights


def scores(texts: list[str], rows: list[dict[str, Any]], ask: AnswerCache | None, qa_limit: int) -> dict[str, float]:
    """Answer-span survival in ``texts`` (one per row) and, with a QA model, its accuracy on the first
    ``qa_limit`` of them."""
    pairs = list(zip(texts, rows, strict=True))
    out = {"span_survival": round(sum(contains(t, r["answer"]) for t, r in pairs) / len(rows), 3)}
    if ask is not None:
        asked = pairs[:qa_limit]
        out["accuracy"] = round(sum(contains(ask(t, r["question"]), r["answer"]) for t, r in asked) / len(asked), 3)
    return out


def compare_selection_weights(args: argparse.Namespace, knob: str) -> None:
    """One mode at several values of a selection weight (``knob``: ``sentence_weight`` or
    ``relation_weight``), the other at its default: QA accuracy and answer-span survival on a question
    set, and on held-out passages without inserted facts, what each value does to ordinary text
    (sentences left with no content word, content words kept, relation words kept)."""
    import numpy as np
    import torch

    from thrifty.compressors import _data
    from thrifty.compressors.lingua import RELATION_WORDS, Compressor

    torch.set_num_threads(args.threads)
    weights = [float(w) for w in args.weights.split(",")]
    compressor = Compressor.load(args.mode)
    rows = read_set(args.set, args.limit)
    ask = AnswerCache(LocalLM(args.qa_model)) if args.qa_limit else None
    out: dict[str, Any] = {"set": args.set, "mode": args.mode, "qa_model": args.qa_model, "rates": {}}
    if ask is not None:
        out["original_accuracy"] = scores([r["passage"] for r in rows], rows, ask, args.qa_limit)["accuracy"]
    held = _data.read_jsonl(WORK / "heldout.jsonl")[: args.passages]
    for rate, w in ((rate, w) for rate in args.rates for w in weights):
        texts = [compressor.compress(r["passage"], rate, **{knob: w}).text for r in rows]
        entry: dict[str, Any] = scores(texts, rows, ask, args.qa_limit)
        entry["achieved_rate"] = round(statistics.mean(
            count_tokens(t) / max(count_tokens(r["passage"]), 1) for t, r in zip(texts, rows, strict=True)), 3)
        wiped = sentences = content = kept = relations = relations_kept = 0
        for passage in held:
            d = compressor.keep_decisions(passage["text"], rate, **{knob: w})
            ends = np.array([x in (".", "!", "?") for x in d.words])
            sentence = np.cumsum(ends) - ends
            is_content = np.array([len(x) >= 4 and not _data.is_function_word(x) for x in d.words])
            is_relation = np.array([x in RELATION_WORDS for x in d.words])
            relations += int(is_relation.sum())
            relations_kept += int(d.keep[is_relation].sum())
            for sid in np.unique(sentence):
                m = (sentence == sid) & is_content
                if m.sum() < 3:
                    continue
                sentences += 1
                wiped += int(d.keep[m].sum() == 0)
                content += int(m.sum())
                kept += int(d.keep[m].sum())
        entry["sentences_wiped"] = round(wiped / max(sentences, 1), 4)
        entry["content_words_kept"] = round(kept / max(content, 1), 4)
        entry["relation_words_kept"] = round(relations_kept / max(relations, 1), 4)
        out["rates"].setdefault(str(rate), {})[str(w)] = entry
        print(f"rate {rate}, {knob} {w}: {json.dumps(entry)}", flush=True)
    path = Path(args.results) if args.results else RESULTS.with_name(f"compression_{knob}.json")
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


def compare_question_weights(args: argparse.Namespace) -> None:
    """The fast mode at several question weights (``lingua.QUESTION_WEIGHT``) on a question set:
    answer-span survival and QA accuracy when each passage is compressed for its own question, and
    for another item's question (what a wrong question costs against compressing blind, weight 0)."""
    import torch

    from thrifty.compressors import lingua

    torch.set_num_threads(args.threads)
    fast = lingua.Compressor.load("fast")
    rows = read_set(args.set, args.limit)
    others = [rows[(i + 1) % len(rows)]["question"] for i in range(len(rows))]
    ask = AnswerCache(LocalLM(args.qa_model)) if args.qa_limit else None
    out: dict[str, Any] = {"set": args.set, "rate": args.rate, "qa_model": args.qa_model, "weights": {}}
    if ask is not None:
        out["qa_dtype"] = ask.lm.dtype
        out["original_accuracy"] = scores([r["passage"] for r in rows], rows, ask, args.qa_limit)["accuracy"]
    default = lingua.QUESTION_WEIGHT
    try:
        for w in [float(x) for x in args.weights.split(",")]:
            lingua.QUESTION_WEIGHT = w
            entry: dict[str, Any] = {}
            for tag, questions in (("", [r["question"] for r in rows]), ("_wrong_question", others)):
                if tag and not w:
                    continue  # weight 0 ignores the question
                texts = [fast.compress(r["passage"], args.rate, question=q).text
                         for r, q in zip(rows, questions, strict=True)]
                entry.update({f"{k}{tag}": v for k, v in scores(texts, rows, ask, args.qa_limit).items()})
            out["weights"][str(w)] = entry
            print(f"question weight {w}: {json.dumps(entry)}", flush=True)
    finally:
        lingua.QUESTION_WEIGHT = default
    path = RESULTS.with_name("compression_question_weight.json")
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- the run


def speed_prompt(rows: list[dict[str, Any]], target_tokens: int = 10_000) -> str:
    from thrifty.compressors import _data

    held = _data.read_jsonl(WORK / "heldout.jsonl") if (WORK / "heldout.jsonl").is_file() else []
    texts = [r["passage"] for r in rows] + [p["text"] for p in held]
    out: list[str] = []
    total = 0
    for text in texts:
        if total >= target_tokens:
            break
        out.append(text)
        total += count_tokens(text) + 1
    return "\n\n".join(out)


def time_per_1k(fns: dict[str, tuple[Compress, str]], text: str, tokens: int, repeats: int) -> dict[str, float]:
    """Each method's best of ``repeats`` rounds, in ms per 1k tokens, for ``{name: (compress, question)}``.

    The methods take turns within each round, so that a change in the machine's load falls on all of
    them alike and their ratios hold; each round's text differs (thrifty caches by content).
    """
    for fn, question in fns.values():
        fn(text[:2000], 0.5, question)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        variant = f"{text}\n\nRun {i}."
        for name, (fn, question) in fns.items():
            started = time.perf_counter()
            fn(variant, 0.5, question)
            times[name].append(time.perf_counter() - started)
    return {name: round(min(t) * 1000 / (tokens / 1000), 1) for name, t in times.items()}


def agreement(exact: Any, others: dict[str, Any], text: str) -> dict[str, float]:
    """Share of words with the same keep decision as thrifty's exact mode, per other runtime, under the
    default selection and under llmlingua's rule (``-sw0``); the exact mode's decisions are made once per rule."""
    out: dict[str, float] = {}
    for tag, rule in (("", {}), ("-sw0", LLMLINGUA_RULE)):
        a = exact.keep_decisions(text, 0.5, **rule).keep
        for name, other in others.items():
            b = other.keep_decisions(text, 0.5, **rule).keep
            if len(a) != len(b):
                ma = keep_mask(text, exact.compress(text, rate=0.5, **rule).text)
                mb = keep_mask(text, other.compress(text, rate=0.5, **rule).text)
                share = sum(x == y for x, y in zip(ma, mb, strict=True)) / len(ma)
            else:
                share = float((a == b).mean())
            out[f"{name}{tag}"] = round(share, 4)
    return out


ALL_METHODS = ("thrifty-exact", "thrifty-fast", "thrifty-turbo", "thrifty-exact-q", "thrifty-fast-q",
               "thrifty-turbo-q", "thrifty-bf16", "thrifty-int8", "thrifty-onnx", "thrifty-exact-sw0", "thrifty-fast-sw0",
               "thrifty-turbo-sw0", "llmlingua2-thrifty-weights", "random", "llmlingua1-smollm2",
               "longllmlingua-smollm2")


def load_methods(names: list[str], seed: int, tmp: Path) -> tuple[dict[str, Compress], dict[str, Any], dict[str, str]]:
    methods: dict[str, Compress] = {}
    runtimes: dict[str, Any] = {}
    notes: dict[str, str] = {}
    loaded: dict[str, Any] = {}
    for name in names:
        if name.startswith("thrifty-"):
            # "-sw0": llmlingua's selection rule (sentence and relation weights 0) instead of thrifty's default;
            # "-q": compressed for the item's question (question-aware allocation)
            mode = name.removeprefix("thrifty-")
            plain, asks = mode.endswith("-sw0"), mode.endswith("-q")
            mode = mode.removesuffix("-sw0").removesuffix("-q")
            if mode not in loaded:
                loaded[mode] = thrifty_compressor(mode)
            compressor = loaded[mode]
            if compressor is None:
                notes[name] = ("needs onnxruntime and onnx: pip install onnxruntime onnx" if mode == "onnx"
                               else "thrifty.compressors.Compressor is not available")
                continue
            if not plain and not asks:
                runtimes[mode] = compressor
            methods[name] = as_function(compressor, plain, asks)
        elif name == "llmlingua2-thrifty-weights":
            from thrifty.compressors.model import default_model_dir

            methods[name] = llmlingua2(full_model_dir(default_model_dir(), tmp))
        elif name == "random":
            methods[name] = random_drop(seed)
        elif name == "llmlingua1-smollm2":
            from thrifty.compressors.train import teacher_dir

            methods[name] = llmlingua1(teacher_dir("smollm2-135m"))
        elif name == "longllmlingua-smollm2":
            from thrifty.compressors.train import teacher_dir

            methods[name] = longllmlingua(teacher_dir("smollm2-135m"))
    return methods, runtimes, notes


class AnswerCache:
    """The QA model's answers by (model, context, question), kept across runs in one JSON file."""

    def __init__(self, lm: LocalLM) -> None:
        self.lm = lm
        self.path = bench_models.cache_root() / f"qa-answers-{lm.name}-{lm.dtype}.json"
        self.data: dict[str, str] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    @staticmethod
    def key(context: str, question: str) -> str:
        return hashlib.sha256(f"{QA_SYSTEM}\0{context}\0{question}".encode()).hexdigest()

    def _save(self) -> None:
        # another run may share the file: merge with what it wrote, and swap the file whole
        on_disk = json.loads(self.path.read_text()) if self.path.is_file() else {}
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**on_disk, **self.data}))
        tmp.replace(self.path)

    def __call__(self, context: str, question: str) -> str:
        key = self.key(context, question)
        if key not in self.data:
            self.data[key] = answer(self.lm, context, question)
            self._save()
        return self.data[key]


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = read_set(args.set, args.limit)
    names = args.methods.split(",") if args.methods else list(ALL_METHODS)
    tmp = Path(tempfile.mkdtemp(prefix="thrifty-bench-compression-"))
    speed: dict[str, float] = {}
    speed_tokens = 0
    agree: dict[str, float] | None = None
    try:
        with tiktoken_cache():
            methods, runtimes, notes = load_methods(names, args.seed, tmp)
            if not args.no_speed:
                text = speed_prompt(rows)
                tokens = speed_tokens = count_tokens(text)
                timed = ("thrifty-exact", "thrifty-fast", "thrifty-fast-q", "thrifty-turbo", "thrifty-bf16",
                         "thrifty-int8", "thrifty-onnx", "llmlingua2-thrifty-weights")
                # "-q": for the question of the prompt's first passage
                speed = time_per_1k({name: (methods[name], rows[0]["question"] if name.endswith("-q") else "")
                                     for name in timed if name in methods}, text, tokens, args.repeats)
                if "exact" in runtimes:
                    agree = agreement(runtimes["exact"], {f"thrifty-{mode}": c for mode, c in runtimes.items()
                                                          if mode != "exact"}, text)
                print(f"speed on a {tokens}-token prompt (ms per 1k tokens): {speed}", file=sys.stderr)
            compressed: dict[str, dict[float, list[str]]] = {}
            for name, fn in methods.items():
                compressed[name] = {rate: [fn(r["passage"], rate, r["question"]) for r in rows]
                                    for rate in args.rates}
                print(f"compressed with {name}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ask = AnswerCache(LocalLM(args.qa_model)) if args.qa_limit else None
    qa_rows = rows[: args.qa_limit]
    qa_methods = set(args.qa_methods.split(",")) if args.qa_methods else set(compressed)
    table: list[dict[str, Any]] = []
    if ask is not None and (not args.qa_methods or "original" in qa_methods):
        accuracy = scores([r["passage"] for r in rows], rows, ask, args.qa_limit)["accuracy"]
        table.append({"method": "original", "rate": 1.0, "achieved_rate": 1.0, "span_survival": 1.0,
                      "accuracy": accuracy, "qa_questions": len(qa_rows), "qa_dtype": ask.lm.dtype})
        print(json.dumps(table[-1]), file=sys.stderr, flush=True)
    for name, by_rate in compressed.items():
        for rate, texts in by_rate.items():
            achieved = statistics.mean(
                count_tokens(t) / max(1, count_tokens(r["passage"])) for t, r in zip(texts, rows, strict=True)
            )
            qa = ask if name in qa_methods else None
            measured = scores(texts, rows, qa, args.qa_limit)
            entry: dict[str, Any] = {"method": name, "rate": rate, "achieved_rate": round(achieved, 3),
                                     "span_survival": measured["span_survival"], "questions": len(rows)}
            if qa is not None:
                entry.update(accuracy=measured["accuracy"], qa_questions=len(qa_rows), qa_dtype=qa.lm.dtype)
            table.append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
    command = "python bench/compression.py run " + " ".join(sys.argv[2:] if argv_is_cli() else [])
    result = merge_results(table, speed, speed_tokens, agree, notes, args, command)
    print_table(result)


def argv_is_cli() -> bool:
    return len(sys.argv) > 1 and sys.argv[1] == "run"


def results_path(args: argparse.Namespace) -> Path:
    """``--results``; else ``compression.json`` for the evaluation set read by the default QA model; else
    named by set and model."""
    if args.results:
        return Path(args.results)
    if args.set == "eval" and args.qa_model == QA_MODEL:
        return RESULTS
    suffix = "" if args.set == "eval" else f"_{args.set}"
    return RESULTS.with_name(f"compression{suffix}_{args.qa_model}.json")


def merge_results(table: list[dict[str, Any]], speed: dict[str, float], speed_tokens: int,
                  agree: dict[str, float] | None,
                  notes: dict[str, str], args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Fold this run's rows into its results file (rows replaced by method and rate); each row says which
    machine it was measured on, since the fast modes' precision, and so their output, depends on it."""
    path = results_path(args)
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() and not args.fresh else {}
    previous = {(r["method"], r["rate"]): r for r in old.get("rows", [])}
    here = machine()
    for row in table:
        row["command"] = command
        row["machine"] = here
        before = previous.get((row["method"], row["rate"]))
        if before is not None and "accuracy" not in row and "accuracy" in before:
            # a run without QA for this method keeps the QA figures measured before
            row.update({k: before[k] for k in ("accuracy", "qa_questions", "qa_dtype") if k in before})
            row["command"] = f"{command}; QA: {before['command']}"
    keep = [r for r in old.get("rows", []) if (r["method"], r["rate"]) not in {(t["method"], t["rate"]) for t in table}]
    result = {
        "eval_set": str(set_path(args.set).relative_to(ROOT)),
        "qa_model": args.qa_model,
        "threads": args.threads,
        "rows": keep + table,
        "speed_ms_per_1k_tokens": speed or old.get("speed_ms_per_1k_tokens", {}),
        "speed_prompt_tokens": speed_tokens or old.get("speed_prompt_tokens", 0),
        "speed_command": command if speed else old.get("speed_command"),
        "speed_machine": here if speed else old.get("speed_machine"),
        "keep_agreement_with_exact": agree if agree else old.get("keep_agreement_with_exact"),
        "notes": {**old.get("notes", {}), **notes},
    }
    order = {m: i for i, m in enumerate(("original", *ALL_METHODS))}
    result["rows"].sort(key=lambda r: (order.get(r["method"], 99), -r["rate"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"\nQA model {result['qa_model']}")
    print(f"{'method':<28}{'rate':>6}{'achieved':>10}{'span kept':>11}{'n':>5}{'QA acc':>8}{'QA n':>6}")
    for row in result["rows"]:
        acc = f"{row['accuracy']:.3f}" if "accuracy" in row else "-"
        print(f"{row['method']:<28}{row['rate']:>6.2f}{row['achieved_rate']:>10.3f}{row['span_survival']:>11.3f}"
              f"{row.get('questions', '-'):>5}{acc:>8}{row.get('qa_questions', '-'):>6}")
    for name, ms in result["speed_ms_per_1k_tokens"].items():
        print(f"speed {name:<28}{ms:>8.1f} ms / 1k tokens ({result['speed_prompt_tokens']}-token prompt)")
    if result.get("speed_machine"):
        print("speed measured on", ", ".join(f"{k} {v}" for k, v in result["speed_machine"].items()))
    for name, share in (result["keep_agreement_with_exact"] or {}).items():
        print(f"keep-decision agreement of {name} with thrifty-exact: {share:.4f}")
    for name, note in result["notes"].items():
        print(f"note: {name}: {note}")


def ceiling(args: argparse.Namespace) -> None:
    """What the keep/drop model costs per 1k prompt tokens in arithmetic, and the least time that takes here.

    Counts the model's floating-point operations per prompt token (its linear layers and attention's two
    products over a full 512-token window, times the encoder tokens per cl100k token of the speed prompt),
    times this CPU's matrix products in the model's own shapes (a batch of four windows through each linear
    layer's shape; torch in each precision the fast mode may use, and numpy's BLAS in float32), and prices
    the arithmetic at the best rate measured. Attention is priced as if it ran as fast as the matrix
    products, which it does not, so the floor is optimistic.
    """
    import numpy as np
    import torch

    from thrifty.compressors.model import default_model_dir, fast_candidates, fast_variant_dir, load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(default_model_dir())
    config = loaded.model.config
    h, f, window = config.hidden_size, config.intermediate_size, loaded.max_seq_len
    text = speed_prompt(read_set("eval", 120))
    per_prompt_token = len(loaded.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) / count_tokens(text)
    layer_flops = 2 * (4 * h * h + 2 * h * f) + 2 * 2 * window * h  # per token: linear layers, then attention
    depths = {"six layers": config.num_hidden_layers}
    student = fast_variant_dir()
    if student is not None:
        depths["turbo student"] = int(json.loads((student / "manifest.json").read_text())["num_hidden_layers"])
    gflop = {name: layers * layer_flops * per_prompt_token * 1000 / 1e9 for name, layers in depths.items()}
    shapes = {"h x h": (h, h), "h x 4h": (f, h), "4h x h": (h, f)}
    runs = [("torch float32", "float32"), ("numpy float32", "numpy")]
    runs += [(f"torch {p}", p) for p in fast_candidates()[1:]]  # where the CPU computes them natively
    rates: dict[str, float] = {}
    with torch.inference_mode():
        for label, kind in runs:
            per_shape = []
            for n_out, n_in in shapes.values():
                dtype = torch.float32 if kind in ("numpy", "int8") else getattr(torch, kind)
                x, w = torch.randn(4 * window, n_in, dtype=dtype), torch.randn(n_out, n_in, dtype=dtype)
                if kind == "int8":  # integer operations per second, counted as FLOP; no rounding or scaling
                    xi, wt = x.to(torch.int8), w.t().contiguous().to(torch.int8)
                    call = lambda xi=xi, wt=wt: torch._int_mm(xi, wt)  # noqa: E731
                elif kind == "numpy":
                    xn, wt = x.numpy(), np.ascontiguousarray(w.numpy().T)
                    call = lambda xn=xn, wt=wt: xn @ wt  # noqa: E731
                else:
                    call = lambda x=x, w=w: torch.nn.functional.linear(x, w)  # noqa: E731
                best = min(_timed(call) for _ in range(args.repeats))
                per_shape.append(2 * 4 * window * n_in * n_out / best / 1e9)
            # the linear layers' FLOP-weighted rate: four h x h products, one of each feed-forward shape
            weights = (4 * h * h, h * f, h * f)
            rates[label] = sum(weights) / sum(wt / r for wt, r in zip(weights, per_shape, strict=True))
    best_label = max(rates, key=rates.__getitem__)
    floors = {name: round(g / rates[best_label] * 1000, 1) for name, g in gflop.items()}
    out = {"machine": machine(), "threads": args.threads, "model_tokens_per_prompt_token": round(per_prompt_token, 3),
           "gflop_per_1k_prompt_tokens": {k: round(v, 2) for k, v in gflop.items()},
           "matrix_product_gflops": {k: round(v, 1) for k, v in rates.items()},
           "floor_ms_per_1k_prompt_tokens": floors, "floor_rate": best_label}
    print(f"arithmetic per 1k prompt tokens ({per_prompt_token:.2f} encoder tokens each): "
          + ", ".join(f"{k} {v:.1f} GFLOP" for k, v in gflop.items()))
    print("matrix products in the model's shapes: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()))
    print(f"floor at {best_label}'s rate, ms per 1k prompt tokens: " + ", ".join(f"{k} {v}" for k, v in floors.items()))
    write_results(out, args.results, "compression_ceiling.json")


def student_fit(args: argparse.Namespace) -> None:
    """How closely the turbo student follows its teacher on passages it was trained on and on held-out ones.

    Top-half agreement (the share of tokens on the same side of each passage's median keep score in both
    models, as ``distil`` reports it) on a seeded sample of the training corpus's first ``--trained``
    passages, which ``distil`` fits on (less its own 5% development share), and of the held-out passages.
    A gap between the two is what more training text could win back; no gap means the student's size is
    what limits it.
    """
    import torch

    from thrifty.compressors import _data, distil
    from thrifty.compressors.model import default_model_dir, fast_variant_dir, load_model

    torch.set_num_threads(args.threads)
    teacher, student = load_model(default_model_dir()), load_model(fast_variant_dir())
    out: dict[str, Any] = {"machine": machine(), "sample": args.sample}
    for name, rows in (("trained", _data.read_jsonl(WORK / "train.jsonl")[: args.trained]),
                       ("held_out", _data.read_jsonl(WORK / "heldout.jsonl"))):
        random.Random(args.seed).shuffle(rows)
        examples = distil._examples(teacher.tokenizer, rows[: args.sample])
        with torch.no_grad():
            margins = [distil._margins(teacher.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                                       teacher.keep_label)[0] for ids, _ in examples]
        out[name] = round(distil.top_half_agreement(student.model, margins, examples, teacher.keep_label), 4)
        print(f"top-half agreement of the student with its teacher, {name} passages: {out[name]:.4f}")
    write_results(out, args.results, "compression_student_fit.json")


def qa_pair(args: argparse.Namespace) -> None:
    """QA accuracy of two compressors against each other, asked only where they differ.

    Greedy decoding answers the same context the same way, so the two can differ in accuracy only on the
    passages they compress differently: the reader answers those, under both, and the difference there
    over all the passages is the difference the whole set would show, at a fraction of the reader's time.
    """
    import torch

    torch.set_num_threads(args.threads)
    rows = read_set(args.set, args.limit)
    names = args.methods.split(",")
    if len(names) != 2:
        raise SystemExit("qa-pair compares two methods: --methods A,B")
    tmp = Path(tempfile.mkdtemp(prefix="thrifty-bench-compression-"))
    try:
        with tiktoken_cache():
            methods, _, notes = load_methods(names, args.seed, tmp)
            if notes:
                raise SystemExit(f"cannot run: {notes}")
            texts = {name: {rate: [methods[name](r["passage"], rate, r["question"]) for r in rows]
                            for rate in args.rates} for name in names}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ask = AnswerCache(LocalLM(args.qa_model))
    out: dict[str, Any] = {"machine": machine(), "qa_model": args.qa_model, "qa_dtype": ask.lm.dtype,
                           "questions": len(rows), "methods": names, "rates": {}}
    for rate in args.rates:
        a, b = (texts[name][rate] for name in names)
        differ = [i for i in range(len(rows)) if a[i] != b[i]]
        right = {name: sum(contains(ask(texts[name][rate][i], rows[i]["question"]), rows[i]["answer"])
                           for i in differ) for name in names}
        out["rates"][str(rate)] = {"compressed_differently": len(differ), "correct_there": right,
                                   "accuracy_difference": round((right[names[1]] - right[names[0]]) / len(rows), 4)}
        print(f"rate {rate}: {len(differ)} of {len(rows)} passages compressed differently; correct there: "
              + ", ".join(f"{n} {c}" for n, c in right.items())
              + f"; {names[1]} minus {names[0]} over all: {out['rates'][str(rate)]['accuracy_difference']:+.3f}")
    write_results(out, args.results, f"compression_qa_pair_{args.qa_model}.json")


def languages(args: argparse.Namespace) -> None:
    """Paragraphs of at least MIN_WORDS words that thrifty's English model keeps whole as in another language.

    English: those of the training corpus's held-out and training passages and of the evaluation set (there
    should be none). Then real text, where the machine has it: the translated messages of its gettext
    catalogs (``--locale-dir``, Debian's ``/usr/share/locale``) and its translated man pages (``--man-dir``),
    up to ``--per-language`` paragraphs per language sampled with a fixed seed (a translation's paragraphs
    found verbatim in the English originals, left untranslated, left out); and, as English of other kinds,
    the catalogs' English originals (usage lines, option tables, help text) and up to ``--english``
    paragraphs of the English man pages."""
    from thrifty.compressors import Compressor, _data
    from thrifty.compressors._language import MIN_WORDS

    compressor = Compressor.load("exact")
    texts = [p["text"] for name in ("heldout", "train") for p in _data.read_jsonl(WORK / f"{name}.jsonl")]
    texts += [r["passage"] for r in read_set("eval")]
    paragraphs = [p for t in texts for p in _long_paragraphs(t)]
    taken = [t[a:b] for t in texts for a, b in compressor.foreign_paragraphs(t)]
    out: dict[str, Any] = {"machine": machine(), "passages": len(texts), "paragraphs_of_min_words": len(paragraphs),
                           "taken_for_another_language": taken}
    print(f"{len(taken)} of {len(paragraphs)} English paragraphs of at least {MIN_WORDS} words "
          f"({len(texts)} passages) taken for another language")
    for text in taken:
        print(f"  {text[:120]!r}")
    man = _man_paragraphs(Path(args.man_dir))
    sources = {"catalogs": (args.locale_dir, *_catalog_paragraphs(Path(args.locale_dir))),
               "man_pages": (args.man_dir, man.pop("en", []), man)}
    for name, (where, english, translated) in sources.items():
        if english:
            out[name] = _kept_whole(compressor, name, where, english, translated, args)
    write_results(out, args.results, "compression_languages.json")


def _kept_whole(compressor: Any, name: str, where: str, english: list[str], translated: dict[str, list[str]],
                args: argparse.Namespace) -> dict[str, Any]:
    """Of one source of real text, the English paragraphs taken for another language and, per language with at
    least 20 paragraphs of its own, the share kept whole; printed, and returned for the results file."""
    rng = random.Random(args.seed)
    originals = set(english)
    if len(english) > args.english:
        english = rng.sample(english, args.english)
    taken = [p for p in english if compressor.foreign_paragraphs(p)]
    print(f"\n{name} in {where}: {len(taken)} of {len(english)} English paragraphs taken for another language")
    for text in taken[:10]:
        print(f"  {text[:120]!r}")
    recall = {}
    for lang, found in sorted(translated.items()):
        own = [p for p in found if p not in originals]
        if len(own) >= 20:
            sample = rng.sample(own, min(args.per_language, len(own)))
            recall[lang] = {"paragraphs": len(sample), "kept_whole": sum(1 for p in sample
                                                                         if compressor.foreign_paragraphs(p))}
    shares = {lang: r["kept_whole"] / r["paragraphs"] for lang, r in recall.items()}
    print(f"translated paragraphs kept whole, {len(recall)} languages (mean {statistics.mean(shares.values()):.3f}):")
    ranked = sorted(shares, key=lambda lang: shares[lang])
    for start in range(0, len(ranked), 8):
        print("  " + "  ".join(f"{lang} {shares[lang]:.2f}" for lang in ranked[start:start + 8]))
    return {"dir": where, "seed": args.seed, "english_paragraphs": len(english), "english_taken": len(taken),
            "english_taken_first": [text[:200] for text in taken[:20]],
            "mean_kept_whole": statistics.mean(shares.values()), "languages": recall}


def _long_paragraphs(text: str) -> list[str]:
    """The paragraphs of ``text`` long enough for the language check to decide (MIN_WORDS words or more)."""
    from thrifty.compressors._language import MIN_WORDS, PARAGRAPH_BREAK

    return [p for p in PARAGRAPH_BREAK.split(text) if len(p.split()) >= MIN_WORDS]


def _catalog_paragraphs(root: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The paragraphs of at least MIN_WORDS words in the gettext catalogs under ``root``: the English
    originals, and per language its translations (English variants such as en_GB left out, and messages
    left untranslated), each deduplicated and sorted. The header entry, the catalog's metadata, is no
    message and is left out."""
    import gettext

    originals: set[str] = set()
    translated: dict[str, set[str]] = {}
    for path in sorted(root.glob("*/LC_MESSAGES/*.mo")):
        lang = path.parts[-3]
        try:
            with path.open("rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        except (OSError, UnicodeError, LookupError, ValueError):  # unreadable, or in an odd charset
            continue
        for key, text in catalog.items():
            source = key if isinstance(key, str) else key[0]
            if not source:  # the catalog's header: its metadata ("Project-Id-Version: ..."), not a message
                continue
            originals.update(_long_paragraphs(source))
            if isinstance(text, str) and text != source and not lang.startswith("en"):
                translated.setdefault(lang, set()).update(_long_paragraphs(text))
    return sorted(originals), {lang: sorted(found) for lang, found in translated.items()}


#: roff requests that end a paragraph in a man page; no-fill blocks (examples, tables) are left out whole
_MAN_BREAKS = frozenset({"PP", "P", "LP", "SH", "SS", "TP", "IP", "HP", "sp", "RS", "RE", "TQ", "bp", "in", "ti"})
_MAN_SKIP = {"nf": "fi", "EX": "EE", "TS": "TE", "EQ": "EN", "de": ".."}
_ROFF_ESCAPE = re.compile(r"\\(?:f(?:\[[^]]*\]|\(..|.)|\*?\((..)|\*?\[([^]]*)\]|s[-+]?\d+|[-e&|^c0 ~%]|.)")
_ROFF_NAMED = {"aq": "'", "dq": '"', "em": "-", "en": "-", "lq": '"', "rq": '"', "oq": "'", "cq": "'", "co": "(c)",
               "ss": "ß", "ae": "æ", "AE": "Æ", "/o": "ø", "/O": "Ø", "oa": "å", "oA": "Å", "Sd": "ð", "-D": "Đ",
               "TP": "Þ", "Tp": "þ", "/l": "ł", "/L": "Ł"}
_ROFF_ACCENTS = {":": "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ",": "\u0327",
                 "v": "\u030c", "o": "\u030a"}


def _roff_char(name: str) -> str:
    """The character a roff special-character name stands for ("" for one this reader does not know)."""
    import unicodedata

    if name in _ROFF_NAMED:
        return _ROFF_NAMED[name]
    if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
        return chr(int(name[1:], 16))
    if len(name) == 2 and name[0] in _ROFF_ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ROFF_ACCENTS[name[0]])
    return ""


def _man_paragraphs(root: Path) -> dict[str, list[str]]:
    """Paragraphs of at least MIN_WORDS words of the man pages under ``root`` (``/usr/share/man``), by
    language (``en`` for ``man1``...``man8``, else the directory's name), deduplicated and sorted."""
    from thrifty.compressors._language import MIN_WORDS

    found: dict[str, set[str]] = {}
    for path in sorted(root.glob("*/man[1-8]/*.gz")) + sorted(root.glob("man[1-8]/*.gz")):
        lang = "en" if path.parent.parent == root else path.parts[-3]
        try:
            source = gzip.open(path, "rt", encoding="utf-8", errors="strict").read()
        except (OSError, UnicodeError, EOFError):
            continue
        found.setdefault(lang, set()).update(p for p in _roff_paragraphs(source) if len(p.split()) >= MIN_WORDS)
    return {lang: sorted(texts) for lang, texts in found.items()}


def _roff_paragraphs(source: str) -> list[str]:
    """The text paragraphs of one man page's roff source: requests dropped, inline escapes resolved, no-fill
    blocks (examples, tables) left out."""
    def escape(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name is not None:
            return _roff_char(name)
        return {"\\-": "-", "\\e": "\\", "\\ ": " ", "\\~": " "}.get(m.group(0), "")

    paragraphs: list[str] = []
    lines: list[str] = []
    until = ""
    for line in [*source.splitlines(), ".PP"]:  # the last request ends the last paragraph
        if until:
            if line.startswith("." + until) or (until == ".." and line.startswith("..")):
                until = ""
            continue
        request = line[1:].split(maxsplit=1) if line[:1] in (".", "'") else None
        if request is not None and request and request[0] in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM",
                                                                "SB") and len(request) > 1:
            lines.append(_ROFF_ESCAPE.sub(escape, request[1].replace('"', "")))  # font macros carry text
        elif request is None and line.strip():
            lines.append(_ROFF_ESCAPE.sub(escape, line))
        elif request is None or (request and (request[0] in _MAN_BREAKS or request[0] in _MAN_SKIP)):
            if lines:
                paragraphs.append(" ".join(lines).strip())
                lines = []
            if request and request[0] in _MAN_SKIP:
                until = _MAN_SKIP[request[0]]
    return paragraphs


def write_results(out: dict[str, Any], given: str, name: str) -> None:
    """Write ``out`` to ``given`` (``--results``), else to ``bench/results/<name>``, and say where."""
    path = Path(given) if given else RESULTS.with_name(name)
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def first_call(args: argparse.Namespace) -> None:
    """Seconds the first compressed call takes (``[compression] enabled``, a 6,000-character user message, a
    canned upstream on loopback) through a freshly started proxy, or through a freshly wrapped openai client
    (``--entry wrapper``), when the compressor is loaded as the proxy starts (the client is wrapped) and when
    it is not; each in a fresh process, the call made ``--after`` seconds after the start. The precision
    measurement is taken as already kept on this machine."""
    import subprocess

    if args.child:
        print(json.dumps(_first_call_child(args.entry, args.child == "on", args.after)))
        return
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        for variant in times:  # alternating, as the machine's load may change
            out = subprocess.run([sys.executable, __file__, "first-call", "--child", variant, "--entry", args.entry,
                                  "--after", str(args.after)], capture_output=True, text=True, check=True)
            times[variant].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    start, at_start = (("the proxy started", "loaded as the proxy starts") if args.entry == "proxy"
                       else ("the client was wrapped", "loaded as the client is wrapped"))
    print(f"first compressed call, {args.after} s after {start} (seconds, each run):")
    for variant, label in (("off", "loaded on the first call"), ("on", at_start)):
        print(f"  {label:36} {', '.join(f'{t:.2f}' for t in times[variant])}")
    out_data = {"entry": args.entry, "after_s": args.after, "machine": machine(),
                "command": f"python bench/compression.py first-call --entry {args.entry}",
                "seconds": {"loaded_on_first_call": times["off"], "loaded_at_start": times["on"]}}
    name = "compression_first_call.json" if args.entry == "proxy" else "compression_first_call_wrapper.json"
    write_results(out_data, args.results, name)


def _first_call_child(entry: str, warm: bool, after: float) -> dict[str, Any]:
    import httpx

    from thrifty.compressors.stage import CompressionStage
    from thrifty.settings import Settings
    from thrifty.testing import CannedUpstream

    if not warm:  # the compressor loads on the first call (the price table is still warmed)
        CompressionStage.warm_up = lambda self: None  # type: ignore[method-assign]
    text = (ROOT / "README.md").read_text(encoding="utf-8")[:6000]
    messages = [{"role": "user", "content": text}]
    with CannedUpstream() as upstream, tempfile.TemporaryDirectory() as data:
        settings = Settings.load(data_dir=data, compression={"enabled": True},
                                 providers={"canned": {"kind": "openai-compatible", "base_url": upstream.url}})
        if entry == "wrapper":
            import openai

            import thrifty
            from thrifty import Engine

            engine = Engine(settings)
            client = thrifty.wrap(openai.OpenAI(api_key="unused", base_url=upstream.url, max_retries=0),
                                  engine=engine)
            time.sleep(after)
            started = time.perf_counter()
            raw = client.chat.completions.with_raw_response.create(model="canned/gpt-ok", messages=messages)
            seconds = time.perf_counter() - started
            engine.close()
            return {"seconds": round(seconds, 3), "tokens_saved": raw.headers.get("x-thrifty-tokens-saved")}
        from thrifty.middleware.server import create_app
        from thrifty.testing import ServerThread

        with ServerThread(create_app(settings)) as server:
            time.sleep(after)
            started = time.perf_counter()
            answer = httpx.post(f"{server.url}/v1/chat/completions", timeout=300, json={
                "model": "canned/gpt-ok", "messages": messages})
            seconds = time.perf_counter() - started
    answer.raise_for_status()
    return {"seconds": round(seconds, 3), "tokens_saved": answer.headers.get("x-thrifty-tokens-saved")}


def budget(args: argparse.Namespace) -> None:
    """``target_tokens`` against a plain rate: what the bisection adds to one compression of the ~10k-token
    prompt (the methods taking turns, a fresh text each round), and, over the evaluation set, how often and
    how closely the budgets of 0.5 and 0.33 of each passage's tokens are met."""
    import torch

    from thrifty.compressors.base import compress_to
    from thrifty.ledger.tokens import count_text

    torch.set_num_threads(args.threads)
    compressor = thrifty_compressor(args.mode)
    rows = read_set(args.set, args.limit)
    prompt = speed_prompt(rows, args.prompt_tokens)
    tokens = count_text(prompt, "gpt-4o")
    shares = (0.5, 0.33, 0.2)
    tried: list[int] = []

    def fitted(text: str, target: int) -> Any:
        def at(rate: float) -> Any:
            tried.append(1)
            return compressor.compress(text, rate)
        return compress_to(at, target_tokens=target)

    compressor.compress(prompt[:2000], 0.5)  # warm-up
    times: dict[str, list[float]] = {"rate 0.5": [], **{f"budget {share:g}": [] for share in shares}}
    rounds: dict[str, list[int]] = {name: [] for name in times}
    for i in range(args.repeats):
        for name in times:
            variant = f"{prompt}\n\nRun {i}, {name}."  # its own text: no scores from another method's run
            tried.clear()
            started = time.perf_counter()
            if name == "rate 0.5":
                compressor.compress(variant, 0.5)
                tried.append(1)
            else:
                fitted(variant, int(tokens * float(name.split()[1])))
            times[name].append(time.perf_counter() - started)
            rounds[name].append(len(tried))
    speed = {name: round(min(t) * 1000 / (tokens / 1000), 1) for name, t in times.items()}
    print(f"{tokens:,}-token prompt, {args.mode} mode in {compressor.precision}, best of {args.repeats} "
          f"(ms per 1k tokens; compressions run):")
    for name, ms in speed.items():
        print(f"  {name:12} {ms:8.1f}   {statistics.median(rounds[name]):.0f}")
    fit: dict[str, dict[str, float]] = {}
    for share in (0.5, 0.33):
        met, fill, rates = 0, [], []
        for row in rows:
            before = count_text(row["passage"], "gpt-4o")
            target = max(1, int(before * share))
            result = fitted(row["passage"], target)
            met += not result.over_target
            fill.append(result.tokens_after / target)
            rates.append(result.rate)
        fit[f"{share:g}"] = {"passages": len(rows), "met": met, "mean_fill": round(statistics.mean(fill), 4),
                             "min_fill": round(min(fill), 4), "mean_rate": round(statistics.mean(rates), 4)}
        print(f"  budget {share:g} of each of {len(rows)} passages: met {met}, tokens used of the budget "
              f"{statistics.mean(fill):.1%} on average (least {min(fill):.1%}), mean rate {statistics.mean(rates):.3f}")
    within = fit_check_ms(rows)
    for label, ms in within.items():
        print(f"  fit_context, a prompt within its window ({label}): {ms:.4f} ms per call")
    write_results({"machine": machine(), "mode": args.mode, "precision": compressor.precision,
                   "prompt_tokens": tokens, "repeats": args.repeats,
                   "command": f"python bench/compression.py budget --mode {args.mode} --repeats {args.repeats} "
                              f"--prompt-tokens {args.prompt_tokens}",
                   "ms_per_1k": speed, "compressions": {k: statistics.median(v) for k, v in rounds.items()},
                   "fit": fit, "fit_context_within_ms": within}, args.results, "compression_budget.json")


def fit_check_ms(rows: list[dict[str, Any]]) -> dict[str, float]:
    """What ``fit_context`` costs a call whose prompt is within its model's window (the common case):
    the compression stage's ``prepare`` on gpt-4o-mini (128,000 tokens), best of five rounds of 20."""
    from thrifty.compressors.stage import CompressionStage
    from thrifty.middleware.context import CallContext, Target
    from thrifty.middleware.providers.base import build_provider
    from thrifty.settings import CompressionSettings, Settings
    from thrifty.types import Message, Request, TextPart

    settings = Settings.load(providers={"openai": {"kind": "openai", "base_url": "http://127.0.0.1:9",
                                                   "api_key": "unused"}})
    target = Target(build_provider("openai", settings.providers["openai"], settings), "gpt-4o-mini")
    stage = CompressionStage(CompressionSettings(fit_context=True))
    out: dict[str, float] = {}
    for label, tokens in (("2k tokens", 2_000), ("20k tokens", 20_000), ("100k tokens", 100_000)):
        text = speed_prompt(rows, tokens)
        request = Request(model="gpt-4o-mini", messages=[Message("system", [TextPart("Answer briefly.")]),
                                                         Message("user", [TextPart(text)])])
        ctx = CallContext(entry="wrapper", wire="openai", target=target)
        best = min(_timed(lambda r=request, c=ctx: stage.prepare(r, c), 20) for _ in range(5))
        out[label] = round(best * 1000, 4)
    return out


def keep_rates(value: str) -> tuple[float, ...]:
    """``--rates``: comma-separated keep rates."""
    return tuple(float(x) for x in value.split(","))


def _timed(fn: Callable[[], Any], calls: int = 10) -> float:
    """Seconds per call of ``fn``, over ``calls`` calls after one warm-up."""
    fn()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-eval", help="build bench/data/compression_qa.jsonl")
    b.add_argument("--work", default=str(WORK))
    b.add_argument("--size", type=int, default=80)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--set", choices=("eval", "dev"), default="eval")
    b.add_argument("--skip", type=int, default=2000, help="dev: training passages to skip (those labelled)")
    t = sub.add_parser("teachers", help="compare teacher labelings by answer-span survival")
    t.add_argument("--set", choices=("eval", "dev"), default="dev")
    t.add_argument("--limit", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--teachers", default="smollm2-135m,qwen-0.5b")
    t.add_argument("--priors", default="none,function-words")
    for name, about, weights in (
        ("sentences", "compare sentence_weight values (QA, span survival, ordinary text)", "0,1,2,4,8"),
        ("relations", "compare relation_weight values (QA, span survival, ordinary text)", "0,0.2,0.4,0.6"),
        ("questions", "compare question weights (QA, span survival, a wrong question)", "0,1,2,4"),
    ):
        w = sub.add_parser(name, help=about)
        w.add_argument("--set", choices=("eval", "dev"), default="dev")
        w.add_argument("--weights", default=weights)
        if name == "questions":
            w.add_argument("--rate", type=float, default=0.5)
        else:
            w.add_argument("--rates", type=keep_rates, default=(0.5,),
                           help="comma-separated keep rates (default: 0.5)")
        w.add_argument("--limit", type=int, default=0)
        w.add_argument("--qa-limit", type=int, default=120)
        w.add_argument("--qa-model", default=QA_MODEL, choices=sorted(bench_models.MODELS))
        w.add_argument("--threads", type=int, default=2)
        if name in ("sentences", "relations"):
            w.add_argument("--mode", choices=("exact", "fast"), default="exact" if name == "sentences" else "fast")
            w.add_argument("--passages", type=int, default=150, help="held-out passages for the ordinary-text figures")
            w.add_argument("--results", default="", help=f"the results file (default: compression_{name[:-1]}_weight.json)")
    c = sub.add_parser("ceiling", help="the least time the model can take per 1k tokens on this CPU")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--repeats", type=int, default=5)
    c.add_argument("--results", default="", help="the results file (default: compression_ceiling.json)")
    f = sub.add_parser("student-fit", help="the turbo student's agreement with its teacher, trained vs held-out")
    f.add_argument("--trained", type=int, default=2000, help="the training passages distil fitted on")
    f.add_argument("--sample", type=int, default=150)
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--results", default="", help="the results file (default: compression_student_fit.json)")
    q = sub.add_parser("qa-pair", help="QA of two methods, asked only on the passages they compress differently")
    q.add_argument("--methods", default="thrifty-exact,thrifty-fast")
    q.add_argument("--qa-model", default="qwen-1.5b", choices=sorted(bench_models.MODELS))
    q.add_argument("--set", choices=("eval", "dev"), default="eval")
    q.add_argument("--limit", type=int, default=0)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--rates", type=keep_rates, default=RATES,
                   help="comma-separated keep rates (default: 0.5,0.33)")
    q.add_argument("--results", default="", help="the results file (default: compression_qa_pair_<model>.json)")
    f = sub.add_parser("first-call", help="the first compressed call through the proxy or a wrapped client, with "
                       "and without loading at start")
    f.add_argument("--after", type=float, default=15.0, help="seconds between the start and the call")
    f.add_argument("--repeats", type=int, default=2)
    f.add_argument("--child", choices=("on", "off"), default="", help=argparse.SUPPRESS)
    f.add_argument("--entry", choices=("proxy", "wrapper"), default="proxy")
    f.add_argument("--results", default="", help="the results file (default: compression_first_call.json, "
                   "or compression_first_call_wrapper.json with --entry wrapper)")
    g = sub.add_parser("languages", help="paragraphs kept whole as in another language: English (there should "
                       "be none), and the translations in the machine's gettext catalogs and man pages")
    g.add_argument("--locale-dir", default="/usr/share/locale", help="where the gettext catalogs (*.mo) are")
    g.add_argument("--man-dir", default="/usr/share/man", help="where the man pages are")
    g.add_argument("--english", type=int, default=20000, help="English paragraphs sampled per source of real text")
    g.add_argument("--per-language", type=int, default=200, help="translated paragraphs sampled per language")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--results", default="", help="the results file (default: compression_languages.json)")
    u = sub.add_parser("budget", help="target_tokens: what its bisection costs, and how well it fills a budget")
    u.add_argument("--mode", choices=("exact", "fast", "turbo"), default="fast")
    u.add_argument("--set", choices=("eval", "dev"), default="eval")
    u.add_argument("--limit", type=int, default=0)
    u.add_argument("--repeats", type=int, default=5)
    u.add_argument("--prompt-tokens", type=int, default=10_000, help="the timed prompt's length")
    u.add_argument("--threads", type=int, default=2)
    u.add_argument("--results", default="", help="the results file (default: compression_budget.json)")
    r = sub.add_parser("run", help="run the benchmark")
    r.add_argument("--qa-model", default=QA_MODEL, choices=sorted(bench_models.MODELS))
    r.add_argument("--set", choices=("eval", "dev"), default="eval")
    r.add_argument("--limit", type=int, default=0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--qa-limit", type=int, default=40, help="questions the QA model answers (0: no QA)")
    r.add_argument("--qa-methods", default="",
                   help="comma-separated methods to run QA on, 'original' for the uncompressed passages (default: all)")
    r.add_argument("--rates", type=keep_rates, default=RATES,
                   help="comma-separated keep rates (default: 0.5,0.33)")
    r.add_argument("--no-speed", action="store_true")
    r.add_argument("--methods", default="", help=f"comma-separated, from {','.join(ALL_METHODS)} (default: all)")
    r.add_argument("--fresh", action="store_true", help="replace the results file instead of merging")
    r.add_argument("--results", default="", help="the results file (default: by set and QA model)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "build-eval":
        import torch

        torch.set_num_threads(2)
    commands: dict[str, Callable[[argparse.Namespace], None]] = {
        "build-eval": build_eval, "teachers": compare_teachers, "questions": compare_question_weights,
        "sentences": lambda a: compare_selection_weights(a, "sentence_weight"),
        "relations": lambda a: compare_selection_weights(a, "relation_weight"),
        "ceiling": ceiling, "student-fit": student_fit, "languages": languages, "qa-pair": qa_pair,
        "first-call": first_call, "budget": budget, "run": run,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
