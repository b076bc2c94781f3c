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


# Pages of a flow (the `leads` connection): one statement per combination of the
# conditions below, assembled from these constant fragments (never from user
# text) and cached. Each condition names its own values, in this order.
# `LIKE` is case-insensitive for ASCII on SQLite; PostgreSQL needs `ILIKE`.
_CONDITIONS: dict[str, tuple[str, int]] = {
    "flow": ("chatflowid = {}", 1),
    "search": ("(name {like} {p} ESCAPE '\\' OR email {like} {p} ESCAPE '\\'"
               " OR phone {like} {p} ESCAPE '\\')", 1),
    "since": ("created_date >= {}", 1),
    "until": ("created_date < {}", 1),
    ">": ("(created_date, id) > ({}, {})", 2),
    ">=": ("(created_date, id) >= ({}, {})", 2),
    "<": ("(created_date, id) < ({}, {})", 2),
    "<=": ("(created_date, id) <= ({}, {})", 2),
}  # fmt: skip


def _numbered(dialect: str, first: int, count: int) -> list[str]:
    """Numbered placeholders (`?2` on SQLite, `$2`), so a value can be used twice."""
    mark = "?" if dialect == "sqlite" else "$"
    return [f"{mark}{n}" for n in range(first, first + count)]


def _where(dialect: str, conditions: tuple[str, ...]) -> tuple[str, int]:
    """The WHERE clause of `conditions` and how many values it binds."""
    parts, bound = [], 0
    for name in conditions:
        template, count = _CONDITIONS[name]
        params = _numbered(dialect, bound + 1, count)
        bound += count
        if name == "search":
            like = "LIKE" if dialect == "sqlite" else "ILIKE"
            parts.append(template.format(like=like, p=params[0]))
        else:
            parts.append(template.format(*params))
    return " AND ".join(parts), bound


@functools.lru_cache(maxsize=256)
def page_rows(dialect: str, conditions: tuple[str, ...], descending: bool) -> str:
    """A page's rows: the leads matching `conditions`, in order, then a LIMIT."""
    where, bound = _where(dialect, conditions)
    way = "DESC" if descending else "ASC"
    (limit,) = _numbered(dialect, bound + 1, 1)
    return (
        f"SELECT {_LIST} FROM lead WHERE {where} "
        f"ORDER BY created_date {way}, id {way} LIMIT {limit}"
    )


@functools.lru_cache(maxsize=256)
def page_exists(dialect: str, conditions: tuple[str, ...]) -> str:
    """Whether any lead matches `conditions` (is there a page before / after?)."""
    where, _ = _where(dialect, conditions)
    return f"SELECT EXISTS (SELECT 1 FROM lead WHERE {where})"


@functools.lru_cache(maxsize=64)
def page_count(dialect: str, conditions: tuple[str, ...]) -> str:
    """How many leads match `conditions` (`totalCount`)."""
    where, _ = _where(dialect, conditions)
    return f"SELECT count(*) FROM lead WHERE {where}"
