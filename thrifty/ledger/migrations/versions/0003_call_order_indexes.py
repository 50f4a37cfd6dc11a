"""Indexes for the dashboard's calls by cost and by duration.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_llm_calls_cost_usd_id", "llm_calls", ["cost_usd", "id"])
    op.create_index("ix_llm_calls_duration_ms_id", "llm_calls", ["duration_ms", "id"])


def downgrade() -> None:
    op.drop_index("ix_llm_calls_duration_ms_id", table_name="llm_calls")
    op.drop_index("ix_llm_calls_cost_usd_id", table_name="llm_calls")
