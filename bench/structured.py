"""Grammar-constrained JSON on the embedded local model (SmolLM2-135M), constraints on versus off.

For each of 44 JSON schemas (flat and nested objects, enums, bounded arrays,
numbers with ranges, optional fields, unions, $defs, formats, patterns) the
model answers the same prompt twice at temperature 0: once decoded under the
schema's grammar (``response_format`` json_schema, as the local provider does
it) and once free, asked in the prompt for JSON of the schema. Each answer is
checked with ``jsonschema`` (formats included); a free answer gets the benefit
of the doubt: the first JSON value in its text counts, code fences and all.

Also measured: the grammar's time per token (filling the bitmask and applying
it) against the decode step, grammar compile time cold and cached, the
tokenizer-info preparation, and three ways of applying a bitmask to the CPU
logits (XGrammar's kernel, unpacking and masking, thrifty's
``apply_bitmask``), replayed over the masks of every constrained answer.

Prints a table and writes bench/results/structured.json.

    nice -n 10 .venv/bin/python bench/structured.py [--limit N] [--max-tokens 64]

On a busy machine the suite can be split: ``--rows FILE`` appends each
finished schema's row to FILE and skips the schemas already there, and
``--shard K/N`` runs every N-th schema from the K-th; several shards writing
one rows file, then ``--rows FILE --summarize`` writes the table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"

S = {"type": "string"}
I = {"type": "integer"}  # noqa: E741


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False, **extra}


def short(n: int = 24) -> dict[str, Any]:
    return {"type": "string", "maxLength": n}


# (name, prompt, schema)
SUITE: list[tuple[str, str, dict[str, Any]]] = [
    ("person", "Describe a person named Alice who is 30.", obj({"name": short(), "age": {"type": "integer", "minimum": 0, "maximum": 130}})),
    ("capital", "What is the capital of France?", obj({"country": short(), "capital": short()})),
    ("sentiment", "Classify the sentiment of: 'I love this phone!'",
     obj({"sentiment": {"enum": ["positive", "negative", "neutral"]}})),
    ("sentiment-score", "Rate the sentiment of 'terrible service' from -1 to 1.",
     obj({"label": {"enum": ["positive", "negative", "neutral"]}, "score": {"type": "number", "minimum": -1, "maximum": 1}})),
    ("boolean", "Is the sky blue on a clear day?", obj({"answer": {"type": "boolean"}})),
    ("math", "What is 7 times 6?", obj({"result": I})),
    ("temperature", "Give today's temperature in Paris in Celsius (guess).",
     obj({"city": short(), "celsius": {"type": "number", "minimum": -50, "maximum": 60}})),
    ("colour-rgb", "Give the RGB values of pure red.",
     obj({"r": {"type": "integer", "minimum": 0, "maximum": 255}, "g": {"type": "integer", "minimum": 0, "maximum": 255},
          "b": {"type": "integer", "minimum": 0, "maximum": 255}})),
    ("tags", "Give three tags for a blog post about Python testing.",
     obj({"tags": {"type": "array", "items": short(16), "minItems": 3, "maxItems": 3}})),
    ("top-fruits", "List two fruits.", obj({"fruits": {"type": "array", "items": short(12), "minItems": 1, "maxItems": 2}})),
    ("numbers", "List the first three prime numbers.",
     obj({"primes": {"type": "array", "items": {"type": "integer", "minimum": 2, "maximum": 100}, "maxItems": 3}})),
    ("priority", "Triage: 'The production database is down.'",
     obj({"priority": {"enum": ["P0", "P1", "P2", "P3"]}, "team": {"enum": ["infra", "frontend", "billing"]}})),
    ("support-ticket", "Triage this ticket: 'I was charged twice for my order.'",
     obj({"category": {"enum": ["billing", "shipping", "technical", "other"]}, "urgent": {"type": "boolean"},
          "summary": short(40)})),
    ("address", "Write the address of the Eiffel Tower as JSON.",
     obj({"street": short(30), "city": short(), "country": short()})),
    ("nested-user", "Create a user Bob with email bob@example.com living in Berlin.",
     obj({"user": obj({"name": short(), "email": {"type": "string", "format": "email"}}), "city": short()})),
    ("nested-order", "An order of 2 apples at 0.5 each.",
     obj({"order": obj({"item": short(), "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                        "unit_price": {"type": "number", "minimum": 0, "maximum": 1000}})})),
    ("deep", "Describe a company called Acme with a CEO named Jane.",
     obj({"company": obj({"name": short(), "ceo": obj({"name": short(), "title": {"const": "CEO"}})})})),
    ("optional-fields", "A book titled Dune.",
     obj({"title": short(30), "author": short(), "year": {"type": "integer", "minimum": 1000, "maximum": 2100}},
         required=["title"])),
    ("optional-only", "Give any details you know about the planet Mars.",
     obj({"moons": {"type": "integer", "minimum": 0, "maximum": 200}, "colour": short(12)}, required=[])),
    ("nullable", "Who is the president of Antarctica? Use null if nobody.",
     obj({"president": {"anyOf": [short(), {"type": "null"}]}})),
    ("union-number-string", "What is the answer to life, the universe and everything?",
     obj({"answer": {"anyOf": [{"type": "integer"}, short(12)]}})),
    ("union-objects", "A circle with radius 2.",
     obj({"shape": {"anyOf": [obj({"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0, "maximum": 100}}),
                              obj({"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0, "maximum": 100}})]}})),
    ("defs-ref", "Two people: Ann (25) and Ben (31).",
     {"$defs": {"P": obj({"name": short(12), "age": {"type": "integer", "minimum": 0, "maximum": 130}})},
      **obj({"people": {"type": "array", "items": {"$ref": "#/$defs/P"}, "minItems": 2, "maxItems": 2}})}),
    ("defs-nested", "A meeting from 9 to 10 in room A.",
     {"$defs": {"T": {"type": "integer", "minimum": 0, "maximum": 23}},
      **obj({"start": {"$ref": "#/$defs/T"}, "end": {"$ref": "#/$defs/T"}, "room": short(8)})}),
    ("date", "When did the Apollo 11 moon landing happen?", obj({"event": short(30), "date": {"type": "string", "format": "date"}})),
    ("pattern-code", "Give a product code made of 3 uppercase letters and 3 digits.",
     obj({"code": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{3}$"}})),
    ("pattern-phone", "Give a US phone number.", obj({"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{3}-[0-9]{4}$"}})),
    ("uuid", "Generate an id for a new record.", obj({"id": {"type": "string", "format": "uuid"}})),
    ("email", "What is a typical support email address?", obj({"email": {"type": "string", "format": "email"}})),
    ("percent", "What share of Earth is covered by water, in percent?",
     obj({"percent": {"type": "number", "minimum": 0, "maximum": 100}})),
    ("exclusive-range", "Give a probability strictly between 0 and 1.",
     obj({"p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}})),
    ("year-range", "In which year did World War II end?", obj({"year": {"type": "integer", "minimum": 1900, "maximum": 2000}})),
    ("rating", "Rate the movie Inception from 1 to 5 stars.",
     obj({"stars": {"type": "integer", "minimum": 1, "maximum": 5}, "verdict": short(30)})),
    ("extraction", "Extract the entities: 'Tim Cook announced the iPhone in Cupertino.'",
     obj({"person": short(), "product": short(), "place": short()})),
    ("key-value", "Translate 'hello' into French and Spanish.", obj({"french": short(12), "spanish": short(12)})),
    ("matrix", "Give a 2x2 identity matrix.",
     obj({"matrix": {"type": "array", "minItems": 2, "maxItems": 2,
                     "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1}, "minItems": 2,
                               "maxItems": 2}}})),
    ("list-of-objects", "List two programming languages with their creation year.",
     obj({"languages": {"type": "array", "minItems": 2, "maxItems": 2,
                        "items": obj({"name": short(12), "year": {"type": "integer", "minimum": 1950, "maximum": 2025}})}})),
    ("enum-array", "Which of these are primary colours: red, green, blue, yellow?",
     obj({"primary": {"type": "array", "items": {"enum": ["red", "green", "blue", "yellow"]}, "maxItems": 4}})),
    ("code-review", "Review: 'def add(a, b): return a - b'",
     obj({"verdict": {"enum": ["approve", "request_changes"]}, "issues": {"type": "array", "items": short(40), "maxItems": 2}})),
    ("summary", "Summarise in one sentence: 'The cat sat on the mat all day.'", obj({"summary": short(60)})),
    ("yes-no-reason", "Is water wet? Give a short reason.", obj({"answer": {"enum": ["yes", "no"]}, "reason": short(40)})),
    ("weather", "Weather forecast for London tomorrow.",
     obj({"city": short(), "condition": {"enum": ["sunny", "cloudy", "rain", "snow"]},
          "high": {"type": "integer", "minimum": -30, "maximum": 50}, "low": {"type": "integer", "minimum": -30, "maximum": 50}})),
    ("recipe", "A recipe for a cup of tea.",
     obj({"name": short(), "steps": {"type": "array", "items": short(40), "minItems": 1, "maxItems": 3},
          "minutes": {"type": "integer", "minimum": 1, "maximum": 60}})),
    ("json-any-object", "Describe a cat as a JSON object with at most three fields.",
     {"type": "object", "maxProperties": 3, "additionalProperties": {"anyOf": [short(20), {"type": "integer"}, {"type": "boolean"}]}}),
]


def system_prompt(schema: dict[str, Any]) -> str:
    return ("Reply with only a JSON object, no other text, that conforms to this JSON schema:\n"
            + json.dumps(schema, separators=(",", ":")))


def first_json(text: str) -> Any:
    """The first JSON value in ``text`` (after any code fence), or raise ValueError."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "{[":
            try:
                return decoder.raw_decode(text[start:])[0]
            except ValueError:
                continue
    raise ValueError("no JSON value")


def run(loaded: Any, schema: dict[str, Any], prompt: str, max_tokens: int, constrained: bool) -> dict[str, Any]:
    from thrifty.contracts.grammar import grammar_cache
    from thrifty.middleware.providers.local._decode import DecodeParams, GenerationStats, generate
    from thrifty.middleware.providers.local._prompt import render_prompt
    from thrifty.types import ChoiceEnd, Message, Request, ResponseFormat, TextPart

    request = Request(model=MODEL, messages=[Message("system", [TextPart(system_prompt(schema))]),
                                             Message("user", [TextPart(prompt)])],
                      response_format=ResponseFormat("json_schema", schema=schema, name="out") if constrained else None)
    prompt_ids = render_prompt(loaded.tokenizer, request, loaded.name)
    hooks: list[Any] = []
    factories = []
    if constrained:
        compiled = grammar_cache().compile(loaded.info, schema)

        def factory(info: Any) -> Any:
            hooks.append(compiled(info))
            return hooks[-1]

        factories.append(factory)
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    parts: list[str] = []
    finish = None
    for event in generate(loaded, prompt_ids, DecodeParams(max_new_tokens=max_tokens, temperature=0.0), factories,
                          stats=stats):
        if isinstance(event, ChoiceEnd):
            finish = event.finish_reason
        else:
            parts.append(event.text)
    ended = time.perf_counter()
    steps = max(1, stats.output_tokens - 1)
    out = {"text": "".join(parts), "finish": finish, "tokens": stats.output_tokens, "prompt_tokens": len(prompt_ids),
           "step_ms": (ended - stats.first_token) * 1000 / steps if stats.output_tokens > 1 else None}
    if hooks:
        out["mask_us"] = hooks[0].mask_seconds * 1e6 / max(1, hooks[0].steps)
    return out


def conforms(text: str, schema: dict[str, Any], lenient: bool) -> bool:
    import jsonschema

    try:
        value = first_json(text) if lenient else json.loads(text)
    except ValueError:
        return False
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return validator.is_valid(value)


def replay_masks(loaded: Any, schema: dict[str, Any], text: str, passes: int = 3) -> tuple[list[Any], list[float]]:
    """The grammar's bitmasks along ``text`` (re-tokenized) and the best time of each fill, in seconds.

    Replayed outside the decode loop, best of ``passes``, so the figures are the
    CPU cost without the preemptions a busy machine adds to live timings.
    """
    import xgrammar as xgr

    from thrifty.contracts.grammar import grammar_cache

    compiled = grammar_cache().compile(loaded.info, schema)
    tokens = loaded.tokenizer.encode(text, add_special_tokens=False)
    masks: list[Any] = []
    fills: list[float] = []
    for attempt in range(passes):
        matcher = xgr.GrammarMatcher(compiled.grammar)
        for step, token in enumerate(tokens):
            bitmask = xgr.allocate_token_bitmask(1, loaded.info.vocab_size)
            started = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            took = time.perf_counter() - started
            if attempt == 0:
                masks.append(bitmask[0])
                fills.append(took)
            else:
                fills[step] = min(fills[step], took)
            if not matcher.accept_token(token):
                break
    return masks, fills


def time_apply(masks: list[Any], vocab: int, repeat: int = 5) -> dict[str, float]:
    import numpy as np
    import torch
    import xgrammar as xgr

    from thrifty.contracts.grammar import apply_bitmask

    def unpack(logits: Any, mask: Any) -> Any:
        allowed = torch.from_numpy(np.unpackbits(mask.numpy().view(np.uint8), bitorder="little", count=vocab).view(bool))
        return logits.masked_fill_(~allowed, float("-inf"))

    ways = {
        "xgrammar_cpu_kernel": lambda lg, m: xgr.apply_token_bitmask_inplace(lg, m, vocab_size=vocab),
        "unpack_masked_fill": unpack,
        "thrifty_apply_bitmask": lambda lg, m: apply_bitmask(lg, m, vocab),
    }
    base = torch.randn(vocab)
    result = {}
    for name, fn in ways.items():
        best = float("inf")
        for _ in range(repeat):
            copies = [base.clone() for _ in masks]
            started = time.perf_counter()
            for logits, mask in zip(copies, masks, strict=True):
                fn(logits, mask)
            best = min(best, (time.perf_counter() - started) / len(masks))
        result[name] = best * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=len(SUITE), help="run only the first N schemas")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rows", type=Path, help="append rows here and skip the schemas already in it")
    parser.add_argument("--shard", default="0/1", help="K/N: run the schemas whose index is K modulo N")
    parser.add_argument("--summarize", action="store_true", help="only summarize the rows file")
    args = parser.parse_args()
    shard, shards = (int(x) for x in args.shard.split("/"))

    from thrifty.contracts.grammar import GrammarCache, grammar_cache
    from thrifty.middleware.providers.local._catalogue import resolve_model
    from thrifty.middleware.providers.local._models import model_store
    from thrifty.settings import Settings

    settings = Settings.load()
    loaded = model_store().get(resolve_model(MODEL), settings.local)
    started = time.perf_counter()
    grammar_cache().model(loaded.info)
    tokenizer_info_ms = (time.perf_counter() - started) * 1000

    suite = SUITE[: args.limit]
    rows = _read_rows(args.rows, args.max_tokens)
    done = {row["schema"] for row in rows}
    fresh = GrammarCache()
    fresh.model(loaded.info)
    for index, (name, prompt, schema) in enumerate(suite):
        if args.summarize or name in done or index % shards != shard:
            continue
        cold = fresh.compile(loaded.info, schema).compile_seconds * 1000
        t0 = time.perf_counter()
        fresh.compile(loaded.info, schema)
        cached = (time.perf_counter() - t0) * 1000
        on = run(loaded, schema, prompt, args.max_tokens, constrained=True)
        off = run(loaded, schema, prompt, args.max_tokens, constrained=False)
        row = {
            "schema": name, "max_tokens": args.max_tokens, "compile_cold_ms": cold, "compile_cached_ms": cached,
            "on_valid": conforms(on["text"], schema, lenient=False), "on_finish": on["finish"], "on_tokens": on["tokens"],
            "on_step_ms": on["step_ms"], "mask_us_per_token": on["mask_us"],
            "off_valid_strict": conforms(off["text"], schema, lenient=False),
            "off_valid_lenient": conforms(off["text"], schema, lenient=True),
            "off_finish": off["finish"], "off_tokens": off["tokens"], "off_step_ms": off["step_ms"],
            "on_text": on["text"], "off_text": off["text"],
        }
        rows.append(row)
        if args.rows is not None:
            with args.rows.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        print(f"{name:22s} on={'ok ' if row['on_valid'] else 'BAD'} ({on['tokens']:3d} tok, {on['finish']:6s}) "
              f"off={'ok ' if row['off_valid_lenient'] else 'BAD'} ({off['tokens']:3d} tok) "
              f"mask={on['mask_us']:6.1f}us step={on['step_ms'] or 0:6.1f}ms compile={cold:5.1f}ms", flush=True)

    if shards > 1 and not args.summarize:
        return
    order = {name: i for i, (name, _, _) in enumerate(suite)}
    rows = sorted((r for r in rows if r["schema"] in order), key=lambda r: order[r["schema"]])
    schemas = {name: schema for name, _, schema in suite}
    masks: list[Any] = []
    fills: list[float] = []
    for row in rows:
        row_masks, row_fills = replay_masks(loaded, schemas[row["schema"]], row["on_text"])
        masks.extend(row_masks)
        fills.extend(row_fills)
    n = len(rows)
    mask_us = statistics.mean(r["mask_us_per_token"] for r in rows)
    steps = [r["on_step_ms"] for r in rows if r["on_step_ms"]]
    step_ms = statistics.mean(steps)
    apply = time_apply(masks, loaded.info.vocab_size)
    summary = {
        "schemas": n,
        "valid_rate_constrained": sum(r["on_valid"] for r in rows) / n,
        "valid_rate_unconstrained_strict": sum(r["off_valid_strict"] for r in rows) / n,
        "valid_rate_unconstrained_lenient": sum(r["off_valid_lenient"] for r in rows) / n,
        "constrained_stopped_by_length": sum(r["on_finish"] == "length" for r in rows),
        "mask_us_per_token_mean": mask_us,
        "mask_us_per_token_max": max(r["mask_us_per_token"] for r in rows),
        "decode_step_ms_constrained_mean": step_ms,
        "decode_step_ms_unconstrained_mean": statistics.mean(r["off_step_ms"] for r in rows if r["off_step_ms"]),
        "mask_share_of_step": mask_us / 1000 / step_ms,
        "replay_fill_us_per_token_mean": statistics.mean(fills) * 1e6,
        "replay_mask_us_per_token_mean": statistics.mean(fills) * 1e6 + apply["thrifty_apply_bitmask"],
        "replay_mask_share_of_step": (statistics.mean(fills) * 1e6 + apply["thrifty_apply_bitmask"]) / 1000 / step_ms,
        "compile_cold_ms_median": statistics.median(r["compile_cold_ms"] for r in rows),
        "compile_cold_ms_max": max(r["compile_cold_ms"] for r in rows),
        "compile_cached_ms_median": statistics.median(r["compile_cached_ms"] for r in rows),
        "tokenizer_info_ms": tokenizer_info_ms,
        "apply_us_per_mask": apply,
        "masks_replayed": len(masks),
        "tokens_constrained_mean": statistics.mean(r["on_tokens"] for r in rows),
        "tokens_unconstrained_mean": statistics.mean(r["off_tokens"] for r in rows),
    }
    print()
    print(f"{'metric':44s} value")
    print(f"{'schemas':44s} {n}")
    print(f"{'valid+conforming, constrained':44s} {summary['valid_rate_constrained']:.1%}")
    print(f"{'valid+conforming, unconstrained (whole text)':44s} {summary['valid_rate_unconstrained_strict']:.1%}")
    print(f"{'valid+conforming, unconstrained (first JSON)':44s} {summary['valid_rate_unconstrained_lenient']:.1%}")
    print(f"{'constrained answers cut by max_tokens':44s} {summary['constrained_stopped_by_length']}")
    print(f"{'mask time per token (fill + apply), mean':44s} {mask_us:.1f} us")
    print(f"{'decode step, constrained, mean':44s} {step_ms:.1f} ms")
    print(f"{'mask share of the decode step':44s} {summary['mask_share_of_step']:.3%}")
    print(f"{'replayed, best of 3: fill + apply per token':44s} {summary['replay_mask_us_per_token_mean']:.1f} us "
          f"({summary['replay_mask_share_of_step']:.3%} of the step)")
    print(f"{'grammar compile, cold (median / max)':44s} {summary['compile_cold_ms_median']:.1f} / "
          f"{summary['compile_cold_ms_max']:.1f} ms")
    print(f"{'grammar compile, cached (median)':44s} {summary['compile_cached_ms_median'] * 1000:.0f} us")
    print(f"{'tokenizer info, once per model':44s} {tokenizer_info_ms:.0f} ms")
    for way, us in apply.items():
        print(f"{'apply bitmask: ' + way:44s} {us:.1f} us ({len(masks)} real masks)")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "model": MODEL, "max_tokens": args.max_tokens, "machine": platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "summary": summary, "rows": rows,
    }
    (RESULTS / "structured.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


def _read_rows(path: Path | None, max_tokens: int) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if row.get("max_tokens") == max_tokens]


if __name__ == "__main__":
    main()
