"""Reminders and digests driven by due times.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "digests_due",
        sa.Column("recipient", sa.String(length=200), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("recipient"),
    )
    with op.batch_alter_table("digests_due", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_digests_due_due_at"), ["due_at"], unique=False)

    op.create_table(
        "reminders_due",
        sa.Column("warning_id", sa.String(length=40), nullable=False),
        sa.Column("recipient", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["warning_id"],
            ["episodes.warning_id"],
        ),
        sa.PrimaryKeyConstraint("warning_id", "recipient", "channel"),
    )
    with op.batch_alter_table("reminders_due", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reminders_due_due_at"), ["due_at"], unique=False)


def downgrade() -> None:
    op.drop_table("reminders_due")
    op.drop_table("digests_due")
