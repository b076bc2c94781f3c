"""The SQL that requests run, written once per driver dialect.

Requests talk to the driver (asyncpg, aiosqlite) with constant statements that
it prepares once per connection and binds with plain values; the values go in
and out through the column types of `models.Lead`, so they are stored exactly as
SQLAlchemy would store them. The list as JSON lives in `json_lists`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy import Dialect, Table

from leads_gql.models import Lead

LEAD: Table = Lead.metadata.tables["lead"]
# In the order of `models.StoredLead`'s fields.
COLUMNS = ("id", "name", "email", "phone", "chatflowid", "chat_id", "created_date")
assert set(COLUMNS) == set(LEAD.c.keys()), "the statements must name every column"
_LIST = ", ".join(COLUMNS)


def _params(dialect: str, count: int) -> list[str]:
    """The driver's own placeholders: `?` (sqlite3), `$1`, `$2`... (asyncpg)."""
    return ["?" if dialect == "sqlite" else f"${n}" for n in range(1, count + 1)]


def _both(template: Callable[[list[str]], str], count: int) -> dict[str, str]:
    return {name: template(_params(name, count)) for name in ("sqlite", "postgresql")}


# A skipped duplicate id is not an error. RETURNING tells an insert from a skip
# on SQLite (3.35+) in the same call; asyncpg reports `INSERT 0 1` or `INSERT 0 0`.
INSERT = _both(
    lambda p: (
        f"INSERT INTO lead ({_LIST}) VALUES ({', '.join(p)}) "
        "ON CONFLICT (id) DO NOTHING"
    ),
    len(COLUMNS),
)
INSERT["sqlite"] += " RETURNING 1"
# Served by the (chatflowid, created_date, id) index.
BY_CHATFLOW = _both(
    lambda p: (
        f"SELECT {_LIST} FROM lead WHERE chatflowid = {p[0]} ORDER BY created_date, id"
    ),
    1,
)
BY_ID = _both(lambda p: f"SELECT {_LIST} FROM lead WHERE id = {p[0]}", 1)


@functools.lru_cache(maxsize=16)
def created_date_in(dialect: Dialect) -> Callable[[Any], Any]:
    """An aware datetime as the driver takes it (naive UTC text for SQLite)."""
    processor = LEAD.c.created_date.type.dialect_impl(dialect).bind_processor(dialect)
    return processor or (lambda value: value)


@functools.lru_cache(maxsize=16)
def created_date_out(dialect: Dialect) -> Callable[[Any], Any]:
    """The driver's value back to an aware UTC datetime."""
    processor = LEAD.c.created_date.type.dialect_impl(dialect).result_processor(
        dialect, None
    )
    return processor or (lambda value: value)
