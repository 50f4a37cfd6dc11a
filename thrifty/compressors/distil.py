"""Distil thrifty's keep/drop model into a shallower one for the turbo mode, on CPU, offline.

    python -m thrifty.compressors.distil --seed 0        # or: make train-compressor (after train)

The trained model (``minilm-keep-v2``: six MiniLM layers, the top one
fine-tuned) is the teacher; the student has fewer layers, each initialised
from a layer of the teacher (``--layers-from 0,1,5``: the base's first two
layers under the teacher's fine-tuned top layer, whose head it also starts
from). The student learns to reproduce the teacher's keep-minus-drop logit on
every token of the training passages (mean squared error), so no new labels
are needed and the keep decisions, which rank words by those logits, follow the
teacher's. The bottom ``--frozen`` layers stay the base's own (their outputs
are computed once and cached); the others and the head are trained and
shipped as the student's delta over the same base package.

The turbo mode runs the student when the teacher's manifest names it
(``"fast_variant"``, written when the student is written beside the teacher,
not for an ``--out`` elsewhere), in the precision measured fastest for it
(:func:`thrifty.compressors.model.fast_precision`);
``bench/compression.py`` measures its keep-decision agreement with the exact
mode and its QA accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from thrifty.compressors import _data, train

__all__ = ["main"]


def _student(teacher: Any, layers_from: list[int]) -> Any:
    """A BERT token classifier of ``len(layers_from)`` layers, each copied from the teacher's layer of that index."""
    import copy

    from transformers import AutoModelForTokenClassification

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers_from)
    student = AutoModelForTokenClassification.from_config(config)
    state = teacher.state_dict()
    own = student.state_dict()
    for name in own:
        source = name
        if name.startswith("bert.encoder.layer."):
            index, rest = name.removeprefix("bert.encoder.layer.").split(".", 1)
            source = f"bert.encoder.layer.{layers_from[int(index)]}.{rest}"
        own[name] = state[source].clone()
    student.load_state_dict(own)
    return student


def _margin(logits: Any, keep: int) -> Any:
    """Keep-minus-drop logit per token, in float32: what the student learns to reproduce."""
    logits = logits.float()
    return logits[..., keep] - logits[..., 1 - keep]


def _margins(model: Any, ids: Any, mask: Any, keep: int) -> Any:
    return _margin(model(input_ids=ids, attention_mask=mask).logits, keep)


def _examples(tokenizer: Any, rows: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """Token ids and a 0/1 mask of the tokens that count (not special tokens), per passage."""
    out = []
    for row in rows:
        enc = tokenizer(row["text"], truncation=True, max_length=train.MAX_SEQ_LEN)
        out.append((enc["input_ids"], [0 if w is None else 1 for w in enc.word_ids()]))
    return out


def top_half_agreement(student: Any, teacher_margins: list[Any], examples: list[tuple[list[int], list[int]]],
                       keep: int) -> float:
    """Share of tokens on the same side of each passage's median in the student and the teacher."""
    import torch

    same = total = 0
    with torch.no_grad():
        for (ids, valid), t in zip(examples, teacher_margins, strict=True):
            s = _margins(student, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), keep)[0]
            sel = torch.tensor(valid, dtype=torch.bool)
            a, b = s[sel], t[sel]
            k = max(1, len(a) // 2)
            ta = torch.zeros(len(a), dtype=torch.bool)
            tb = torch.zeros(len(b), dtype=torch.bool)
            ta[torch.topk(a, k).indices] = True
            tb[torch.topk(b, k).indices] = True
            same += int((ta == tb).sum())
            total += len(a)
    return same / max(total, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from thrifty.compressors.model import load_model

    train._seed(args.seed, args.threads)
    teacher_dir = Path(args.teacher).resolve()
    loaded = load_model(teacher_dir, precision="float32")
    teacher, keep = loaded.model, loaded.keep_label
    rows = _data.read_jsonl(Path(args.work) / "train.jsonl")[: args.limit or None]
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    n_dev = max(1, len(rows) // 20)
    examples = _examples(loaded.tokenizer, rows)
    dev, fit = examples[:n_dev], examples[n_dev:]
    layers_from = [int(x) for x in args.layers_from.split(",")]
    if any(layers_from[i] != i for i in range(args.frozen)):
        raise SystemExit("--frozen layers must be the base's own: --layers-from must start 0,1,... that far")
    student = _student(teacher, layers_from)
    student.eval()  # no dropout: the student copies a deterministic teacher
    started = time.perf_counter()
    # the teacher's margins and the frozen bottom of the student, once per batch
    cache = []
    with torch.no_grad():
        dev_margins = [_margins(teacher, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), keep)[0]
                       for ids, _ in dev]
        for idx in train._batches(fit, args.batch_size, rng):
            ids, mask, valid = train._collate(fit, idx)
            target = _margins(teacher, ids, mask, keep)
            hidden = student.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            cache.append((hidden[args.frozen], mask, valid == 1, target))
    print(f"teacher and frozen layers over {len(fit)} passages in {time.perf_counter() - started:.0f} s",
          file=sys.stderr, flush=True)
    trainable = [f"bert.encoder.layer.{i}." for i in range(args.frozen, len(layers_from))] + ["classifier."]
    params = []
    for name, param in student.named_parameters():
        param.requires_grad = any(name.startswith(p) for p in trainable)
        if param.requires_grad:
            params.append(param)
    before = top_half_agreement(student, dev_margins, dev, keep)
    top = train._TopLayers(student, len(layers_from) - args.frozen)

    def loss_of(batch: tuple[Any, Any, Any, Any]) -> Any:
        hidden, mask, valid, target = batch
        return ((_margin(top.logits(hidden, mask), keep) - target)[valid] ** 2).mean()

    step, stopped_early = train.optimise(params, cache, loss_of, epochs=args.epochs, lr=args.lr, rng=rng,
                                         started=started, max_minutes=args.max_minutes, log_every=50)
    after = top_half_agreement(student, dev_margins, dev, keep)
    metrics = {
        "steps": step,
        "epochs_planned": args.epochs,
        "stopped_at_time_limit": stopped_early,
        "train_passages": len(fit),
        "dev_passages": len(dev),
        "dev_top_half_agreement_before": round(before, 4),
        "dev_top_half_agreement_after": round(after, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write(student, teacher_dir, args, layers_from, metrics)
    print(json.dumps(metrics))
    return metrics


def write(student: Any, teacher_dir: Path, args: argparse.Namespace, layers_from: list[int],
          metrics: dict[str, Any]) -> Path:
    import torch
    from safetensors.torch import save_file

    teacher_manifest = json.loads((teacher_dir / "manifest.json").read_text(encoding="utf-8"))
    out = Path(args.out) if args.out else teacher_dir.with_name(f"{teacher_manifest['name']}-fast")
    name = out.name
    out.mkdir(parents=True, exist_ok=True)
    prefixes = tuple(f"bert.encoder.layer.{i}." for i in range(args.frozen, len(layers_from))) + ("classifier.",)
    delta = {k: v.detach().to(torch.float16).contiguous()
             for k, v in student.state_dict().items() if k.startswith(prefixes)}
    delta_path = out / "delta.safetensors"
    save_file(delta, str(delta_path), metadata={"name": name, "version": teacher_manifest["version"]})
    manifest = {
        "name": name,
        "version": teacher_manifest["version"],
        "base": teacher_manifest["base"],
        "num_hidden_layers": len(layers_from),
        "delta_sha256": train._sha256(delta_path),
        "delta_dtype": "float16",
        "delta_tensors": sorted(delta),
        "architecture": "BertForTokenClassification",
        "labels": teacher_manifest["labels"],
        "languages": teacher_manifest.get("languages", []),
        "max_seq_len": teacher_manifest.get("max_seq_len", train.MAX_SEQ_LEN),
        "word_probability": teacher_manifest.get("word_probability", train.WORD_PROBABILITY),
        "distilled_from": {"name": teacher_manifest["name"], "version": teacher_manifest["version"],
                           "delta_sha256": teacher_manifest["delta_sha256"]},
        "training": {
            "command": f"python -m thrifty.compressors.distil --seed {args.seed} --limit {args.limit} "
                       f"--layers-from {args.layers_from} --frozen {args.frozen} --epochs {args.epochs} "
                       f"--batch-size {args.batch_size} --lr {args.lr}",
            "method": "the student reproduces the teacher's keep-minus-drop logit per token (mean squared error)",
            "layers_from": layers_from,
            "frozen_layers": list(range(args.frozen)),
            "seed": args.seed,
            "threads": args.threads,
            "torch": torch.__version__,
            "metrics": metrics,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if out.resolve().parent == teacher_dir.resolve().parent:
        # the turbo mode finds its model by this name beside the teacher
        teacher_manifest["fast_variant"] = name
        (teacher_dir / "manifest.json").write_text(json.dumps(teacher_manifest, indent=2) + "\n", encoding="utf-8")
    else:
        print(f"{out} is not beside {teacher_dir}: the teacher's manifest is left as it was "
              f"(use the student with model={out})", file=sys.stderr)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thrifty.compressors.distil", description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(Path.home() / ".cache" / "thrifty" / "compressor-train"))
    p.add_argument("--teacher", default=str(train.WEIGHTS_ROOT / train.MODEL_NAME), help="thrifty weights directory")
    p.add_argument("--out", default="", help="default: <teacher name>-fast beside the teacher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=2000,
                   help="the first N training passages (default: those the teacher was trained on; 0: all)")
    p.add_argument("--layers-from", default="0,1,5", help="the teacher layer each student layer starts from")
    p.add_argument("--frozen", type=int, default=1, help="bottom student layers kept as the base's own")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-minutes", type=float, default=40.0, help="stop training after this long")
    return p


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
