"""``thrifty keys create|list|revoke``: the secret shown once, spend listed, clear errors and no tracebacks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from thrifty.cli import main
from thrifty.middleware.context import CallContext
from thrifty.middleware.limits import KeyStore
from thrifty.testing import CannedUpstream
from thrifty.types import Message, Request, TextPart


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys' / 'ledger.db'}"


def test_create_prints_the_secret_once_and_it_authenticates(db: str) -> None:
    result = run("keys", "create", "--name", "team-a", "--budget-usd", "20", "--budget-period", "month",
                 "--rpm", "60", "--models", "openai/*,local/*", "--db", db)
    assert result.exit_code == 0, result.output
    assert "created key 'team-a': budget $20.00 per month; 60 requests per minute; models openai/*, local/*" in result.output
    secrets = re.findall(r"tk-[A-Za-z0-9]{43}", result.output)
    assert len(secrets) == 1
    store = KeyStore.open(db)
    try:
        key = store.authenticate(secrets[0])
        assert key is not None and key.name == "team-a" and key.rpm == 60 and key.models == ("openai/*", "local/*")
    finally:
        store.close()
    listing = run("keys", "list", "--db", db)
    assert secrets[0] not in listing.output and secrets[0][:10] in listing.output


def test_create_as_json(db: str) -> None:
    result = run("keys", "create", "--name", "bot", "--db", db, "--format", "json")
    data = json.loads(result.output)
    assert data["secret"].startswith("tk-") and data["name"] == "bot" and data["budget_usd"] is None
    assert data["models"] == ["*"] and data["status"] == "active" and data["prefix"] == data["secret"][:10]


def test_list_shows_spend_this_period_and_revoke(db: str, tmp_path: Path, upstream: CannedUpstream) -> None:
    from tests.middleware.limits_support import limits_settings
    from thrifty import Engine
    from thrifty.middleware.limits import LimitsStage

    assert "no keys yet" in run("keys", "list", "--db", db).output
    run("keys", "create", "--name", "team-a", "--budget-usd", "5", "--budget-period", "day", "--db", db)
    run("keys", "create", "--name", "team-b", "--db", db)
    settings = limits_settings(tmp_path / "data", upstream, db_url=db)
    store = KeyStore.open(db)
    stage = LimitsStage.from_settings(settings, keys=store)
    engine = Engine(settings, stages=[stage])
    try:
        key = store.get("team-a")
        request = Request(model="openai/gpt-4o-mini", messages=[Message(role="user", content=[TextPart("hi")])],
                          max_tokens=5)
        engine.handle(request, CallContext(entry="proxy", wire="openai", virtual_key=key))
        assert stage.flush(10)
        spent = stage.budgets.status(key).spent_usd  # type: ignore[arg-type]
    finally:
        engine.close()
        stage.close()
        store.close()
    table = run("keys", "list", "--db", db).output
    lines = table.splitlines()
    assert lines[0].split() == ["name", "prefix", "budget", "period", "spent", "reserved", "rpm", "models", "status"]
    team_a = next(line for line in lines if line.startswith("team-a"))
    assert "$5.00" in team_a and "day" in team_a and f"${spent:,.4f}" in team_a and team_a.endswith("active")
    data = {row["name"]: row for row in json.loads(run("keys", "list", "--db", db, "--format", "json").output)}
    assert data["team-a"]["calls"] == 1 and abs(float(data["team-a"]["spent_usd"]) - float(spent)) < 1e-9
    assert data["team-b"]["spent_usd"] == "0" and data["team-b"]["budget_usd"] is None

    result = run("keys", "revoke", "team-b", "--db", db)
    assert result.exit_code == 0 and "revoked key 'team-b'" in result.output
    assert "already revoked" in run("keys", "revoke", "team-b", "--db", db).output
    team_b = next(line for line in run("keys", "list", "--db", db).output.splitlines() if line.startswith("team-b"))
    assert "revoked 20" in team_b


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "revoke", "nobody"], "Error: no key named 'nobody'"),
        (["keys", "create", "--name", "dup"], "Error: a key named 'dup' already exists; choose another name"),
        (["keys", "create", "--name", "x", "--budget-usd", "lots"], "'lots' is not an amount of USD"),
        (["keys", "create", "--name", "x", "--budget-usd", "-1"], "Error: a budget must be a positive amount"),
        (["keys", "create", "--name", "x", "--rpm", "0"], "Invalid value for '--rpm'"),
        (["keys", "create", "--name", "x", "--budget-period", "year"], "Invalid value for '--budget-period'"),
        (["keys", "create", "--name", "x", "--models", ","], "Error: the model allow-list is empty"),
        (["keys", "create", "--name", "bad name"], "Error: invalid key name 'bad name'"),
    ],
)
def test_clear_errors(db: str, args: list[str], message: str) -> None:
    run("keys", "create", "--name", "dup", "--db", db)
    result = CliRunner().invoke(main, [*args, "--db", db])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_unreachable_database_and_bad_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "list", "--db", "postgresql://postgres:s3cret@127.0.0.1:1/none"])
    assert result.exit_code == 1 and "Error: cannot migrate the ledger database" in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("keys = 3\n")
    result = CliRunner().invoke(main, ["keys", "list", "--config", str(bad)])
    assert result.exit_code == 1 and "Error: invalid setting 'keys'" in result.output


def test_config_file_names_the_database(tmp_path: Path) -> None:
    db = tmp_path / "from-config.db"
    config = tmp_path / "thrifty.toml"
    config.write_text(f'db_url = "sqlite:///{db}"\n')
    assert run("keys", "create", "--name", "team-z", "--config", str(config)).exit_code == 0
    assert "team-z" in run("keys", "list", "--config", str(config)).output
    assert db.exists()


def test_list_says_when_redis_is_away(tmp_path: Path) -> None:
    config = tmp_path / "thrifty.toml"
    config.write_text(f'db_url = "sqlite:///{tmp_path / "k.db"}"\nredis_url = "redis://127.0.0.1:1/0"\n')
    run("keys", "create", "--name", "team-a", "--budget-usd", "1", "--config", str(config))
    result = CliRunner().invoke(main, ["keys", "list", "--config", str(config)])
    assert result.exit_code == 0 and "team-a" in result.output
    assert "spend unknown: cannot reach Redis" in result.output
