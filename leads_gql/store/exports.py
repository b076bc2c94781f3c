"""A flow's leads as an export (CSV, NDJSON or a JSON array), oldest first,
streamed in bounded pieces: the database renders the rows, nothing holds the
whole flow, and the first bytes leave before the last row is read.

PostgreSQL: CSV comes from `COPY (SELECT ...) TO STDOUT WITH CSV` itself (its
own RFC 4180 quoting, at the speed of COPY), the JSON forms through a
server-side cursor; one transaction, one snapshot. SQLite: batches read by
position, each a short statement on a pooled connection, so a long export holds
no connection and no read transaction between batches. The REST list answers a
small flow with one statement (`inline_sql`) and streams a large one from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from leads_gql.store import statements
from leads_gql.store.db import driver_scope
from leads_gql.store.json_lists import instant_sql, lead_json_sql

BATCH = 1000
CSV_HEADER = b"id,name,email,phone,chatflowid,chatId,createdDate\r\n"
# Column, and whether a spreadsheet could read its text as a formula (ids and
# instants cannot: hex digits and dashes, digits).
_COLUMNS = (
    ("id", "id", False),
    ("name", "name", True),
    ("email", "email", True),
    ("phone", "phone", True),
    ("chatflowid", "chatflowid", False),
    ("chatId", "chat_id", True),
)
# OWASP's CSV injection guidance: a cell that starts with one of these gets a `'`.
_FORMULA_STARTS = (61, 43, 45, 64, 9, 13)  # = + - @ TAB CR


def _chr(dialect: str, code: int) -> str:
    return f"char({code})" if dialect == "sqlite" else f"chr({code})"


def _guarded(dialect: str, column: str) -> str:
    starts = ", ".join(_chr(dialect, code) for code in _FORMULA_STARTS)
    return (
        f"CASE WHEN substr({column}, 1, 1) IN ({starts}) "
        f"THEN '''' || {column} ELSE {column} END"
    )


def _csv_cell(column: str) -> str:
    """An RFC 4180 cell (SQLite): empty for null; quoted when it holds a quote,
    a comma or a line break (PostgreSQL's COPY does the same by itself)."""
    guarded = _guarded("sqlite", column)
    special = " OR ".join(
        f"instr({column}, {mark}) > 0"
        for mark in ("'\"'", "','", _chr("sqlite", 10), _chr("sqlite", 13))
    )
    return (
        f"CASE WHEN {column} IS NULL THEN '' WHEN {special} "
        f"THEN '\"' || replace({guarded}, '\"', '\"\"') || '\"' ELSE {guarded} END"
    )


def _line(dialect: str, fmt: str) -> str:
    if fmt != "csv":
        return lead_json_sql(dialect)
    cells = [_csv_cell(c) if text else c for _, c, text in _COLUMNS]
    crlf = f"{_chr(dialect, 13)} || {_chr(dialect, 10)}"
    return " || ',' || ".join([*cells, instant_sql(dialect)]) + f" || {crlf}"


@functools.lru_cache(maxsize=8)
def sqlite_batch_sql(fmt: str, after: bool) -> str:
    """A batch of a flow's lines, oldest first, past a position when `after`; the
    position's keys come last in each row."""
    where = "chatflowid = ?1" + (" AND (created_date, id) > (?2, ?3)" if after else "")
    return (
        f"SELECT {_line('sqlite', fmt)}, created_date, id FROM lead WHERE {where} "
        f"ORDER BY created_date, id LIMIT {BATCH}"
    )


@functools.lru_cache(maxsize=4)
def postgres_sql(fmt: str) -> str:
    """Every lead of a flow: CSV columns for COPY, or JSON lines for a cursor."""
    if fmt == "csv":
        columns = [_guarded("postgresql", c) if text else c for _, c, text in _COLUMNS]
        select = ", ".join([*columns, instant_sql("postgresql")])
    else:
        select = lead_json_sql("postgresql")
    return f"SELECT {select} FROM lead WHERE chatflowid = $1 ORDER BY created_date, id"


@functools.lru_cache(maxsize=4)
def inline_sql(dialect: str) -> str:
    """A flow's JSON array in one statement, when it has at most BATCH leads:
    (the array, how many leads were read: BATCH + 1 means stream it instead)."""
    join = "group_concat" if dialect == "sqlite" else "string_agg"
    # SQLite aggregates in the subquery's order; PostgreSQL is told.
    order = "" if dialect == "sqlite" else " ORDER BY created_date, id"
    flow = "?" if dialect == "sqlite" else "$1"
    return (
        f"SELECT '[' || coalesce({join}(line, ','{order}), '') || ']', count(*) "
        f"FROM (SELECT {lead_json_sql(dialect)} AS line, created_date, id FROM lead "
        f"WHERE chatflowid = {flow} ORDER BY created_date, id LIMIT {BATCH + 1}) s"
    )


async def stream(engine: AsyncEngine, flow: str, fmt: str) -> AsyncIterator[bytes]:
    """The export of a flow in `fmt` ("csv", "ndjson", "json"), piece by piece;
    nothing at all for a flow without leads."""
    async for piece, _ in counted(engine, flow, fmt):
        yield piece


async def counted(
    engine: AsyncEngine, flow: str, fmt: str
) -> AsyncIterator[tuple[bytes, int]]:
    """`stream`, each piece with the number of leads it completes."""
    if engine.dialect.name == "postgresql" and fmt == "csv":
        pieces = _copy_csv(engine, flow)
    else:
        pieces = _framed(_lines(engine, flow, fmt), fmt)
    async for piece in pieces:
        yield piece


async def _lines(engine: AsyncEngine, flow: str, fmt: str) -> AsyncIterator[list[str]]:
    if engine.dialect.name == "sqlite":
        position: tuple[Any, ...] = ()
        while True:
            sql = sqlite_batch_sql(fmt, bool(position))
            async with driver_scope(engine) as driver:
                rows = await driver.connection.execute_fetchall(sql, (flow, *position))
            if rows:
                yield [row[0] for row in rows]
            if len(rows) < BATCH:
                return
            position = (rows[-1][1], rows[-1][2])
    else:
        async with driver_scope(engine) as driver:
            connection = driver.connection
            async with connection.transaction(readonly=True):
                cursor = await connection.cursor(postgres_sql(fmt), flow)
                while batch := await cursor.fetch(BATCH):
                    yield [row[0] for row in batch]


async def _framed(
    batches: AsyncIterator[list[str]], fmt: str
) -> AsyncIterator[tuple[bytes, int]]:
    """Lines in their format's frame: a CSV header; one object a line; an array."""
    first = True
    async for batch in batches:
        if fmt == "csv":
            piece = "".join(batch).encode()
            piece = CSV_HEADER + piece if first else piece
        elif fmt == "ndjson":
            piece = ("\n".join(batch) + "\n").encode()
        else:
            piece = (("[" if first else ",") + ",".join(batch)).encode()
        yield piece, len(batch)
        first = False
    if fmt == "json" and not first:
        yield b"]", 0


async def _copy_csv(engine: AsyncEngine, flow: str) -> AsyncIterator[tuple[bytes, int]]:
    """PostgreSQL's COPY output, records ending in CRLF, behind a small queue:
    a slow reader holds COPY back instead of growing the queue."""
    queue: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue(maxsize=8)
    records = _CRLF()

    async def take(data: bytes) -> None:
        await queue.put(records.convert(bytes(data)))

    async def copy() -> None:
        try:
            async with driver_scope(engine) as driver:
                await driver.connection.copy_from_query(
                    postgres_sql("csv"), flow, output=take, format="csv"
                )
        finally:
            await queue.put(None)

    task = asyncio.ensure_future(copy())
    try:
        first = True
        while (item := await queue.get()) is not None:
            piece, ended = item
            yield (CSV_HEADER + piece if first else piece), ended
            first = False
        await task  # raises what COPY raised
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class _CRLF:
    """COPY ends records with LF; RFC 4180 (and SPEC) with CRLF. A line break
    inside a quoted cell is the cell's own text and stays as it is: quotes split
    a piece into runs, and only runs outside quotes are rewritten (and counted as
    record ends), the state carried from piece to piece."""

    def __init__(self) -> None:
        self.quoted = False

    def convert(self, data: bytes) -> tuple[bytes, int]:
        """The piece with CRLF record ends, and how many records it ends."""
        if b'"' not in data:
            if self.quoted:
                return data, 0
            return data.replace(b"\n", b"\r\n"), data.count(b"\n")
        runs = data.split(b'"')
        ended = 0
        for n in range(len(runs)):
            if not self.quoted ^ (n % 2 == 1):
                ended += runs[n].count(b"\n")
                runs[n] = runs[n].replace(b"\n", b"\r\n")
        self.quoted ^= (len(runs) - 1) % 2 == 1
        return b'"'.join(runs), ended


async def count(engine: AsyncEngine, flow: str) -> int:
    """How many leads a flow has (for the command's progress line)."""
    sql = statements.page_count(engine.dialect.name, ("flow",))
    async with driver_scope(engine) as driver:
        if driver.sqlite:
            rows = await driver.connection.execute_fetchall(sql, (flow,))
            return int(rows[0][0])
        return int(await driver.connection.fetchval(sql, flow))
