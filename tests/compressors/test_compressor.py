"""The built-in compressor on real text, with a real MiniLM encoder (an untrained, seeded head)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import thrifty
from tests.compressors.conftest import PASSAGE
from thrifty.errors import InvalidRequestError, LocalModelError


def _in_order(original: str, output: str) -> bool:
    """The output's characters, whitespace aside, are a subsequence of the original's."""
    chars = iter("".join(original.split()))
    return all(c in chars for c in "".join(output.split()))


def test_compresses_to_about_the_rate_from_the_original_characters(exact):
    text = PASSAGE * 3
    result = exact.compress(text, 0.5, protect=False)
    assert 0.35 < result.achieved_rate < 0.7
    assert result.tokens_after < result.tokens_before
    assert result.compressor == "llmlingua2" and result.mode == "exact" and result.version == "test-random-head@0"
    assert _in_order(text, result.text)
    assert result.words_kept < result.words_total


def test_lower_rate_keeps_less(exact):
    text = PASSAGE * 2
    assert exact.compress(text, 0.33).tokens_after < exact.compress(text, 0.6).tokens_after


@pytest.mark.parametrize("text", ["", " ", "\n\t  \n"])
def test_empty_and_whitespace_pass_through(exact, text):
    result = exact.compress(text, 0.5)
    assert result.text == text and result.skipped == "empty" and result.tokens_saved == 0


def test_a_text_that_would_vanish_is_left_alone(exact):
    result = exact.compress("x", 0.5)
    assert result.text == "x" and result.skipped == "short"


def test_rate_one_is_unchanged_and_bad_rates_are_refused(exact):
    assert exact.compress(PASSAGE, 1.0).text == PASSAGE
    for bad in (0, -0.5, 1.5, float("nan"), "half"):
        with pytest.raises(InvalidRequestError):
            exact.compress(PASSAGE, bad)


def test_deterministic_and_cached(exact):
    first = exact.compress(PASSAGE * 2, 0.4)
    assert exact.compress(PASSAGE * 2, 0.4) is first  # the LRU
    exact._cache.clear()
    assert exact.compress(PASSAGE * 2, 0.4).text == first.text


@pytest.mark.parametrize("text", [
    "Les enfants jouaient dans le jardin pendant que leurs parents préparaient le dîner. Ça sentait très bon. " * 3,
    "東京は日本の首都です。多くの人が毎日電車で通勤しています。天気が良い日には富士山が見えます。" * 3,
    "Привет, мир! Это пример текста на русском языке, с разными словами. " * 3 + " 😀🎉👍🏽 emoji " * 5,
    "Mixed: English, Ελληνικά, עברית, العربية, हिन्दी and 한국어 in one sentence, cafe\u0301 decomposed. " * 3,
])
def test_other_scripts_and_emoji_are_never_mangled(exact, text):
    out = exact.compress(text, 0.5).text
    assert out and "\ufffd" not in out and "[UNK]" not in out and "##" not in out
    assert _in_order(text, out)
    # every character of the output is in the original, with its combining marks
    assert set(out) <= set(text) | {" ", "\n"}
    if "\u0301" in text:
        assert out.count("\u0301") == out.count("cafe\u0301") or "cafe" not in out


HELP = """Usage: grep [OPTION]... PATTERNS [FILE]...
Search for PATTERNS in each FILE.
Example: grep -i 'hello world' menu.h main.c

Output control:
  -m, --max-count=NUM       stop after NUM selected lines
  -b, --byte-offset         print the byte offset with output lines
      --line-buffered       flush output on every line
  -H, --with-filename       print file name with output lines
      --color[=WHEN]        use markers to highlight the matching strings
Configuration is read from ~/.greprc, then /etc/grep/config.toml; see src/grep_main.c and os.path.join.
"""


def test_a_help_text_keeps_its_options_file_names_and_paths(exact):
    # the tokenizer splits "--line-buffered" and "menu.h" at their punctuation; unprotected, their pieces
    # were dropped one by one ("line buffered", "menu h")
    out = exact.compress(HELP, 0.33).text
    for name in ("-i", "menu.h", "main.c", "-m", "--max-count=NUM", "-b", "--byte-offset", "--line-buffered",
                 "-H", "--with-filename", "--color[=WHEN]", "~/.greprc", "/etc/grep/config.toml",
                 "src/grep_main.c", "os.path.join"):
        assert name in out, name
    assert len(out) < 0.8 * len(HELP)  # the prose around them is still compressed


#: An incident write-up: prose around a Python traceback, a Java and a Node.js trace and shell commands.
TRACES = [
    'Traceback (most recent call last):\n'
    '  File "/srv/app/worker.py", line 88, in run\n'
    '    result = handler(payload, retries=3)\n'
    '  File "/srv/app/handlers.py", line 41, in handler\n'
    '    return parse(payload["body"]).total\n'
    '           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n'
    "KeyError: 'body'",
    'Exception in thread "main" java.lang.IllegalStateException: connection pool exhausted\n'
    '\tat com.example.db.Pool.acquire(Pool.java:142)\n'
    '\tat com.example.api.Orders.list(Orders.java:57)\n'
    'Caused by: java.util.concurrent.TimeoutException: waited for a free connection and gave up\n'
    '\tat com.example.db.Pool.waitFor(Pool.java:201)\n'
    '\t... 12 more',
    '    at renderUser (/srv/web/views/user.js:23:17)\n'
    '    at processTicksAndRejections (node:internal/process/task_queues:95:5)',
    '$ kubectl get pods --namespace prod\n'
    '$ kubectl rollout undo deployment orders-api',
]
INCIDENT = (
    "The worker crashed shortly after the deploy on Tuesday night, and the on-call engineer collected the "
    f"following output from the logs of the three services before restarting anything:\n{TRACES[0]}\n"
    "The orders service failed at about the same time, because every request was waiting for a connection that "
    f"the pool could not hand out:\n{TRACES[1]}\nThe web front end then threw errors for every user page:\n"
    f"TypeError: Cannot read properties of undefined\n{TRACES[2]}\nThe engineer rolled the deployment back with "
    f"these commands, and the queue drained within about ten minutes:\n{TRACES[3]}\n"
    "We need to validate the payload before it reaches the parser, and to size the pool for the peak load.\n")


def test_stack_traces_and_shell_commands_pass_through(exact):
    from thrifty.compressors.protect import protected_spans

    # a traceback's code lines and exception were compressed like prose ("raw_decode idx_w 0" of
    # "raw_decode(s, idx=_w(s, 0).end())"), and so were the words of a command line
    out = exact.compress(INCIDENT, 0.33)
    for trace in TRACES:
        assert trace in out.text, trace
    prose_chars = len(INCIDENT) - sum(len(t) for t in TRACES)
    assert len(out.text) < len(INCIDENT) - prose_chars / 3  # the prose around them is still compressed
    # an indented line of prose that starts with "at" is no frame, nor is a dollar amount in a sentence
    prose = "  at the end of the day we met (briefly)\nIt cost $ 5 or so.\n"
    assert [prose[s:e] for s, e in protected_spans(prose)] == ["5"]


DIFF = """diff --git a/app/retry.py b/app/retry.py
index 3f2a1c9..8b7e0d4 100644
--- a/app/retry.py
+++ b/app/retry.py
@@ -12,7 +12,8 @@ def backoff(attempt: int) -> float:
     base = 0.5
-    return base * 2 ** attempt
+    delay = base * 2 ** attempt
+    return min(delay, MAX_DELAY) + random.uniform(0, base)

 def should_retry(status: int) -> bool:
\\ No newline at end of file"""


def test_a_unified_diff_passes_through(exact):
    # unfenced, a diff lost its markers and code to the model ("-39,7 +39,8", "click.option"--question"")
    review = (f"Here is the change I made to the retry logic; please review it carefully before we merge it into "
              f"the main branch, because the payment service depends on it:\n\n{DIFF}\n\nIt caps the delay "
              "and adds some jitter, so that the clients which failed together do not all retry at the same moment "
              "and overload the database again, which is what happened during the outage last week.\n")
    out = exact.compress(review, 0.33).text
    assert DIFF in out
    assert len(out) < len(review) - (len(review) - len(DIFF)) / 3  # the prose around it is still compressed


def test_a_table_and_configuration_pass_through(exact):
    # a Markdown table lost its header, its rule and most cells ("| lift and shift | high | short | low |"
    # became "lift shift"), a YAML file its colons and nesting
    table = ("| plan | monthly cost | migration time | risk |\n|---|---:|---:|---|\n"
             "| lift and shift | high | short | low |\n| replatform | medium | medium | medium |\n"
             "| rebuild | low | long | high |")
    yaml = "name: orders-api\nreplicas: 3\nresources:\n  limits:\n    memory: 512Mi\nenv:\n  - name: LOG_LEVEL"
    text = (f"The quarterly review compared the three plans that the finance team shortlisted for the migration, "
            f"and the table below summarises what each would cost and how long it would take.\n\n{table}\n\n"
            "The committee preferred the second plan, because it balanced the cost against the time that the team "
            f"could spend on the migration without delaying the other projects. Its deployment:\n\n{yaml}\n")
    out = exact.compress(text, 0.33).text
    assert table in out and yaml in out
    assert len(out) < len(text) - (len(text) - len(table) - len(yaml)) / 3  # the prose is still compressed


def test_logs_and_command_output_pass_through(exact):
    # a log line lost its keys ("exited, code=exited, status=1/FAILURE" became "exited exited 1/FAILURE"),
    # "df" output a mount point and a device, subtitles their arrows
    from tests.compressors.test_protected_properties import COLUMNS, LOGS

    srt = "1\n00:00:01,000 --> 00:00:04,200\nWelcome back to the channel, where we look at the scheduler."
    prose = ("We looked at the logs from the night of the outage and found that the scheduler had been restarting "
             "in a loop for about forty minutes before anybody noticed, which is why the queue grew so large. ")
    text = f"{prose}\n\n{LOGS}\n\n{prose}\n\n{COLUMNS}\n\n{prose}\n\n{srt}\n"
    out = exact.compress(text, 0.33).text
    assert LOGS in out and COLUMNS in out and "00:00:01,000 --> 00:00:04,200" in out
    assert out.count("the") < text.count("the") - 6  # the prose is still compressed


def test_http_messages_git_logs_and_version_pins_keep_their_parts(exact):
    # a request line lost its "?", a git log its commit lines, weekdays and e-mails' brackets, and
    # "urllib3<2" its "<"
    http = "GET /v2/session?redirect=true HTTP/1.1\nHost: api.example.com\n\nHTTP/1.1 302 Found"
    git = ("commit 4be01d9c77\nAuthor: Tom Ellis <tom@example.com>\nDate:   Mon Nov 25 09:47:30 2024 +0100\n\n"
           "    Lower the default timeout from 30 s to 10 s")
    pins = "requests>=2.31,<3 and urllib3<2"
    prose = ("The regression appeared between the two releases, and the history of the file shows only two commits "
             "that touched the retry logic in that period, which is why we looked at them first. ")
    text = f"{prose}\n\n{http}\n\n{prose}\n\n{git}\n\n{prose} We pin {pins} in the lock file.\n"
    out = exact.compress(text, 0.33).text
    assert http in out and git in out and pins.replace(" and ", " ") in out.replace(" and ", " ")
    assert out.count("the") < text.count("the") - 6  # the prose is still compressed


def test_references_mentions_and_formulas_keep_their_parts(exact):
    # "Section 4.2(b)" lost its "(b)", "@tom-ellis" became "tom ellis", "hits / (hits + misses)" became
    # "hits hits misses", "x^2 + y^2 > r^2" lost its operators, "(Borgeaud et al., 2022)" became "2022"
    keep = ("Section 4.2(b)", "@maria", "@tom-ellis", "+1 (415) 555-0100", "Mon-Fri", "hits / (hits + misses)",
            "x^2 + y^2 > r^2", "(Lewis et al., 2020; Borgeaud et al., 2022)", "Chen et al. (2021)", "§ 26")
    prose = ("As discussed in the call on Friday, the vendor agreed to extend the support window until the end of "
             "the quarter, provided that we sign the amendment described in {} of the master agreement. ")
    text = "".join(prose.format(item) for item in keep)
    out = exact.compress(text, 0.33).text
    for item in keep:
        assert item in out, item
    assert len(out) < 0.75 * len(text)  # the prose is still compressed


def test_markup_keeps_its_meaning(exact):
    # "## Installing" became "# Installing" (another level), "[guide](url)" lost its brackets, "<div ...>" became
    # 'div class"warning"', and "$L = \lambda \cdot W$" was dropped whole
    text = ("## Installing the agent on a new server\n\nThe agent runs on every server that the platform team "
            "manages, and it must be installed before the server joins the cluster. See the [installation guide]"
            "(https://docs.example.com/agent/install) for the details of each operating system.\n\n"
            "1. Download the package for your operating system from the internal mirror.\n"
            "2. Verify its checksum against the one that the release page lists.\n\n"
            '<div class="warning"><p>Do not install the agent on a server that is already part of another cluster, '
            "because the two agents will fight over the same ports.</p></div>\n\nThe expected load is "
            "$L = \\lambda \\cdot W$, where $\\lambda$ is the arrival rate and $W$ the mean time in the system.\n")
    out = exact.compress(text, 0.4).text
    for markup in ("## ", "\n1. ", "\n2. ", "[", "](https://docs.example.com/agent/install)",
                   '<div class="warning"><p>', "</p></div>", "$L = \\lambda \\cdot W$", "$\\lambda$", "$W$"):
        assert markup in out, markup
    assert not out.startswith("## Installing the agent on a new server\n")  # the heading's words are prose
    assert len(out) < 0.8 * len(text)


def test_a_transcript_keeps_its_speakers(exact):
    # at rate 0.4 the last two turns lost their speakers ("Agreed write send vendor", "Thursday")
    turns = [("Alice", "Thanks for joining, everyone. The main item today is the database migration, which slipped "
                       "by two weeks because the vendor delivered the new hardware late."),
             ("Bob", "Right, and the storage team still needs to run their acceptance tests before we can move any "
                     "production data onto it."),
             ("Alice", "How long will those tests take, and can we run them in parallel with the schema changes?"),
             ("[00:14:05] Carol", "They take about four days, but only if the schema changes do not touch the "
                                  "partitioned tables."),
             ("Alice", "Agreed. Carol, can you write that up and send it to the vendor by Friday?"),
             ("Dr. Chen", "Yes, I will send it on Thursday so that they have time to respond.")]
    text = "".join(f"{who}: {said}\n" for who, said in turns)
    out = exact.compress(text, 0.4).text
    lines = out.splitlines()
    assert len(lines) == len(turns)
    for line, (who, _) in zip(lines, turns, strict=True):
        assert line.startswith(f"{who}:"), line
    assert len(out) < 0.7 * len(text)


def test_numbers_keep_their_units_and_quotes_their_markers(exact):
    # "rose from 20 ms to 300 ms" became "rose from 20 300"; "> > Tom replied" lost its quotation markers
    text = ("After the upgrade, the median latency of the checkout service rose from 20 ms to 300 ms, and the memory "
            "of each worker grew from 512 MB to 3 GB within an hour. The database handled 1,200 queries per second "
            "at peak, while the disk of the primary filled at about 40 GB per day. The team rolled back after 45 "
            "minutes, when the error rate passed 2 percent.\n\n> Maria wrote: I think we should roll back now.\n"
            "> > Tom replied: Let us wait ten more minutes and see whether the cache warms up.\n")
    out = exact.compress(text, 0.4).text
    for kept in ("20 ms", "300 ms", "512 MB", "3 GB", "1,200 queries per second", "40 GB per day", "45 minutes",
                 "2 percent", "\n> ", "\n> > "):
        assert kept in out, kept
    assert len(out) < 0.75 * len(text)


def test_negations_check_boxes_and_citations_survive(exact):
    # at half the tokens "Do not restart the primary database" became "restart primary database" and "the team
    # did not apply the patch" "apply patch": the opposite of what was said
    text = ("Do not restart the primary database during the migration, and never run the cleanup job before the "
            "backup has finished. The replica is not ready for traffic yet, so the load balancer must not send any "
            "requests to it. No one should change the firewall rules without approval from the security team, and "
            "the old servers cannot be shut down until the end of the month. According to the audit [3], the team "
            "didn't apply the patch, while [12] says it was applied.\n\n- [x] back up the primary\n"
            "- [ ] drain the replica\n- [ ] update the firewall rules\n")
    negations = re.compile(r"(?i)\b(?:not|no|never|without|cannot|didn't)\b")
    for rate in (0.5, 0.33):
        out = exact.compress(text, rate).text
        assert negations.findall(out) == negations.findall(text)
        assert "[3]" in out and "[12]" in out
        assert out.count("\n- [x]") == 1 and out.count("\n- [ ]") == 2
        assert len(out) < 0.75 * len(text)


def test_an_english_model_keeps_chinese_and_thai_whole(tmp_path, exact):
    # thrifty's own manifests say English: its tokenizer makes each CJK character a word, and dropping
    # some of them would break the words they spell, so text in scripts without spaces passes through
    from tests.compressors.weights_support import make_weights
    from thrifty.compressors.lingua import Compressor
    from thrifty.compressors.model import default_model_dir, load_model

    assert load_model(default_model_dir()).languages == ("en",)
    english = Compressor.load("exact", str(make_weights(tmp_path / "en", languages=["en"])))
    zh = "北京是中华人民共和国的首都，也是全国的政治中心和文化中心。长城全长两万多公里。"
    th = "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย"
    text = PASSAGE + zh * 6 + "\n\n" + PASSAGE + th + " " + PASSAGE
    out = english.compress(text, 0.4)
    assert zh * 6 in out.text and th in out.text  # byte for byte
    assert len(out.text) < len(text) and out.protected_chars >= len(zh * 6) + len(th)
    assert english.compress(zh * 6, 0.4).text == zh * 6
    assert zh in english.compress(PASSAGE + "broken \udcff byte " + zh + PASSAGE, 0.4).text
    # the same weights without the manifest's languages decide character by character, as llmlingua does
    assert zh * 6 not in exact.compress(text, 0.4).text
    # and so do the keep decisions, which protect nothing unless asked
    assert "北" in english.keep_decisions(zh, 0.5).words
    assert zh * 6 not in Compressor.load(
        "exact", str(make_weights(tmp_path / "zh", languages=["en", "zh"]))).compress(text, 0.4).text


GERMAN = ("Die Stadtverwaltung hat am Montag beschlossen, dass die neue Straßenbahnlinie zwischen dem Hauptbahnhof "
          "und dem Flughafen erst im Frühjahr 2027 eröffnet wird, weil die Bauarbeiten an der Brücke über den Fluss "
          "länger dauern als geplant. Der Bürgermeister erklärte, dass die Kosten dadurch um etwa zwölf Prozent "
          "steigen werden.")
SPANISH = ("El ayuntamiento decidió el lunes que la nueva línea de tranvía entre la estación central y el aeropuerto "
           "no se abrirá hasta la primavera de 2027, porque las obras del puente sobre el río durarán más de lo "
           "previsto. El alcalde explicó que los costes aumentarán aproximadamente un doce por ciento.")
POLISH = ("Rada miasta postanowiła w poniedziałek, że nowa linia tramwajowa między dworcem centralnym a lotniskiem "
          "zostanie otwarta dopiero wiosną 2027 roku, ponieważ prace na moście nad rzeką potrwają dłużej niż "
          "planowano. Burmistrz wyjaśnił, że koszty wzrosną o około dwanaście procent.")
RUSSIAN = ("Городская администрация в понедельник решила, что новая трамвайная линия между центральным вокзалом и "
           "аэропортом откроется только весной 2027 года, потому что работы на мосту через реку продлятся дольше, "
           "чем планировалось. Мэр пояснил, что расходы вырастут примерно на двенадцать процентов.")


def test_an_english_model_keeps_paragraphs_in_other_languages_whole(tmp_path, exact):
    # an English model ranks German or Russian words without knowing them, so such paragraphs pass through
    from tests.compressors.weights_support import make_weights
    from thrifty.compressors.lingua import Compressor
    from thrifty.compressors.protect import protected_spans

    english = Compressor.load("exact", str(make_weights(tmp_path / "en", languages=["en"])))
    text = "\n\n".join([PASSAGE, GERMAN, RUSSIAN, PASSAGE + "Ein Satz auf Deutsch, mitten im Englischen.", SPANISH])
    out = english.compress(text, 0.4)
    assert GERMAN in out.text and RUSSIAN in out.text and SPANISH in out.text  # byte for byte
    assert out.protected_chars >= len(GERMAN) + len(RUSSIAN) + len(SPANISH)
    # of which kept for their language alone: all but what is kept as such anyway (each paragraph's year,
    # Spanish's "no")
    assert out.foreign_chars == sum(len(p) - sum(e - s for s, e in protected_spans(p))
                                    for p in (GERMAN, RUSSIAN, SPANISH)) < len(GERMAN) + len(RUSSIAN) + len(SPANISH)
    assert out.tokens_after < out.tokens_before and PASSAGE.strip() not in out.text  # the English is compressed,
    assert "mitten im Englischen." not in out.text  # with the German sentence inside an English paragraph
    alone = english.compress(GERMAN, 0.4)
    assert alone.text == GERMAN and alone.skipped == "language"
    assert alone.protected_chars == len(GERMAN) and alone.foreign_chars == len(GERMAN) - len("2027")
    # a German paragraph beside a code block: nothing may be dropped, but not all of it is German
    mixed = english.compress(f"{GERMAN}\n\n```\nprint('hello world, how are you today')\n```", 0.4)
    assert mixed.skipped == "protected" and mixed.foreign_chars == alone.foreign_chars
    # a code block the language check also takes is counted as code, not as a language
    code = ('```python\nChatOpenAI(base_url="http://127.0.0.1:8787/v1", api_key="unused", model="default").invoke("Hi")'
            '\nChatAnthropic(base_url="http://127.0.0.1:8787", api_key="unused", model="default").invoke("Hi")\n```')
    assert english.foreign_paragraphs(code) == [(0, len(code))]
    assert english.compress(f"{PASSAGE}\n\n{code}", 0.4).foreign_chars == 0
    # nothing of the kind without the manifest's languages (as llmlingua), without protection, or in the
    # keep decisions, which protect nothing unless asked
    assert GERMAN not in exact.compress(text, 0.4).text
    assert GERMAN not in english.compress(text, 0.4, protect=False).text
    assert "stadtverwaltung" in english.keep_decisions(GERMAN, 0.5).words
    # a model that names German compresses it (Russian it still cannot read); one that names a language the
    # stop words cannot tell (Russian) leaves the decision to the model everywhere
    both = Compressor.load("exact", str(make_weights(tmp_path / "de", languages=["en", "de"]))).compress(text, 0.4)
    assert GERMAN not in both.text and RUSSIAN in both.text and SPANISH in both.text
    russian = Compressor.load("exact", str(make_weights(tmp_path / "ru", languages=["en", "ru"]))).compress(text, 0.4)
    assert GERMAN not in russian.text and RUSSIAN not in russian.text


def test_no_english_passage_of_the_evaluation_set_is_taken_for_another_language(tmp_path):
    import json

    from tests.compressors.weights_support import make_weights
    from thrifty.compressors.lingua import Compressor

    english = Compressor.load("exact", str(make_weights(tmp_path / "en", languages=["en"])))
    rows = Path(__file__).resolve().parents[2] / "bench" / "data" / "compression_qa.jsonl"
    passages = [json.loads(line)["passage"] for line in rows.read_text(encoding="utf-8").splitlines() if line]
    assert len(passages) == 120
    for text in passages:
        assert english.foreign_paragraphs(text) == []
    for text in (GERMAN, RUSSIAN, SPANISH, POLISH):
        assert english.foreign_paragraphs(text) == [(0, len(text))]
    assert english.foreign_paragraphs(POLISH[:120]) == [(0, 120)]  # 16 words, a quarter with Polish letters
    assert english.foreign_paragraphs(POLISH[:60]) == []  # too short to tell
    assert english.foreign_paragraphs(f"{PASSAGE}\n\n{GERMAN}") == [(len(PASSAGE) + 2, len(PASSAGE) + 2 + len(GERMAN))]


#: One sentence of 16-19 words in each language with a stop-word list of its own beyond the Romance and
#: Germanic six, and in three without one, too short for the rule that needs 20 words and no English.
SHORT = {
    "pl": "Nowa wersja systemu jest szybsza, ale wymaga więcej pamięci, więc nie można jej uruchomić na starszych "
          "serwerach.",
    "cs": "Nová verze systému je rychlejší, ale potřebuje více paměti, takže ji nelze spustit na starších serverech.",
    "sv": "Den nya versionen av systemet är snabbare, men den kräver mer minne och kan inte köras på äldre servrar.",
    "da": "Den nye version af systemet er hurtigere, men den kræver mere hukommelse og kan ikke køre på ældre "
          "servere.",
    "nb": "Den nye versjonen av systemet er raskere, men den krever mer minne og kan ikke kjøres på eldre servere.",
    "fi": "Järjestelmän uusi versio on nopeampi, mutta se vaatii enemmän muistia, joten sitä ei voi ajaa vanhoilla "
          "palvelimilla.",
    "tr": "Sistemin yeni sürümü daha hızlı, ama daha çok bellek istiyor ve bu yüzden eski sunucularda çalışmıyor.",
    "id": "Versi baru dari sistem ini lebih cepat, tetapi membutuhkan lebih banyak memori sehingga tidak bisa "
          "berjalan di server lama.",
    "ro": "Noua versiune este mai rapidă, dar are nevoie de mai multă memorie și nu poate rula pe servere vechi.",
    "hu": "A rendszer új verziója gyorsabb, de több memóriát igényel, ezért nem lehet régi szervereken futtatni, "
          "mert kevés a hely.",
    "hr": "Nova verzija sustava je brža, ali treba više memorije, pa se ne može pokrenuti na starijim poslužiteljima.",
    "sl": "Nova različica sistema je hitrejša, vendar potrebuje več pomnilnika, zato je ni mogoče zagnati na "
          "starejših strežnikih.",
    "lt": "Nauja sistemos versija yra greitesnė, bet jai reikia daugiau atminties, todėl jos negalima paleisti "
          "senuose serveriuose.",
    "lv": "Jaunā sistēmas versija ir ātrāka, bet tai vajag vairāk atmiņas, tāpēc to nevar palaist uz vecākiem "
          "serveriem.",
    "et": "Süsteemi uus versioon on kiirem, kuid see vajab rohkem mälu ja seda ei saa vanematel serveritel "
          "käivitada.",
    "tl": "Mas mabilis ang bagong bersyon ng sistema, pero kailangan nito ng mas maraming memorya para tumakbo.",
    "sw": "Toleo jipya la mfumo ni la haraka zaidi, lakini linahitaji kumbukumbu zaidi na haliwezi kuendeshwa "
          "kwenye seva za zamani.",
    "eu": "Sistemaren bertsio berria azkarragoa da, baina memoria gehiago behar du eta ezin da zerbitzari "
          "zaharretan exekutatu.",
    "ms": "Versi baharu sistem ini lebih pantas, tetapi ia memerlukan lebih banyak memori dan tidak boleh "
          "dijalankan pada pelayan lama.",
    "af": "Die nuwe weergawe is vinniger, maar dit het meer geheue nodig en kan nie op ou bedieners loop nie.",
    "cy": "Mae'r fersiwn newydd yn gyflymach, ond mae angen mwy o gof arni ac ni all redeg ar weinyddion hŷn.",
    "mg": "Haingana kokoa ny dikan-teny vaovao, saingy mila fitadidiana bebe kokoa izy ary tsy mandeha amin'ny "
          "mpizara taloha.",
    "zu": "Inguqulo entsha yesistimu isheshe kakhulu, kodwa idinga inkumbulo eningi, ngakho ayikwazi ukusebenza "
          "kumaseva amadala uma kungekho isikhala.",
    "xh": "Inguqulelo entsha yenkqubo ikhawuleza kakhulu, kodwa ifuna inkumbulo eninzi, ngoko ayikwazi ukusebenza "
          "kwiiseva ezindala xa kungekho ndawo.",
    "so": "Nooca cusub waa ka dhakhso badan yahay, laakiin wuxuu u baahan yahay xusuus badan oo kuma shaqeeyo "
          "adeegayaasha hore.",
    # no list of their own: for an English model, told by their letters beyond a-z
    "vi": "Phiên bản mới nhanh hơn, nhưng nó cần nhiều bộ nhớ và không chạy được trên máy chủ cũ.",
    "az": "Sistemin yeni versiyası daha sürətlidir, amma daha çox yaddaş tələb edir və köhnə serverlərdə işləyə "
          "bilmir.",
    "is": "Nýja útgáfan af kerfinu er hraðari, en hún þarf meira minni og getur ekki keyrt á eldri netþjónum.",
}


def test_short_paragraphs_in_other_languages_are_told(tmp_path):
    # the stop words are looked up by their whole pieces: most of these are split by an English vocabulary
    from tests.compressors.weights_support import make_weights
    from thrifty.compressors.lingua import Compressor

    english = Compressor.load("exact", str(make_weights(tmp_path / "en", languages=["en"])))
    for language, text in SHORT.items():
        assert 16 <= len(text.split()) < 20, language
        assert english.foreign_paragraphs(text) == [(0, len(text))], language
        out = english.compress(f"{PASSAGE}\n\n{text}", 0.4)
        assert text in out.text and out.foreign_chars == len(text), language
    same = "The new version of the system is faster, but it needs more memory and cannot run on older servers."
    assert english.foreign_paragraphs(same) == []
    for loanwords in (  # English thick with accented loanwords and names is still English
            "The orchestra played works by Dvořák, Janáček, Martinů and Smetana in Prague on a cold Sunday evening.",
            "Add the crème fraîche, jalapeño and piña colada mix to the sauté pan, then serve with pâté and a café "
            "au lait.",
            "Müller scored twice, Gündoğan added a third, and Sané and Öztürk both hit the post before half time.",
            "Thanks to José, François, Søren, Zoë, Björn and Chloé for their reviews of the naïve résumé parser."):
        assert english.foreign_paragraphs(loanwords) == [], loanwords
    # the letters tell only for a model of languages written in a-z: to one that reads German, German with
    # many umlauts is its own
    umlauts = ("Über die Änderungen müssen Bürger früh informiert werden, während ältere Gebäude später "
               "geprüft und gründlich überarbeitet würden.")
    assert english.foreign_paragraphs(umlauts) == [(0, len(umlauts))]
    german = Compressor.load("exact", str(make_weights(tmp_path / "de", languages=["en", "de"])))
    assert german.foreign_paragraphs(umlauts) == []


#: Short sentences that neither a stop-word list (Dutch's shares "is" with English, which the margin counts
#: against it) nor letters beyond a-z tell, but an English vocabulary: it holds none of their longer words whole.
UNKNOWN = {
    "nl": "De stroom is vercijferd en kan niet worden ontcijferd omdat er geen geschikte sleutel aangeleverd is.",
    "ha": "Sabuwar manhajar tana da sauri sosai, amma tana bukatar karin wurin adanawa kafin ta fara aiki.",
    "sn": "Shanduro itsva yechirongwa ichi inokurumidza, asi inoda ndangariro yakawanda, saka haigone kushanda "
          "pamaseva ekare.",
    "rw": "Verisiyo nshya ya porogaramu irihuta cyane, ariko ikeneye ububiko bwinshi, bityo ntishobora gukora kuri "
          "mudasobwa zishaje.",
}


def test_paragraphs_of_words_the_vocabulary_does_not_hold_are_told(tmp_path):
    from tests.compressors.weights_support import make_weights
    from thrifty.compressors import _language
    from thrifty.compressors.lingua import Compressor

    english = Compressor.load("exact", str(make_weights(tmp_path / "en", languages=["en"])))
    for language, text in UNKNOWN.items():
        assert 12 <= len(text.split()) < _language.SPARSE_WORDS, language
        ids, offs, _ = english._tokenize(text)
        _, _, counts, starts, ends = english._word_bounds(ids, offs)
        longer = ends - starts >= _language.UNKNOWN_LETTERS
        assert (counts[longer] == 1).mean() < _language.KNOWN_SHARE, language
        assert english.foreign_paragraphs(text) == [(0, len(text))], language
    for english_text in (  # rare words among ordinary English ones, which the vocabulary holds, stay English
            "Acetaminophen, ibuprofen, naproxen, diclofenac, celecoxib and indomethacin reduce inflammation and "
            "pain in most patients.",
            "Polytetrafluoroethylene, polyvinylidene fluoride and perfluoroalkoxy alkanes resist hydrofluoric acid "
            "at elevated temperatures.",
            "Tshabalala, Mokoena, Nkosinathi, Oyelaran, Adebayo, Chukwuemeka and Olamide joined the Johannesburg "
            "engineering team."):
        assert english.foreign_paragraphs(english_text) == [], english_text
    # to a model that names Dutch, the Dutch sentence is its own (its stop words cover a third of it)
    dutch = Compressor.load("exact", str(make_weights(tmp_path / "nl", languages=["en", "nl"])))
    assert dutch.foreign_paragraphs(UNKNOWN["nl"]) == []
    assert dutch.foreign_paragraphs(UNKNOWN["sn"]) == [(0, len(UNKNOWN["sn"]))]


def test_malformed_unicode_survives(exact):
    text = ("Some text with a broken byte \udcff here and more words to compress away. " * 4)
    out = exact.compress(text, 0.5).text
    assert "\udcff" in out or "broken" not in out
    out.encode("utf-8", "surrogateescape")  # writable back as the original bytes


def test_progress_reports_every_chunk(exact):
    seen = []
    exact.compress(PASSAGE * 12, 0.5, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 1000 and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_keep_decisions_match_the_text(exact):
    d = exact.keep_decisions(PASSAGE, 0.5)
    assert len(d.words) == len(d.keep) == len(d.probs) > 50
    assert 0.3 < d.keep.mean() < 0.7
    for word, s, e in zip(d.words[:30], d.starts[:30], d.ends[:30], strict=True):
        assert PASSAGE[s:e].lower() == word


def test_fast_agrees_with_exact(exact, fast):
    text = PASSAGE * 4
    a, b = exact.keep_decisions(text, 0.5), fast.keep_decisions(text, 0.5)
    assert a.words == b.words
    assert np.mean(a.keep == b.keep) >= 0.9
    assert fast.compress(text, 0.5).mode == "fast"


def test_each_mode_runs_the_shipped_model_it_names():
    import torch

    from thrifty.compressors.lingua import Compressor
    from thrifty.compressors.model import default_model_dir, fast_precision, fast_variant_dir

    exact, fast, turbo = (Compressor.load(mode) for mode in ("exact", "fast", "turbo"))
    assert exact._m.path == fast._m.path == str(default_model_dir())
    assert turbo._m.path == str(fast_variant_dir())
    assert fast._m.model.config.num_hidden_layers == 6 > turbo._m.model.config.num_hidden_layers
    assert next(exact._m.model.parameters()).dtype == torch.float32
    assert fast.precision == fast_precision() and turbo.precision == fast_precision(fast_variant_dir())
    with pytest.raises(InvalidRequestError, match="fast, exact or turbo"):
        Compressor.load("quick")


def test_public_function_and_registry(weights):
    result = thrifty.compress(PASSAGE, rate=0.5, mode="exact", model=str(weights))
    assert isinstance(result, thrifty.CompressResult) and result.tokens_after < result.tokens_before
    from thrifty.compressors import compressor_names, load_compressor, register_compressor

    class Upper:
        name, version, mode = "upper", "1", "fast"

        def compress(self, text, rate=0.5, **kw):
            return thrifty.CompressResult(text.upper(), 1, 1, rate, self.name, self.version, self.mode, 0.0)

    register_compressor("upper", lambda mode, model: Upper())
    assert "upper" in compressor_names() and "llmlingua2" in compressor_names()
    assert load_compressor("upper").compress("abc").text == "ABC"
    with pytest.raises(InvalidRequestError, match="'upper' cannot be pinned to a precision"):
        load_compressor("upper", precision="int8")  # its loader takes (mode, model) only
    with pytest.raises(InvalidRequestError, match="unknown compressor"):
        load_compressor("nope")


def test_a_token_budget_takes_the_largest_rate_that_fits(exact, weights):
    text = PASSAGE * 6 + "Ask Priya Raman (ext. 4417) about ticket OPS-2291 before Friday."
    full = exact.compress(text, 1.0).tokens_before
    budget = full // 3
    calls: list[int] = []
    fit = thrifty.compress(text, target_tokens=budget, mode="exact", model=str(weights),
                           progress=lambda done, total: calls.append(done))
    assert fit.target_tokens == budget and fit.skipped is None and not fit.over_target
    assert fit.tokens_after <= budget and 0 < fit.rate < 1 and round(fit.rate, 2) == fit.rate
    assert len(calls) == 1  # the model ran once: the rates tried after the first reuse its scores
    # the rate it reports is the one it compressed at, and a hundredth more would be over
    assert fit.text == exact.compress(text, fit.rate).text
    assert exact.compress(text, round(fit.rate + 0.01, 2)).tokens_after > budget
    assert "OPS-2291" in fit.text and "4417" in fit.text  # protected spans survive any budget
    # a text within its budget comes back as it was
    same = thrifty.compress(text, target_tokens=full, mode="exact", model=str(weights))
    assert same.text == text and same.skipped == "fits" and same.rate == 1.0 and same.tokens_after == full
    # a rate given too is the most it keeps
    capped = thrifty.compress(text, rate=0.2, target_tokens=full, mode="exact", model=str(weights))
    assert capped.rate == 0.2 and capped.text == exact.compress(text, 0.2).text
    # protected spans alone over the budget: the smallest compression, and it says so
    ids = " ".join(f"INC-{i:05d}" for i in range(200))
    over = thrifty.compress(PASSAGE + ids, target_tokens=50, mode="exact", model=str(weights))
    assert over.over_target and over.tokens_after > 50 and ids in over.text
    assert over.rate <= 0.03 and over.tokens_after < exact.compress(PASSAGE + ids, 0.1).tokens_after
    for bad in (0, -5, 2.5, True, "100"):
        with pytest.raises(InvalidRequestError, match="target_tokens must be a whole number"):
            thrifty.compress(text, target_tokens=bad, mode="exact", model=str(weights))
    with pytest.raises(InvalidRequestError, match="rate must be"):
        thrifty.compress(text, rate=0, target_tokens=100, mode="exact", model=str(weights))


def test_missing_or_tampered_weights_are_clear_errors(tmp_path, weights):
    from thrifty.compressors.lingua import Compressor

    with pytest.raises(LocalModelError, match="not a directory"):
        Compressor.load("exact", str(tmp_path / "absent"))
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(weights, bad)
    (bad / "delta.safetensors").write_bytes((bad / "delta.safetensors").read_bytes()[:-4] + b"0000")
    with pytest.raises(LocalModelError, match="SHA-256"):
        Compressor.load("exact", str(bad))
    with pytest.raises(InvalidRequestError, match="mode"):
        Compressor.load("warp", str(weights))


def test_a_transformers_directory_is_a_model(tmp_path, weights, exact):
    from tests.compressors.weights_support import export_transformers
    from thrifty.compressors.lingua import Compressor

    folder = export_transformers(weights, tmp_path / "plain")
    plain = Compressor.load("exact", str(folder))
    assert plain.compress(PASSAGE, 0.5, protect=False).text == exact.compress(PASSAGE, 0.5, protect=False).text


@pytest.mark.slow
def test_a_100k_token_document(fast):
    words = re.findall(r"\w+|[^\w\s]", PASSAGE)
    rng = np.random.default_rng(0)
    text = " ".join(rng.choice(words, size=80_000).tolist())
    result = fast.compress(text, 0.5)
    assert result.tokens_before > 80_000 and result.tokens_after < 0.7 * result.tokens_before


def test_sentence_weight_lifts_the_words_of_informative_sentences(exact):
    from thrifty.compressors.lingua import _sentence_scores

    p = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1], dtype=np.float32)
    sentence = np.array([4, 4, 4, 5, 5, 5])  # two sentences, means 0.667 and 0.3
    scores = _sentence_scores(p, sentence, 1.0)
    # the weak word of the strong sentence now outranks the best word of the weak one
    assert scores[2] > scores[3] and p[2] < p[3]
    assert np.allclose(_sentence_scores(p, sentence, 0.0), p)
    text = PASSAGE * 2
    plain, weighted = exact.keep_decisions(text, 0.5, sentence_weight=0), exact.keep_decisions(text, 0.5)
    assert plain.words == weighted.words and np.array_equal(plain.probs, weighted.probs)
    assert abs(int(plain.keep.sum()) - int(weighted.keep.sum())) <= 0.05 * len(plain.keep)
    assert exact.compress(text, 0.5, sentence_weight=0).text != exact.compress(text, 0.5, sentence_weight=3).text
    for bad in (-1, 101, "high", True):
        with pytest.raises(InvalidRequestError, match="sentence_weight"):
            exact.compress(text, 0.5, sentence_weight=bad)


def test_relation_weight_lifts_the_relation_words(exact):
    from thrifty.compressors.lingua import RELATION_WEIGHT, RELATION_WORDS

    text = PASSAGE * 2 + "By the river, the scheduler was rewritten by Aisha Okafor after the outage. "
    plain = exact.keep_decisions(text, 0.5, relation_weight=0)
    lifted = exact.keep_decisions(text, 0.5)
    assert RELATION_WEIGHT > 0 and plain.words == lifted.words and np.array_equal(plain.probs, lifted.probs)
    relation = np.array([w in RELATION_WORDS for w in lifted.words])  # the tokenizer lower-cases "By"
    assert relation.sum() >= 20 and {"by", "to", "for", "than", "after"} <= set(np.array(lifted.words)[relation])
    # they are kept more often, other words pay for it, and the rate holds
    assert lifted.keep[relation].sum() > plain.keep[relation].sum()
    assert lifted.keep[~relation].sum() < plain.keep[~relation].sum()
    assert abs(int(plain.keep.sum()) - int(lifted.keep.sum())) <= 0.05 * len(plain.keep)
    # a weight far above any probability keeps every relation word
    assert exact.keep_decisions(text, 0.5, relation_weight=50).keep[relation].all()
    # a part of a longer word is not a relation word ("onto" is; "by" in "bystander" is not)
    words = exact.keep_decisions("bystanders " * 40 + "onto " * 40, 0.5, relation_weight=50)
    assert words.keep[np.array([w == "onto" for w in words.words])].all()
    assert not words.keep[np.array([w.startswith("by") for w in words.words])].all()
    # the result cache tells the weights apart
    assert exact.compress(text, 0.5, relation_weight=0).text != exact.compress(text, 0.5).text
    for bad in (-1, 101, "high", True):
        with pytest.raises(InvalidRequestError, match="relation_weight"):
            exact.compress(text, 0.5, relation_weight=bad)


def test_a_question_keeps_the_sentences_that_answer_it(exact, weights):
    fact = "Last spring the Larkspur team moved its build servers to Nairobi."
    text = PASSAGE + fact + " " + PASSAGE
    question = "Where did the Larkspur team move its build servers?"
    blind, asked = exact.keep_decisions(text, 0.33), exact.keep_decisions(text, 0.33, question=question)
    assert blind.words == asked.words and np.array_equal(blind.probs, asked.probs)
    in_fact = (asked.starts >= text.index(fact)) & (asked.ends <= text.index(fact) + len(fact))
    assert asked.keep[in_fact].all() and not blind.keep[in_fact].all()
    assert abs(int(asked.keep.sum()) - int(blind.keep.sum())) <= 0.05 * len(asked.keep)  # the same budget
    assert fact in exact.compress(text, 0.33, question=question).text
    # a question with no term in the text, or none at all, changes nothing
    assert exact.compress(text, 0.33, question="What is it?").text == exact.compress(text, 0.33).text
    assert exact.compress(text, 0.33, question="  ").text == exact.compress(text, 0.33).text
    with pytest.raises(InvalidRequestError, match="question"):
        exact.compress(text, 0.33, question=["where"])
    assert fact in thrifty.compress(text, 0.33, mode="exact", model=str(weights), question=question).text
