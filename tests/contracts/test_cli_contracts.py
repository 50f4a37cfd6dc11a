"""``thrifty contracts check|render`` through click's runner."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from thrifty.cli import main
from thrifty.contracts import load_contract, render
from thrifty.ledger.tokens import count_text

EXAMPLES = Path(__file__).parents[2] / "examples" / "contracts"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env=env)


def test_check_examples():
    result = run("contracts", "check", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("12 contracts valid: article-summary, code-review,")


def test_check_reports_file_line_field_and_exits_1(tmp_path):
    (tmp_path / "ok.toml").write_bytes((EXAMPLES / "commit-message.toml").read_bytes())
    text = (EXAMPLES / "support-triage.toml").read_text().replace("max_words = 80", "max_wrds = 80")
    (tmp_path / "typo.toml").write_text(text)
    result = run("contracts", "check", str(tmp_path))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == (f"{tmp_path / 'typo.toml'}:17: constraint.max_wrds: unknown field (did you mean "
                        "'max_words'?); known fields: case_sensitive, forbid, forbid_patterns, max_chars, max_words, "
                        "min_chars, min_words, patterns, require, rules")
    assert lines[-1] == f"1 problem in 1 file; 1 contract valid ({tmp_path})"


def test_check_an_empty_directory_or_missing_path(tmp_path):
    result = run("contracts", "check", str(tmp_path))
    assert result.exit_code == 1 and "no contract files" in result.output
    result = run("contracts", "check", str(tmp_path / "nope.toml"))
    assert result.exit_code == 1 and f"{tmp_path / 'nope.toml'}: no such file or directory" in result.output


def test_render_prints_the_prompt_and_its_token_count():
    result = run("contracts", "render", "support-triage", "--dir", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    expected = render(load_contract(EXAMPLES / "support-triage.toml"))
    assert result.stdout == expected + "\n"
    n = count_text(expected, "gpt-4o")
    assert result.stderr == f"-- {n} tokens (o200k_base), {len(expected)} characters, style thrifty\n"


def test_render_other_style_and_configured_dir(tmp_path):
    config = tmp_path / "thrifty.toml"
    config.write_text(f'[contracts]\ndir = "{EXAMPLES}"\n')
    result = run("contracts", "render", "meeting-notes", "--config", str(config), "--style", "5c",
                 env={"THRIFTY_DATA_DIR": str(tmp_path / "data")})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Character: You are a chief of staff")


def test_render_unknown_name_lists_known_ones():
    result = run("contracts", "render", "meeting-note", "--dir", str(EXAMPLES))
    assert result.exit_code == 1
    assert "unknown contract 'meeting-note' (did you mean 'meeting-notes'?); known contracts: article-summary" \
        in result.output


def test_render_without_any_contract_dir(tmp_path):
    result = run("contracts", "render", "x", env={"THRIFTY_DATA_DIR": str(tmp_path / "empty")})
    assert result.exit_code == 1 and "no contract directory: pass --dir DIR" in result.output
