"""Search: a trigram index per contact field instead of one over the three.

A search asks `name ILIKE $1 OR email ILIKE $1 OR phone ILIKE $1`; PostgreSQL
answers each arm with a scan of its own either way (a BitmapOr of three index
scans), so the plan keeps its shape. Three indexes build in parallel where one
cannot: an import into an empty table builds its indexes once the leads are in
(store/deferred.py), and on 2 cores the one index over three fields took 7.6 s
of a million leads' import alone, the three 8 s together with every other index
on two connections. Left out, as in 0002, where pg_trgm is not installed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD = "ix_lead_contact_trgm"
FIELDS = ("name", "email", "phone")


def _has_trigrams() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    found = bind.exec_driver_sql(
        "SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'"
    ).first()
    return found is not None


def upgrade() -> None:
    if not _has_trigrams():
        return
    op.execute(f"DROP INDEX IF EXISTS {OLD}")
    op.execute(f"DELETE FROM deferred_index WHERE name = '{OLD}'")
    for field in FIELDS:
        op.create_index(
            f"ix_lead_{field}_trgm",
            "lead",
            [field],
            postgresql_using="gin",
            postgresql_ops={field: "gin_trgm_ops"},
        )


def downgrade() -> None:
    if not _has_trigrams():
        return
    for field in FIELDS:
        op.execute(f"DROP INDEX IF EXISTS ix_lead_{field}_trgm")
        op.execute(f"DELETE FROM deferred_index WHERE name = 'ix_lead_{field}_trgm'")
    op.create_index(
        OLD,
        "lead",
        list(FIELDS),
        postgresql_using="gin",
        postgresql_ops=dict.fromkeys(FIELDS, "gin_trgm_ops"),
    )
