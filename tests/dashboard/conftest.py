"""The ledger test fixtures (real SQLite files and the real PostgreSQL), shared with tests/ledger."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_ledger_conftest", Path(__file__).parent.parent / "ledger" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_ledger = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ledger)

pg_server = _ledger.pg_server
pg_session_url = _ledger.pg_session_url
ledger_url = _ledger.ledger_url
fresh_url = _ledger.fresh_url
engine_for = _ledger.engine_for
