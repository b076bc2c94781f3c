"""Writing many leads at once: one statement for a list, and group commit.

`insert_many` stores a list of leads in one INSERT (one transaction, one flush),
skipping ids already stored. The batch creates (`createLeads`, POST
/leads/batch) and the importer use it directly; `GroupCommit` gathers the single
creates that arrive while a write is in flight and stores them together, so
that concurrent creates share a transaction instead of each paying for its own
disk flush.
"""

from __future__ import annotations

import asyncio
import functools
import re
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from leads_gql.errors import ServiceUnavailable
from leads_gql.models import StoredLead, phone_digits
from leads_gql.store import db, notifications, statements
from leads_gql.store.json_lists import lead_json_sql
from leads_gql.telemetry import CREATE_GROUPS

_COLUMNS = ", ".join(statements.STORED_COLUMNS)
_LIST = ", ".join(statements.COLUMNS)
# SQLite: a VALUES row per lead, eight bound values each (SQLite caps a statement
# at 32,766 values: at most SQLITE_ROWS leads). One text per row count, prepared
# once per connection by the driver's statement cache. (A single JSON value read
# through json_each was 25 % slower: each column's json_extract parses the row.)
SQLITE_ROWS = 4000
_SKIP = "ON CONFLICT (id) DO NOTHING"


@functools.lru_cache(maxsize=512)
def _sqlite_insert(rows: int) -> str:
    row = "(" + ", ".join("?" * len(statements.STORED_COLUMNS)) + ")"
    values = ", ".join([row] * rows)
    return f"INSERT INTO lead ({_COLUMNS}) VALUES {values} {_SKIP} RETURNING id"


# PostgreSQL: one array per column (asyncpg sends them in binary).
_POSTGRES_ROWS = (
    "SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], "
    "$4::varchar[], $5::varchar[], $6::varchar[], $7::timestamptz[], $8::varchar[])"
)
INSERT_MANY = f"INSERT INTO lead ({_COLUMNS}) {_POSTGRES_ROWS} {_SKIP} RETURNING id"
# ... announcing each stored lead to every instance in the same statement, as a
# single create does (statements.INSERT).
INSERT_MANY_ANNOUNCED = (
    f"WITH stored AS (INSERT INTO lead ({_COLUMNS}) {_POSTGRES_ROWS} {_SKIP} "
    f"RETURNING {_LIST}) SELECT id, pg_notify('{statements.NOTIFY_CHANNEL}', "
    f"{lead_json_sql('postgresql')}) FROM stored"
)
# The importer's statement on SQLite (`insert_rows`): a row per step through
# executemany, with no RETURNING, which stored a million leads in two thirds of
# the time of the statement of thousands of VALUES rows (whose RETURNING rows
# SQLite gathers in a temporary table first).
_SQLITE_ROW = (
    f"INSERT INTO lead ({_COLUMNS}) "
    f"VALUES ({', '.join('?' * len(statements.STORED_COLUMNS))}) {_SKIP}"
)
BY_IDS = {
    "sqlite": f"SELECT {_LIST} FROM lead WHERE id IN (SELECT value FROM json_each(?))",
    "postgresql": f"SELECT {_LIST} FROM lead WHERE id = ANY($1::varchar[])",
}


def as_row(lead: StoredLead, created_date: Any) -> tuple[Any, ...]:
    """A lead as the statements' row (STORED_COLUMNS); `created_date` is
    `statements.created_date_in` of the driver's dialect."""
    return (
        lead.id, lead.name, lead.email, lead.phone, lead.chatflowid, lead.chat_id,
        created_date(lead.created_date), phone_digits(lead.phone),
    )  # fmt: skip


async def insert_many(
    driver: db.Driver, leads: Sequence[StoredLead], *, announce: bool = True
) -> list[bool]:
    """Store `leads` in one statement (atomic: all of them or, on an error, none;
    at most SQLITE_ROWS on SQLite); for each, in order, whether this call stored
    it. An id already in the table, or met earlier in the list, is skipped
    (False). `announce` tells live subscribers about the stored ones (an import
    of old leads does not)."""
    if not leads:
        return []
    created_date = statements.created_date_in(driver.dialect)
    rows = [as_row(lead, created_date) for lead in leads]
    if driver.sqlite:
        if len(rows) > SQLITE_ROWS:
            raise ValueError(f"at most {SQLITE_ROWS} leads per statement on SQLite")
        values = [value for row in rows for value in row]
        returned = await driver.connection.execute_fetchall(
            _sqlite_insert(len(rows)), values
        )
    else:
        sql = INSERT_MANY_ANNOUNCED if announce else INSERT_MANY
        returned = await driver.connection.fetch(sql, *_columns(rows))
    stored = _claimed([lead.id for lead in leads], {row[0] for row in returned})
    if announce and driver.sqlite:
        for lead, was_stored in zip(leads, stored, strict=True):
            if was_stored:
                notifications.announce(driver.engine, lead)
    return stored


async def insert_rows(driver: db.Driver, rows: Sequence[tuple[Any, ...]]) -> list[bool]:
    """Store rows (`as_row`) inside the caller's write transaction (the
    importer's); for each, in order, whether this call stored it (an id stored
    already, or met earlier in the list, is skipped). No notifications.

    On SQLite, executemany with no RETURNING, and, only when some id was skipped,
    the rows stored now read back by rowid: a new row's rowid is above every
    rowid before it, and the write lock keeps other writers out meanwhile. (A
    savepoint to undo a chunk instead copies each page it touches once more:
    a third slower.)"""
    if not rows:
        return []
    connection = driver.connection
    if driver.sqlite:
        cursor = await connection.execute("SELECT coalesce(max(rowid), 0) FROM lead")
        (before,) = await cursor.fetchone()
        cursor = await connection.executemany(_SQLITE_ROW, rows)
        if cursor.rowcount == len(rows):
            return [True] * len(rows)
        returned = await connection.execute_fetchall(
            "SELECT id FROM lead WHERE rowid > ?", (before,)
        )
    else:
        returned = await connection.fetch(INSERT_MANY, *_columns(rows))
    return _claimed([row[0] for row in rows], {row[0] for row in returned})


# PostgreSQL's unique_violation (SQLSTATE): the driver's own exception class
# needs the optional asyncpg at import time.
UNIQUE_VIOLATION = "23505"


async def copy_rows(driver: db.Driver, data: bytes) -> bool:
    """PostgreSQL: store rows as COPY text (`copy_text`) inside the caller's
    transaction, in a savepoint: all of them (True) or, when an id is stored
    already or met twice, none (False; `insert_rows` then sorts them out). COPY
    costs the database less than half what INSERT ... ON CONFLICT does per row
    (no speculative insertion, no RETURNING)."""
    connection = driver.connection
    try:
        async with connection.transaction():  # a savepoint
            await connection.copy_to_table(  # (bytes would be read as a path)
                "lead",
                source=memoryview(data),
                columns=statements.STORED_COLUMNS,
                format="text",
            )
    except Exception as error:
        if getattr(error, "sqlstate", None) != UNIQUE_VIOLATION:
            raise
        return False
    return True


# COPY's text format: a line a row, tab-separated, \N for NULL, and a backslash
# before a backslash, tab, newline or carriage return in a value.
_NULL = "\\N"
_SPECIAL = re.compile(r"[\\\t\n\r]")
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)


def copy_instant(value: datetime | str) -> str:
    """A row's created date as COPY text: a datetime's ISO form, or a
    `models.PlainLead`'s createdDate text, which PostgreSQL reads as it is once
    it says UTC."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value if value.endswith("Z") else value + "Z"


def copy_text(rows: Sequence[tuple[Any, ...]]) -> bytes:
    """PostgreSQL rows (`as_row`, the created date as `copy_instant` text) as
    COPY text: what the importer's parsing processes hand over instead of the
    rows (a bytes object costs nothing to pass between processes, where rows
    cost their pickling twice, and the driver's encoding of them once more)."""
    texts = (row[k] for row in rows for k in (1, 2, 3, 5))  # name ... chat_id
    if _SPECIAL.search("".join([v for v in texts if v is not None])):
        return _escaped_text(rows)  # (a value holds a tab, a newline...)
    n = _NULL
    return "".join(
        [
            f"{i}\t{n if a is None else a}\t{n if e is None else e}\t"
            f"{n if p is None else p}\t{f}\t{c}\t{t}\t{n if d is None else d}\n"
            for i, a, e, p, f, c, t, d in rows
        ]
    ).encode()


def _escaped_text(rows: Sequence[tuple[Any, ...]]) -> bytes:
    lines = []
    for row in rows:
        values = (_NULL if v is None else v.translate(_ESCAPE) for v in row)
        lines.append("\t".join(values) + "\n")
    return "".join(lines).encode()


def rows_from_copy(data: bytes) -> list[tuple[Any, ...]]:
    """`copy_text` back to rows: for the chunks that meet stored ids."""
    rows = []
    for line in data.decode().split("\n")[:-1]:
        values: list[Any] = [
            None
            if value == _NULL
            else _ESCAPED.sub(lambda m: _UNESCAPE[m[1]], value)
            if "\\" in value
            else value
            for value in line.split("\t")
        ]
        values[6] = datetime.fromisoformat(values[6])
        rows.append(tuple(values))
    return rows


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """PostgreSQL's bound values: one array per column (`_POSTGRES_ROWS`)."""
    return [list(column) for column in zip(*rows, strict=True)]


def _claimed(ids: Sequence[str], inserted: set[str]) -> list[bool]:
    """Whether each id was stored: an inserted id by its first place only (a
    later duplicate in the list was skipped)."""
    stored: list[bool] = []
    for lead_id in ids:
        stored.append(lead_id in inserted)
        inserted.discard(lead_id)
    return stored


async def stored_by_ids(driver: db.Driver, ids: Sequence[str]) -> dict[str, StoredLead]:
    """The stored leads with these ids, by id (unknown ids are absent)."""
    if not ids:
        return {}
    created_date = statements.created_date_out(driver.dialect)
    if driver.sqlite:
        rows = await driver.connection.execute_fetchall(
            BY_IDS["sqlite"], [orjson.dumps(list(ids)).decode()]
        )
    else:
        rows = await driver.connection.fetch(BY_IDS["postgresql"], list(ids))
    return {
        row[0]: StoredLead(
            row[0], row[1], row[2], row[3], row[4], row[5], created_date(row[6])
        )
        for row in rows
    }


async def insert_one(driver: db.Driver, lead: StoredLead) -> bool:
    """One lead in its own statement (the prepared single-row INSERT)."""
    values = as_row(lead, statements.created_date_in(driver.dialect))
    if driver.sqlite:
        sql = statements.INSERT["sqlite"]
        if not await driver.connection.execute_fetchall(sql, values):
            return False
        notifications.announce(driver.engine, lead)
        return True
    # The statement also announces the lead (NOTIFY) to every instance.
    status = await driver.connection.execute(statements.INSERT["postgresql"], *values)
    return str(status) == "SELECT 1"


# At most this many creates share a statement: past it, a group's statement takes
# longer than the flush it saves, and its creates wait for it.
GROUP_LIMIT = 256


class GroupCommit:
    """Single creates that arrive while a write is in flight share the next one.

    No timer: a create that finds no write in flight writes itself at once, in
    its own task (as before group commit: it never waits for company). Creates
    that arrive during a write queue up, and a writer task writes them together
    by one INSERT as soon as it returns: one transaction and one flush for the
    group instead of one each.
    Each create learns only once its statement has returned (committed: the
    engine is in autocommit), whether it stored its lead. When a group's
    statement fails, its creates are written one by one, so that one bad row
    cannot fail its neighbours.
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[StoredLead, asyncio.Future[bool]]] = []
        self.writer: asyncio.Task[None] | None = None
        self.alone = False  # a create is writing itself, in its own task

    async def insert(self, engine: AsyncEngine, lead: StoredLead) -> bool:
        """Store `lead` unless its id is stored; whether this call stored it."""
        if self.writer is None and not self.alone:
            # Nothing in flight: written at once by its own task, exactly as a
            # create was before group commit; whoever comes meanwhile waits for
            # the writer started after it.
            self.alone = True
            try:
                async with db.driver_scope(engine) as driver, db.writing(engine):
                    stored = await insert_one(driver, lead)
                CREATE_GROUPS.observe(1)
                return stored
            finally:
                self.alone = False
                if self.waiting:
                    self.writer = asyncio.create_task(self._write(engine))
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting.append((lead, done))
        # A create cancelled while it waits (its client went away) cancels only
        # its wait: the writer holds the lead and still writes it.
        return await done

    async def _write(self, engine: AsyncEngine) -> None:
        group: list[tuple[StoredLead, asyncio.Future[bool]]] = []
        try:
            while self.waiting:
                group = self.waiting[:GROUP_LIMIT]
                del self.waiting[:GROUP_LIMIT]
                await self._store(engine, group)
        except BaseException as error:
            # The writer itself failed or was cancelled (the server is stopping):
            # no create may wait for an answer that will not come.
            why = error if isinstance(error, Exception) else ServiceUnavailable()
            for _, done in group + self.waiting:
                _settle(done, error=why)
            self.waiting.clear()
            if not isinstance(error, Exception):
                raise
        finally:
            self.writer = None

    async def _store(
        self,
        engine: AsyncEngine,
        group: list[tuple[StoredLead, asyncio.Future[bool]]],
    ) -> None:
        leads = [lead for lead, _ in group]
        try:
            async with db.driver_scope(engine) as driver, db.writing(engine):
                if len(leads) == 1:
                    results = [await insert_one(driver, leads[0])]
                else:
                    results = await insert_many(driver, leads)
        except Exception as error:
            if len(group) == 1 or isinstance(error, ServiceUnavailable):
                # Alone, or the database is away: each create gets the error.
                for _, done in group:
                    _settle(done, error=error)
            else:
                # One row may be what the database refused: each on its own.
                for single in group:
                    await self._store(engine, [single])
            return
        CREATE_GROUPS.observe(len(group))
        for (_, done), stored in zip(group, results, strict=True):
            _settle(done, result=stored)


def _settle(
    done: asyncio.Future[bool],
    *,
    result: bool = False,
    error: BaseException | None = None,
) -> None:
    if done.done():  # its create stopped waiting
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


_groups: weakref.WeakKeyDictionary[Any, GroupCommit] = weakref.WeakKeyDictionary()


def group_commit(engine: AsyncEngine) -> GroupCommit:
    """The engine's GroupCommit (one per engine and process)."""
    group = _groups.get(engine.sync_engine)
    if group is None:
        group = _groups[engine.sync_engine] = GroupCommit()
    return group
