"""The SQL that requests run, written once per driver dialect.

Requests talk to the driver (asyncpg, aiosqlite) with constant statements that
it prepares once per connection and binds with plain values; the values go in
and out through the column types of `models.Lead`, so they are stored exactly as
SQLAlchemy would store them. The list as JSON lives in `json_lists`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Dialect, Table

from leads_gql.models import Lead, plain_instant
from leads_gql.store.json_lists import lead_json_sql

LEAD: Table = Lead.metadata.tables["lead"]
# In the order of `models.StoredLead`'s fields.
COLUMNS = ("id", "name", "email", "phone", "chatflowid", "chat_id", "created_date")
# What an insert writes: the lead, then its phone's digits (which erasure matches).
STORED_COLUMNS = (*COLUMNS, "phone_digits")
assert set(STORED_COLUMNS) == set(LEAD.c.keys()), (
    "the statements must name every column"
)
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
        f"INSERT INTO lead ({', '.join(STORED_COLUMNS)}) VALUES ({', '.join(p)}) "
        "ON CONFLICT (id) DO NOTHING"
    ),
    len(STORED_COLUMNS),
)
INSERT["sqlite"] += " RETURNING 1"
NOTIFY_CHANNEL = "leads_created"
# PostgreSQL announces a stored lead to every instance's LISTEN in the insert's
# own statement (so its own transaction): `SELECT 1` when stored, `SELECT 0`.
INSERT["postgresql"] = (
    f"WITH stored AS ({INSERT['postgresql']} RETURNING {_LIST}) "
    f"SELECT pg_notify('{NOTIFY_CHANNEL}', {lead_json_sql('postgresql')}) "
    "FROM stored"
)
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
    if processor is None:
        return lambda value: value
    if dialect.name != "sqlite":
        return processor
    convert = processor

    def sqlite_text(value: datetime) -> Any:
        # SQLAlchemy's text for an instant already in UTC (what the validation
        # gives), in a third of the time: an import writes millions of them.
        # tests/test_db.py compares the two.
        if value.tzinfo is UTC:
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return convert(value)

    return sqlite_text


@functools.lru_cache(maxsize=16)
def plain_instant_in(dialect: Dialect) -> Callable[[str], Any]:
    """`created_date_in` of a createdDate text the importer's fast path checked
    (`models.PlainLead`): on SQLite the stored text made from it by slicing (its
    shapes are fixed), with no datetime in between; tests/test_import.py compares."""
    if dialect.name != "sqlite":
        convert = created_date_in(dialect)
        return lambda text: convert(plain_instant(text))

    def sqlite_text(text: str) -> str:
        # YYYY-MM-DD[T ]HH:MM:SS, then .fff or .ffffff, then Z, each optional
        return f"{text[:10]} {text[11:19]}.{text[20:].rstrip('Z'):0<6}"

    return sqlite_text


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


# Deleting leads (deleteLead, eraseContact, retention). Each DELETE returns what it
# deleted, so that every deleted lead is logged (by id and flow) and counted.
# deleteLead: the flow was checked against the token with the lead read first; a
# lead deleted and made again in another flow in between is not touched.
DELETE_LEAD = _both(
    lambda p: (
        f"DELETE FROM lead WHERE id = {p[0]} AND chatflowid = {p[1]} RETURNING {_LIST}"
    ),
    2,
)
# eraseContact: leads whose email equals the first value in any letter case, or
# whose phone has the digits of the second (either may be NULL, matching nothing),
# found by ix_lead_email_lower and ix_lead_phone_digits. `lower` folds ASCII on
# SQLite and follows the database's locale on PostgreSQL; both sides of the
# comparison are folded by the same function as the index.
_CONTACT = {
    "sqlite": "(lower(email) = lower(?1) OR phone_digits = ?2)",
    "postgresql": "(lower(email) = lower($1::text) OR phone_digits = $2::text)",
}
ERASE = {
    name: f"DELETE FROM lead WHERE {match} RETURNING id, chatflowid"
    for name, match in _CONTACT.items()
}
# ... within a token's chat flows: a JSON array (SQLite), a text[] (asyncpg).
ERASE_IN_FLOWS = {
    "sqlite": f"DELETE FROM lead WHERE {_CONTACT['sqlite']} AND chatflowid IN "
    "(SELECT value FROM json_each(?3)) RETURNING id, chatflowid",
    "postgresql": f"DELETE FROM lead WHERE {_CONTACT['postgresql']} AND "
    "chatflowid = ANY($3::text[]) RETURNING id, chatflowid",
}
# Retention: the oldest leads created before an instant, a batch at a time (its
# size the second value), found by ix_lead_created_date. Each batch is a short
# transaction of its own; on PostgreSQL rows that another deletion holds are
# left for the next batch rather than waited for.
EXPIRED_BATCH = {
    "sqlite": "DELETE FROM lead WHERE id IN (SELECT id FROM lead "
    "WHERE created_date < ?1 ORDER BY created_date LIMIT ?2) RETURNING id, chatflowid",
    # By the UTC wall time, as ix_lead_created_date is on PostgreSQL (0003).
    "postgresql": "DELETE FROM lead WHERE id IN (SELECT id FROM lead "
    "WHERE (created_date AT TIME ZONE 'UTC') < ($1::timestamptz AT TIME ZONE 'UTC') "
    "ORDER BY (created_date AT TIME ZONE 'UTC') LIMIT $2 FOR UPDATE SKIP LOCKED) "
    "RETURNING id, chatflowid",
}
COUNT_EXPIRED = {
    "sqlite": "SELECT count(*) FROM lead WHERE created_date < ?",
    "postgresql": "SELECT count(*) FROM lead WHERE (created_date AT TIME ZONE 'UTC') "
    "< ($1::timestamptz AT TIME ZONE 'UTC')",
}
# PostgreSQL session locks, one key each (db.MIGRATION_LOCK_KEY is 0x1EAD5):
# one retention sweep at a time across the instances over one PostgreSQL, held
# for a sweep on the connection that runs its batches; and an import's indexes
# put off (deferred.py), held until it has built them.
RETENTION_LOCK_KEY = 0x1EAD6
INDEX_BUILD_LOCK_KEY = 0x1EAD7
TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
UNLOCK = "SELECT pg_advisory_unlock($1)"
