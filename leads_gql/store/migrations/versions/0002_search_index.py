"""Search: a trigram index over the contact fields, on PostgreSQL.

`leads(search: ...)` matches a substring of name, email or phone; a GIN index of
trigrams (pg_trgm) answers that without reading every lead of a large flow. The
extension may be refused (a managed server, no rights to create it): then the
index is left out, a log line says so, and search scans the flow's leads.
SQLite has no such index: search there reads the flow's rows (the README says
what that costs).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEX = "ix_lead_contact_trgm"
logger = logging.getLogger("leads_gql.migrations")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():  # a refusal must not abort the migration
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DBAPIError as exc:
        logger.warning(
            "search index left out: the pg_trgm extension cannot be created (%s); "
            "search will scan each flow's leads",
            type(exc.orig).__name__,
        )
        return
    op.create_index(
        INDEX,
        "lead",
        ["name", "email", "phone"],
        postgresql_using="gin",
        postgresql_ops={
            "name": "gin_trgm_ops",
            "email": "gin_trgm_ops",
            "phone": "gin_trgm_ops",
        },
    )


def downgrade() -> None:
    # The extension stays: other schemas of the database may use it.
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
