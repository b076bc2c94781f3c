"""`leads-gql import`: leads from our export files, or from Flowise's `lead` table.

Every record is validated as a create (`LeadCreate.parse`; its fast path for the
everyday lead) and stored with its id and createdDate, a chunk of a few thousand
leads at a time (`bulk.insert_rows`, which skips stored ids). A skipped lead is
read back: the same content is "already present", other content "conflicting"
(reported, never overwritten). The next chunks are read, and validated in a
second process, while the current ones are written, a few chunks in memory at
most, so a million leads never sit in memory at once.

Reports name a record by its position (a line, a JSON array index, a Flowise
row's id) and its fields, never by its contact data.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import csv
import dataclasses
import functools
import io
import json
import multiprocessing
import os
import signal
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import AsyncGenerator, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

import orjson
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from leads_gql.errors import FieldError, InvalidInput
from leads_gql.models import (
    INPUT_FIELDS,
    UUID_RE,
    LeadCreate,
    StoredLead,
    phone_digits,
    plain_lead,
)
from leads_gql.store import bulk, db, deferred, statements

# Records per chunk (CSV, JSON, Flowise; NDJSON goes by BLOCK): large enough
# that a statement's fixed costs (a round trip, handing a chunk to the parsing
# process) vanish, small enough that a chunk stays a megabyte or two.
CHUNK = 4000
EXTENSIONS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".csv": "csv", ".json": "json"}
FIELDS = ("id", "name", "email", "phone", "chatflowid", "chatId", "createdDate")
# Our CSV export puts a `'` before a cell that a spreadsheet would run as a
# formula (exports._FORMULA_STARTS); reading it back takes the `'` off.
_GUARDED = ("'=", "'+", "'-", "'@", "'\t", "'\r")
# The largest JSON array element we wait for (a lead is well under a kilobyte).
MAX_ELEMENT = 1 << 20
# SQLite's page cache for the import's connection (negative: KiB): a
# transaction's inserts touch pages all over the id and contact indexes, and
# pages that do not fit are written out and read back mid-transaction (a million
# leads: 25 s with 64 MiB, 20 s with 128 MiB, 20 s with 256 MiB).
SQLITE_CACHE_KIB = 128 * 1024
# Without --strict, a transaction is committed once it holds this many leads or
# is this old (see Importer._writer).
GROUP_LEADS = 400_000
GROUP_SECONDS = 5.0
# Connections storing an import into PostgreSQL at once (without --strict, whose
# single transaction needs one): each backend runs on a core of its own, where
# one connection leaves the database a single core (see Importer._lane).
POSTGRES_WRITERS = 2
# PostgreSQL: a transaction holds at most this many COPY savepoints. A backend
# keeps 64 subtransaction ids in shared memory; past them, every snapshot taken
# anywhere in the database must look subtransactions up on disk, slowly.
SAVEPOINTS = 60
# NDJSON is read in blocks of this many bytes (whole lines; a chunk each).
BLOCK = 1 << 20
# An import of at least this many leads into the empty table puts
# the table's indexes off until the leads are in (store/deferred.py); a smaller
# one maintains them as it goes, which costs it little. The size of a file is
# judged by its bytes (our exports: 150-250 bytes a lead).
PUT_OFF_FROM = 10_000
BYTES_PER_LEAD = 250
# Chunks parsing ahead of the one handed to the writer, per parsing process.
PARSE_AHEAD = 2
# Parsing processes. Into PostgreSQL, whose COPY leaves the importer's own work
# the larger part, two (a million leads into the table with its indexes put
# off: 13.9 s instead of 15.9 with one); into SQLite one, beside the writer,
# which keeps a core busy itself.
PARSERS = {"sqlite": 1, "postgresql": 2}


class UnusableInput(Exception):
    """The input cannot be read as leads at all (exit status 2)."""


# A record: its position (line, index or row number) and its object, or why it
# is not one ("is not valid JSON"), or an NDJSON line still to decode.
Record = tuple[int, Mapping[str, Any] | str | bytes]


@dataclasses.dataclass(frozen=True, slots=True)
class Lines:
    """NDJSON as read: whole lines, undecoded, and the first one's number. The
    reading process passes bytes along; the parsing process splits them."""

    first: int
    data: bytes

    def records(self) -> list[Record]:
        lines = self.data.split(b"\n")
        if not lines[-1]:
            lines.pop()  # after the last newline
        return [
            (number, line)
            for number, line in enumerate(lines, self.first)
            if line and not line.isspace()  # a blank line is no record
        ]


# What a source yields at a time: records, or NDJSON lines.
Chunk = list[Record] | Lines


# -- Sources ---------------------------------------------------------------------


class Source:
    """Records in chunks. `open` checks the input (and raises UnusableInput)
    before anything is written; `naming` says how reports name a record
    (`label`): "line", "element" or "row"."""

    naming = "row"

    async def open(self) -> None:
        return None

    async def size(self) -> int | None:
        """About how many records it holds, when that is known cheaply."""
        return None

    def chunks(self) -> AsyncGenerator[Chunk, None]:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def label(naming: str, position: int, data: Mapping[str, Any] | str) -> str:
    """A record's name in reports: its line or element number (and id), or a
    Flowise row's id (or its number, when its id is unusable)."""
    lead_id = _valid_id(data)
    if naming == "row":
        return f"row id {lead_id}" if lead_id else f"row {position}"
    return f"{naming} {position} (id {lead_id})" if lead_id else f"{naming} {position}"


def _valid_id(data: Mapping[str, Any] | str) -> str | None:
    """The record's id when it is a UUID (an id is not contact data; anything
    else in the field might be)."""
    if isinstance(data, str):
        return None
    value = data.get("id")
    if isinstance(value, str) and UUID_RE.fullmatch(value):
        return value.lower()
    return None


def guess_format(path: str) -> str | None:
    return EXTENSIONS.get(Path(path).suffix.lower())


class FileSource(Source):
    """Our export formats, from a file or standard input (`-`)."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self.naming = "element" if fmt == "json" else "line"
        self.binary: IO[bytes] | None = None
        self.text: io.TextIOWrapper | None = None
        self.lines: Iterator[Chunk] | None = None
        self.first: Chunk | None = None

    def _binary(self) -> IO[bytes]:
        if self.path == "-":
            return sys.stdin.buffer
        try:
            return open(self.path, "rb", buffering=1 << 20)
        except OSError as exc:
            raise UnusableInput(
                f"cannot read {self.path}: {exc.strerror or exc}"
            ) from None

    def _text(self, binary: IO[bytes]) -> TextIO:
        # Bytes that are not UTF-8 become lone surrogates, which validation
        # refuses per record ("must be valid Unicode text"), not per file.
        self.text = io.TextIOWrapper(
            binary, encoding="utf-8-sig", errors="surrogateescape", newline=""
        )
        return self.text

    async def open(self) -> None:
        self.binary = self._binary()
        try:
            if self.fmt == "ndjson":
                self.lines = _ndjson(self.binary)
            elif self.fmt == "csv":
                self.lines = _csv(self._text(self.binary))
            else:
                self.lines = _json_array(self._text(self.binary))
            # A header or an opening bracket that is wrong fails here, before
            # the database is touched.
            self.first = next(self.lines, None)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, OSError):
                raise UnusableInput(f"cannot read {self.path}: {exc}") from None
            raise

    async def size(self) -> int | None:
        if self.path == "-" or not os.path.isfile(self.path):
            return None  # a pipe
        return os.path.getsize(self.path) // BYTES_PER_LEAD

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        assert self.lines is not None
        try:
            if self.first is not None:
                yield self.first
            for chunk in self.lines:
                yield chunk
        except OSError as exc:
            raise UnusableInput(f"cannot read {self.path}: {exc}") from None

    async def close(self) -> None:
        if self.text is not None:
            self.text.detach()  # closing it would close the file (or stdin)
            self.text = None
        if self.binary is not None and self.path != "-":
            self.binary.close()
        self.binary = None


NOT_JSON = "is not valid JSON"
NOT_OBJECT = "is not a JSON object"


def _ndjson(stream: IO[bytes]) -> Iterator[Chunk]:
    """Blocks of about BLOCK bytes, cut after a newline; `prepare` splits and
    decodes them (the reading process never makes an object per line)."""
    number, rest = 1, bytearray()
    while block := stream.read(BLOCK):
        rest += block
        end = rest.rfind(b"\n") + 1
        if end:
            data = bytes(rest[:end])
            del rest[:end]
            yield Lines(number, data)
            number += data.count(b"\n")
    if rest:
        yield Lines(number, bytes(rest))


def _decode(number: int, line: bytes) -> Mapping[str, Any] | str:
    """An NDJSON line's object, or why it is none."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        if number != 1 or not line.startswith(codecs.BOM_UTF8):
            return NOT_JSON
        try:
            value = orjson.loads(line[len(codecs.BOM_UTF8) :])
        except orjson.JSONDecodeError:
            return NOT_JSON
    return value if isinstance(value, dict) else NOT_OBJECT


def _cell(text: str) -> str | None:
    """A CSV cell as its JSON value: empty is null; a formula guard comes off."""
    if not text:
        return None
    if text[0] == "'" and text.startswith(_GUARDED):
        return text[1:]
    return text


def _csv(stream: TextIO) -> Iterator[list[Record]]:
    reader = csv.reader(stream, strict=True)
    try:
        header = next(reader, None)
    except csv.Error:
        header = []
    if header is None:  # an empty file
        return
    names = [cell.strip() for cell in header]
    if "id" not in names or "chatflowid" not in names:
        # The first line is not echoed: without a header it holds a lead.
        raise UnusableInput(
            "the CSV file must start with a header naming the lead's columns: "
            + ",".join(FIELDS)
        )
    columns = [(n, name) for n, name in enumerate(names) if name in FIELDS]
    width = len(names)
    chunk: list[Record] = []
    line = reader.line_num + 1  # where the next record starts
    while True:
        try:
            row = next(reader, None)
        except csv.Error as exc:
            chunk.append((line, f"is not a valid CSV record ({exc})"))
            if reader.line_num + 1 == line:  # nothing more to read
                break
            line = reader.line_num + 1
            continue
        if row is None:
            break
        start, line = line, reader.line_num + 1
        if not row:  # a blank line
            continue
        if len(row) != width:
            chunk.append((start, f"has {len(row)} cells, the header {width}"))
        else:
            chunk.append((start, {name: _cell(row[n]) for n, name in columns}))
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_WHITESPACE = " \t\r\n"


def _json_array(stream: TextIO) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    try:
        for record in _json_elements(stream):
            chunk.append(record)
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    except UnusableInput:
        if chunk:  # what came before the break is stored (unless --strict)
            yield chunk
        raise
    if chunk:
        yield chunk


def _json_elements(stream: TextIO) -> Iterator[Record]:
    """A JSON array's elements, read piece by piece (the file may be larger than
    memory; our export writes it on one line)."""
    decoder = json.JSONDecoder()
    buffer, at, eof = "", 0, False

    def more() -> bool:
        nonlocal buffer, at, eof
        piece = stream.read(1 << 20)
        buffer, at, eof = buffer[at:] + piece, 0, not piece
        return bool(piece)

    def next_char() -> str:
        """The next character that is not whitespace ("" at the end)."""
        nonlocal at
        while True:
            while at < len(buffer) and buffer[at] in _WHITESPACE:
                at += 1
            if at < len(buffer) or not more():
                return buffer[at : at + 1]

    if next_char() != "[":
        raise UnusableInput("the JSON file must hold an array of leads")
    at += 1
    if next_char() == "]":
        at += 1
    else:
        index = 0
        while True:
            next_char()
            while True:
                try:
                    value, end = decoder.raw_decode(buffer, at)
                except json.JSONDecodeError as exc:
                    if not eof and len(buffer) - at <= MAX_ELEMENT and more():
                        continue
                    raise UnusableInput(
                        f"element {index} is not valid JSON: {exc.msg}"
                    ) from None
                # A number cut at the end of the buffer would decode short.
                if end < len(buffer) or eof or not more():
                    break
            at = end
            yield index, value if isinstance(value, dict) else NOT_OBJECT
            mark = next_char()
            at += 1
            if mark == "]":
                break
            if mark != ",":
                raise UnusableInput(
                    f"the JSON array is not valid after element {index} "
                    "(expected ',' or ']')"
                )
            index += 1
    if next_char():
        raise UnusableInput("the JSON file has more after its array")


class FlowiseSQLite(Source):
    """Flowise's own SQLite file (by default ~/.flowise/database.sqlite), opened
    read-only and read in rowid order, a chunk at a time, in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        if not self.path.is_file():
            raise UnusableInput(f"no Flowise database at {self.path}: no such file")
        self.connection = await asyncio.to_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise UnusableInput(f"cannot open {self.path}: {exc}") from None
        try:
            # Text that is not UTF-8 reaches validation (and is refused there,
            # per lead) instead of failing the whole read.
            connection.text_factory = _lenient_text
            columns = connection.execute('PRAGMA table_info("lead")').fetchall()
            # SQLite matches column names in any letter case.
            _check_columns(
                self.path.name, {str(c[1]).lower() for c in columns}, fold=True
            )
        except BaseException as exc:
            connection.close()
            if isinstance(exc, sqlite3.Error):
                raise UnusableInput(
                    f"cannot read {self.path} as an SQLite database: {exc}"
                ) from None
            raise
        return connection

    async def size(self) -> int | None:
        connection = self.connection
        assert connection is not None

        def count() -> int | None:
            with contextlib.suppress(sqlite3.Error):
                (rows,) = connection.execute('SELECT count(*) FROM "lead"').fetchone()
                return int(rows)
            return None

        return await asyncio.to_thread(count)

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        assert self.connection is not None
        columns = ", ".join(f'"{name}"' for name in FIELDS)
        try:
            cursor = await asyncio.to_thread(
                self.connection.execute, f'SELECT {columns} FROM "lead"'
            )
            number = 0
            while rows := await asyncio.to_thread(cursor.fetchmany, CHUNK):
                chunk: list[Record] = []
                for row in rows:
                    number += 1
                    chunk.append((number, dict(zip(FIELDS, row, strict=True))))
                yield chunk
        except sqlite3.Error as exc:
            raise UnusableInput(f"cannot read {self.path}: {exc}") from None

    async def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def _lenient_text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _check_columns(where: str, columns: set[str], *, fold: bool = False) -> None:
    if not columns:
        raise UnusableInput(
            f"{where} has no `lead` table: is it Flowise's database? "
            "(SQLite: ~/.flowise/database.sqlite by default)"
        )
    wanted = [name.lower() if fold else name for name in FIELDS]
    missing = [
        name for name, key in zip(FIELDS, wanted, strict=True) if key not in columns
    ]
    if missing:
        raise UnusableInput(
            f"Flowise's `lead` table in {where} has no column "
            + ", ".join(missing)
            + f": the importer reads Flowise's columns ({', '.join(FIELDS)})"
        )


# Flowise on PostgreSQL: `createdDate` is a `timestamp` without a time zone that
# `now()` filled in the server's TimeZone, which our session shares: the cast to
# timestamptz reads it in that zone. Printed as UTC for validation; `infinity`
# and years outside 1-9999 stay text, which validation refuses.
_PG_INSTANT = (
    "CASE WHEN {c}::timestamptz AT TIME ZONE 'UTC' BETWEEN '0001-01-01' "
    "AND '9999-12-31 23:59:59.999999' THEN to_char({c}::timestamptz AT TIME ZONE "
    "'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') ELSE {c}::text END"
)
_PG_COLUMNS = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
    "WHERE a.attrelid = to_regclass('lead') AND a.attnum > 0 AND NOT a.attisdropped"
)


class FlowisePostgres(Source):
    """Flowise's PostgreSQL database: its `lead` table (found by the search_path),
    read through a cursor in one read-only snapshot."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: Any = None

    async def open(self) -> None:
        try:
            import asyncpg  # type: ignore[import-untyped]
        except ModuleNotFoundError:
            raise UnusableInput(
                "reading PostgreSQL needs asyncpg: pip install 'leads-gql[postgres]'"
            ) from None
        try:
            self.connection = await asyncpg.connect(self.url, timeout=10)
            columns = dict(await self.connection.fetch(_PG_COLUMNS))
        except Exception as exc:  # refused, unknown database, bad URL...
            await self.close()
            raise UnusableInput(
                f"cannot read Flowise's PostgreSQL database: {exc}"
            ) from None
        try:
            _check_columns("the PostgreSQL database", set(columns))
        except UnusableInput:
            await self.close()
            raise
        created = '"createdDate"'
        if columns["createdDate"].startswith("timestamp"):
            created = _PG_INSTANT.format(c=created)
        else:
            created += "::text"
        selected = [f'"{name}"::text' for name in FIELDS[:-1]] + [created]
        self.sql = f"SELECT {', '.join(selected)} FROM lead"

    async def size(self) -> int | None:
        try:
            return int(await self.connection.fetchval("SELECT count(*) FROM lead"))
        except Exception:  # (read when the rows are)
            return None

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        connection = self.connection
        try:
            async with connection.transaction(
                isolation="repeatable_read", readonly=True
            ):
                cursor = await connection.cursor(self.sql)
                number = 0
                while rows := await cursor.fetch(CHUNK):
                    chunk: list[Record] = []
                    for row in rows:
                        number += 1
                        chunk.append((number, dict(zip(FIELDS, row, strict=True))))
                    yield chunk
        except OSError as exc:
            raise UnusableInput(f"reading Flowise's database failed: {exc}") from None

    async def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close(timeout=5)
            self.connection = None


def flowise_source(url: str) -> Source:
    """`--from-flowise`: a path or sqlite:///path, or postgresql://..."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("postgresql", "postgres"):
        return FlowisePostgres(url)
    if sep and scheme.lower() in ("sqlite", "file"):
        # sqlite:///relative.db, sqlite:////absolute.db (SQLAlchemy's form)
        return FlowiseSQLite(Path(rest[1:] if rest.startswith("/") else rest))
    if sep:
        raise UnusableInput(
            f"--from-flowise: unsupported scheme {scheme!r} "
            "(give a path, sqlite:///path or postgresql://...)"
        )
    return FlowiseSQLite(Path(url).expanduser())


# -- The import ------------------------------------------------------------------


@dataclasses.dataclass
class Summary:
    read: int = 0
    stored: int = 0
    present: int = 0
    conflicting: int = 0
    invalid: int = 0
    seconds: float = 0.0
    # --strict: the record that stopped the import (nothing was stored).
    stopped_at: str | None = None

    @property
    def refused(self) -> int:
        return self.conflicting + self.invalid

    def text(self) -> str:
        return (
            f"read {self.read:,}, stored {self.stored:,}, "
            f"already present {self.present:,}, conflicting {self.conflicting:,}, "
            f"invalid {self.invalid:,} in {self.seconds:.1f} s"
        )


class Progress:
    """Records read, the rate, what was stored and refused, on stderr: one line
    redrawn in place on a terminal, a line every few seconds otherwise. Reports
    of refused records go through `report`, between progress lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = 0.2 if self.tty else 5.0
        self.start = self.shown = time.monotonic()
        self.drawn = False

    def show(self, summary: Summary, pending: int = 0) -> None:
        """`pending`: stored in the open transaction, not committed yet."""
        now = time.monotonic()
        if now - self.shown < self.every:
            return
        self.shown = now
        rate = summary.read / max(now - self.start, 1e-6)
        text = (
            f"read {summary.read:,} ({rate:,.0f}/s), "
            f"stored {summary.stored + pending:,}, "
            f"already present {summary.present:,}, invalid {summary.invalid:,}, "
            f"conflicting {summary.conflicting:,}"
        )
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K")
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def report(self, line: str) -> None:
        self.end()
        self.stream.write(line + "\n")

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.drawn = False
        self.stream.flush()


@dataclasses.dataclass(slots=True)
class _Batch:
    """A chunk, validated: how many records it held, its leads as rows to insert
    (`bulk.as_row`), each row's position, the fields the import filled in by row
    (no chatId or createdDate given: a re-run compares only what the record
    gives), and the reports of its invalid records, in order."""

    records: int
    rows: list[tuple[Any, ...]]
    positions: list[int]
    filled: dict[int, tuple[str, ...]]
    invalid: list[tuple[int, str]]
    # PostgreSQL without --strict: the rows as COPY text (`bulk.copy_text`),
    # made in the parsing process, instead of `rows`; the batch's shares
    # (`_shares`) made there too, each with its text.
    copy: bytes | None = None
    shares: list[_Batch] | None = None


@dataclasses.dataclass(slots=True)
class _Outcome:
    """What storing a batch did."""

    stored: int = 0
    present: int = 0
    conflicts: list[tuple[int, str]] = dataclasses.field(default_factory=list)


class _Stop(Exception):
    """--strict met a refused record."""


ID_REQUIRED: FieldError = {
    "field": "id",
    "message": "is required for an import (a re-run finds the lead by it)",
}


def _validate(data: Mapping[str, Any]) -> tuple[LeadCreate | None, list[FieldError]]:
    """The full validation of a create, plus the import's own rule: an id."""
    try:
        create: LeadCreate | None = LeadCreate.parse(data)
        errors: list[FieldError] = []
    except InvalidInput as exc:
        create, errors = None, list(exc.errors)
    if data.get("id") is None:
        errors.insert(0, ID_REQUIRED)
    return create, errors


def _message(error: FieldError) -> str:
    # The email check's details quote parts of the address: left out.
    message = error["message"]
    if error["field"] == "email":
        message = message.split(": ", 1)[0]
    return f"{error['field']}: {message}"


def _differences(
    lead: StoredLead, filled: tuple[str, ...], stored: StoredLead
) -> list[str]:
    """The fields the record gives with another value than the stored lead's
    (`LeadCreate.matches`, field by field)."""
    return [
        wire
        for wire, attr, _ in INPUT_FIELDS
        if attr not in filled
        and (value := getattr(lead, attr)) is not None
        and value != getattr(stored, attr)
    ]


@functools.lru_cache(maxsize=4)
def _dialect(drivername: str) -> Dialect:
    return make_url(f"{drivername}://").get_dialect()()


def prepare(
    chunk: Chunk, naming: str, drivername: str, strict: bool, copies: int = 0
) -> _Batch:
    """Validate a chunk as creates and make its rows (for the database named by
    its SQLAlchemy driver name), or with `copies`, its shares for that many
    writers as COPY text. Runs in the parsing process (`_Parser`); with
    --strict it stops at the first invalid record.

    An everyday record with every field (`plain_lead`) becomes its row at once;
    any other is validated in full (`_validate`) and explained if invalid, and
    where it gives no chatId or createdDate the import fills them in."""
    now = datetime.now(UTC)
    dialect = _dialect(drivername)
    created_date = statements.created_date_in(dialect)
    instant = bulk.copy_instant if copies else statements.plain_instant_in(dialect)
    records = chunk.records() if isinstance(chunk, Lines) else chunk
    batch = _Batch(len(records), [], [], {}, [])
    rows, positions = batch.rows, batch.positions
    for position, record in records:
        data = _decode(position, record) if isinstance(record, bytes) else record
        if isinstance(data, str):
            batch.invalid.append((position, f"{label(naming, position, data)}: {data}"))
        else:
            lead = plain_lead(data)
            if lead is not None and lead[0] and lead[5]:
                lead_id, name, email, phone, flow, chat_id, created = lead
                if created is not None:
                    rows.append(
                        (lead_id, name, email, phone, flow, chat_id, instant(created),
                         phone_digits(phone))
                    )  # fmt: skip
                    positions.append(position)
                    continue
            create, errors = _validate(data)
            if create is not None and not errors:
                if create.chat_id is None or create.created_date is None:
                    batch.filled[len(rows)] = tuple(
                        attr
                        for attr in ("chat_id", "created_date")
                        if getattr(create, attr) is None
                    )
                row = bulk.as_row(create.to_lead(now), created_date)
                if copies:
                    row = (*row[:6], bulk.copy_instant(row[6]), row[7])
                rows.append(row)
                positions.append(position)
                continue
            reasons = "; ".join(_message(e) for e in errors)
            where = label(naming, position, data)
            batch.invalid.append((position, f"{where}: invalid: {reasons}"))
        if strict:  # the rest of the chunk is never stored
            break
    if copies:
        batch.shares = [
            _Batch(0, [], share.positions, share.filled, [], bulk.copy_text(share.rows))
            for share in _shares(batch, copies)
        ]
        batch.rows, batch.positions, batch.filled = [], [], {}
    return batch


def _parsing_process(importer: int) -> None:
    """Set up the parsing process: Ctrl-C reaches the whole process group, and
    the importer stops this process itself; an importer killed outright cannot,
    so this process ends once it is gone (it would wait for chunks forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(importer,), daemon=True).start()


def _end_with(importer: int) -> None:
    while os.getppid() == importer:
        time.sleep(0.5)
    os._exit(1)


def _ready() -> None:
    """Runs in the parsing process once it has imported this module."""


class _Parser:
    """Runs `prepare` in other processes (PARSERS), so that validating runs
    beside the database's writes (in one process they share one GIL: a million
    leads took 28 s instead of 19-21 when measured). The second chunk starts
    them; until they are ready (imports take most of a second), chunks are
    validated here, so a small import starts none and a large one never waits.
    Results come back in the order submitted."""

    def __init__(
        self, naming: str, drivername: str, strict: bool, processes: int, copies: int
    ) -> None:
        self.args = (naming, drivername, strict, copies)
        self.processes = processes
        self.submitted = 0
        self.pool: ProcessPoolExecutor | None = None
        self.ready: Future[None] | None = None

    def submit(self, chunk: Chunk) -> asyncio.Future[_Batch]:
        self.submitted += 1
        if self.submitted == 2:
            # spawn, not fork: this process runs threads (the database driver's).
            self.pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_parsing_process,
                initargs=(os.getpid(),),
            )
            self.ready = self.pool.submit(_ready)
        if self.ready is not None and self.ready.done():
            assert self.pool is not None  # started with `ready`
            return asyncio.wrap_future(self.pool.submit(prepare, chunk, *self.args))
        done: asyncio.Future[_Batch] = asyncio.get_running_loop().create_future()
        try:
            done.set_result(prepare(chunk, *self.args))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _Transaction:
    """An explicit transaction on the driver connection (the engine is in
    autocommit): SQLite's BEGIN IMMEDIATE (the write lock at once, not at the
    first insert) or asyncpg's."""

    def __init__(self, driver: db.Driver) -> None:
        self.driver = driver
        self.postgres: Any = None
        self.active = False
        self.since = 0.0

    async def begin(self) -> None:
        if self.driver.sqlite:
            await self.driver.connection.execute("BEGIN IMMEDIATE")
        else:
            self.postgres = self.driver.connection.transaction()
            await self.postgres.start()
        self.active, self.since = True, time.monotonic()

    async def commit(self) -> None:
        # None begun: a --strict import of a file with no records stored nothing.
        if not self.active:
            return
        self.active = False
        if self.driver.sqlite:
            await self.driver.connection.execute("COMMIT")
        else:
            await self.postgres.commit()

    async def rollback(self) -> None:
        if not self.active:
            return
        self.active = False
        with contextlib.suppress(Exception):
            if self.driver.sqlite:
                await self.driver.connection.execute("ROLLBACK")
            else:
                await self.postgres.rollback()


class _Writer:
    """One connection's share of the import: its transaction, how many leads it
    stored there, not committed yet, and the shares of batches it is to store,
    each with the future its outcome goes to. On PostgreSQL (without --strict)
    it stores by COPY while the rows are new (`copying`), each COPY a savepoint
    of its transaction."""

    def __init__(self, driver: db.Driver, *, copying: bool) -> None:
        self.driver = driver
        self.transaction = _Transaction(driver)
        self.pending = 0
        self.copying = copying
        self.savepoints = 0
        self.shares: asyncio.Queue[tuple[_Batch, asyncio.Future[_Outcome]] | None]
        self.shares = asyncio.Queue(maxsize=2)


def _shares(batch: _Batch, count: int) -> list[_Batch]:
    """A batch's rows split between `count` writers by a hash of the id, the
    same in every process: a repeated id always goes to the same connection, so
    no writer waits on a row that another holds in its open transaction (two
    could wait on each other for ever)."""
    if batch.shares is not None:  # made by `prepare`
        return batch.shares
    if count == 1:
        return [batch]
    shares = [_Batch(0, [], [], {}, []) for _ in range(count)]
    for n, row in enumerate(batch.rows):
        share = shares[zlib.crc32(row[0].encode()) % count]
        if n in batch.filled:
            share.filled[len(share.rows)] = batch.filled[n]
        share.rows.append(row)
        share.positions.append(batch.positions[n])
    return shares


class Importer:
    """One import: `run` reads the source and stores what it holds."""

    def __init__(self, source: Source, *, strict: bool, progress: Progress) -> None:
        self.source, self.strict, self.progress = source, strict, progress
        self.summary = Summary()
        self.writers: list[_Writer] = []

    @property
    def pending(self) -> int:
        """Stored in the open transactions, not committed yet."""
        return sum(writer.pending for writer in self.writers)

    async def _store(self, writer: _Writer, batch: _Batch) -> _Outcome:
        """Insert the batch's leads; read back the ones that were skipped.

        By COPY while the leads are new; once a COPY meets a stored id (a
        re-run, an overlap), by INSERT ... ON CONFLICT DO NOTHING, which skips
        them, until a batch is all new again."""
        driver = writer.driver
        if batch.copy is not None:
            if not batch.positions:
                return _Outcome()
            if writer.copying:
                if await bulk.copy_rows(driver, batch.copy):
                    writer.savepoints += 1
                    return _Outcome(stored=len(batch.positions))
                writer.copying = False  # (its savepoint was rolled back)
            batch.rows = bulk.rows_from_copy(batch.copy)
        stored = await bulk.insert_rows(driver, batch.rows)
        outcome = _Outcome(stored=sum(stored))
        if outcome.stored == len(stored):
            writer.copying = self.copies(driver)
            return outcome
        # Some were stored already (a re-run): the same lead, or another?
        skipped = [n for n, done in enumerate(stored) if not done]
        created_date = statements.created_date_out(driver.dialect)
        leads = {}
        for n in skipped:
            lead_id, name, email, phone, flow, chat_id, created = batch.rows[n][:7]
            leads[n] = StoredLead(
                lead_id, name, email, phone, flow, chat_id, created_date(created)
            )
        for attempt in range(3):
            found = await bulk.stored_by_ids(driver, [leads[n].id for n in skipped])
            todo = []
            for n in skipped:
                lead_id = leads[n].id
                existing = found.get(lead_id)
                if existing is None:  # deleted since the insert: store it again
                    todo.append(n)
                    continue
                differs = _differences(leads[n], batch.filled.get(n, ()), existing)
                if not differs:
                    outcome.present += 1
                    continue
                where = label(self.source.naming, batch.positions[n], {"id": lead_id})
                outcome.conflicts.append(
                    (
                        batch.positions[n],
                        f"{where}: conflicts with the stored lead "
                        f"({', '.join(differs)} differ); not overwritten",
                    )
                )
            if not todo:
                break
            if attempt == 2:
                raise RuntimeError("leads were deleted while the import stored them")
            stored = await bulk.insert_rows(driver, [batch.rows[n] for n in todo])
            outcome.stored += sum(stored)
            skipped = [n for n, done in zip(todo, stored, strict=True) if not done]
            if not skipped:
                break
        return outcome

    def _settle(self, batch: _Batch, outcome: _Outcome) -> None:
        """Count and report a stored batch, in file order; --strict stops at its
        first refused record."""
        summary = self.summary
        refused = sorted(batch.invalid + outcome.conflicts)
        if self.strict and refused:
            position, line = refused[0]
            self.progress.report(line)
            summary.invalid += any(p == position for p, _ in batch.invalid)
            summary.conflicting += any(p == position for p, _ in outcome.conflicts)
            summary.stopped_at = line.split(":", 1)[0]
            raise _Stop
        summary.present += outcome.present
        summary.invalid += len(batch.invalid)
        summary.conflicting += len(outcome.conflicts)
        for _, line in refused:
            self.progress.report(line)

    async def _lane(self, writer: _Writer) -> None:
        """Store one writer's shares as they come, each into its future. Each
        writer goes at its own pace: one that waits for the other at every
        batch loses a third of the rate (PostgreSQL merges a GIN index's pending
        entries now in one backend, now in the other). After a failure, every
        later share fails with it; `_writer` stops at the first."""
        failed: BaseException | None = None
        while (item := await writer.shares.get()) is not None:
            share, done = item
            if failed is None:
                try:
                    if not writer.transaction.active:
                        await writer.transaction.begin()
                    outcome = await self._store(writer, share)
                    writer.pending += outcome.stored
                    if not self.strict and (
                        writer.pending >= GROUP_LEADS // len(self.writers)
                        or writer.savepoints >= SAVEPOINTS
                        or time.monotonic() - writer.transaction.since >= GROUP_SECONDS
                    ):
                        await self._commit(writer)
                except Exception as exc:
                    failed = exc
            if not done.cancelled():
                if failed is None:
                    done.set_result(outcome)
                else:
                    done.set_exception(failed)
        if failed is None and not self.strict and writer.transaction.active:
            await self._commit(writer)

    async def _writer(self, queue: asyncio.Queue[_Batch | None]) -> None:
        """Store the batches: with --strict in one transaction (committed by
        `run` when every record passed); otherwise in transactions of up to
        GROUP_LEADS leads, each several statements. A transaction's commit and
        flush are shared by many leads, and SQLite writes an index page that a
        transaction touches once, where small transactions would write it again
        and again (at a million leads, 11,000 leads/s with a transaction per
        statement, four times that with these).

        Each batch is shared between the writers (`_shares`), each storing its
        shares in turn (`_lane`), one statement per connection at a time, while
        the parsing process prepares the next batches. Batches are settled
        (counted, their refused records reported) in file order."""
        loop = asyncio.get_running_loop()
        lanes = [asyncio.ensure_future(self._lane(w)) for w in self.writers]
        stored: collections.deque[tuple[_Batch, list[asyncio.Future[_Outcome]]]]
        stored = collections.deque()
        try:
            while (batch := await queue.get()) is not None:
                outcomes = []
                shares = _shares(batch, len(self.writers))
                for writer, share in zip(self.writers, shares, strict=True):
                    done: asyncio.Future[_Outcome] = loop.create_future()
                    await writer.shares.put((share, done))
                    outcomes.append(done)
                stored.append((batch, outcomes))
                while stored and all(done.done() for done in stored[0][1]):
                    await self._settle_next(stored)
            while stored:
                await self._settle_next(stored)
            for writer in self.writers:
                await writer.shares.put(None)
            await asyncio.gather(*lanes)
        finally:
            for lane in lanes:
                if not lane.done():
                    lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            for _, outcomes in stored:  # left unsettled: stopped or failed
                for done in outcomes:
                    if not done.cancel() and not done.cancelled():
                        done.exception()  # (else asyncio logs it as never seen)

    async def _settle_next(
        self,
        stored: collections.deque[tuple[_Batch, list[asyncio.Future[_Outcome]]]],
    ) -> None:
        """Settle the oldest batch once each of its shares is stored."""
        batch, outcomes = stored.popleft()
        outcome = _Outcome()
        for part in [await done for done in outcomes]:
            outcome.stored += part.stored
            outcome.present += part.present
            outcome.conflicts += part.conflicts
        self._settle(batch, outcome)
        self.progress.show(self.summary, self.pending)

    async def _commit(self, writer: _Writer) -> None:
        await writer.transaction.commit()
        self.summary.stored += writer.pending
        writer.pending = writer.savepoints = 0

    def copies(self, driver: db.Driver) -> bool:
        """Whether new leads go in by COPY: on PostgreSQL, but not with
        --strict, whose one transaction could not keep its savepoints apart."""
        return not driver.sqlite and not self.strict

    async def _forward(
        self,
        parsing: asyncio.Future[_Batch],
        queue: asyncio.Queue[_Batch | None],
        writer: asyncio.Future[None],
    ) -> bool:
        """Hand a parsed chunk to the writer; False when nothing more is to be
        read (the writer stopped, or --strict met an invalid record)."""
        batch = await parsing
        self.summary.read += batch.records
        if not await _hand_over(queue, batch, writer):
            return False
        self.progress.show(self.summary, self.pending)
        return not (self.strict and batch.invalid)

    async def _pipeline(self, drivername: str) -> None:
        """Read and parse the next chunks while the current ones are written: a
        few chunks parsing (PARSE_AHEAD), two waiting for the writers, and at
        each writer two shares queued and one being written at most, so memory
        stays flat."""
        queue: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=2)
        writer = asyncio.ensure_future(self._writer(queue))
        processes = PARSERS[_dialect(drivername).name]
        # COPY text for each writer, where they store by COPY.
        copies = len(self.writers) if self.writers[0].copying else 0
        parser = _Parser(self.source.naming, drivername, self.strict, processes, copies)
        parsing: collections.deque[asyncio.Future[_Batch]]
        parsing = collections.deque()
        broken: Exception | None = None
        more = True
        try:
            try:
                # Closed when left early: Flowise's cursor and snapshot end here.
                async with contextlib.aclosing(self.source.chunks()) as chunks:
                    async for chunk in chunks:
                        if writer.done():
                            more = False
                            break
                        parsing.append(parser.submit(chunk))
                        if len(parsing) > PARSE_AHEAD * processes:
                            more = await self._forward(parsing.popleft(), queue, writer)
                            if not more:
                                break
            except Exception as exc:  # the input broke off: store what was read
                broken = exc
            while more and parsing:
                more = await self._forward(parsing.popleft(), queue, writer)
            await _hand_over(queue, None, writer)
            try:
                await writer
            except _Stop:
                return
            if broken is not None:
                raise broken
        finally:
            for left in parsing:
                left.cancel()
            parser.close()
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(BaseException):
                    await writer

    async def run(self, engine: AsyncEngine) -> Summary:
        """Import every record into the engine's database (migrated already).
        With --strict, everything is rolled back unless every record was stored
        or already present."""
        start = time.monotonic()
        sqlite = engine.dialect.name == "sqlite"
        count = 1 if sqlite or self.strict else POSTGRES_WRITERS
        try:
            async with contextlib.AsyncExitStack() as scope:
                for _ in range(count):
                    driver = await scope.enter_async_context(db.driver_scope(engine))
                    self.writers.append(_Writer(driver, copying=self.copies(driver)))
                first, put_off = self.writers[0].driver.connection, 0
                if sqlite:  # one writer
                    await first.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
                if (await self.source.size() or 0) >= PUT_OFF_FROM:
                    put_off = await deferred.put_off(first)
                if put_off:
                    self.progress.report(
                        f"the lead table is empty: its {put_off} secondary indexes "
                        "are built once the leads are in"
                    )
                try:
                    await self._pipeline(engine.url.drivername)
                    if self.strict and self.summary.stopped_at is None:
                        await self._commit(self.writers[0])
                finally:
                    # Stopped, failed or interrupted: the open transactions'
                    # leads are not stored.
                    for writer in self.writers:
                        await writer.transaction.rollback()
                        writer.pending = writer.savepoints = 0
                    if put_off:
                        await self._build_indexes(engine, scope)
        finally:
            self.summary.seconds = time.monotonic() - start
            self.progress.end()
        return self.summary

    async def _build_indexes(
        self, engine: AsyncEngine, scope: contextlib.AsyncExitStack
    ) -> None:
        """Build the indexes put off (`deferred.build`), on as many connections
        as the import writes with on PostgreSQL (SQLite: its one)."""
        connections = [writer.driver.connection for writer in self.writers]
        # PostgreSQL builds on two, though --strict wrote with one.
        while not self.writers[0].driver.sqlite and len(connections) < POSTGRES_WRITERS:
            driver = await scope.enter_async_context(db.driver_scope(engine))
            connections.append(driver.connection)
        self.progress.report("building the indexes...")
        began = time.monotonic()
        try:
            built = await deferred.build(connections)
        except BaseException:
            self.progress.report(
                "the indexes were not all built: `leads-gql migrate` builds the rest"
            )
            raise
        self.progress.report(
            f"built {built} indexes in {time.monotonic() - began:.1f} s"
        )


async def _hand_over(
    queue: asyncio.Queue[_Batch | None],
    item: _Batch | None,
    writer: asyncio.Future[None],
) -> bool:
    """Queue `item` for the writer; False when the writer stopped first."""
    put = asyncio.ensure_future(queue.put(item))
    await asyncio.wait((put, writer), return_when=asyncio.FIRST_COMPLETED)
    if not put.done():
        put.cancel()
        return False
    return True
