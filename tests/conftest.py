from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from thrifty.testing import CannedUpstream

# never let a test reach a real provider or read a developer's keys/config
for _var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "THRIFTY_CONFIG", "THRIFTY_DB_URL"):
    os.environ.pop(_var, None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the process default engine (used when a test wraps without an engine) writes here, not in $HOME
_session_data = Path(tempfile.mkdtemp(prefix="thrifty-test-data-"))
os.environ["THRIFTY_DATA_DIR"] = str(_session_data)
# one converted copy of the embedded model, shared by every test (and across runs on one machine)
os.environ.setdefault("THRIFTY_LOCAL__CACHE_DIR", os.environ.get("THRIFTY_TEST_MODEL_CACHE", "/tmp/thrifty-test-models"))

PG_URL = os.environ.get("THRIFTY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def upstream() -> Iterator[CannedUpstream]:
    with CannedUpstream() as up:
        yield up


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
