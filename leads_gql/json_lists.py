"""The hot read, every lead of a chat flow, as JSON ready to send.

PostgreSQL renders the array itself (`json_agg`, in the server's process): one
statement, one value, no per-row Python. SQLite 3.40's JSON functions measured
slower than fetching the plain rows and rendering them with orjson, so there the
rows come back as tuples and `render_rows` writes the JSON. Either way the output
is what `models.lead_to_dict` gives, in the same order (`createdDate`, then `id`)
and the same `createdDate` form.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import orjson

# Response key -> lead field (GraphQL name). REST asks for all seven.
Keys = tuple[tuple[str, str], ...]
ALL_FIELDS = ("id", "name", "email", "phone", "chatflowid", "chatId", "createdDate")
REST_KEYS: Keys = tuple((field, field) for field in ALL_FIELDS)
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")

# asyncpg stores datetime.min / datetime.max (0001-01-01T00:00:00Z and
# 9999-12-31T23:59:59.999999Z) as -infinity / infinity, which to_char cannot print.
_POSTGRES_INSTANT = (
    "CASE WHEN created_date = '-infinity' THEN '0001-01-01T00:00:00Z'"
    " WHEN created_date = 'infinity' THEN '9999-12-31T23:59:59.999999Z'"
    " ELSE to_char(created_date AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
    " || CASE WHEN date_trunc('second', created_date) = created_date THEN ''"
    " ELSE to_char(created_date AT TIME ZONE 'UTC', '.US') END || 'Z' END"
)
_COLUMNS = {
    "id": "id",
    "name": "name",
    "email": "email",
    "phone": "phone",
    "chatflowid": "chatflowid",
    "chatId": "chat_id",
    "__typename": "'Lead'",
}


SQLITE_LIST_SQL = (
    "SELECT id, name, email, phone, chatflowid, chat_id, created_date FROM lead "
    "WHERE chatflowid = ? ORDER BY created_date, id"
)
_POSITIONS = {field: i for i, field in enumerate(ALL_FIELDS)}


def _sqlite_instant(text: str) -> str:
    # `YYYY-MM-DD HH:MM:SS.ffffff` (SQLAlchemy's SQLite form) to SPEC's form.
    fraction = text[19:]
    return f"{text[:10]}T{text[11:19]}{'' if fraction == '.000000' else fraction}Z"


def _value(row: Sequence[Any], field: str) -> Any:
    if field == "createdDate":
        return _sqlite_instant(row[6])
    if field == "__typename":
        return "Lead"
    return row[_POSITIONS[field]]


def _rest_lead(r: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": r[0],
        "name": r[1],
        "email": r[2],
        "phone": r[3],
        "chatflowid": r[4],
        "chatId": r[5],
        "createdDate": _sqlite_instant(r[6]),
    }


def render_rows(rows: Sequence[Sequence[Any]], keys: Keys) -> bytes:
    """SQLite rows (SQLITE_LIST_SQL's columns) as the JSON array of these keys."""
    if keys == REST_KEYS:  # the common case, without a call per key
        return orjson.dumps([_rest_lead(row) for row in rows])
    return orjson.dumps([{key: _value(row, f) for key, f in keys} for row in rows])


@functools.lru_cache(maxsize=256)
def list_sql(keys: Keys) -> str:
    """PostgreSQL (asyncpg, `$1`): the JSON array of a flow's leads, these keys."""
    instant = _POSTGRES_INSTANT
    pairs = []
    for key, field in keys:
        # Keys are GraphQL names (letters, digits, `_`): safe as SQL literals.
        if not _NAME.fullmatch(key):
            raise ValueError(f"not a GraphQL name: {key!r}")
        column = instant if field == "createdDate" else _COLUMNS[field]
        pairs.append(f"'{key}', {column}")
    fields = ", ".join(pairs)
    return (
        f"SELECT coalesce(json_agg(json_build_object({fields}) "
        "ORDER BY created_date, id)::text, '[]') FROM lead WHERE chatflowid = $1"
    )
