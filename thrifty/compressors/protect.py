"""Protected spans: the parts of a text that compression must pass through byte-for-byte.

:func:`protected_spans` returns sorted, non-overlapping ``(start, end)``
character ranges. What is protected by default (``defaults=True``):

* fenced code blocks (```` ``` ```` or ``~~~``, to the closing fence or the end
  of the text) and indented code blocks (lines indented by four spaces or a tab
  after a blank line), and inline code in backticks;
* stack traces: a Python traceback from ``Traceback (most recent call last):``
  to its exception line, and the frames of JVM, .NET and JavaScript traces
  (``at com.x.Pool.get(Pool.java:42)``, ``at f (app.js:10:5)``) with their
  ``Caused by:`` and ``... 3 more`` lines; unified diffs (their file headers
  and hunks); shell command lines (``$ ...``); HTTP request and status lines
  (``GET /v2/session?x=1 HTTP/1.1``, ``HTTP/1.1 302 Found``); a git log's
  commit headers (``commit ...``, ``Author:``, ``Date:``); log lines (a line
  that starts with a date and a time to the second: ISO, syslog's ``Nov 28
  02:14:07``, glog's); and a command's output in columns aligned with spaces
  (``df -h``, ``kubectl get pods``: three or more lines with two or more wide
  gaps);
* data and configuration written without a fence: Markdown tables (lines that
  start and end with ``|``), runs of three or more short ``key: value`` or
  ``key = value`` lines (YAML, INI, ``.env``, e-mail headers), CSV lines
  (three or more fields, no spaces) and SQL statements in upper-case keywords
  (``SELECT ... FROM``, ``INSERT INTO``..., to the semicolon or the end of
  the paragraph);
* negations (``not``, ``no``, ``never``, ``without``, ``don't``...), whose loss
  turns a sentence into its opposite; a task list's check boxes; numbered
  citations (``[3]``), author-year citations (``(Lewis et al., 2020)``,
  ``Chen et al. (2021)``), footnote references (``[^2]``), section signs
  with their numbers (``§ 26``) and a section's lettered parts
  (``4.2(b)``); arrows and comparisons (``->``, ``-->``, ``=>``, ``>=``,
  ``!=``, ``→``, ``≤``...), and arithmetic written with spaced operators,
  whole (``hits / (hits + misses)``, ``x^2 + y^2 > r^2``);
* speakers' labels at the start of a line (``Alice:``, ``[00:12] Dr. Chen:``),
  so that a transcript keeps who said what;
* markup: Markdown heading, ordered-list and quotation markers, the brackets
  and targets of links and images (their text is prose); HTML and XML tags
  and comments; TeX mathematics (``$...$`` as Pandoc reads it, so that "$5
  and $10" stays money, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``,
  ``\\begin{...}...\\end{...}``);
* JSON objects and arrays (anything :func:`json.JSONDecoder.raw_decode` accepts
  that starts with ``{`` or ``[``);
* URLs (``scheme://...`` and ``www....``) and e-mail addresses, with their
  angle brackets where they have them (``<ops@example.com>``); mentions
  (``@maria``) and telephone numbers with an area code in parentheses
  (``(415) 555-0100``);
* numbers (with signs, separators, decimals, exponents, percent and currency
  signs, and their units: ``300 ms``, ``3 GB per day``, ``2 percent``,
  ``1,200 queries per second``), dates and times (ISO 8601, ``12/31/2024``,
  ``31.12.2024``, ``10:30 pm``, ``March 3, 2024``, ``3 March 2024``, a
  weekday before them: ``Tue Nov 26``, and ranges of days: ``Mon-Fri``);
* identifiers: UUIDs, hex strings, words that mix letters and digits
  (``ABC-1234``, ``gpt-4o``, ``v1.2.3``, ``user_42``), names joined by dots,
  ``::`` or underscores (``menu.h``, ``os.path.join``, ``example.com``,
  ``std::vec``, ``max_retries``), command-line options (``-E``,
  ``--max-count=NUM``), ``key=value`` pairs (``code=exited``), version
  constraints (``requests>=2.31,<3``, ``urllib3<2``) and file paths
  (``/etc/hosts``, ``~/.bashrc``, ``src/app.py``, ``C:\\Users``, with a query
  string: ``/api/items?page=2``): the model's tokenizer splits these at their
  punctuation and would drop pieces of them ("--line-buffered" became "line
  buffered", "menu.h" became "menu h");
* quoted strings (``"..."``, ``'...'``, typographic quotes, ``«...»``,
  ``「...」``), up to 300 characters on one line.

Callers add their own:

* ``force_keep``: literal terms (case-sensitive) kept wherever they occur;
* ``patterns``: regular expressions; every match is kept;
* ``<keep>...</keep>`` regions (always on): the region, markers included, is
  kept as written.

The compressor widens a span to whole words where a span starts or ends
inside one, so the span itself always survives intact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = ["KEEP_REGION", "merge_spans", "protected_spans"]

_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)

#: A work's authors as an author-year citation names them: "Lewis", "Lewis et al.", "Smith and Jones".
_AUTHORS = r"[A-Z][\w\-'’]+(?: et al\.|,? (?:and|&) [A-Z][\w\-'’]+)?"
#: A weekday's name after its capital ("on" of "Mon", "ursday" of "Thursday").
_DAY_REST = (r"(?:on(?:day)?|ue(?:s(?:day)?)?|ed(?:nesday)?|hu(?:r(?:s(?:day)?)?)?|ri(?:day)?|at(?:urday)?|"
             r"un(?:day)?)")

#: An e-mail address, bare or in angle brackets.
_EMAIL = r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+"

#: The marker of a user-protected region: ``<keep>...</keep>`` (markers kept in the output).
KEEP_REGION = r"<keep>.*?</keep>"

_DIGIT = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
#: A short value: one to four words.
_SHORT_VALUE = r"\S{1,60}(?:[ \t]+\S{1,60}){0,3}"
#: A line of configuration or of a record: a key (a word, perhaps dotted or dashed, perhaps a list item's) and
#: a value of at most four words after ": " or "=", or none after ":" (a YAML mapping's key). Four words keep
#: out the turns of a transcript ("Agent: Have you tried resetting your password?") and prefixed log lines.
_KEY_LINE = (r"[ \t]*(?:- )?[A-Za-z_][\w.\-]*(?::(?:[ \t]+" + _SHORT_VALUE + r")?|[ \t]*=[ \t]*(?:" + _SHORT_VALUE
             + r")?)[ \t]*(?=\n|\Z)")
#: Units a number is written with, which compression must not part from it ("rose from 20 ms to 300 ms" became
#: "rose from 20 300"): time, data, rates, scales, shares, lengths, masses, volumes, temperatures, power,
#: currencies. Case matters ("MB", "mb" and "Mb" are listed each); English words that are also units ("in",
#: "A", "at") are left out.
_UNITS = "|".join(sorted((
    "ns µs us ms s sec secs second seconds min mins minute minutes h hr hrs hour hours day days week weeks month "
    "months year years yr yrs "
    "bit bits byte bytes B kB KB KiB MB MiB GB GiB TB TiB PB kb Kb Mb Gb Tb mb gb tb bps kbps Kbps Mbps Gbps "
    "Hz kHz MHz GHz rps qps rpm fps tps "
    "k K M bn mn million millions billion billions trillion thousand "
    "percent pct pp bp "
    "nm mm cm m km ft mi mile miles meter meters metre metres mg g kg lb lbs oz ton tons tonne tonnes ml mL l L "
    "liter liters litre litres gallon gallons °C °F ° degree degrees "
    "W kW MW GW kWh MWh GWh V kV mV mA mAh "
    "USD EUR GBP JPY CHF CAD AUD CNY INR dollar dollars euro euros pound pounds cent cents yen "
    "token tokens").split(), key=lambda unit: (-len(unit), unit)))
#: Between a rate's quantity and what it is per: "/" or " per ".
_PER_SEP = r"(?:[ \t]?/[ \t]?|[ \t]per[ \t])"
#: What a rate is per, besides the units ("3 GB per day", "1,200 requests/s" keeps the "/s").
_PER = "request|requests|user|users|call|calls|query|queries|token|node|core|GPU|CPU|head|person|capita"
#: The lines of a diff's hunks after its first: context, added, removed, "\ No newline" and further hunks.
_HUNK_LINES = r"(?:\n(?:[ +\-\\@][^\n]*|(?=\n[ +\-\\@])))*"

# (pattern, substrings of which one must be in the text for the pattern to be tried at all)
_DEFAULT_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # fenced code: to the closing fence of the same kind, or to the end of the text
    (r"(?ms)^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", ("```", "~~~")),
    # indented code after a blank line (or at the start)
    (r"(?m)(?:(?<=\n\n)|\A)(?:(?: {4}|\t)[^\n]*\S[^\n]*(?:\n|\Z))+", ("    ", "\t")),
    (r"`[^`\n]+`", ("`",)),
    # stack traces: a Python traceback from its header to its exception line; the frames of a JVM, .NET or
    # JavaScript trace ("at a.B.c(B.java:12)", "at f (app.js:10:5)", "at N.C.M() in C:\\x.cs:line 42"), with
    # their "Caused by:", "... 3 more" and "Exception in thread" lines
    (r"(?m)^[ \t]*Traceback \(most recent call last\):[ \t]*\n(?:[ \t]+[^\n]*\n)*[^\n]*",
     ("Traceback (most recent call last)",)),
    (r"(?m)^(?:[ \t]+at \S[^\n]*?(?::(?:line )?\d+(?::\d+)?\)?|\((?:Native Method|Unknown Source)\))"
     r"|[ \t]*(?:Caused by: |Exception in thread )[^\n]*|[ \t]*\.\.\. \d+ more)[ \t]*$",
     ("at ", "Caused by: ", "Exception in thread ", " more")),
    # unified diffs: the file header (from "diff --git" or "--- ") and the hunks, to the first line that is
    # none of theirs (a blank line inside a hunk, where an editor stripped a context line's space, is kept)
    (r"(?m)(?:^diff --git [^\n]*\n(?:(?!--- )[^\n]*\n){0,6})?^--- [^\n]*\n\+\+\+ [^\n]*" + _HUNK_LINES
     + r"|^@@ -\d[^\n]*" + _HUNK_LINES, ("+++ ", "@@ -")),
    # Markdown and ASCII tables: two or more lines that start and end with "|"
    (r"(?m)^[ \t]*\|[^\n]*\|[ \t]*(?:\n[ \t]*\|[^\n]*\|[ \t]*)+", ("|",)),
    # configuration and records (YAML, INI, .env, headers): three or more lines of "key: value" or
    # "key = value" with short values, the first a key's, the others keys' or indented list items
    (rf"(?m)^{_KEY_LINE}(?:\n(?:{_KEY_LINE}|[ \t]+- {_SHORT_VALUE}[ \t]*(?=\n|\Z))){{2,}}", (":", "=")),
    # CSV: two or more lines of three or more comma-separated fields without spaces
    (r"(?m)^[^\s,]*(?:,[^\s,]*){2,}(?:\n[^\s,]*(?:,[^\s,]*){2,})+", (",",)),
    # SQL statements, written with upper-case keywords: to the semicolon or the end of the paragraph, without
    # the lower-case English of prose about them ("CREATE INDEX constructs an index on ...")
    (r"(?m)^[ \t]*(?:SELECT\b[^;]*?\bFROM|(?:INSERT INTO|DELETE FROM) [\w\"`]|UPDATE \S+ SET\b|WITH \w+ AS \(|"
     r"(?:CREATE|ALTER|DROP) (?:TABLE|(?:UNIQUE )?INDEX|VIEW|SCHEMA|DATABASE) (?:IF (?:NOT )?EXISTS )?[\w\"`])"
     r"(?:(?!\b(?:the|is|are|was|an|which|that|can|will|must|be|it|its|this|you)\b)[^;])*?(?:;|(?=\n[ \t]*\n)|\Z)",
     ("SELECT", "INSERT INTO", "UPDATE", "DELETE FROM", "WITH", "CREATE", "ALTER", "DROP")),
    # Markdown's markup where a dropped piece changes what it says: heading, ordered-list and quotation
    # markers ("## " became "# "; "> > " says who wrote a line of an e-mail), and the brackets and target of a
    # link or image ("[guide](https://...)"), whose text is prose
    (r"(?m)^[ \t]{0,3}(?:#{1,6}(?=[ \t])|\d{1,3}[.)](?=[ \t])|>(?:[ \t]?>)*)", ("#", ".", ")", ">")),
    (r"\[(?=[^\[\]\n]{1,200}\]\()|\]\([^()\s]{1,500}(?:[ \t]+\"[^\"\n]{0,200}\")?\)", ("](",)),
    (r"!(?=\[[^\[\]\n]{1,200}\]\()", ("![",)),
    # HTML and XML tags (the text between them is prose) and comments
    (r"</?[A-Za-z][\w:.\-]*(?:[ \t\n][^<>]{0,300})?/?>|<!--.*?-->", ("<",)),
    # mathematics: TeX's $$...$$, \[...\], \(...\) and environments, and $...$ as Pandoc reads it (no space
    # inside either dollar, no digit after the closing one: "$5 and $10" is money)
    (r"(?s)\$\$.{1,2000}?\$\$|\\\[.{1,2000}?\\\]|\\\(.{1,500}?\\\)|\\begin\{(\w+\*?)\}.{0,5000}?\\end\{\1\}",
     ("$$", "\\(", "\\[", "\\begin{")),
    (r"\$(?<![\w$]\$)(?=\S)[^$\n]{1,300}?(?<=\S)\$(?![\d$])", ("$",)),
    # negations, which turn what a sentence says into its opposite ("Do not restart the primary" became
    # "restart primary"): "not", "no", "nor", "none", "nothing", "nobody", "nowhere", "never", "neither",
    # "cannot", "without" (the alternatives factored: a plain list is twice as slow), and the "n't" of
    # "don't", "isn't"..., which the compressor widens to its word
    # (each gated on what every match contains, in either case, as the patterns ignore case)
    (r"(?i)\b(?:n(?:o(?:t|ne|thing|body|where|r)?|e(?:ver|ither))|cannot|without)\b", ("n", "N")),
    (r"(?i)(?<=\w)n['’]t\b", ("'", "’")),
    # a task list's check boxes ("- [x]" is done, "- [ ]" is not) and numbered citations ("[3]", "[2, 5]")
    (r"(?m)^[ \t]*[-*+][ \t]+\[[ xX]\]", ("[ ]", "[x]", "[X]")),
    (r"\[\d{1,3}(?:[,–\-][ \t]?\d{1,3})*\]", ("[",)),
    # author-year citations, in parentheses ("(Lewis et al., 2020; Borgeaud et al., 2022)") or after the names
    # ("Chen et al. (2021)", "Smith and Jones (2023)"), whose names say which work; footnote references
    # ("[^2]"); a section sign with its number ("§ 26")
    (r"\((?=[A-Z])(?:" + _AUTHORS + r",? (?:19|20)\d{2}[a-z]?(?:[;,] ?(?=[A-Z])|(?=\))))+\)", ("(",)),
    (_AUTHORS + r" \((?:19|20)\d{2}[a-z]?\)", (" (19", " (20")),
    (r"\[\^[^\]\s]{1,20}\]", ("[^",)),
    (r"[§¶]{1,2}[ \t\u00a0]?\d[\w.]*(?:\(\w{1,4}\))*", ("§", "¶")),
    # who says what: a speaker's label at the start of a line ("Alice:", "Dr. Chen:", "SPEAKER 2:", "Q:"), after
    # a bracketed time if there is one; without it, a transcript's turns run together
    (r"(?m)^[ \t]*(?:\[[^\]\n]{1,20}\][ \t]*)?[A-Z][\w.'\-]*(?:[ \t][A-Z0-9][\w.'\-]*){0,2}:(?=[ \t])", (":",)),
    # shell command lines ("$ kubectl get pods -n prod")
    (r"(?m)^[ \t]*\$ [^\n]+", ("$ ",)),
    # HTTP request and status lines ("GET /v2/session?redirect=true HTTP/1.1", "HTTP/1.1 302 Found")
    (r"(?m)^[ \t]*(?:(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|CONNECT|TRACE) \S+(?: HTTP/\d(?:\.\d)?)?[ \t]*$|"
     r"HTTP/\d(?:\.\d)? \d{3}\b[^\n]*)", ("GET ", "POST ", "PUT ", "PATCH ", "DELETE ", "HEAD ", "OPTIONS ",
                                          "CONNECT ", "TRACE ", "HTTP/")),
    # a git log's commit headers ("commit 9f2c1e7", "Author: ...", "Date: ...")
    (r"(?m)^commit [0-9a-f]{7,40}\b[^\n]*(?:\n(?:Merge|Author|AuthorDate|Commit|CommitDate|Date):[^\n]*)*",
     ("commit ",)),
    # log lines: a line that starts with a date and a time to the second (ISO, "2024/05/01", syslog's "Nov 28
    # 02:14:07", glog's "I1128 02:14:07"), perhaps bracketed; its message is data ("exited, code=exited,
    # status=1/FAILURE" became "exited exited 1/FAILURE")
    (r"(?m)^[ \t]*\[?(?:\d{4}[-/]\d{2}[-/]\d{2}[T ]|" + _MONTHS + r"[ \t]+\d{1,2}[ \t]+|[IWEF]\d{4}[ \t]+)"
     r"\d{2}:\d{2}:\d{2}(?!\d)[^\n]*", (":",)),
    # a command's output in columns aligned with spaces ("df -h", "kubectl get pods"): three or more lines
    # with two or more gaps of two spaces or more, each after a cell, not after a sentence's end (prose typed
    # with two spaces after a full stop)
    (r"(?m)^(?=[^\n]*[^\s.!?:;,] {2,}\S[^\n]*[^\s.!?:;,] {2,}\S)[^\n]+"
     r"(?:\n(?=[^\n]*[^\s.!?:;,] {2,}\S[^\n]*[^\s.!?:;,] {2,}\S)[^\n]+){2,}", ("  ",)),
    # arrows and comparisons ("A -> B", "00:00:01,000 --> 00:00:04,200", "x >= 3"), whose halves the
    # tokenizer splits
    # (from its first character, which the regex engine scans for: five times faster than the alternatives)
    (r"[-<=>!→←↔⇒⇐⇔≥≤≠](?:(?<=<)[-=]{1,2}>?|(?<=[-=])[-=]?>|(?<=[!=>])=|(?<=[→←↔⇒⇐⇔≥≤≠]))",
     ("->", "=>", "<-", "<=", ">=", "!=", "==", "→", "←", "↔", "⇒", "⇐", "⇔", "≥", "≤", "≠")),
    # URLs and e-mail addresses
    (r"(?i)\b(?:[a-z][a-z0-9+.\-]*://|www\.)[^\s<>\"'`]+[^\s<>\"'`.,;:!?)\]}]", ("://", "www.", "WWW.")),
    (_EMAIL, ("@",)),
    # ... with their angle brackets ("Priya Raman <priya@example.com>", "<https://example.com>")
    (r"<(?:" + _EMAIL + r"|[a-z][a-z0-9+.\-]*://[^\s<>]+)>", ("<",)),
    # dates and times
    (r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+\-]\d{2}:?\d{2})?)?\b", ("-",)),
    (r"\b\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}\b", _DIGIT),
    (r"(?i)\b\d{1,2}:\d{2}(?::\d{2})?(?:\s?[ap]\.?m\.?\b)?", (":",)),
    (rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b", _DIGIT),
    # a date's weekday ("Tue Nov 26", "Tuesday, 3 March") and a range of days ("Mon-Fri"), from the capital,
    # which the regex engine scans for
    (rf"[MTWFS](?<=\b[MTWFS]){_DAY_REST}(?:\.?,?(?=[ \t]+(?:{_MONTHS}\b|\d))|[-–][MTWFS]{_DAY_REST}\b)",
     ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")),
    (rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS}\b(?:,?\s+\d{{4}}\b)?", _DIGIT),
    # identifiers: UUIDs, hex, words mixing letters and digits
    (r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", ("-",)),
    (r"(?i)\b0x[0-9a-f]+\b", ("0x", "0X")),
    (r"(?<![\w\-./#])(?=[\w\-./#:]*\d)(?=[\w\-./#:]*[^\W\d_])\w(?:[\w\-./#:]*\w)?", ()),
    # the lettered parts of a section's number ("4.2(b)", "12(1)(a)": the number is one), a mention ("@maria",
    # "@tom-ellis"), and a telephone number with its area code in parentheses ("+1 (415) 555-0100": the "+1" is
    # a number); each from the "(" or "@" that the regex engine scans for (40 times faster than from the digits)
    (r"\((?<=\d\()[a-zA-Z0-9]{1,4}\)(?:\([a-zA-Z0-9]{1,4}\))*", ("(",)),
    (r"@(?<![\w@.]@)[A-Za-z0-9_](?:[\w.\-]*\w)?", ("@",)),
    (r"\(\d{1,4}\)[ \t.\-]?\d[\d \t.\-]{4,14}\d", ("(",)),
    # Windows paths ("C:\\Users\\bo"); other paths, options and joined names: _joined_spans
    (r"\b[A-Za-z]:\\(?:[\w.\-\\]*[\w\\])?", (":\\",)),
    # numbers, with currency and percent signs and their units ("300 ms", "3 GB per day", "2 percent",
    # "1,200 queries per second")
    (r"[$€£¥₹]?[-+]?(?<![\w.])\d(?:[\d,._']*\d)?(?:[eE][-+]?\d+)?(?:%|[ \t\u00a0]?(?:" + _UNITS + r")(?![\w%])"
     r"(?:" + _PER_SEP + r"(?:" + _UNITS + "|" + _PER + r")(?!\w))?|[ \t][^\W\d_]+" + _PER_SEP + r"(?:" + _UNITS
     + r")(?!\w))?", ()),
    # quoted strings on one line
    (r"\"[^\"\n]{1,300}\"", ('"',)),
    (r"(?<!\w)'[^'\n]{1,300}'(?!\w)", ("'",)),
    (r"“[^”\n]{1,300}”", ("“",)),
    (r"(?<!\w)‘[^’\n]{1,300}’(?!\w)", ("‘",)),
    (r"«[^»\n]{1,300}»", ("«",)),
    (r"「[^」\n]{1,300}」", ("「",)),
    (r"『[^』\n]{1,300}』", ("『",)),
)


@lru_cache(maxsize=1)
def _default_regexes() -> tuple[tuple[re.Pattern[str], tuple[str, ...]], ...]:
    return tuple((re.compile(p), needs) for p, needs in _DEFAULT_PATTERNS)


_HAS_DIGIT = re.compile(r"\d")


@lru_cache(maxsize=1)
def _keep_region() -> re.Pattern[str]:
    return re.compile(KEEP_REGION, re.S)


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a caller's pattern once; ``re.error`` for a bad one."""
    return re.compile(pattern)


def _json_spans(text: str) -> list[tuple[int, int]]:
    decoder = json.JSONDecoder()
    spans = []
    i = 0
    n = len(text)
    while i < n:
        j = min((k for k in (text.find("{", i), text.find("[", i)) if k >= 0), default=-1)
        if j < 0:
            break
        try:
            _, end = decoder.raw_decode(text, j)
        except ValueError:
            i = j + 1
            continue
        if end - j > 2:  # "{}" and "[]" alone are not worth a span
            spans.append((j, end))
        i = end
    return spans


# Names joined by punctuation, each found from its punctuation by a pattern that starts with it (a fast scan for
# that character) and widened back to the start of its word in Python; patterns starting with the word are
# tried at every word, and made finding all the protected spans 60% slower (docs/benchmarks.md).
_DOTTED = re.compile(r"(?:\.|::)\w(?:[\w\-]*\w)?(?:(?:\.|::)\w(?:[\w\-]*\w)?)*")
_UNDERSCORED = re.compile(r"_\w*")
_SLASHED = re.compile(r"/[\w.\-]*\w(?:/[\w.\-]*\w)*/?(?:\?[\w.\-~%+&]+=[\w\-~%+&=]*(?:\.[\w\-~%+&=]+)*)?")
_OPTION = re.compile(r"--?[^\W\d_][\w\-]*(?:\[?=[^\s\]]*\]?)?")
#: A version constraint after a name ("requests>=2.31,<3", "urllib3<2", "react^18.2"), from its operator
#: (each operator found from its first character, which the regex engine scans for: "===", "<=", "~=", "<", "^"...)
_CONSTRAINT = re.compile(r"[<>=!~^](?:(?<==)==|(?<=[<>=!~])=|(?<=[<>^~]))v?\d[\w.*+!\-]*"
                         r"(?:,[ \t]?[<>=!~](?:(?<==)==|(?<=[<>=!~])=|(?<=[<>]))v?\d[\w.*+!\-]*)*")
#: "=" and a value: quoted, or up to a space, bracket or separator, without a sentence's last punctuation
_ASSIGNED = re.compile(r"=(?:\"[^\"\n]{0,300}\"|[^\s\"'`=,;()\[\]{}<>]*[^\s\"'`=,;()\[\]{}<>.:!?])")


def _word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _word_start(text: str, i: int, also: str) -> int:
    """Where the word that reaches ``i`` starts: back over word characters and those of ``also``."""
    while i > 0 and (_word_char(text[i - 1]) or text[i - 1] in also):
        i -= 1
    return i


def _joined_spans(text: str) -> list[tuple[int, int]]:
    """Names joined by dots, ``::`` or underscores (file names, modules and members, domains, snake_case:
    ``menu.h``, ``os.path.join``, ``std::vec``, ``max_retries``), paths (``/etc/hosts``, ``~/.bashrc``,
    ``src/app.py``), command-line options (``-E``, ``--max-count=NUM``, ``--color[=WHEN]``),
    ``key=value`` pairs (``code=exited``, ``level="warn"``) and version constraints with their names
    (``requests>=2.31,<3``)."""
    spans = []
    for m in _DOTTED.finditer(text):  # after a word that starts with a letter (a number's dot is a number's)
        if m.start() and _word_char(text[m.start() - 1]):
            start = _word_start(text, m.start(), "-")
            while text[start] == "-":
                start += 1
            if not text[start].isdigit():
                spans.append((start, m.end()))
    for m in _UNDERSCORED.finditer(text):  # a word with an underscore and a letter
        start = _word_start(text, m.start(), "")
        if any(ch.isalpha() for ch in text[start:m.end()]):
            spans.append((start, m.end()))
    for m in _SLASHED.finditer(text):  # with the word, "~", "." or ".." before the first slash
        spans.append((_word_start(text, m.start(), ".-~"), m.end()))
    for m in _OPTION.finditer(text):  # "-" or "--" that starts a word, not a hyphen inside one
        if not m.start() or not (_word_char(text[m.start() - 1]) or text[m.start() - 1] == "-"):
            spans.append(m.span())
    # "key=value" with its key ("code=exited", "level=warn"), a version constraint with its package's name
    for regex in (_ASSIGNED, _CONSTRAINT):
        for m in regex.finditer(text):
            if m.start() and _word_char(text[m.start() - 1]):
                spans.append((_word_start(text, m.start(), ".-"), m.end()))
    return spans


#: An operator written between spaces and its right operand ("+ y^2", "> r^2", "/ (hits"); "-" and "*" are left
#: out, as prose writes dashes and inline bullets so, and "/" counts only before a parenthesis ("read / write")
_OPERATOR = re.compile(r"[+×÷=<>≤≥!/]=?[ \t]+(\(*)[\w.^']*\w\)*")
_OPERATORS = frozenset(("+", "×", "÷", "=", "<", ">", "≤", "≥", "==", "!=", "<=", ">="))


def _expression_spans(text: str) -> list[tuple[int, int]]:
    """Arithmetic and comparisons written with spaced operators (``hits / (hits + misses)``, ``x^2 + y^2 >
    r^2``): each operator with its operands, which overlapping spans join into the whole expression."""
    spans = []
    for m in _OPERATOR.finditer(text):
        start = m.start()
        op = m.group().split(None, 1)[0]
        if not start or text[start - 1] not in " \t" or not (op in _OPERATORS or (op == "/" and m.group(1))):
            continue
        end = start - 1  # the left operand ends before the space, in a word character (not a sentence's ".")
        while end > 0 and text[end - 1] == ")":
            end -= 1
        if not end or not _word_char(text[end - 1]):
            continue
        begin = _word_start(text, end, ".^'")
        while begin > 0 and text[begin - 1] == "(":
            begin -= 1
        spans.append((begin, m.end()))
    return spans


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort spans and merge the ones that overlap or touch."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def protected_spans(
    text: str,
    *,
    defaults: bool = True,
    force_keep: Sequence[str] = (),
    patterns: Sequence[str | re.Pattern[str]] = (),
) -> list[tuple[int, int]]:
    """The character ranges of ``text`` to keep byte-for-byte (see the module docstring)."""
    spans: list[tuple[int, int]] = []
    if "<keep>" in text:
        spans.extend(m.span() for m in _keep_region().finditer(text))
    if defaults:
        digits = _HAS_DIGIT.search(text) is not None
        for regex, needs in _default_regexes():
            if (not needs and not digits) or (needs and not any(n in text for n in needs)):
                continue  # the pattern cannot match (all patterns without a trigger need a digit)
            spans.extend(m.span() for m in regex.finditer(text))
        spans.extend(_joined_spans(text))
        spans.extend(_expression_spans(text))
        if "{" in text or "[" in text:
            spans.extend(_json_spans(text))
    for term in force_keep:
        if not term:
            continue
        start = text.find(term)
        while start >= 0:
            spans.append((start, start + len(term)))
            start = text.find(term, start + len(term))
    for pattern in patterns:
        regex = compile_pattern(pattern) if isinstance(pattern, str) else pattern
        spans.extend(m.span() for m in regex.finditer(text))
    return merge_spans(spans)
