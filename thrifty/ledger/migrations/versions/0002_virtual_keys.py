"""Virtual keys of the proxy and their spend per budget period.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# frozen copies of the model types as of this revision (never import the live models here)
_utc = sa.DateTime(timezone=True).with_variant(sa.DateTime(), "sqlite")
_money = sa.Numeric(20, 12)
_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "virtual_keys",
        sa.Column("id", _id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("key_sha256", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", _utc, nullable=False),
        sa.Column("revoked_at", _utc, nullable=True),
        sa.Column("budget_usd", _money, nullable=True),
        sa.Column("budget_period", sa.String(8), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("models", sa.String(2000), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_virtual_keys"),
        sa.UniqueConstraint("name", name="uq_virtual_keys_name"),
        sa.UniqueConstraint("key_sha256", name="uq_virtual_keys_key_sha256"),
    )
    op.create_table(
        "key_spend",
        sa.Column("key_id", _id, nullable=False),
        sa.Column("period_start", _utc, nullable=False),
        sa.Column("spent_usd", _money, nullable=False),
        sa.Column("reserved_usd", _money, nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "period_start", name="pk_key_spend"),
        sa.ForeignKeyConstraint(
            ["key_id"], ["virtual_keys.id"], name="fk_key_spend_key_id_virtual_keys", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("key_spend")
    op.drop_table("virtual_keys")
