"""The shipped migrations build exactly the models' schema, idempotently, also under concurrency."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from thrifty.errors import LedgerError
from thrifty.ledger.db import create_engine
from thrifty.ledger.migrations import (
    VERSION_TABLE,
    alembic_config,
    current_revision,
    head_revision,
    include_object,
    migrate,
)
from thrifty.ledger.models import Base


def schema_diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={"compare_type": True, "version_table": VERSION_TABLE, "include_object": include_object},
        )
        return list(compare_metadata(ctx, Base.metadata))


def test_migration_schema_equals_the_models(fresh_url: str, engine_for: Callable[[str], sa.Engine]) -> None:
    engine = engine_for(fresh_url)
    assert len(schema_diff(engine)) > 0  # an empty database differs (the comparison can see)
    migrate(fresh_url)
    assert schema_diff(engine) == []
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    assert set(sa.inspect(engine).get_table_names()) == {
        "llm_calls",
        "llm_call_savings",
        "llm_call_tags",
        "llm_call_payloads",
        "virtual_keys",
        "key_spend",
        "llm_calls_rollup",
        "llm_call_savings_rollup",
        "llm_calls_latency_daily",
        "ledger_rollup_state",
        VERSION_TABLE,
    }


def test_migrate_is_idempotent(fresh_url: str, engine_for: Callable[[str], sa.Engine]) -> None:
    migrate(fresh_url)
    engine = engine_for(fresh_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO llm_calls (call_id, attempt, started_at, entry, wire, stream, input_tokens,"
                " cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, usage_source,"
                " price_source, status) VALUES ('c1', 1, :t, 'wrapper', 'openai', false, 1, 0, 0, 1, 0,"
                " 'provider', 'unpriced', 'ok')"
            ),
            {"t": "2026-11-01 00:00:00"},
        )
    migrate(fresh_url)
    migrate(engine)  # an engine works as well as a URL
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM llm_calls")).scalar_one() == 1
    assert schema_diff(engine) == []


def test_downgrade_and_upgrade_round_trip(fresh_url: str, engine_for: Callable[[str], sa.Engine]) -> None:
    migrate(fresh_url)
    engine = engine_for(fresh_url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert not sa.inspect(engine).has_table("llm_calls")
    migrate(fresh_url)
    assert schema_diff(engine) == []


def test_concurrent_migrations_from_several_processes(
    fresh_url: str, engine_for: Callable[[str], sa.Engine]
) -> None:
    code = "import sys; from thrifty.ledger.migrations import migrate; migrate(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, fresh_url], stderr=subprocess.PIPE, text=True)
        for _ in range(5)
    ]
    errors = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in errors] == [0] * 5, errors
    engine = engine_for(fresh_url)
    assert schema_diff(engine) == []
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert conn.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 1


def test_concurrent_migrations_of_several_databases_from_threads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # two engines of one process (the proxy's and a wrapper's, say) start their ledgers at once: Alembic's
    # operations go through module-wide proxies, so unserialised they ran against each other's databases
    # (one "index already exists", the other left without tables and its calls spilled)
    import threading

    urls = [f"sqlite:///{tmp_path / f'ledger-{i}.db'}" for i in range(6)]
    start = threading.Barrier(len(urls))
    errors: list[BaseException] = []

    def run(url: str) -> None:
        start.wait()
        try:
            migrate(url)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(url,)) for url in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    for url in urls:
        engine = create_engine(url)
        try:
            assert schema_diff(engine) == []
        finally:
            engine.dispose()


def test_ledger_leaves_a_host_applications_alembic_alone(
    fresh_url: str, engine_for: Callable[[str], sa.Engine]
) -> None:
    engine = engine_for(fresh_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('hostapp123')")
        conn.exec_driver_sql("CREATE TABLE host_things (id INTEGER PRIMARY KEY)")
    migrate(fresh_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == "hostapp123"
    assert schema_diff(engine) == []  # and autogenerate ignores the host's tables


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "URL is empty"),
        ("not a url", "invalid ledger database URL"),
        ("nosuchdb://x/y", "no database driver"),
    ],
)
def test_bad_urls_are_ledger_errors(url: str, message: str) -> None:
    with pytest.raises(LedgerError, match=message):
        migrate(url)


@pytest.mark.postgres
def test_unreachable_postgres_is_a_ledger_error() -> None:
    with pytest.raises(LedgerError, match="cannot migrate the ledger database .*127.0.0.1:1"):
        migrate("postgresql://postgres@127.0.0.1:1/nothing")


def test_sqlite_parent_directory_is_created(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "a" / "b" / "ledger.db"
    migrate(f"sqlite:///{path}")
    assert path.exists()


def test_missing_sqlite_file_with_must_exist(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LedgerError, match="no ledger database at"):
        create_engine(f"sqlite:///{tmp_path / 'none.db'}", must_exist=True)
    assert not (tmp_path / "none.db").exists()


def test_password_is_not_in_messages() -> None:
    with pytest.raises(LedgerError) as info:
        migrate("postgresql://postgres:s3cret@127.0.0.1:1/nothing")
    assert "s3cret" not in str(info.value)
