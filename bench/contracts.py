"""Prompt contracts: what each way of writing the same contract costs in tokens, and how often it is met.

    .venv/bin/python bench/contracts.py --no-model                  # token counts only (seconds)
    nice -n 10 .venv/bin/python bench/contracts.py                  # and the local model's compliance

Every contract in ``examples/contracts/`` is rendered four ways from the same
:class:`~thrifty.contracts.Contract`, so the content is identical and only the
writing differs:

* ``thrifty``: what the contracts stage sends (:mod:`thrifty.contracts.render`);
* ``5c``: 5C prose in the style of the 5C Prompt Contracts paper (a labelled
  paragraph of full sentences per part: "Character: You are ...");
* ``xml``: an XML-tag DSL (one tag per field, the schema as JSON);
* ``plain``: the 5C sentences as one unlabelled paragraph.

Tokens are counted with tiktoken's ``o200k_base`` (thrifty's offline copy,
:func:`thrifty.ledger.tokens.count_text`) and with the embedded local model's
own tokenizer (SmolLM2-135M-Instruct). The target: ``thrifty`` is the shortest
of the explicit forms (thrifty, 5c, xml).

Compliance: for each of ``--tasks`` contracts, each form is sent as the system
prompt with each of the task's inputs to the embedded local model (through
``thrifty.wrap``, temperature 0, ``--max-tokens``), with no response format
and no enforcement, and the raw answer is judged by the contract's own checks
(:meth:`Contract.checks`) and, where it has one, its JSON schema. SmolLM2-135M
is a weak model: these rates compare the forms with each other, not with what
a hosted model or thrifty's enforcement (grammar, re-asks) reaches.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from thrifty.contracts import Contract, check_paths, render  # noqa: E402
from thrifty.contracts.contract import is_fallback  # noqa: E402
from thrifty.ledger.tokens import count_text  # noqa: E402

EXAMPLES = ROOT / "examples" / "contracts"
RESULTS = ROOT / "bench" / "results" / "contracts.json"
STYLES = ("thrifty", "5c", "xml", "plain")
EXPLICIT = ("thrifty", "5c", "xml")
LOCAL_MODEL = "smollm2-135m"

#: Inputs per task for the compliance run: an in-scope input, then one the contingency covers.
INPUTS: dict[str, list[str]] = {
    "support-triage": [
        "Hi, we were charged twice for invoice INV-2291 this month. Please fix it before our audit. - Dana",
        "What's the weather like in Lisbon tomorrow?",
    ],
    "sentiment-classification": [
        "Battery lasts two days and the screen is gorgeous, but it arrived a week late.",
        "Reminder: the team lunch moved to Thursday.",
    ],
    "sql-generation": [
        "How many orders did customers from Germany place in 2025?",
        "Which employees got a raise last year?",
    ],
    "commit-message": [
        "--- a/src/parse.py\n+++ b/src/parse.py\n@@ -10,7 +10,7 @@\n-    if len(items) > 0:\n+    if items:\n"
        "         return items[0]\n-    return None\n+    raise EmptyInputError('no items')\n",
        "Can you recommend a good book about gardening?",
    ],
    "product-description": [
        "Product: Ridgeline 2 tent. Capacity: 2 people. Weight: 1.9 kg. Season: 3-season. Poles: aluminium. "
        "Floor: 30D nylon, 3000 mm. Packed size: 45 x 15 cm. Use: backpacking.",
        "",
    ],
    "article-summary": [
        "The city council voted 7-2 on Tuesday to cut bus fares by 20% from March, funded by a 4 million euro "
        "parking levy. Opponents said the levy will hurt small shops; the mayor said ridership fell 12% last year "
        "and must recover. A review is planned after six months.",
        "ok",
    ],
}


def token_table(contracts: list[Contract], smol: Any | None) -> list[dict[str, Any]]:
    rows = []
    for contract in contracts:
        texts = {style: render(contract, style) for style in STYLES}
        row: dict[str, Any] = {
            "task": contract.name,
            "schema": contract.calibration.json_schema is not None,
            "o200k": {s: count_text(t, "gpt-4o") for s, t in texts.items()},
            "chars": {s: len(t) for s, t in texts.items()},
        }
        if smol is not None:
            row["smollm2"] = {s: len(smol.encode(t, add_special_tokens=False)) for s, t in texts.items()}
        rows.append(row)
    return rows


def _summary(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    totals = {s: sum(r[key][s] for r in rows) for s in STYLES}
    shortest_explicit = sum(min(EXPLICIT, key=lambda s, r=r: r[key][s]) == "thrifty" for r in rows)
    return {
        "total": totals,
        "thrifty_vs_5c": round(1 - totals["thrifty"] / totals["5c"], 4),
        "thrifty_vs_xml": round(1 - totals["thrifty"] / totals["xml"], 4),
        "thrifty_vs_plain": round(1 - totals["thrifty"] / totals["plain"], 4),
        "5c_vs_xml": round(1 - totals["5c"] / totals["xml"], 4),
        "tasks_where_thrifty_is_shortest_explicit": f"{shortest_explicit}/{len(rows)}",
    }


def meets(contract: Contract, answer: str) -> tuple[bool, list[str]]:
    """Whether ``answer`` meets the contract's checkable parts, and what it broke."""
    broken = [msg for check in contract.checks() if (msg := check(answer)) is not None]
    schema = contract.calibration.json_schema
    fallback = contract.contingency.fallback_output
    if schema is not None and not (fallback is not None and is_fallback(answer, fallback)):
        import jsonschema

        try:
            value = json.loads(answer)
        except ValueError:
            broken.append("not JSON")
        else:
            error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
            if error is not None:
                broken.append(f"schema: {error.message}")
    return not broken, broken


def compliance(contracts: dict[str, Contract], tasks: list[str], inputs: int, max_tokens: int) -> dict[str, Any]:
    import openai

    import thrifty
    from thrifty import Engine, Settings, Stage

    class Untouched(Stage):
        def __init__(self, kind: str) -> None:
            self.kind = kind

    data = Path(tempfile.mkdtemp(prefix="bench-contracts-"))
    # the forms are compared as prompts only: no structured-output enforcement, no compression
    engine = Engine(Settings.load(data_dir=data), ledger=False, retry=False,
                    stages=[Untouched("compression"), Untouched("structured")])
    client = thrifty.wrap(openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1"), engine=engine)
    results: dict[str, Any] = {s: {"met": 0, "n": 0, "output_tokens": 0, "seconds": 0.0} for s in STYLES}
    samples = []
    try:
        for name in tasks:
            contract = contracts[name]
            for index, text in enumerate(INPUTS[name][:inputs]):
                for style in STYLES:
                    started = time.perf_counter()
                    r = client.chat.completions.create(
                        model=f"local/{LOCAL_MODEL}", temperature=0, max_tokens=max_tokens,
                        messages=[{"role": "system", "content": render(contract, style)},
                                  {"role": "user", "content": text or "(empty)"}])
                    answer = r.choices[0].message.content or ""
                    ok, broken = meets(contract, answer)
                    cell = results[style]
                    cell["n"] += 1
                    cell["met"] += ok
                    cell["output_tokens"] += r.usage.completion_tokens
                    cell["seconds"] += time.perf_counter() - started
                    samples.append({"task": name, "input": index, "style": style, "met": ok, "broken": broken,
                                    "answer": answer})
                    print(f"  {name:26} input {index} {style:8} {'met' if ok else 'failed':6} "
                          f"{'; '.join(broken)[:70]}", flush=True)
    finally:
        engine.close()
    for cell in results.values():
        cell["seconds"] = round(cell["seconds"], 1)
    return {"by_style": results, "samples": samples}


def _print_tokens(rows: list[dict[str, Any]], key: str, title: str) -> None:
    print(f"\n{title}")
    print(f"{'task':26} {'schema':6} " + " ".join(f"{s:>7}" for s in STYLES) + "  thrifty vs 5c")
    for r in rows:
        saving = 1 - r[key]["thrifty"] / r[key]["5c"]
        print(f"{r['task']:26} {'yes' if r['schema'] else '':6} " + " ".join(f"{r[key][s]:>7}" for s in STYLES)
              + f"  {saving:>+6.0%}")
    summary = _summary(rows, key)
    print(f"{'total':26} {'':6} " + " ".join(f"{summary['total'][s]:>7}" for s in STYLES)
          + f"  {summary['thrifty_vs_5c']:>+6.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-model", action="store_true", help="token counts with o200k only")
    parser.add_argument("--tasks", default=",".join(INPUTS), help="tasks for the compliance run")
    parser.add_argument("--inputs", type=int, default=2, help="inputs per task for the compliance run (1 or 2)")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()

    contracts, problems = check_paths([EXAMPLES])
    if problems:
        raise SystemExit("\n".join(map(str, problems)))
    smol = None
    if not args.no_model:
        from thrifty.middleware.providers.local._catalogue import resolve_model
        from thrifty.middleware.providers.local._models import model_store
        from thrifty.settings import Settings

        smol = model_store().get(resolve_model(LOCAL_MODEL), Settings.load().local).tokenizer
    rows = token_table(contracts, smol)
    _print_tokens(rows, "o200k", "tokens, tiktoken o200k_base")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "command": " ".join(["bench/contracts.py", *sys.argv[1:]]),
        "tasks": rows,
        "summary": {"o200k": _summary(rows, "o200k")},
    }
    if smol is not None:
        _print_tokens(rows, "smollm2", f"tokens, {LOCAL_MODEL} tokenizer")
        result["summary"]["smollm2"] = _summary(rows, "smollm2")
        tasks = [t for t in args.tasks.split(",") if t]
        print(f"\ncompliance: local/{LOCAL_MODEL}, temperature 0, max_tokens {args.max_tokens}, "
              f"{sum(len(INPUTS[t][:args.inputs]) for t in tasks)} inputs x {len(STYLES)} forms")
        by_name = {c.name: c for c in contracts}
        found = compliance(by_name, tasks, args.inputs, args.max_tokens)
        result["compliance"] = {"model": f"local/{LOCAL_MODEL}", "max_tokens": args.max_tokens, "tasks": tasks,
                                "inputs_per_task": args.inputs, **found}
        print(f"\n{'form':8} {'met':>9} {'output tokens':>14} {'seconds':>8}")
        for style, cell in found["by_style"].items():
            print(f"{style:8} {cell['met']:>4}/{cell['n']:<4} {cell['output_tokens']:>14} {cell['seconds']:>8}")
    for key, summary in result["summary"].items():
        print(f"\n{key}: thrifty is {summary['thrifty_vs_5c']:.0%} shorter than 5C prose, "
              f"{summary['thrifty_vs_xml']:.0%} shorter than the XML DSL, {summary['thrifty_vs_plain']:.0%} "
              f"shorter than plain prose; 5C prose is {summary['5c_vs_xml']:.0%} shorter than the XML DSL; "
              f"thrifty is the shortest explicit form in {summary['tasks_where_thrifty_is_shortest_explicit']} tasks")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
