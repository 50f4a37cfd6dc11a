"""The ledger: one SQL row per upstream LLM call attempt, with its tokens, cost and savings.

* :class:`LedgerObserver`: the innermost pipeline stage; builds a :class:`LedgerRecord` per attempt.
* :class:`Recorder`: writes records in batches from a background thread, never losing one.
* :func:`migrate`: brings a database to the newest schema (Alembic, shipped in the package).
* :mod:`thrifty.ledger.queries`: read-only spend and savings queries.
* :mod:`thrifty.ledger.pricing` and :mod:`thrifty.ledger.tokens`: prices and token counts.

Names are imported on first use, so ``import thrifty.ledger.pricing`` does not load SQLAlchemy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thrifty.ledger.db import create_engine
    from thrifty.ledger.migrations import migrate
    from thrifty.ledger.observer import LedgerObserver
    from thrifty.ledger.record import LedgerRecord, Status
    from thrifty.ledger.recorder import Recorder, price_record

__all__ = ["LedgerObserver", "LedgerRecord", "Recorder", "Status", "create_engine", "migrate", "price_record"]

_WHERE = {
    "LedgerObserver": "thrifty.ledger.observer",
    "LedgerRecord": "thrifty.ledger.record",
    "Status": "thrifty.ledger.record",
    "Recorder": "thrifty.ledger.recorder",
    "price_record": "thrifty.ledger.recorder",
    "create_engine": "thrifty.ledger.db",
    "migrate": "thrifty.ledger.migrations",
}


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'thrifty.ledger' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
