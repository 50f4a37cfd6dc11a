"""The wrapper's added latency per call, against the bare SDK, with the ledger on.

Both clients call the same fast canned upstream on loopback, interleaved call
by call so that machine noise hits both alike. Prints a table and writes
bench/results/overhead.json.

    .venv/bin/python bench/overhead.py [--calls 3000] [--warmup 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import anthropic
import openai

import thrifty
from thrifty.testing import CannedUpstream

RESULTS = Path(__file__).parent / "results"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello in five words."}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(calls: int, warmup: int, pairs: dict[str, tuple]) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {name: {"direct": [], "thrifty": []} for name in pairs}
    for name, (direct, wrapped) in pairs.items():
        for i in range(warmup + calls):
            for label, fn in (("direct", direct), ("thrifty", wrapped)) if i % 2 else (("thrifty", wrapped), ("direct", direct)):
                t0 = time.perf_counter()
                fn()
                dt = (time.perf_counter() - t0) * 1000
                if i >= warmup:
                    times[name][label].append(dt)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args()

    with CannedUpstream() as up, tempfile.TemporaryDirectory() as tmp:
        settings = thrifty.Settings.load(data_dir=Path(tmp))
        engine = thrifty.Engine(settings)
        o_direct = openai.OpenAI(api_key="sk-bench", base_url=up.url)
        o_wrapped = thrifty.wrap(openai.OpenAI(api_key="sk-bench", base_url=up.url), engine=engine)
        a_direct = anthropic.Anthropic(api_key="sk-bench", base_url=up.base_url)
        a_wrapped = thrifty.wrap(anthropic.Anthropic(api_key="sk-bench", base_url=up.base_url), engine=engine)

        def o_call(client):  # noqa: ANN001, ANN202
            return lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=20)

        def o_stream(client):  # noqa: ANN001, ANN202
            return lambda: [c for c in client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, stream=True)]

        def a_call(client):  # noqa: ANN001, ANN202
            return lambda: client.messages.create(model="claude-haiku-4-5", max_tokens=20, system="You are terse.",
                                                  messages=MESSAGES[1:])

        pairs = {
            "openai chat": (o_call(o_direct), o_call(o_wrapped)),
            "openai chat, stream": (o_stream(o_direct), o_stream(o_wrapped)),
            "anthropic messages": (a_call(a_direct), a_call(a_wrapped)),
        }
        times = measure(args.calls, args.warmup, pairs)
        engine.recorder.flush(timeout=60)
        engine.close()
        import sqlalchemy as sa

        db = sa.create_engine(settings.ledger_url)
        with db.connect() as conn:
            written = conn.execute(sa.text("SELECT count(*) FROM llm_calls")).scalar_one()
        db.dispose()
        expected = len(pairs) * (args.calls + args.warmup)

    rows = []
    for name, t in times.items():
        d50, d99, w50, w99 = pct(t["direct"], .5), pct(t["direct"], .99), pct(t["thrifty"], .5), pct(t["thrifty"], .99)
        rows.append({"case": name, "calls": len(t["direct"]), "direct_p50_ms": d50, "direct_p99_ms": d99,
                     "thrifty_p50_ms": w50, "thrifty_p99_ms": w99, "added_p50_ms": w50 - d50, "added_p99_ms": w99 - d99,
                     "direct_mean_ms": statistics.fmean(t["direct"]), "thrifty_mean_ms": statistics.fmean(t["thrifty"])})
    head = f"{'case':22} {'calls':>6} {'direct p50':>11} {'thrifty p50':>12} {'added p50':>10} {'direct p99':>11} {'thrifty p99':>12} {'added p99':>10}"
    print("wrapper overhead, ledger on (SQLite), canned upstream on loopback; milliseconds")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:22} {r['calls']:>6} {r['direct_p50_ms']:>11.3f} {r['thrifty_p50_ms']:>12.3f} "
              f"{r['added_p50_ms']:>10.3f} {r['direct_p99_ms']:>11.3f} {r['thrifty_p99_ms']:>12.3f} {r['added_p99_ms']:>10.3f}")
    print(f"ledger rows written: {written} of {expected} calls")
    RESULTS.mkdir(exist_ok=True)
    out = {"bench": "overhead", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
           "machine": platform.machine(), "calls": args.calls, "warmup": args.warmup, "ledger": "sqlite", "ledger_rows": written, "ledger_rows_expected": expected, "rows": rows,
           "target": "added p50 < 0.5 ms"}
    (RESULTS / "overhead.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
