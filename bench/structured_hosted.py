"""What structured-output enforcement costs thrifty itself on hosted providers (no model time).

Three measurements, printed as tables and written to bench/results/structured_hosted.json:

1. the stage on a call without an output contract (it must pass through at ~no cost);
2. per schema: the check and strict conversion, cold and cached, and validating one answer;
3. end to end: the wrapped openai SDK against the bare one, call for call, on the canned upstream
   (ledger on): a plain ``create``, and ``chat.completions.parse(response_format=Model)``.

    .venv/bin/python bench/structured_hosted.py [--calls 1000] [--warmup 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Literal

import openai
from pydantic import BaseModel, Field

import thrifty
from thrifty.contracts.schema import OPENAI_STRICT, check_schema, to_strict, validator_for
from thrifty.contracts.structured import StructuredStage
from thrifty.middleware.context import CallContext
from thrifty.settings import StructuredSettings
from thrifty.testing import CannedUpstream, smallest_instance
from thrifty.types import Choice, Message, Request, Response, TextPart, Usage

RESULTS = Path(__file__).parent / "results"
MESSAGES = [{"role": "user", "content": "Extract the person: Ann, 31, ann@example.com"}]


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=150)
    email: str | None = None


class Address(BaseModel):
    street: str
    city: str
    zip: str | None = None


class Item(BaseModel):
    sku: str = Field(min_length=3)
    quantity: int = Field(ge=1)
    price: float = Field(gt=0)


class Order(BaseModel):
    id: int
    status: Literal["open", "shipped", "closed"]
    shipping: Address
    billing: Address | None = None
    items: list[Item] = Field(max_length=50)
    notes: list[str] | None = None


class Tree(BaseModel):
    label: str
    children: list[Tree]


WIDE = {"type": "object", "properties": {f"field_{i}": {"type": "string" if i % 2 else "integer"}
                                         for i in range(60)}, "required": [f"field_{i}" for i in range(0, 60, 3)]}
SCHEMAS = {"person (3 fields)": Person.model_json_schema(), "order (nested, $defs)": Order.model_json_schema(),
           "tree (recursive)": Tree.model_json_schema(), "wide (60 fields)": WIDE}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Next:
    def __init__(self, response: Response) -> None:
        self.response = response

    def handle(self, request: Request, ctx: CallContext) -> Response:
        return self.response


def passthrough(n: int) -> dict[str, float]:
    """Microseconds per call: the stage on a call without an output contract, and the bare next handler."""
    answer = Response("r", "m", [Choice(0, Message("assistant", [TextPart("hi")]), "stop")], Usage())
    inner = _Next(answer)
    stage = StructuredStage(StructuredSettings(), lambda name, bound: None)  # type: ignore[arg-type,return-value]
    stage.next = inner  # type: ignore[assignment]
    request = Request("m", [Message("user", [TextPart("hi")])])
    ctx = CallContext(entry="wrapper", wire="openai")
    out = {}
    for label, fn in (("bare next handler", inner.handle), ("structured stage", stage.handle)):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(request, ctx)
            best = min(best, (time.perf_counter() - t0) / n * 1e6)
        out[label] = best
    return out


def per_schema(repeat: int) -> list[dict]:
    rows = []
    for name, schema in SCHEMAS.items():
        cold = []
        for i in range(20):  # a schema never seen before: a fresh title each time
            fresh = {**schema, "title": f"{schema.get('title', 'S')}-{i}-{time.perf_counter_ns()}"}
            t0 = time.perf_counter()
            check_schema(fresh)
            to_strict(fresh, OPENAI_STRICT)
            validator_for(fresh)
            cold.append((time.perf_counter() - t0) * 1000)
        copies = [json.loads(json.dumps(schema)) for _ in range(repeat)]  # each request decodes its own copy
        t0 = time.perf_counter()
        for copy in copies:
            check_schema(copy)
            to_strict(copy, OPENAI_STRICT)
            validator_for(copy)
        cached = (time.perf_counter() - t0) / repeat * 1e6
        answer = json.dumps(smallest_instance(to_strict(schema).schema))
        validator = validator_for(schema)
        t0 = time.perf_counter()
        for _ in range(repeat):
            value = validator.restore(json.loads(answer))
            validator.errors(value)
        validate = (time.perf_counter() - t0) / repeat * 1e6
        rows.append({"schema": name, "cold_prepare_ms": statistics.median(cold), "cached_prepare_us": cached,
                     "validate_answer_us": validate, "answer_bytes": len(answer)})
    return rows


def end_to_end(calls: int, warmup: int) -> dict[str, dict[str, float]]:
    """The bare SDK and the wrapped one, call for call, without and with a schema."""
    with CannedUpstream() as up, tempfile.TemporaryDirectory() as tmp:
        engine = thrifty.Engine(thrifty.Settings.load(data_dir=Path(tmp)))
        direct = openai.OpenAI(api_key="sk-bench", base_url=up.url, max_retries=0)
        wrapped = thrifty.wrap(openai.OpenAI(api_key="sk-bench", base_url=up.url, max_retries=0), engine=engine)

        def create(client):  # noqa: ANN001, ANN202
            return lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

        def parse(client, model):  # noqa: ANN001, ANN202
            return lambda: client.chat.completions.parse(model="gpt-4o-mini", messages=MESSAGES, response_format=model)

        cases = {"create (no schema)": (create(direct), create(wrapped)),
                 "parse(Person)": (parse(direct, Person), parse(wrapped, Person)),
                 "parse(Order)": (parse(direct, Order), parse(wrapped, Order))}
        times = {name: {"direct": [], "thrifty": []} for name in cases}
        for name, (bare, through) in cases.items():
            for i in range(warmup + calls):
                for label, fn in (("direct", bare), ("thrifty", through)) if i % 2 else (("thrifty", through),
                                                                                        ("direct", bare)):
                    t0 = time.perf_counter()
                    fn()
                    if i >= warmup:
                        times[name][label].append((time.perf_counter() - t0) * 1000)
        engine.recorder.flush(timeout=60)
        engine.close()
    return {name: {"direct_p50_ms": pct(t["direct"], .5), "thrifty_p50_ms": pct(t["thrifty"], .5),
                   "added_p50_ms": pct(t["thrifty"], .5) - pct(t["direct"], .5)} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()

    through = passthrough(100_000)
    print("1. a call without an output contract; microseconds per call (best of 5 x 100k)")
    for label, us in through.items():
        print(f"   {label:20} {us:8.3f}")
    print(f"   {'added by the stage':20} {through['structured stage'] - through['bare next handler']:8.3f}")

    schemas = per_schema(2000)
    print("\n2. per schema: check + strict conversion + validator (cold, ms; a request's own copy of a "
          "schema seen before, us), validate one answer (us)")
    print(f"   {'schema':24} {'cold ms':>9} {'cached us':>10} {'validate us':>12}")
    for r in schemas:
        print(f"   {r['schema']:24} {r['cold_prepare_ms']:>9.3f} {r['cached_prepare_us']:>10.2f} "
              f"{r['validate_answer_us']:>12.2f}")

    e2e = end_to_end(args.calls, args.warmup)
    print(f"\n3. bare and wrapped openai SDK, canned upstream, ledger on; {args.calls} calls each, interleaved; ms")
    print(f"   {'case':20} {'direct p50':>11} {'thrifty p50':>12} {'added p50':>10}")
    for name, r in e2e.items():
        print(f"   {name:20} {r['direct_p50_ms']:>11.3f} {r['thrifty_p50_ms']:>12.3f} {r['added_p50_ms']:>10.3f}")

    RESULTS.mkdir(exist_ok=True)
    out = {"bench": "structured_hosted", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "python": platform.python_version(), "machine": platform.machine(), "calls": args.calls,
           "warmup": args.warmup, "passthrough_us": through, "schemas": schemas, "end_to_end": e2e}
    (RESULTS / "structured_hosted.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
