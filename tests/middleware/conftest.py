from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from thrifty import Engine, Settings
from thrifty.testing import CannedUpstream


def make_settings(data_dir: Path, upstream: CannedUpstream, **overrides: object) -> Settings:
    providers = {
        "anthropic": {"kind": "anthropic", "base_url": upstream.url, "api_key": "sk-ant-test"},
        "openai": {"kind": "openai", "base_url": upstream.url, "api_key": "sk-openai-test"},
        "canned": {"kind": "openai-compatible", "base_url": upstream.url},
        "nokey": {"kind": "anthropic", "base_url": upstream.url, "api_key_env": "THRIFTY_TEST_UNSET_KEY"},
    }
    return Settings.load(data_dir=data_dir, providers=providers, **overrides)


@pytest.fixture
def engine(data_dir: Path, upstream: CannedUpstream) -> Iterator[Engine]:
    eng = Engine(make_settings(data_dir, upstream))
    yield eng
    eng.close()


@pytest.fixture
def ledger_rows():
    """``ledger_rows(engine)``: every ledger row written so far, oldest first."""
    return _ledger_rows


def _ledger_rows(engine: Engine) -> list[dict]:
    assert engine.recorder.flush(timeout=10)
    db = sa.create_engine(engine.settings.ledger_url)
    try:
        with db.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM llm_calls ORDER BY started_at")).mappings().all()
        return [dict(r) for r in rows]
    finally:
        db.dispose()


# virtual keys: backends (SQLite, PostgreSQL, Redis) for the limits tests, also at the proxy level
from tests.middleware.limits_support import limits_env, limits_pg_url, limits_redis_url  # noqa: E402,F401
