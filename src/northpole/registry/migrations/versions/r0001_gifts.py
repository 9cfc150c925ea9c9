"""The gifts table (range-partitioned by created_at) and its outbox.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from northpole.registry.model import MAX_GIFT_TYPE, MAX_RECIPIENT_ID, GiftStatus

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_STATUSES = ", ".join(f"'{status.value}'" for status in GiftStatus)


def upgrade() -> None:
    """Create ``gifts`` (partitioned, no partitions yet), its indexes and ``gift_outbox``."""
    op.create_table(
        "gifts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("workshop_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("gift_type", sa.String(MAX_GIFT_TYPE), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("recipient_id", sa.String(MAX_RECIPIENT_ID), nullable=False),
        sa.PrimaryKeyConstraint("id", "created_at", name="gifts_pkey"),
        sa.CheckConstraint(f"status IN ({_STATUSES})", name="gifts_status_check"),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index("gifts_created_at_idx", "gifts", ["created_at", "id"])
    op.create_index("gifts_recipient_idx", "gifts", ["recipient_id", "created_at", "id"])
    op.create_index("gifts_status_idx", "gifts", ["status", "created_at", "id"])
    op.create_table(
        "gift_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    """Drop both tables (and every partition with them)."""
    op.drop_table("gift_outbox")
    op.drop_table("gifts")
