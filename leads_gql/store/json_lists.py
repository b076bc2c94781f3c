"""Lead lists that the database renders as JSON, ready to send.

The hot read (every lead of a chat flow) costs one statement and one value: no row
objects, no per-row Python. The output is what `models.lead_to_dict` gives, in the
same order (`createdDate`, then `id`) and the same `createdDate` form.
"""

from __future__ import annotations

import functools
import re

# Response key -> lead field (GraphQL name). REST asks for all seven.
Keys = tuple[tuple[str, str], ...]
ALL_FIELDS = ("id", "name", "email", "phone", "chatflowid", "chatId", "createdDate")
REST_KEYS: Keys = tuple((field, field) for field in ALL_FIELDS)
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")

# SQLite keeps instants as naive UTC text, `YYYY-MM-DD HH:MM:SS.ffffff`.
_SQLITE_INSTANT = (
    "substr(created_date, 1, 10) || 'T' || substr(created_date, 12, 8)"
    " || CASE WHEN substr(created_date, 21) IN ('', '000000') THEN ''"
    " ELSE '.' || substr(created_date, 21) END || 'Z'"
)
# asyncpg stores datetime.min / datetime.max (0001-01-01T00:00:00Z and
# 9999-12-31T23:59:59.999999Z) as -infinity / infinity, which to_char cannot print.
_POSTGRES_INSTANT = (
    "CASE WHEN created_date = '-infinity' THEN '0001-01-01T00:00:00Z'"
    " WHEN created_date = 'infinity' THEN '9999-12-31T23:59:59.999999Z'"
    " ELSE to_char(created_date AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
    " || CASE WHEN date_trunc('second', created_date) = created_date THEN ''"
    " ELSE to_char(created_date AT TIME ZONE 'UTC', '.US') END || 'Z' END"
)


def instant_sql(dialect: str) -> str:
    """`createdDate` as the API prints it, computed by the database."""
    return _SQLITE_INSTANT if dialect == "sqlite" else _POSTGRES_INSTANT


_COLUMNS = {
    "id": "id",
    "name": "name",
    "email": "email",
    "phone": "phone",
    "chatflowid": "chatflowid",
    "chatId": "chat_id",
    "__typename": "'Lead'",
}


@functools.lru_cache(maxsize=256)
def list_sql(dialect: str, keys: Keys) -> str:
    """One statement in the driver's own dialect (`?` for SQLite, `$1` for asyncpg):
    the JSON array of a flow's leads, with these keys."""
    instant = instant_sql(dialect)
    pairs = []
    for key, field in keys:
        # Keys are GraphQL names (letters, digits, `_`): safe as SQL literals.
        if not _NAME.fullmatch(key):
            raise ValueError(f"not a GraphQL name: {key!r}")
        column = instant if field == "createdDate" else _COLUMNS[field]
        pairs.append(f"'{key}', {column}")
    fields = ", ".join(pairs)
    if dialect == "sqlite":
        # The subquery's order is the aggregate's order in SQLite.
        return (
            f"SELECT json_group_array(json_object({fields})) FROM "
            "(SELECT * FROM lead WHERE chatflowid = ? ORDER BY created_date, id)"
        )
    return (
        f"SELECT coalesce(json_agg(json_build_object({fields}) "
        "ORDER BY created_date, id)::text, '[]') FROM lead WHERE chatflowid = $1"
    )


# A lead's seven keys (REST's), with their columns.
_LEAD_COLUMNS = (
    ("id", "id"),
    ("name", "name"),
    ("email", "email"),
    ("phone", "phone"),
    ("chatflowid", "chatflowid"),
    ("chatId", "chat_id"),
)


def lead_json_sql(dialect: str) -> str:
    """One lead as a compact JSON object of the seven keys, in SPEC's order (the
    bytes `GET /leads/{id}` lists), from the columns in scope."""
    instant = instant_sql(dialect)
    if dialect == "sqlite":
        pairs = ", ".join(f"'{key}', {column}" for key, column in _LEAD_COLUMNS)
        return f"json_object({pairs}, 'createdDate', {instant})"
    # row_to_json prints compact objects in column order, as SQLite does.
    columns = ", ".join(f'{column} AS "{key}"' for key, column in _LEAD_COLUMNS)
    return (
        f"row_to_json((SELECT r FROM (SELECT {columns}, "
        f'{instant} AS "createdDate") r))::text'
    )
