"""``thrifty compress FILE``: compress a text file with the prompt compressor."""

from __future__ import annotations

import sys
import time
from typing import Any, get_args

import click

from thrifty.settings import CompressionMode, Precision

_PROGRESS_FROM = 4_000  # model tokens; smaller inputs finish before a bar would help
#: Why a text came back unchanged (``CompressResult.skipped``), for the summary line.
_SKIPPED = {"empty": "no text", "rate": "rate 1", "fits": "within the budget already",
            "short": "too short to compress",
            "protected": "nothing in it may be dropped",
            "language": "written in a language the model was not trained on"}


@click.command("compress")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--rate", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Share of the compressible tokens to keep (default 0.5; with --target-tokens, the most to keep).")
@click.option("--target-tokens", type=click.IntRange(1), default=None, metavar="N",
              help="Compress only as far as needed to fit in N tokens of the target model: the largest rate, "
                   "in hundredths, that fits.")
@click.option("--target", default="gpt-4o", show_default=True, metavar="MODEL",
              help="The model whose tokenizer counts the tokens (exact for OpenAI models, an estimate for others).")
@click.option("--mode", type=click.Choice(get_args(CompressionMode)), default="fast", show_default=True,
              help="fast: the model in whichever of float32, bfloat16 and int8 is fastest here (measured once); "
                   "exact: the model in float32, llmlingua's decisions; "
                   "turbo: a distilled shallower model, faster again, for a few points of accuracy.")
@click.option("--model", "model", type=click.Path(exists=True, file_okay=False), default=None,
              help="Weights directory (default: thrifty's shipped weights).")
@click.option("--precision", type=click.Choice(get_args(Precision)), default="auto",
              show_default=True, help="What the fast and turbo modes run in (auto: the fastest here, measured once).")
@click.option("--force-keep", multiple=True, metavar="TERM", help="A term to keep wherever it occurs (repeatable).")
@click.option("--protect", multiple=True, metavar="REGEX", help="A regular expression whose matches are kept.")
@click.option("--sentence-weight", type=click.FloatRange(0, 100), default=None,
              help="Lift of a sentence's mean keep probability on its words (0: llmlingua's rule; default 2).")
@click.option("--relation-weight", type=click.FloatRange(0, 100), default=None,
              help="Lift of the relation words (by, to, than...) in the keep scores (0: llmlingua's rule; "
                   "default 0.4).")
@click.option("--question", default=None, metavar="TEXT",
              help="The question the text is context for: the sentences relevant to it are kept.")
@click.option("--no-default-protection", is_flag=True,
              help="Do not protect code, JSON, URLs, numbers, IDs, names, paths, options, key=value pairs, "
                   "version constraints, stack traces, diffs, HTTP and git log headers, log lines, tables, "
                   "command output, configuration, CSV, SQL, markup, mathematics, formulas, speakers, negations, "
                   "arrows, citations, sections, dates, e-mails, mentions, telephone numbers and quotes.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True), default="-",
              show_default=True, help="Where to write the compressed text.")
@click.option("--show-dropped", is_flag=True,
              help="Write the original text with each run of dropped words marked [-like this-], to see what "
                   "the compression takes out.")
@click.option("--quiet", "-q", is_flag=True, help="No summary line on stderr.")
def compress(file: str, rate: float | None, target_tokens: int | None, target: str, mode: str, model: str | None,
             precision: str, force_keep: tuple[str, ...], protect: tuple[str, ...], sentence_weight: float | None,
             relation_weight: float | None, question: str | None, no_default_protection: bool, output: str,
             show_dropped: bool, quiet: bool) -> None:
    """Compress the text in FILE ('-' for standard input) to about RATE of its tokens, or to fit in
    the token budget N.

    Malformed UTF-8 bytes pass through unchanged. Protected spans (code, JSON,
    URLs, numbers, IDs, file names and paths, dotted and snake_case names,
    command-line options, key=value pairs, version constraints, stack traces,
    diffs, shell command lines, HTTP request and status lines, git log
    headers, log lines, tables, command output in columns, configuration, CSV,
    SQL, markup and mathematics, formulas, speakers' labels, negations, arrows
    and comparisons, citations, sections, dates, e-mail addresses, mentions,
    telephone numbers, quoted strings, <keep>...</keep>) are kept
    byte-for-byte.
    """
    import re

    from thrifty.errors import ThriftyError

    name = "standard input" if file == "-" else file
    for pattern in protect:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise click.BadParameter(f"{pattern!r}: {exc}", param_hint="'--protect'") from None
    try:
        data = sys.stdin.buffer.read() if file == "-" else open(file, "rb").read()  # noqa: SIM115
    except OSError as exc:
        raise click.ClickException(f"cannot read {name}: {exc.strerror}") from None
    if b"\x00" in data:
        raise click.ClickException(f"{name} looks like a binary file (it has NUL bytes); give a text file")
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        from thrifty.compressors.base import CompressResult, compress_to
        from thrifty.compressors.lingua import Compressor

        compressor = Compressor.load(mode=mode, model=model, precision=precision)
        bar: Any = None
        started = time.perf_counter()

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                if total < _PROGRESS_FROM:
                    return
                bar = click.progressbar(length=total, label=f"compressing {name}", file=sys.stderr)
                bar.__enter__()
            bar.update(done - bar.pos)

        def compress_at(at: float) -> CompressResult:
            return compressor.compress(text, at, force_keep=force_keep, patterns=protect, target=target,
                                       protect=not no_default_protection, progress=progress,
                                       sentence_weight=sentence_weight, relation_weight=relation_weight,
                                       question=question)

        try:
            result = compress_to(compress_at, rate, target_tokens)
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        shown = result.text
        if show_dropped and result.skipped is None:
            decisions = compressor.keep_decisions(
                text, result.rate, protect=not no_default_protection, force_keep=force_keep, patterns=protect,
                sentence_weight=sentence_weight, relation_weight=relation_weight, question=question)
            shown = _mark_dropped(text, decisions.starts[~decisions.keep], decisions.ends[~decisions.keep])
    except ThriftyError as exc:
        raise click.ClickException(f"{name}: {exc}") from None
    payload = shown.encode("utf-8", errors="surrogateescape")
    try:
        if output == "-":
            sys.stdout.buffer.write(payload)
            sys.stdout.buffer.flush()
        else:
            with open(output, "wb") as fh:
                fh.write(payload)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    if not quiet:
        kept = f"{result.achieved_rate:.0%} kept"
        if result.protected_chars:
            kept += f", {result.protected_chars:,} characters protected"
            if result.foreign_chars:
                kept += f", {result.foreign_chars:,} of them in another language"
        if result.skipped is not None:
            kept += f", unchanged: {_SKIPPED.get(result.skipped, result.skipped)}"
        elif result.target_tokens is not None:
            kept += f", rate {result.rate:g}"
            if result.over_target:
                kept += f", over the budget of {result.target_tokens}: what is protected takes more"
        click.echo(
            f"{name}: {result.tokens_before} -> {result.tokens_after} tokens "
            f"({kept}, {result.mode} in {compressor.precision}, {(time.perf_counter() - started):.2f} s)",
            err=True,
        )


def _mark_dropped(text: str, starts: Any, ends: Any) -> str:
    """``text`` with each run of the dropped words (character spans ``starts``-``ends``, in order) that
    only whitespace separates written as ``[-run-]``."""
    out: list[str] = []
    pos = 0
    run_start = run_end = -1
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if run_start >= 0 and not text[run_end:start].strip():
            run_end = end
            continue
        if run_start >= 0:
            out += [text[pos:run_start], "[-", text[run_start:run_end], "-]"]
            pos = run_end
        run_start, run_end = start, end
    if run_start >= 0:
        out += [text[pos:run_start], "[-", text[run_start:run_end], "-]"]
        pos = run_end
    out.append(text[pos:])
    return "".join(out)
