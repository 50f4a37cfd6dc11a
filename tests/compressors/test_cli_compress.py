"""``thrifty compress FILE``."""

from __future__ import annotations

import re

from click.testing import CliRunner

from tests.compressors.conftest import PASSAGE
from thrifty.cli import main


def run(*args: str, input: bytes | None = None):
    return CliRunner().invoke(main, ["compress", *args], input=input, catch_exceptions=False)


def test_compresses_a_file_to_a_file(tmp_path, weights):
    src = tmp_path / "in.txt"
    src.write_text(PASSAGE * 3, encoding="utf-8")
    out = tmp_path / "out.txt"
    result = run(str(src), "--rate", "0.4", "--mode", "exact", "--model", str(weights), "-o", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert 0 < len(text) < 0.8 * len(PASSAGE * 3)
    assert "in.txt:" in result.stderr and "tokens" in result.stderr


def test_malformed_utf8_bytes_come_back_unchanged(tmp_path, weights):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"Order ABC-12\xff\xfe3 shipped on 2024-01-02. " + PASSAGE.encode() * 2)
    result = run(str(src), "--model", str(weights), "-q")
    assert result.exit_code == 0, result.output
    assert b"ABC-12\xff\xfe3" in result.stdout_bytes and b"2024-01-02" in result.stdout_bytes


def test_stdin_and_empty_input(weights):
    result = run("-", "--model", str(weights), "-q", input=b"   \n")
    assert result.exit_code == 0 and result.stdout_bytes == b"   \n"
    assert "unchanged: no text" in run("-", "--model", str(weights), input=b"   \n").stderr


def test_the_summary_says_what_was_protected(tmp_path):
    # a German paragraph beside an English one, with a model that names English: the German passes through
    from tests.compressors.test_compressor import GERMAN
    from tests.compressors.weights_support import make_weights

    english = make_weights(tmp_path / "en", languages=["en"])
    result = run("-", "--model", str(english), "--mode", "exact", input=f"{PASSAGE}\n\n{GERMAN}".encode())
    assert result.exit_code == 0 and GERMAN.encode() in result.stdout_bytes
    assert f"{len(GERMAN):,} characters protected, {len(GERMAN) - len('2027'):,} of them in another language" in result.stderr
    assert "unchanged" not in result.stderr
    assert "exact in float32" in result.stderr  # the mode, and the precision its model ran in
    pinned = run("-", "--model", str(english), "--precision", "int8", input=PASSAGE.encode())
    assert pinned.exit_code == 0 and "fast in int8" in pinned.stderr
    alone = run("-", "--model", str(english), "--mode", "exact", input=GERMAN.encode())
    assert alone.stdout_bytes == GERMAN.encode() and "unchanged: written in a language the model was not trained on" in alone.stderr


def test_errors_name_the_file(tmp_path, weights):
    missing = run(str(tmp_path / "nope.txt"), "--model", str(weights))
    assert missing.exit_code != 0 and "nope.txt" in missing.output
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    result = run(str(binary), "--model", str(weights))
    assert result.exit_code == 1 and "image.png" in result.output and "binary" in result.output
    no_model = run(str(binary.with_name("x.txt")), "--model", str(tmp_path))
    assert no_model.exit_code != 0
    (tmp_path / "t.txt").write_text("hello")
    bad = run(str(tmp_path / "t.txt"), "--model", str(tmp_path))
    assert bad.exit_code == 1 and "t.txt" in bad.output and "manifest" in bad.output
    assert run(str(tmp_path / "t.txt"), "--rate", "0").exit_code == 2
    assert run(str(tmp_path / "t.txt"), "--protect", "(").exit_code == 2


def test_progress_bar_on_large_input(tmp_path, weights):
    src = tmp_path / "big.txt"
    src.write_text(PASSAGE * 60, encoding="utf-8")
    result = run(str(src), "--model", str(weights), "-o", str(tmp_path / "o.txt"))
    assert result.exit_code == 0, result.output
    assert "compressing" in result.stderr


def test_sentence_weight_option(tmp_path, weights):
    from thrifty.compressors.lingua import Compressor

    src = tmp_path / "in.txt"
    src.write_text(PASSAGE * 3, encoding="utf-8")
    result = run(str(src), "--mode", "exact", "--model", str(weights), "--sentence-weight", "0", "-q")
    assert result.exit_code == 0
    ref = Compressor.load("exact", str(weights)).compress(PASSAGE * 3, 0.5, sentence_weight=0).text
    assert result.stdout == ref
    bad = run(str(src), "--model", str(weights), "--sentence-weight", "-2")
    assert bad.exit_code != 0 and "sentence-weight" in bad.output


def test_question_option(tmp_path, weights):
    from thrifty.compressors.lingua import Compressor

    fact = "Last spring the Larkspur team moved its build servers to Nairobi."
    text = PASSAGE + fact + " " + PASSAGE * 2
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    question = "Where did the Larkspur team move its build servers?"
    result = run(str(src), "--mode", "exact", "--model", str(weights), "--rate", "0.33", "--question", question, "-q")
    assert result.exit_code == 0
    assert result.stdout == Compressor.load("exact", str(weights)).compress(text, 0.33, question=question).text
    assert fact in result.stdout


def test_relation_weight_option(tmp_path, weights):
    from thrifty.compressors.lingua import Compressor

    src = tmp_path / "in.txt"
    src.write_text(PASSAGE * 3, encoding="utf-8")
    result = run(str(src), "--mode", "exact", "--model", str(weights), "--relation-weight", "0", "-q")
    assert result.exit_code == 0
    ref = Compressor.load("exact", str(weights))
    assert result.stdout == ref.compress(PASSAGE * 3, 0.5, relation_weight=0).text
    assert result.stdout != ref.compress(PASSAGE * 3, 0.5).text
    bad = run(str(src), "--model", str(weights), "--relation-weight", "-2")
    assert bad.exit_code != 0 and "relation-weight" in bad.output


def test_target_tokens_option(tmp_path, weights):
    from thrifty.compressors.lingua import Compressor

    src = tmp_path / "notes.txt"
    src.write_text(PASSAGE * 4, encoding="utf-8")
    full = Compressor.load("exact", str(weights)).compress(PASSAGE * 4, 1.0).tokens_before
    result = run(str(src), "--target-tokens", str(full // 2), "--mode", "exact", "--model", str(weights))
    assert result.exit_code == 0, result.output
    rate = float(re.search(r"rate (0\.\d+)", result.stderr).group(1))
    assert result.stdout == Compressor.load("exact", str(weights)).compress(PASSAGE * 4, rate).text
    assert int(re.search(r"-> (\d+) tokens", result.stderr).group(1)) <= full // 2
    fits = run(str(src), "--target-tokens", str(full), "--model", str(weights))
    assert fits.stdout == PASSAGE * 4 and "unchanged: within the budget already" in fits.stderr
    src.write_text(PASSAGE * 4 + "Tickets OPS-2291, OPS-2292 and OPS-2293 stay open.", encoding="utf-8")
    over = run(str(src), "--target-tokens", "5", "--model", str(weights))
    assert over.exit_code == 0 and re.search(r"rate 0\.0\d, over the budget of 5: what is protected", over.stderr)
    assert len(over.stdout) < 0.2 * len(PASSAGE * 4)
    # counted with another model's tokenizer: gpt-4's cl100k_base
    full4 = Compressor.load("exact", str(weights)).compress(PASSAGE * 4, 1.0, target="gpt-4").tokens_before
    other = run(str(src), "--target-tokens", str(full4 // 2), "--target", "gpt-4", "--model", str(weights))
    assert int(re.search(r"-> (\d+) tokens", other.stderr).group(1)) <= full4 // 2
    bad = run(str(src), "--target-tokens", "0", "--model", str(weights))
    assert bad.exit_code == 2 and "--target-tokens" in bad.output


def test_show_dropped_marks_what_the_compression_takes_out(tmp_path, weights):
    src = tmp_path / "notes.txt"
    text = PASSAGE * 2 + "Ticket OPS-2291 is not closed."
    src.write_text(text, encoding="utf-8")
    plain = run(str(src), "--rate", "0.4", "--mode", "exact", "--model", str(weights), "-q").stdout
    shown = run(str(src), "--rate", "0.4", "--mode", "exact", "--model", str(weights), "-q", "--show-dropped").stdout
    marked = re.findall(r"\[-(.*?)-\]", shown, flags=re.S)
    assert marked and re.sub(r"\[-|-\]", "", shown) == text  # the original, only marked
    assert not any("OPS-2291" in m or "not" in m.split() for m in marked)  # protected spans are never marked

    def words(s: str) -> list[str]:
        return re.findall(r"\w+|[^\w\s]", s)

    assert words(re.sub(r"\[-.*?-\]", " ", shown, flags=re.S)) == words(plain)  # what is left is the output
    # with a budget, the rate it chose; a text left as it was has nothing marked
    fitted = run(str(src), "--target-tokens", "60", "--mode", "exact", "--model", str(weights), "-q",
                 "--show-dropped").stdout
    assert "[-" in fitted and re.sub(r"\[-|-\]", "", fitted) == text
    assert run(str(src), "--rate", "1", "--model", str(weights), "-q", "--show-dropped").stdout == text
