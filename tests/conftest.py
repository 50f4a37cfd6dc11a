from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from thrifty.testing import CannedUpstream

# never let a test reach a real provider or read a developer's keys/config
for _var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "THRIFTY_CONFIG", "THRIFTY_DB_URL"):
    os.environ.pop(_var, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PG_URL = os.environ.get("THRIFTY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def upstream() -> Iterator[CannedUpstream]:
    with CannedUpstream() as up:
        yield up


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
