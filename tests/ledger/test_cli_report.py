"""``thrifty report``: table, JSON and CSV output, and friendly errors."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from thrifty.cli import main
from thrifty.ledger.record import LedgerRecord
from thrifty.ledger.recorder import Recorder
from thrifty.settings import LedgerSettings


def fill(url: str, data_dir: Path) -> None:
    now = datetime.now(UTC)
    rows = [
        ("gpt-4o-mini", "openai", ["t1"], 1000, 200, 300, Decimal("0.000345"), now - timedelta(hours=1)),
        ("gpt-4o-mini", "openai", ["t1", "t2"], 2000, 100, 0, Decimal("0.000355"), now - timedelta(hours=2)),
        ("claude-haiku-4-5", "anthropic", [], 500, 50, 0, Decimal("0.00075"), now - timedelta(days=2)),
        ("homebrew-7b", "custom", ["t2"], 10, 10, 0, None, now - timedelta(minutes=5)),
        ("gpt-4o-mini", "openai", [], 99999, 99999, 0, Decimal(5), now - timedelta(days=30)),  # too old
    ]
    with Recorder(url, LedgerSettings(flush_interval_s=0.02), data_dir=data_dir) as recorder:
        for i, (model, provider, tags, inp, out, cached, cost, at) in enumerate(rows):
            rec = LedgerRecord(
                call_id=f"c{i}",
                started_at=at,
                entry="wrapper",
                wire="openai",
                provider=provider,
                model_used=model,
                tags=tags,
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=cached,
                cost_usd=cost,
                price_source="test" if cost is not None else "unpriced",
                tokens_saved=100 if i == 0 else None,
                usd_saved=Decimal("0.0001") if i == 0 else None,
            )
            recorder.submit(rec)
        assert recorder.flush(10)


@pytest.fixture
def filled(ledger_url: str, tmp_path: Path) -> str:
    fill(ledger_url, tmp_path)
    return ledger_url


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["report", *args], env=env, catch_exceptions=False)


def test_table(filled: str) -> None:
    result = run("--db", filled)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("model"))
    for column in ("calls", "input", "cache read", "output", "cost USD", "saved USD", "unpriced"):
        assert column in header
    table = lines[lines.index(header) :]
    body = [line for line in table[2:] if line and not line.startswith("-")]
    widths = {len(line) for line in [header, *body[:4]]}
    assert len(widths) == 1  # aligned
    assert body[0].split()[0] == "claude-haiku-4-5"  # the costliest first
    mini = next(line for line in body if line.startswith("gpt-4o-mini")).split()
    assert mini[1:5] == ["2", "3,000", "300", "0"] and mini[6] == "0.000700"
    homebrew = next(line for line in body if line.startswith("homebrew-7b")).split()
    assert homebrew[6] == "unpriced" and homebrew[-1] == "1"
    total = next(line for line in body if line.startswith("total")).split()
    assert total[1] == "4" and total[6] == "0.001450" and total[7] == "0.000100" and total[8] == "1"
    assert "1 call(s) could not be priced" in result.output


def test_json(filled: str) -> None:
    result = run("--db", filled, "--format", "json", "--group-by", "provider")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["group_by"] == "provider"
    by = {r["group"]: r for r in data["rows"]}
    assert by["openai"]["cost_usd"] == "0.0007" and by["openai"]["calls"] == 2
    assert by["custom"]["cost_usd"] is None and by["custom"]["unpriced_calls"] == 1
    assert data["total"]["cost_usd"] == "0.00145" and data["total"]["calls"] == 4


def test_csv_by_tag(filled: str) -> None:
    result = run("--db", filled, "--format", "csv", "--group-by", "tag", "--since", "24h")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    by = {r["tag"]: r for r in rows}
    assert set(by) == {"t1", "t2", "(total)"}
    assert by["t1"]["calls"] == "2" and by["t2"]["calls"] == "2"
    assert by["t2"]["cost_usd"] == "0.000355"  # the unpriced call adds nothing, and is counted
    assert by["t2"]["unpriced_calls"] == "1"
    assert by["(total)"]["calls"] == "3"  # a call with two tags counts once in the total


def test_since_until_and_filters(filled: str) -> None:
    result = run(
        "--db", filled, "--format", "json", "--since", "3d", "--until", "90m", "--model", "gpt-4o-mini"
    )
    data = json.loads(result.output)
    assert data["total"]["calls"] == 1 and data["total"]["input_tokens"] == 2000


def test_by_day(filled: str) -> None:
    result = run("--db", filled, "--group-by", "day", "--since", "2026-01-01")
    assert result.exit_code == 0, result.output
    assert datetime.now(UTC).strftime("%Y-%m-%d") in result.output


def test_empty_period(filled: str) -> None:
    result = run("--db", filled, "--since", "2000-01-01", "--until", "2000-02-01")
    assert result.exit_code == 0 and "no calls in this period" in result.output


def test_default_url_from_settings(tmp_path: Path) -> None:
    fill(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)
    result = run("--format", "json", env={"THRIFTY_DATA_DIR": str(tmp_path), "THRIFTY_DB_URL": ""})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total"]["calls"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last tuesday"], "Invalid value for '--since': cannot read 'last tuesday' as a time"),
        (["--until", "7x"], "Invalid value for '--until'"),
        (["--since", "1h", "--until", "2h"], "--until"),
        (["--group-by", "color"], "Invalid value for '--group-by'"),
        (["--format", "xml"], "Invalid value for '--format'"),
    ],
)
def test_bad_input(sqlite_url: str, args: list[str], message: str) -> None:
    result = run("--db", sqlite_url, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:////nonexistent/dir/ledger.db", "no ledger database at /nonexistent/dir/ledger.db"),
        ("postgresql://postgres:pw@127.0.0.1:1/x", "cannot reach the ledger database"),
        ("bogus://", "no database driver"),
        ("::::", "invalid ledger database URL"),
    ],
)
def test_unusable_database(url: str, message: str) -> None:
    result = run("--db", url)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert ":pw@" not in result.output


def test_not_a_ledger(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE x (a int)").connection.commit()
    result = run("--db", f"sqlite:///{path}")
    assert result.exit_code == 1 and "has no ledger tables" in result.output
