"""Property tests: protected spans survive byte-for-byte, and the output is a subsequence of the input."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thrifty.compressors.protect import protected_spans

FILLER = st.sampled_from(
    "the a committee met on tuesday to review budget for coming year members discussed rising cost of "
    "maintenance old library building which has needed repairs roof and heating system several winters "
    "after long debate they agreed ask city council additional funding".split()
)
PUNCT = st.sampled_from(["", "", "", ",", ".", ";", ":", "!", "?"])

PROTECTED = st.one_of(
    st.integers(-10**9, 10**9).map(str),
    st.floats(0, 1e6, allow_nan=False).map(lambda f: f"{f:.3f}"),
    st.from_regex(r"[A-Z]{2,4}-[0-9]{2,6}", fullmatch=True),
    st.uuids().map(str),
    st.from_regex(r"https://[a-z]{3,8}\.(com|org)/[a-z0-9]{1,8}\?q=[0-9]{1,3}", fullmatch=True),
    st.from_regex(r"[a-z]{2,6}\.[a-z]{2,6}@[a-z]{3,6}\.(com|net)", fullmatch=True),
    st.dates().map(lambda d: d.isoformat()),
    st.text(st.characters(codec="utf-8", exclude_characters='"\n\r\x00'), min_size=1, max_size=20)
    .filter(lambda s: s.strip() == s and s).map(lambda s: f'"{s}"'),
    st.from_regex(r"[a-z]{1,6}\([a-z]{0,3}\) \+ [0-9]", fullmatch=True).map(lambda c: f"\n```\n{c}\n```\n"),
    st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.integers(0, 99), min_size=1, max_size=3)
    .map(lambda d: __import__("json").dumps(d)),
    # names the tokenizer splits at their punctuation: file names, dotted and snake_case names, options, paths
    st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,4}){1,3}", fullmatch=True),
    st.from_regex(r"_?[a-z]{1,6}(_[a-z]{1,6}){1,3}", fullmatch=True),
    st.from_regex(r"-[a-zA-Z]|--[a-z]{2,8}(-[a-z]{2,8}){0,2}(=[A-Z]{3,5})?", fullmatch=True),
    st.from_regex(r"(~|\.|\.\.)?/[a-z]{1,6}(/[a-z_.]{0,6}[a-z]){0,3}|[a-z]{1,6}(/[a-z]{1,6}){1,2}\.py",
                  fullmatch=True),
    # a number with its unit
    st.from_regex(r"[1-9][0-9]{0,3}(\.[0-9])? ?(ms|GB|MB|kWh|°C|percent|minutes|USD)( per (day|user|second))?",
                  fullmatch=True),
    # a stack frame and a shell command line, each on a line of its own
    st.from_regex(r"\n\tat [a-z]{1,6}\.[A-Z][a-z]{1,6}\.[a-z]{1,6}\([A-Z][a-z]{1,6}\.java:[1-9][0-9]{0,3}\)\n",
                  fullmatch=True),
    st.from_regex(r"\n\$ [a-z]{2,8}( --?[a-z]{1,8}){0,3}( [a-z]{2,8}){0,2}\n", fullmatch=True),
    # a log line, a key=value pair and an arrow
    st.from_regex(r"\n2024-0[1-9]-[12][0-9] [01][0-9]:[0-5][0-9]:[0-5][0-9] (INFO|WARN|ERROR)( [a-z]{2,8}){1,6}\n",
                  fullmatch=True),
    st.from_regex(r"[a-z]{2,8}=[a-z0-9]{1,8}", fullmatch=True),
    st.sampled_from(["->", "-->", "=>", ">=", "<=", "!=", "→"]),
    # a version constraint and an e-mail address in angle brackets
    st.from_regex(r"[a-z]{3,8}[0-9]?(>=|<|==|~=|\^)[0-9]\.[0-9]{1,2}(,<[0-9])?", fullmatch=True),
    st.from_regex(r"<[a-z]{2,6}@[a-z]{3,6}\.(com|org)>", fullmatch=True),
)


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, list[str]]:
    pieces: list[str] = []
    kept: list[str] = []
    for _ in range(draw(st.integers(3, 8))):
        words = draw(st.lists(FILLER, min_size=4, max_size=25))
        pieces.append(" ".join(words) + draw(PUNCT))
        item = draw(PROTECTED)
        kept.append(item)
        pieces.append(item)
    return " ".join(pieces), kept


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.sampled_from([0.33, 0.5, 0.7]))
def test_protected_spans_survive_byte_for_byte(exact, doc, rate):
    text, kept = doc
    out = exact.compress(text, rate).text
    for item in kept:
        assert item.strip() in out
    # words of the output are a subsequence of the input's words
    words = iter(re.findall(r"\w+", text))
    assert all(w in words for w in re.findall(r"\w+", out))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.lists(FILLER, min_size=1, max_size=3))
def test_force_keep_and_patterns(exact, doc, terms):
    text, _ = doc
    out = exact.compress(text, 0.33, force_keep=terms, patterns=[r"\bbudget\b"]).text
    for term in terms:
        assert out.count(term) >= text.count(term)
    assert out.count("budget") == text.count("budget")


def test_keep_regions_and_default_kinds_are_found():
    text = ('Call https://x.org/a?b=1 at 10:30 pm on March 3, 2024; mail bo@ex.org; ID ABC-1234 and v1.2.3; '
            'uuid 123e4567-e89b-12d3-a456-426614174000, 0xBEEF, $1,234.56, 15%, "quoted   text" and '
            '<keep>my region</keep>\n\n    indented code\n')
    found = [text[s:e] for s, e in protected_spans(text)]
    for item in ("https://x.org/a?b=1", "10:30 pm", "March 3, 2024", "bo@ex.org", "ABC-1234", "v1.2.3",
                 "123e4567-e89b-12d3-a456-426614174000", "0xBEEF", "$1,234.56", "15%", '"quoted   text"',
                 "<keep>my region</keep>", "    indented code\n"):
        assert item in found, item
    assert protected_spans("plain words only here", defaults=True) == []


def test_names_joined_by_punctuation_options_and_paths_are_found():
    text = ("Usage: grep -i 'hi' menu.h main.c\n  -m, --max-count=NUM  stop\n      --color[=WHEN]  mark\n"
            "Call os.path.join(config_dir) on example.com, then std::vec::Vec, __init__, /etc/hosts, ~/.bashrc, "
            "./run.sh, src/app.py and C:\\Users\\bo\\x.txt.")
    found = [text[s:e] for s, e in protected_spans(text)]
    for item in ("-i", "menu.h", "main.c", "-m", "--max-count=NUM", "--color[=WHEN]", "os.path.join", "config_dir",
                 "example.com", "std::vec::Vec", "__init__", "/etc/hosts", "~/.bashrc", "./run.sh", "src/app.py",
                 "C:\\Users\\bo\\x.txt"):
        assert item in found, item
    # prose punctuation is not a name: hyphenated words, dashes, list markers, sentence ends, ellipses
    prose = "A well-known, long-term plan - or two -- came. End. Next...and more\n- first item\n"
    assert protected_spans(prose) == []
    assert protected_spans("call 555 now", defaults=False) == []


def test_data_and_configuration_written_without_a_fence_are_found():
    table = "| plan | monthly cost | risk |\n|---|---:|---|\n| lift and shift | high | low |\n| rebuild | low | high |"
    yaml = "name: orders-api\nreplicas: 3\nresources:\n  limits:\n    memory: 512Mi\nargs:\n  - --verbose\n  - --port 80"
    ini = "[server]\nhost = 127.0.0.1\nport = 8787\nworkers = 2"
    env = "LOG_LEVEL=debug\nDATABASE_URL=postgres://db/orders\nRETRIES=3"
    csv = "id,name,total,currency\n1,Alice,30.5,EUR\n2,Bob,12,USD"
    sql = ("SELECT customer_id, SUM(total) AS revenue\nFROM orders WHERE created_at >= '2024-01-01'\n"
           "GROUP BY customer_id ORDER BY revenue DESC LIMIT 10;")
    text = "\n\n".join(["The plans we compared:", table, "The deployment:", yaml, "The proxy's settings:", ini,
                        "Its environment:", env, "The invoices:", csv, "And the query that found the top ten:", sql])
    found = [text[s:e] for s, e in protected_spans(text)]
    for item in (table, yaml, ini.split("\n", 1)[1], env, csv, sql):
        assert item in found, item
    # prose is not (but for its speakers' labels and a negation): a transcript's turns, a bullet list, prose
    # about SQL, one labelled line, a sentence of commas, a lone pipe
    prose = ("Customer: I cannot log in to my account since this morning.\nAgent: Have you tried resetting your "
             "password?\nCustomer: Yes, twice, and it still fails.\n\n- open the settings page\n- choose the "
             "account tab\n- press reset\n\nCREATE INDEX constructs an index on the specified column of a "
             "table.\n\nNote: the office is closed on Friday.\nRed, green, blue and white are the colours. "
             "Pick one | or two.\n")
    assert [prose[s:e] for s, e in protected_spans(prose)] == ["Customer:", "cannot", "Agent:", "Customer:", "Note:"]


LOGS = ("2024-05-01 02:14:07,311 ERROR worker 7 crashed: connection reset by peer\n"
        "[2024-05-01T02:14:09Z] WARN queue depth 12000 exceeds soft limit 10000\n"
        "Nov 28 02:14:11 web-3 systemd[1]: scheduler.service: Main process exited, code=exited, status=1/FAILURE\n"
        "I1128 02:14:12.104 1234 pool.go:88] restarting the pool")
COLUMNS = ("NAME                     READY   STATUS    RESTARTS   AGE\n"
           "api-7d9f8b6c5-x2x9z      1/1     Running   0          3d\n"
           "worker-5c8d7f9b4-k8s7q   0/1     Pending   12         41m")


def test_logs_command_output_arrows_and_assignments_are_found():
    text = (f"The logs of the night:\n\n{LOGS}\n\nThe pods then:\n\n{COLUMNS}\n\nIn short A -> B --> C, x >= 3, "
            "y <= 4, a != b, p => q and 5 → 6; the agent ran with retries=3 and mode=\"fast\", then set debug=on.")
    found = [text[s:e] for s, e in protected_spans(text)]
    for item in (*LOGS.split("\n"), COLUMNS, "->", "-->", "x >= 3", "y <= 4", "a != b", "=>", "→", "retries=3",
                 'mode="fast"', "debug=on"):
        assert item in found, item
    # prose is not: a date and a time to the minute, two spaces after full stops, dashes, slashes between words,
    # inline bullets
    prose = ("On 2024-05-01 at 10:30 the team met.  It was long.  We agreed.\nThe plan is set.  Costs fell.  "
             "Good.\nWe go on Monday.  Then we rest.  Fine.\nSo read / write access - for now. * Next item.")
    assert [prose[s:e] for s, e in protected_spans(prose)] == ["2024-05-01", "10:30"]


def test_http_messages_git_logs_weekdays_and_version_constraints_are_found():
    http = "GET /v2/session?redirect=true HTTP/1.1\nHost: api.example.com\n\nHTTP/1.1 302 Found"
    git = "commit 9f2c1e7b4a\nAuthor: Priya Raman <priya@example.com>\nDate:   Tue Nov 26 14:02:11 2024 +0100"
    text = (f"The request:\n\n{http}\n\nThe history:\n\n{git}\n\nWe pin requests>=2.31,<3 and urllib3<2, react^18.2 "
            "too; see <https://example.com/pins> or write to <ops@example.com> by Tuesday, 3 March, or read "
            "/api/items?page=2&size=50.")
    found = [text[s:e] for s, e in protected_spans(text)]
    for item in ("GET /v2/session?redirect=true HTTP/1.1", "HTTP/1.1 302 Found", git, "requests>=2.31,<3",
                 "urllib3<2", "react^18.2", "<https://example.com/pins>", "<ops@example.com>", "Tuesday,",
                 "/api/items?page=2&size=50"):
        assert item in found, item
    # prose is not: a sentence that starts with "GET", a commit in a sentence, "<" after a word, a weekday alone,
    # a question after a path
    prose = ("GET the keys from the office.\nWe commit to it on Sunday and sat down, odd< 3 or so; is it in "
             "/etc/hosts? Yes.")
    assert [prose[s:e] for s, e in protected_spans(prose)] == ["3", "/etc/hosts"]


def test_sections_mentions_phone_numbers_day_ranges_and_expressions_are_found():
    text = ("Sign the amendment of Section 4.2(b) and clause 12(1)(a); @maria and @tom-ellis review it. Call "
            "+1 (415) 555-0100, Mon-Fri. The ratio is hits / (hits + misses), and if x^2 + y^2 > r^2 it is out.")
    found = [text[s:e] for s, e in protected_spans(text)]
    for item in ("4.2(b)", "12(1)(a)", "@maria", "@tom-ellis", "+1", "(415) 555-0100", "Mon-Fri",
                 "hits / (hits + misses)", "x^2 + y^2 > r^2"):
        assert item in found, item
    # an e-mail address is one span, not a mention; a year in parentheses alone is a number
    assert [m for m in found if "@" in m] == ["@maria", "@tom-ellis"]
    assert protected_spans("Write to ops@example.com in (2024).") == [(9, 24), (29, 33)]


def test_author_year_citations_footnotes_and_section_signs_are_found():
    text = ("Retrieval helps (Lewis et al., 2020; Borgeaud et al., 2022), less so at scale (Smith and Jones, 2023), "
            "as Chen et al. (2021) and Bus & Dekker (1975) found; see § 26 and [^2].")
    found = [text[s:e] for s, e in protected_spans(text)]
    for item in ("(Lewis et al., 2020; Borgeaud et al., 2022)", "(Smith and Jones, 2023)", "Chen et al. (2021)",
                 "Bus & Dekker (1975)", "§ 26", "[^2]"):
        assert item in found, item
    # a year alone in parentheses is a number, a parenthesis of words is prose
    prose = "The tool (released in 2020) was rewritten (by Maria) in the spring of 2021."
    assert [prose[s:e] for s, e in protected_spans(prose)] == ["2020", "2021"]


def test_markup_is_found():
    text = ("## Installing the agent\n\n1. Download the package.\n2) Verify it.\nSee the [install guide](https://x.org/a "
            '"Guide") and ![a diagram](img/arch.png).\n<div class="warning"><p>Do not mix clusters.</p></div>\n'
            "<!-- reviewed -->\nThe load is $L = \\lambda W$, or $$\\sum_i x_i$$, \\(a^2\\), \\[b^2\\] and "
            "\\begin{equation}E = mc^2\\end{equation}.")
    found = [text[s:e] for s, e in protected_spans(text)]
    for item in ("##", "1.", "2)", "[", '](https://x.org/a "Guide")', "![", "](img/arch.png)",
                 '<div class="warning"><p>', "</p></div>", "<!-- reviewed -->", "$L = \\lambda W$", "$$\\sum_i x_i$$", "\\(a^2\\)",
                 "\\[b^2\\]", "\\begin{equation}E = mc^2\\end{equation}"):
        assert item in found, item
    assert "install" not in " ".join(found) and "diagram" not in " ".join(found)  # a link's text is prose
    # a speaker's label starts a line with a capital; a phrase before a colon does not
    labels = "[00:12:05] Dr. Chen: hello\nSPEAKER 2: yes\nQ: why?\nA: because.\nThe plan: we go.\n"
    assert [labels[s:e] for s, e in protected_spans(labels)] == ["[00:12:05] Dr. Chen:", "SPEAKER 2:", "Q:", "A:"]
    # money, hashtags and numbers inside a line are none of these (comparisons are kept as such)
    prose = "It costs $5 and $10, or $ 7 with tax; if a < b and c > d, tag it #release for chapter 1. Then go."
    assert [prose[s:e] for s, e in protected_spans(prose)] == ["$5", "$10", "7", "a < b", "c > d", "1"]


def test_numbers_keep_their_units():
    text = ("Latency rose from 20 ms to 300 ms, memory from 512 MB to 3 GB, disk at 40 GB per day, 1,200 queries "
            "per second, 1,200 requests/s, 3 GB/day, 2 percent, 45 minutes, 40°C, 1,800 USD, 3.5 kWh and 10 K users.")
    found = [text[s:e] for s, e in protected_spans(text)]
    assert found == ["20 ms", "300 ms", "512 MB", "3 GB", "40 GB per day", "1,200 queries per second",
                     "1,200 requests/s", "3 GB/day", "2 percent", "45 minutes", "40°C", "1,800 USD", "3.5 kWh", "10 K"]
    # English words that are also units are not taken ("in" for inches, "at"), nor a word not followed by a rate
    prose = "I keep 5 in the box and 3 at home, 3 apples per person and page 3 of 10."
    assert [prose[s:e] for s, e in protected_spans(prose)] == ["5", "3", "3", "3", "10"]


def test_negations_check_boxes_and_citations_are_found():
    text = ("Nothing here isn't tested, and we never ship without review; don’t. None, NOT and Nobody too.\n"
            "- [x] done\n* [ ] open\nAs [3] and [2, 5] say, but not [a].")
    found = [text[s:e] for s, e in protected_spans(text)]
    # (a contraction's "n't" alone: the compressor widens a span to its whole word)
    assert found == ["Nothing", "n't", "never", "without", "n’t", "None", "NOT", "Nobody", "- [x]", "* [ ]",
                     "[3]", "[2, 5]", "not"]
    # in any case, as written ("nEver", "doN't"); words that merely contain them are not
    mixed = "we nEver ship; it doN't work"
    assert [mixed[s:e] for s, e in protected_spans(mixed)] == ["nEver", "N't"]
    assert protected_spans("I know now that Notably nonetheless the noted nonce is knotted.") == []
