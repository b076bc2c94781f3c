"""Erasure and retention: a contact's leads and old leads found by index.

`eraseContact` deletes, across every flow, the leads whose email equals one in any
letter case or whose phone has the same digits: an index on `lower(email)` and a
stored digits-only form of the phone (`phone_digits`, filled here for the leads
already stored, written by every insert from now on) with an index of its own.
Retention deletes the oldest leads first: an index by `created_date` (on
PostgreSQL, by its UTC wall time, so that pages never take it).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The characters a valid phone may hold besides digits (models.PHONE_RE).
_FORMATTING = " ().-+"


def _digits(phone: str) -> str | None:
    # As models.phone_digits, frozen here: a migration must not change later.
    return "".join(ch for ch in phone if ch in "0123456789") or None


_PG_DIGITS = "NULLIF(regexp_replace(phone, '[^0-9]', '', 'g'), '')"


def _add_phone_digits_postgresql(bind: sa.Connection) -> None:
    # Added as a generated column, the digits are computed in one rewrite of the
    # table (a million leads: ~17 s, against ~50 s for an UPDATE, which also
    # leaves a dead copy of every row); DROP EXPRESSION then makes it a plain
    # column, which inserts write.
    if bind.dialect.server_version_info and bind.dialect.server_version_info >= (13,):
        bind.exec_driver_sql(
            "ALTER TABLE lead ADD COLUMN phone_digits VARCHAR(255) "
            f"GENERATED ALWAYS AS ({_PG_DIGITS}) STORED"
        )
        bind.exec_driver_sql(
            "ALTER TABLE lead ALTER COLUMN phone_digits DROP EXPRESSION"
        )
        return
    op.add_column("lead", sa.Column("phone_digits", sa.String(255), nullable=True))
    bind.exec_driver_sql(
        f"UPDATE lead SET phone_digits = {_PG_DIGITS} WHERE phone IS NOT NULL"
    )


def _add_phone_digits_sqlite(bind: sa.Connection) -> None:
    op.add_column("lead", sa.Column("phone_digits", sa.String(255), nullable=True))
    # SQLite has no regular expressions: strip the formatting that the API
    # accepts in one statement, then mend in Python what other tools stored.
    stripped = "phone"
    for ch in _FORMATTING:
        stripped = f"replace({stripped}, '{ch}', '')"
    bind.exec_driver_sql(
        f"UPDATE lead SET phone_digits = NULLIF({stripped}, '') WHERE phone IS NOT NULL"
    )
    odd = bind.exec_driver_sql(
        "SELECT id, phone FROM lead WHERE phone_digits GLOB '*[^0-9]*'"
    ).all()
    for lead_id, phone in odd:
        bind.exec_driver_sql(
            "UPDATE lead SET phone_digits = ? WHERE id = ?", (_digits(phone), lead_id)
        )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _add_phone_digits_postgresql(bind)
    else:
        _add_phone_digits_sqlite(bind)
    op.create_index("ix_lead_email_lower", "lead", [sa.text("lower(email)")])
    op.create_index("ix_lead_phone_digits", "lead", ["phone_digits"])
    if bind.dialect.name == "postgresql":
        # On the UTC wall time, not the column: an index on the column alone is
        # one the planner takes to page a large, old flow newest-first (walking
        # every younger lead of other flows: 382 ms instead of 3 ms). Retention
        # asks by the same expression.
        op.create_index(
            "ix_lead_created_date",
            "lead",
            [sa.text("(created_date AT TIME ZONE 'UTC')")],
        )
    else:
        op.create_index("ix_lead_created_date", "lead", ["created_date"])


def downgrade() -> None:
    op.drop_index("ix_lead_created_date", table_name="lead")
    op.drop_index("ix_lead_phone_digits", table_name="lead")
    op.drop_index("ix_lead_email_lower", table_name="lead")
    # SQLite (3.35+) drops a column in place once no index names it.
    op.drop_column("lead", "phone_digits")
