"""Rollups for the dashboard: sums per hour and day, savings sums, daily latency histograms.

Creates the tables and back-fills them from the calls already recorded, with
the code the recorder uses to keep them current (:func:`thrifty.ledger.rollup.rebuild`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# frozen copies of the model types as of this revision
_utc = sa.DateTime(timezone=True).with_variant(sa.DateTime(), "sqlite")
_count = sa.BigInteger()


def _key(name: str, length: int) -> sa.Column:
    return sa.Column(name, sa.String(length), nullable=False)


def _sums(*names: str) -> list[sa.Column]:
    return [sa.Column(name, _count, nullable=False) for name in names]


def upgrade() -> None:
    op.create_table(
        "llm_calls_rollup",
        _key("grain", 16),
        _key("span", 8),
        sa.Column("start", _utc, nullable=False),
        _key("model", 200),
        _key("provider", 100),
        _key("status", 32),
        _key("error_type", 200),
        _key("entry", 16),
        _key("key_id", 128),
        _key("user", 256),
        _key("project", 256),
        _key("tag", 200),
        *_sums(
            "calls", "errors", "retries", "input_tokens", "cache_read_tokens", "cache_write_tokens",
            "output_tokens", "reasoning_tokens", "cost_pusd", "unpriced_calls", "estimated_calls",
            "tokens_saved", "saved_pusd",
        ),
        sa.PrimaryKeyConstraint(
            "grain", "span", "start", "model", "provider", "status", "error_type", "entry", "key_id", "user",
            "project", "tag", name="pk_llm_calls_rollup",
        ),
    )
    op.create_table(
        "llm_call_savings_rollup",
        _key("span", 8),
        sa.Column("start", _utc, nullable=False),
        _key("technique", 64),
        _key("model", 200),
        _key("provider", 100),
        *_sums("calls", "tokens_before", "tokens_after", "tokens_saved", "saved_pusd", "priced_calls"),
        sa.PrimaryKeyConstraint("span", "start", "technique", "model", "provider",
                                name="pk_llm_call_savings_rollup"),
    )
    op.create_table(
        "llm_calls_latency_daily",
        sa.Column("day", _utc, nullable=False),
        _key("model", 200),
        _key("provider", 100),
        _key("metric", 16),
        sa.Column("calls", _count, nullable=False),
        sa.Column("buckets", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("day", "model", "provider", "metric", name="pk_llm_calls_latency_daily"),
    )
    op.create_table(
        "ledger_rollup_state",
        _key("name", 32),
        sa.Column("last_id", _count, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_ledger_rollup_state"),
    )
    from thrifty.ledger.rollup import rebuild

    rebuild(op.get_bind())


def downgrade() -> None:
    for name in ("ledger_rollup_state", "llm_calls_latency_daily", "llm_call_savings_rollup", "llm_calls_rollup"):
        op.drop_table(name)
