"""Create the lead table and its chat-flow index.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lead",
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("phone", sa.String(length=255), nullable=True),
        sa.Column("chatflowid", sa.String(length=36), nullable=False),
        sa.Column("chat_id", sa.String(length=255), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_date", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_lead_chatflowid_created_date_id",
        "lead",
        ["chatflowid", "created_date", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_lead_chatflowid_created_date_id", table_name="lead")
    op.drop_table("lead")
