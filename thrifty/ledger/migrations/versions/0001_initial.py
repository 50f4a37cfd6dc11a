"""The ledger: llm_calls, with per-technique savings, tags and opt-in payloads.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# frozen copies of the model types as of this revision (never import the live models here)
_utc = sa.DateTime(timezone=True).with_variant(sa.DateTime(), "sqlite")
_money = sa.Numeric(20, 12)
_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_call_id = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "llm_calls",
        sa.Column("id", _id, primary_key=True, autoincrement=True),
        sa.Column("call_id", _call_id, nullable=False),
        sa.Column("parent_call_id", _call_id, nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", _utc, nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("overhead_ms", sa.Float(), nullable=True),
        sa.Column("entry", sa.String(16), nullable=False),
        sa.Column("wire", sa.String(16), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("provider", sa.String(100), nullable=True),
        sa.Column("model_requested", sa.String(200), nullable=True),
        sa.Column("model_used", sa.String(200), nullable=True),
        sa.Column("route_decision", sa.String(500), nullable=True),
        sa.Column("response_id", sa.String(256), nullable=True),
        sa.Column("key_id", sa.String(128), nullable=True),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("project", sa.String(256), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("usage_source", sa.String(16), nullable=False),
        sa.Column("cost_usd", _money, nullable=True),
        sa.Column("price_source", sa.String(32), nullable=False),
        sa.Column("price_version", sa.String(64), nullable=True),
        sa.Column("tokens_before_transforms", sa.BigInteger(), nullable=True),
        sa.Column("tokens_saved", sa.BigInteger(), nullable=True),
        sa.Column("usd_saved", _money, nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("error_type", sa.String(200), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_llm_calls"),
        sa.UniqueConstraint("call_id", name="uq_llm_calls_call_id"),
    )
    with op.batch_alter_table("llm_calls") as batch:
        batch.create_index("ix_llm_calls_started_at", ["started_at"])
        batch.create_index("ix_llm_calls_model_used_started_at", ["model_used", "started_at"])
        batch.create_index("ix_llm_calls_provider_started_at", ["provider", "started_at"])
        batch.create_index("ix_llm_calls_project_started_at", ["project", "started_at"])
        batch.create_index("ix_llm_calls_key_id_started_at", ["key_id", "started_at"])
        batch.create_index("ix_llm_calls_user_started_at", ["user", "started_at"])
        batch.create_index("ix_llm_calls_parent_call_id", ["parent_call_id"])

    op.create_table(
        "llm_call_savings",
        sa.Column("call_id", _call_id, nullable=False),
        sa.Column("technique", sa.String(64), nullable=False),
        sa.Column("tokens_before", sa.BigInteger(), nullable=False),
        sa.Column("tokens_after", sa.BigInteger(), nullable=False),
        sa.Column("tokens_saved", sa.BigInteger(), nullable=False),
        sa.Column("usd_saved", _money, nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("call_id", "technique", name="pk_llm_call_savings"),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["llm_calls.call_id"],
            name="fk_llm_call_savings_call_id_llm_calls",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_llm_call_savings_technique", "llm_call_savings", ["technique"])

    op.create_table(
        "llm_call_tags",
        sa.Column("call_id", _call_id, nullable=False),
        sa.Column("tag", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("call_id", "tag", name="pk_llm_call_tags"),
        sa.ForeignKeyConstraint(
            ["call_id"], ["llm_calls.call_id"], name="fk_llm_call_tags_call_id_llm_calls", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_llm_call_tags_tag", "llm_call_tags", ["tag"])

    op.create_table(
        "llm_call_payloads",
        sa.Column("call_id", _call_id, nullable=False),
        sa.Column("stored_at", _utc, nullable=False),
        sa.Column("expires_at", _utc, nullable=False),
        sa.Column("request", sa.JSON(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("call_id", name="pk_llm_call_payloads"),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["llm_calls.call_id"],
            name="fk_llm_call_payloads_call_id_llm_calls",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_llm_call_payloads_expires_at", "llm_call_payloads", ["expires_at"])


def downgrade() -> None:
    op.drop_table("llm_call_payloads")
    op.drop_table("llm_call_tags")
    op.drop_table("llm_call_savings")
    op.drop_table("llm_calls")
