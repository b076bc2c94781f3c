"""Indexes put off by an import: where their definitions wait to be rebuilt.

An import into an empty `lead` table drops the table's secondary indexes and
builds them once the leads are in (store/deferred.py): a build from the whole
table is several times cheaper than maintaining an index row by row. Their
definitions are kept here, in the same transaction as the drop, so that an
import killed midway leaves them to the next `migrate` (which `serve` and
`import` run), never lost. (First written for PostgreSQL alone; SQLite's imports
put indexes off too since, and its downgrade builds theirs as well.)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deferred_index",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    # An index still waiting (an import killed midway) is built first: its
    # definition would go with the table.
    bind = op.get_bind()
    for (definition,) in bind.exec_driver_sql(
        "SELECT definition FROM deferred_index"
    ).all():
        bind.exec_driver_sql(
            definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
        )
    op.drop_table("deferred_index")
