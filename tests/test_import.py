"""`leads-gql import`: our export files and Flowise's database, into a real database
(SQLite, and PostgreSQL when LEADS_TEST_DATABASE_URL is set), through the command
itself (a real process for the main cases, `cli.main` in-process for the rest)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import (
    HealthCheck,
    given,
    settings as hypothesis_settings,
    strategies as st,
)
from sqlalchemy import select

from leads_gql import cli, importer
from leads_gql.config import Settings
from leads_gql.errors import InvalidInput
from leads_gql.models import (
    Lead,
    LeadCreate,
    PlainLead,
    lead_to_dict,
    plain_instant,
    plain_lead,
)
from leads_gql.store import bulk, db, statements
from tests.conftest import PG_SKIP, _pg_admin, new_id, pg_url_for
from tests.server import CLI, Server, cli_env, run_cli

FLOW = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
# Flowise 3.1.2's own DDL (its migrations AddLead1710832117612 and
# AddLead1710832137905; see /work/flowise-lead-schema.md).
FLOWISE_SQLITE_DDL = (
    'CREATE TABLE IF NOT EXISTS "lead" ("id" varchar PRIMARY KEY NOT NULL, '
    '"chatflowid" varchar NOT NULL, "chatId" varchar NOT NULL, "name" text, '
    '"email" text, "phone" text, "createdDate" datetime NOT NULL DEFAULT '
    "(datetime('now')));"
)
FLOWISE_POSTGRES_DDL = """CREATE TABLE IF NOT EXISTS lead (
    id uuid NOT NULL DEFAULT uuid_generate_v4(),
    "chatflowid" varchar NOT NULL,
    "chatId" varchar NOT NULL,
    "name" text,
    "email" text,
    "phone" text,
    "createdDate" timestamp NOT NULL DEFAULT now(),
    CONSTRAINT "PK_98419043dd704f54-9830ab78f0" PRIMARY KEY (id)
);"""


def plain_url(database_url: str) -> str:
    """The URL as a user writes it in LEADS_DATABASE_URL."""
    return database_url.replace("+aiosqlite", "").replace("+asyncpg", "")


def lead(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": new_id(),
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "+44 20 7946 0958",
        "chatflowid": FLOW,
        "chatId": "chat-1",
        "createdDate": "2024-08-24T14:15:22Z",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


def ndjson(*items: Any) -> bytes:
    """Lines: dicts as JSON, bytes as they are."""
    return b"".join(
        (item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n"
        for item in items
    )


async def _stored(database_url: str) -> dict[str, dict[str, Any]]:
    engine = db.make_engine(Settings(database_url=database_url))
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(Lead.__table__))).all()  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
    return {row.id: lead_to_dict(row) for row in rows}


def stored(database_url: str) -> dict[str, dict[str, Any]]:
    """Every lead in the database, by id, as the API prints it."""
    return asyncio.run(_stored(database_url))


def expected(body: dict[str, Any]) -> dict[str, Any]:
    """How a valid import record reads back (all seven keys given)."""
    return lead_to_dict(LeadCreate.parse(body).to_lead(None))  # type: ignore[arg-type]


class Run:
    """`leads-gql import ...` in-process: exit status, stdout, stderr."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.monkeypatch, self.capsys = monkeypatch, capsys

    def __call__(self, database_url: str, *args: str) -> tuple[int, str, str]:
        self.monkeypatch.setenv("LEADS_DATABASE_URL", plain_url(database_url))
        self.capsys.readouterr()
        status = cli.main(["import", *args])
        out, err = self.capsys.readouterr()
        return status, out, err


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(monkeypatch, capsys)


def summary(out: str) -> dict[str, int]:
    """The summary line's counts: {"read": 10, "stored": 3, ...}."""
    line = out.strip().splitlines()[-1]
    counts = line.split(" in ")[0]
    result = {}
    for part in counts.split(", "):
        label, _, number = part.rpartition(" ")
        result[label] = int(number.replace(",", ""))
    return result


# -- The fast path agrees with the validation ------------------------------------

UUIDS = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.sampled_from(
        ["", "not-a-uuid", "3fa85f64-5717-4562-b3fc-2c963f66afa", " " + FLOW]
    ),
)
TEXTS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["", "   ", " Ada ", "a\x00b", "\ud800", "x" * 255, "x" * 256, "Zoë"]
    ),
    st.text(min_size=250, max_size=260),
)
EMAILS = st.one_of(
    st.emails().map(str),
    st.sampled_from(
        [
            "ada@example.com",
            " ada@example.com ",
            "ada@example.test",
            "a@localhost",
            "a@b.local",
            "a@xn--bcher-kva.example",
            "a@ab--cd.example",
            "a..b@example.com",
            "a@example",
            '"a b"@example.com',
            "ada@exämple.com",
            "a" * 65 + "@example.com",
            "a@" + "b" * 250 + ".com",
            "",
            "  ",
            "@example.com",
            "ada@",
            "ADA@EXAMPLE.COM",
        ]
    ),  # fmt: skip
)
PHONES = st.one_of(
    st.from_regex(r"\+?[0-9 ().\-]{0,30}", fullmatch=True),
    st.sampled_from(
        [
            "+44 20 7946 0958",
            "12345",
            "1234",
            "1" * 20,
            "1" * 21,
            "(555) 010.1234",
            "++44 20",
            "+",
            " +1 555 0100 ",
            "５５５５５",
            "1 2 3 4 5",
            "-----12345",
        ]
    ),  # fmt: skip
)
INSTANTS = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,7})?)?"
        r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?",
        fullmatch=True,
    ),
    st.sampled_from(
        [
            "2024-08-24T14:15:22Z",
            "2024-08-24 14:15:22",
            "2024-08-24 14:15:22.123",
            "2024-08-24T14:15:22.123456Z",
            "2024-08-24T24:00:00Z",
            "2024-02-30 00:00:00",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "2024-08-24",
            "2024-08-24T14:15:22.1234Z",
            "２０２４-08-24T14:15:22Z",
        ]
    ),  # fmt: skip
)
ODD = st.one_of(st.none(), st.integers(), st.booleans(), st.lists(st.integers()))


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    fields = {
        "id": UUIDS, "name": TEXTS, "email": EMAILS, "phone": PHONES,
        "chatflowid": UUIDS, "chatId": TEXTS, "createdDate": INSTANTS,
    }  # fmt: skip
    record: dict[str, Any] = {}
    for key, values in fields.items():
        choice = draw(st.integers(0, 9))
        if choice == 0:
            continue  # absent
        record[key] = draw(ODD) if choice == 1 else draw(values)
    return record


def _agrees(fast: PlainLead, record: dict[str, Any]) -> None:
    """The fast path's lead is `parse`'s, value for value, and its createdDate
    text becomes what the datetime would in every row form."""
    slow = LeadCreate.parse(record)
    *fields, created = fast
    assert fields == [
        slow.id, slow.name, slow.email, slow.phone, slow.chatflowid, slow.chat_id
    ]  # fmt: skip
    if created is None:
        assert slow.created_date is None
        return
    assert repr(plain_instant(created)) == repr(slow.created_date)
    for drivername in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        dialect = importer._dialect(drivername)
        ours = statements.plain_instant_in(dialect)(created)
        assert ours == statements.created_date_in(dialect)(slow.created_date)
    # COPY text: what PostgreSQL reads is the same instant (the round trip
    # through a database: tests/test_import.py's imports into PostgreSQL).
    copied = datetime.fromisoformat(bulk.copy_instant(created))
    assert copied.utcoffset() is not None and copied == slow.created_date


@hypothesis_settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_the_fast_path_agrees_with_the_validation(record: dict[str, Any]) -> None:
    fast = plain_lead(record)
    if fast is not None:  # (None: `parse` decides)
        _agrees(fast, record)


AWKWARD = st.text(
    st.sampled_from(["a", "é", "\\", "\t", "\n", "\r", "N", " ", "\u2028"]), max_size=8
)


@hypothesis_settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(records(), AWKWARD, AWKWARD), max_size=6))
def test_copy_text_reads_back_as_the_rows(
    drawn: list[tuple[dict[str, Any], str, str]],
) -> None:
    """The COPY text that the parsing processes make (PostgreSQL) reads back as
    the rows it was made of: NULLs, backslashes, tabs and line breaks in values
    included."""
    created_date = statements.created_date_in(importer._dialect("postgresql+asyncpg"))
    rows = []
    for record, name, chat_id in drawn:
        try:
            create = LeadCreate.parse(
                {**record, "name": name or None, "chatId": chat_id}
            )
        except InvalidInput:
            continue
        rows.append(bulk.as_row(create.to_lead(datetime.now(UTC)), created_date))
    copied = [(*row[:6], bulk.copy_instant(row[6]), row[7]) for row in rows]
    assert bulk.rows_from_copy(bulk.copy_text(copied)) == rows


def test_the_fast_path_takes_the_everyday_lead() -> None:
    for record in (
        lead(),
        lead(createdDate="2024-08-24 14:15:22"),  # Flowise on SQLite
        lead(createdDate="2024-08-24 14:15:22.123"),  # TypeORM's own writes
        lead(createdDate="2024-08-24T14:15:22.105092Z", email=None),  # our exports
        lead(name=None, email=None, phone="(555) 010-1234", chatId=None),
    ):
        fast = plain_lead(record)
        assert fast is not None
        _agrees(fast, record)
    for refused in (
        lead(email="not-an-address"),
        lead(phone="12"),
        lead(name=None, email=None, phone=None),
        lead(createdDate="2024-08-24T24:00:00Z"),
        lead(chatflowid="nope"),
    ):
        assert plain_lead(refused) is None
        with pytest.raises(InvalidInput):
            LeadCreate.parse(refused)


# -- Files in our export formats --------------------------------------------------


@pytest.mark.slow
def test_a_mixed_ndjson_file_through_the_command(
    tmp_path: Path, database_url: str
) -> None:
    """Valid rows stored with their ids and dates; invalid ones reported by line and
    field, without contact data; a re-run stores nothing twice."""
    a, b, c = lead(), lead(name="Grace", email="grace@example.org"), lead(name="Carl")
    b_sent = {**b, "id": b["id"].upper(), "createdDate": "2024-08-24T16:15:22+02:00"}
    c_sent = {k: v for k, v in c.items() if k not in ("chatId", "createdDate")}
    bad = lead(email="not-an-address", phone="12")
    no_id = lead(id=...)
    no_contact = lead(name=None, email="  ", phone=None)
    conflict = {**b, "email": "someone.else@example.org"}
    path = tmp_path / "leads.ndjson"
    path.write_bytes(
        ndjson(
            a,  # 1
            b_sent,  # 2
            bad,  # 3
            b"",  # 4: blank, no record
            b'{"id": "unterminated',  # 5
            b"[1, 2]",  # 6
            no_id,  # 7
            no_contact,  # 8
            a,  # 9: a duplicate, same content
            conflict,  # 10
            c_sent,  # 11
        )
    )
    env = cli_env(LEADS_DATABASE_URL=plain_url(database_url))
    done = run_cli("import", str(path), cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stderr
    assert summary(done.stdout) == {
        "read": 10, "stored": 3, "already present": 1, "conflicting": 1, "invalid": 5,
    }  # fmt: skip
    reports = done.stderr.splitlines()
    assert reports == [
        f"line 3 (id {bad['id']}): invalid: email: must be a valid email address; "
        "phone: must have 5 to 20 digits",
        "line 5: is not valid JSON",
        "line 6: is not a JSON object",
        "line 7: invalid: id: is required for an import "
        "(a re-run finds the lead by it)",
        f"line 8 (id {no_contact['id']}): invalid: "
        + "; ".join(
            f"{f}: give at least one of name, email, phone"
            for f in ("name", "email", "phone")
        ),
        f"line 10 (id {b['id']}): conflicts with the stored lead (email differ); "
        "not overwritten",
    ]
    for contact in ("Ada", "Grace", "example", "+44", "not-an-address"):
        assert contact not in done.stderr
    leads = stored(database_url)
    assert leads[a["id"]] == expected(a)
    assert leads[b["id"]] == expected(b)  # the id in lower case, the instant in UTC
    assert leads[c["id"]]["name"] == "Carl" and len(leads) == 3

    again = run_cli("import", str(path), cwd=tmp_path, env=env)
    assert again.returncode == 1
    assert summary(again.stdout) == {
        "read": 10, "stored": 0, "already present": 4, "conflicting": 1, "invalid": 5,
    }  # fmt: skip
    assert stored(database_url) == leads


def test_records_across_chunks_and_transactions(
    tmp_path: Path, database_url: str, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line or two a chunk: repeats and conflicts across chunks and
    transactions are found as in one chunk, blank lines are no records, and
    reports come in file order with their line numbers."""
    monkeypatch.setattr(importer, "BLOCK", 300)
    monkeypatch.setattr(importer, "GROUP_LEADS", 3)
    copies: list[bool] = []
    copy_rows = importer.bulk.copy_rows

    async def copy(driver: db.Driver, rows: Any) -> bool:
        copies.append(await copy_rows(driver, rows))
        return copies[-1]

    monkeypatch.setattr(importer.bulk, "copy_rows", copy)
    a, b, d, bad = lead(), lead(name="Grace"), lead(name="Dan"), lead(phone="12")
    c = {k: v for k, v in lead(name="Carl").items() if k != "chatId"}
    path = tmp_path / "leads.ndjson"
    path.write_bytes(ndjson(a, b, bad, a, b" ", {**b, "name": "Other"}, c, b"{", d, c))
    status, out, err = run(database_url, str(path))
    assert status == 1
    assert summary(out) == {
        "read": 9, "stored": 4, "already present": 2, "conflicting": 1, "invalid": 2,
    }  # fmt: skip
    assert [line.split(":")[0] for line in err.splitlines()] == [
        f"line 3 (id {bad['id']})",
        f"line 6 (id {b['id']})",
        "line 8",
    ]
    assert set(stored(database_url)) == {a["id"], b["id"], c["id"], d["id"]}
    # PostgreSQL stores new leads by COPY; a COPY that meets a stored id stores
    # nothing, and INSERT sorts that chunk out.
    postgres = database_url.startswith("postgresql")
    assert set(copies) == ({True, False} if postgres else set())
    status, out, _ = run(database_url, str(path))
    assert summary(out) == {
        "read": 9, "stored": 0, "already present": 6, "conflicting": 1, "invalid": 2,
    }  # fmt: skip


def test_the_parsing_process_validates_as_this_one_does() -> None:
    """`prepare` in a spawned process (as `leads-gql import` runs it for every
    chunk after the first few) gives what it gives here."""
    records = [lead(), lead(phone="12"), {**lead(), "chatId": None}, b"[1]"]
    lines = importer.Lines(7, ndjson(*records[:2], b"", *records[2:]))
    args = (lines, "line", "sqlite+aiosqlite", False)
    here = importer.prepare(*args)
    with ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        there = pool.submit(importer.prepare, *args).result(timeout=60)
    assert (there.records, there.positions, there.invalid, there.filled) == (
        here.records, here.positions, here.invalid, here.filled,
    )  # fmt: skip
    assert here.records == 4 and here.positions == [7, 10]
    assert [position for position, _ in here.invalid] == [8, 11]
    # The rows differ only in the chat id made up for the record without one.
    assert [row[:5] + row[6:] for row in there.rows] == [
        row[:5] + row[6:] for row in here.rows
    ]
    assert here.filled == {1: ("chat_id",)}


SHARE_OF = """
import sys
from leads_gql import importer
ids = sys.stdin.read().split()
batch = importer._Batch(len(ids), [(i,) for i in ids], list(range(len(ids))), {}, [])
for n, share in enumerate(importer._shares(batch, 2)):
    for row in share.rows:
        print(row[0], n)
"""


def test_a_batch_is_shared_between_writers_by_id() -> None:
    """Every row goes to one writer, with its position and the fields filled in
    for it; a repeated id always to the same writer (else two writers could wait
    on each other's open rows), in any process whatever its hash seed."""
    ids = [str(uuid.uuid4()) for _ in range(200)]
    order = ids + ids[::3]  # repeats, later in the batch
    rows = [(lead_id, "name") for lead_id in order]
    filled = dict.fromkeys(range(0, len(order), 7), ("chat_id",))
    batch = importer._Batch(len(order), rows, list(range(len(order))), filled, [])
    shares = importer._shares(batch, 2)
    assert all(len(share.rows) > 50 for share in shares)  # both get work
    seen: dict[str, int] = {}
    for n, share in enumerate(shares):
        assert share.positions == sorted(share.positions)  # batch order kept
        for k, (row, position) in enumerate(
            zip(share.rows, share.positions, strict=True)
        ):
            assert row == rows[position]
            assert share.filled.get(k) == filled.get(position)
            assert seen.setdefault(row[0], n) == n
    assert sorted(p for share in shares for p in share.positions) == list(
        range(len(order))
    )
    assert importer._shares(batch, 1) == [batch]
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", SHARE_OF],
            input=" ".join(ids),
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        there = dict(line.split() for line in done.stdout.splitlines())
        assert {lead_id: int(n) for lead_id, n in there.items()} == seen


def test_the_connections_an_import_writes_through(
    tmp_path: Path, database_url: str, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --strict, PostgreSQL stores a chunk through POSTGRES_WRITERS
    connections at once (SQLite, and --strict's single transaction, through
    one); repeats and conflicts are still found across them."""
    monkeypatch.setattr(importer, "BLOCK", 2000)
    monkeypatch.setattr(importer, "GROUP_LEADS", 25)
    connections: set[int] = set()
    insert_rows = importer.bulk.insert_rows

    async def counted(driver: db.Driver, rows: Any) -> list[bool]:
        connections.add(id(driver.connection))
        return await insert_rows(driver, rows)

    monkeypatch.setattr(importer.bulk, "insert_rows", counted)
    leads = [lead() for _ in range(60)]
    changed = {**leads[5], "name": "Someone else"}
    path = tmp_path / "leads.ndjson"
    path.write_bytes(ndjson(*leads, leads[0], changed, *leads[40:]))
    status, out, err = run(database_url, str(path))
    assert status == 1 and err.startswith("line 62 ")
    assert summary(out) == {
        "read": 82, "stored": 60, "already present": 21, "conflicting": 1,
        "invalid": 0,
    }  # fmt: skip
    assert stored(database_url) == {x["id"]: expected(x) for x in leads}
    postgres = database_url.startswith("postgresql")
    assert len(connections) == (2 if postgres else 1)
    connections.clear()
    status, out, _ = run(database_url, "--strict", str(path))
    assert status == 1 and len(connections) == 1


def test_a_writer_that_fails_stops_the_import_and_loses_nothing_reported(
    tmp_path: Path, database_url: str, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost mid-import (the last writer's, at its sixth statement):
    the import stops with exit 2 at once, the count it reports as stored is what
    the database holds (the open transactions are rolled back whole), and a
    re-run stores the rest."""
    monkeypatch.setattr(importer, "BLOCK", 2000)
    monkeypatch.setattr(importer, "GROUP_LEADS", 20)
    calls: dict[int, int] = {}
    insert_rows, copy_rows = importer.bulk.insert_rows, importer.bulk.copy_rows
    writers = 2 if database_url.startswith("postgresql") else 1

    def failing(write: Any) -> Any:
        # (PostgreSQL stores new leads by COPY, SQLite by INSERT)
        async def fails(driver: db.Driver, rows: Any) -> Any:
            key = id(driver.connection)
            calls[key] = calls.get(key, 0) + 1
            if len(calls) == writers and calls[key] == 6:
                raise ConnectionResetError("the connection was lost")
            return await write(driver, rows)

        return fails

    monkeypatch.setattr(importer.bulk, "insert_rows", failing(insert_rows))
    monkeypatch.setattr(importer.bulk, "copy_rows", failing(copy_rows))
    leads = [lead() for _ in range(150)]
    path = tmp_path / "leads.ndjson"
    path.write_bytes(ndjson(*leads))
    status, out, err = run(database_url, str(path))
    assert status == 2 and out == ""
    assert "the import stopped: cannot use the database: the connection was lost" in err
    reported = int(err.split(" leads were stored before")[0].rsplit(" ", 1)[1])
    assert 0 < reported < 150
    assert len(stored(database_url)) == reported

    monkeypatch.setattr(importer.bulk, "insert_rows", insert_rows)
    monkeypatch.setattr(importer.bulk, "copy_rows", copy_rows)
    status, out, _ = run(database_url, str(path))
    assert status == 0
    assert summary(out)["stored"] == 150 - reported
    assert stored(database_url) == {x["id"]: expected(x) for x in leads}


def test_a_clean_file_exits_zero_and_strict_stores_everything(
    tmp_path: Path, database_url: str, run: Run
) -> None:
    leads = [lead() for _ in range(5)]
    path = tmp_path / "clean.jsonl"
    path.write_bytes(ndjson(*leads))
    status, out, err = run(database_url, "--strict", str(path))
    assert (status, err) == (0, "")
    assert summary(out)["stored"] == 5
    assert stored(database_url) == {x["id"]: expected(x) for x in leads}
    status, out, _ = run(database_url, str(path))
    assert status == 0 and summary(out)["already present"] == 5


def test_values_with_tabs_line_breaks_and_backslashes_are_stored_as_they_are(
    tmp_path: Path, database_url: str, run: Run
) -> None:
    """What COPY's text format escapes (PostgreSQL) goes in unchanged."""
    leads = [
        lead(name="tab\there, new\nline\r\n, back\\slash, \\N", chatId="\\N"),
        lead(name="\\", email=None, chatId="a\tb"),
        lead(name="plain"),
    ]
    path = tmp_path / "awkward.ndjson"
    path.write_bytes(ndjson(*leads))
    status, out, err = run(database_url, str(path))
    assert (status, err) == (0, "") and summary(out)["stored"] == 3
    assert stored(database_url) == {x["id"]: expected(x) for x in leads}
    status, out, _ = run(database_url, str(path))  # by INSERT, compared
    assert status == 0 and summary(out)["already present"] == 3


def test_strict_with_an_empty_file_stores_nothing_and_exits_zero(
    tmp_path: Path, database_url: str, run: Run
) -> None:
    path = tmp_path / "empty.ndjson"
    path.write_bytes(b"")
    status, out, err = run(database_url, "--strict", str(path))
    assert (status, err) == (0, "")
    assert summary(out)["stored"] == 0
    assert stored(database_url) == {}


def test_a_mixed_csv_file(tmp_path: Path, database_url: str, run: Run) -> None:
    """Our CSV: a header, CRLF records, quoted cells over several lines, formula
    guards taken off; records named by the line they start on."""
    ids = [new_id() for _ in range(5)]
    rows = [
        "id,name,email,phone,chatflowid,chatId,createdDate",
        f"{ids[0]},'=SUM(A1),ada@example.com,'+44 20 7946 0958,{FLOW},'-chat,"
        "2024-08-24T14:15:22.250000Z",
        f'{ids[1]},"two\r\nlines, and ""quotes""",,,{FLOW},chat-2,2024-08-24T14:15:23Z',
        f"{ids[2]},Bob,not-an-address,,{FLOW},chat-3,2024-08-24T14:15:24Z",
        f"{ids[3]},Short,row",
        "",
        f"{ids[4]},,,,{FLOW},chat-5,2024-08-24T14:15:25Z",
        f'{new_id()},"Bad"quote,,,{FLOW},chat-6,2024-08-24T14:15:26Z',
    ]
    path = tmp_path / "leads.csv"
    path.write_bytes("\r\n".join(rows).encode() + b"\r\n")
    status, out, err = run(database_url, str(path))
    assert status == 1
    assert summary(out) == {
        "read": 6, "stored": 2, "already present": 0, "conflicting": 0, "invalid": 4,
    }  # fmt: skip
    assert err.splitlines() == [
        f"line 5 (id {ids[2]}): invalid: email: must be a valid email address",
        "line 6: has 3 cells, the header 7",
        f"line 8 (id {ids[4]}): invalid: "
        + "; ".join(
            f"{f}: give at least one of name, email, phone"
            for f in ("name", "email", "phone")
        ),
        "line 9: is not a valid CSV record (',' expected after '\"')",
    ]
    leads = stored(database_url)
    assert leads[ids[0]]["name"] == "=SUM(A1)"
    assert leads[ids[0]]["phone"] == "+44 20 7946 0958"
    assert leads[ids[0]]["chatId"] == "-chat"
    assert leads[ids[0]]["createdDate"] == "2024-08-24T14:15:22.250000Z"
    assert leads[ids[1]]["name"] == 'two\r\nlines, and "quotes"'
    assert leads[ids[1]]["email"] is None


def test_a_mixed_json_array(tmp_path: Path, database_url: str, run: Run) -> None:
    good, other = lead(), lead(name="Other")
    items = [good, lead(chatflowid="nope"), 42, other]
    path = tmp_path / "leads.json"
    path.write_text(json.dumps(items, indent=1))  # elements over several lines
    status, out, err = run(database_url, str(path))
    assert status == 1 and summary(out)["stored"] == 2
    assert err.splitlines() == [
        f"element 1 (id {items[1]['id']}): invalid: chatflowid: must be a UUID "  # type: ignore[index]
        "(8-4-4-4-12 hexadecimal digits)",
        "element 2: is not a JSON object",
    ]
    assert set(stored(database_url)) == {good["id"], other["id"]}
    # JSON that breaks off: what came before is stored, the rest is unusable.
    broken = tmp_path / "broken.json"
    third = lead()
    broken.write_text(f'[{json.dumps(third)}, {{"id": ]')
    status, out, err = run(database_url, str(broken))
    assert status == 2 and "element 1 is not valid JSON" in err
    assert "Traceback" not in err and third["id"] in stored(database_url)
    many = [lead(name=f"Lead {n}") for n in range(importer.CHUNK + 1000)]
    large = tmp_path / "large.json"
    large.write_bytes(orjson.dumps(many))
    assert large.stat().st_size > 1 << 20  # more than one read
    status, out, err = run(database_url, str(large))
    assert (status, err) == (0, "") and summary(out)["stored"] == len(many)
    empty = tmp_path / "empty.json"
    empty.write_text(" [ ] ")
    status, out, err = run(database_url, str(empty))
    assert (status, err) == (0, "") and summary(out)["read"] == 0


def test_strict_stores_nothing_unless_every_record_passes(
    tmp_path: Path, database_url: str, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small chunks and transactions, so that the refused record comes after
    several chunks were written (and would have been committed without --strict)."""
    monkeypatch.setattr(importer, "BLOCK", 600)
    monkeypatch.setattr(importer, "GROUP_LEADS", 4)
    leads = [lead(name=f"Lead {n}") for n in range(10)]
    path = tmp_path / "leads.ndjson"
    path.write_bytes(ndjson(*leads, lead(phone="12"), lead()))
    status, out, err = run(database_url, "--strict", str(path))
    assert status == 1
    assert err.splitlines()[0].startswith("line 11 (id ")
    assert "--strict: stopped at line 11" in err and "nothing stored" in err
    assert summary(out)["stored"] == 0 and stored(database_url) == {}

    # Without --strict the same file stores what is valid, in several transactions.
    status, out, _ = run(database_url, str(path))
    assert status == 1 and summary(out)["stored"] == 11
    # A conflict stops --strict too; nothing of the file is stored.
    fresh = [lead() for _ in range(7)]
    conflicting = {**leads[0], "name": "Someone else"}
    path.write_bytes(ndjson(*fresh, conflicting, lead()))
    status, out, err = run(database_url, "--strict", str(path))
    assert status == 1 and "line 8" in err and "conflicts" in err
    assert not set(stored(database_url)) & {x["id"] for x in fresh}


@pytest.mark.slow
def test_standard_input(tmp_path: Path, database_url: str) -> None:
    env = cli_env(LEADS_DATABASE_URL=plain_url(database_url))
    body = lead()
    piped = subprocess.run(
        [*CLI, "import", "-", "--format", "ndjson"],
        input=ndjson(body), cwd=tmp_path, env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert stored(database_url) == {body["id"]: expected(body)}
    headless = subprocess.run(
        [*CLI, "import", "-", "--format", "csv"],
        input=ndjson(body), cwd=tmp_path, env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert headless.returncode == 2
    assert headless.stderr.count(b"\n") == 1 and b"Traceback" not in headless.stderr


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found |= {int(child) for child in task.read_text().split()}
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_killed_import_leaves_no_process_behind(
    tmp_path: Path, database_url: str
) -> None:
    """SIGKILL the importer while its parsing process works: that process ends
    too (it would otherwise wait for chunks forever)."""
    path = tmp_path / "many.ndjson"
    path.write_bytes(ndjson(*(lead(name=f"Lead {n}") for n in range(60_000))))
    env = cli_env(LEADS_DATABASE_URL=plain_url(database_url))
    importing = subprocess.Popen(
        [*CLI, "import", str(path)], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        children: set[int] = set()
        while not children and importing.poll() is None:
            assert time.monotonic() < deadline, "no parsing process started"
            time.sleep(0.02)
            children = _children(importing.pid)
        importing.kill()
        importing.wait(10)
        assert children
        deadline = time.monotonic() + 10
        while any(_running(child) for child in children):
            assert time.monotonic() < deadline, "the parsing process outlived it"
            time.sleep(0.1)
    finally:
        importing.kill()
        importing.wait(10)


@pytest.mark.slow
def test_a_running_server_keeps_creating_during_an_import(tmp_path: Path) -> None:
    """On SQLite the import holds the write lock a transaction at a time (about
    GROUP_SECONDS at most): creates sent to the running server meanwhile wait
    for it, then are stored."""
    env = cli_env()  # both on ./leads.db, the server's development secret
    path = tmp_path / "many.ndjson"
    path.write_bytes(ndjson(*(lead(name=f"Lead {n}") for n in range(150_000))))
    flow = new_id()
    with Server(tmp_path, env, "--log-level", "warning") as server:
        token = run_cli("token", "--scope", "leads:write", cwd=tmp_path, env=env)
        headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
        importing = subprocess.Popen(
            [*CLI, "import", str(path)], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        waits: list[float] = []
        try:
            with httpx.Client(base_url=server.url, headers=headers) as client:
                while importing.poll() is None:
                    start = time.monotonic()
                    answer = client.post(
                        "/leads", json={"chatflowid": flow, "name": "Live"}, timeout=30
                    )
                    waits.append(time.monotonic() - start)
                    assert answer.status_code == 200, answer.text
                    time.sleep(0.05)
            out, err = importing.communicate(timeout=60)
        finally:
            importing.kill()
            importing.wait(10)
    assert importing.returncode == 0, err
    assert summary(out)["stored"] == 150_000
    assert len(waits) > 10 and max(waits) < importer.GROUP_SECONDS + 3
    with contextlib.closing(sqlite3.connect(tmp_path / "leads.db")) as conn:
        (count,) = conn.execute("SELECT count(*) FROM lead").fetchone()
    assert count == 150_000 + len(waits)


def test_unusable_input_is_refused_before_the_database_is_touched(
    tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "leads.db"
    (tmp_path / "leads.txt").write_text("")
    (tmp_path / "headless.csv").write_text(f"{new_id()},Ada,ada@example.com\n")
    (tmp_path / "object.json").write_text("{}")
    (tmp_path / "not-a-database").write_text("hello")
    for args, message in (
        (["missing.ndjson"], "cannot read missing.ndjson"),
        (["leads.txt"], "give --format"),
        (["-"], "give --format (ndjson, csv or json) for standard input"),
        (["headless.csv"], "must start with a header"),
        (["object.json"], "must hold an array"),
        (["--from-flowise", "not-a-database"], "cannot read not-a-database"),
        (["--from-flowise", "nowhere.sqlite"], "no such file"),
        (["--from-flowise", "mysql://x@y/z"], "unsupported scheme"),
        (["--from-flowise", "x.sqlite", "--format", "csv"], "--format is for files"),
        (["leads.txt", "--from-flowise", "x.sqlite"], "import needs FILE"),
        ([], "import needs FILE"),
    ):
        status, out, err = run(f"sqlite:///{target}", *args)
        assert status == 2, (args, err)
        assert message in err and len(err.splitlines()) == 1, (args, err)
        assert "ada@example.com" not in err and out == ""
    assert not target.exists()
    with pytest.raises(SystemExit):
        cli.main(["import", "--help"])
    usage = run.capsys.readouterr().out
    assert "extension" in usage and "Exit status" in usage


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "json"])
def test_export_then_import_into_an_empty_database_gives_the_same_bytes(
    tmp_path: Path, database_url: str, run: Run, fmt: str
) -> None:
    names = [
        '=HYPERLINK("http://evil.example")', "+1+2", "-2+3", "@SUM(A1)",
        "plain, with a comma", 'a "quoted" word', "two\nlines", "carriage\rreturn",
        "Zoë 😀", "'=already quoted",
    ]  # fmt: skip
    leads = [
        lead(
            name=name,
            email=f"lead{n}@example.com" if n % 2 else None,
            phone="+44 20 7946 0958" if n % 3 == 0 else None,
            chatId="\tchat" if n == 4 else f"chat-{n}",
            createdDate=f"2024-08-24T14:15:{n:02d}.{n * 7:06d}Z",
        )
        for n, name in enumerate(names)
    ]
    source = tmp_path / "seed.ndjson"
    source.write_bytes(ndjson(*leads))
    assert run(database_url, str(source))[0] == 0

    def export(name: str) -> bytes:
        output = tmp_path / name
        assert (
            cli.main(
                ["export", "--chatflow", FLOW, "--format", fmt, "--output", str(output)]
            )
            == 0
        )
        return output.read_bytes()

    first = export(f"first.{fmt}")
    asyncio.run(_empty(database_url))
    status, out, err = run(database_url, str(tmp_path / f"first.{fmt}"))
    assert (status, err) == (0, ""), err
    assert summary(out)["stored"] == len(leads)
    assert export(f"second.{fmt}") == first


async def _empty(database_url: str) -> None:
    engine = db.make_engine(Settings(database_url=database_url))
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("DELETE FROM lead")
    finally:
        await engine.dispose()


def test_progress_on_a_terminal_and_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    counts = importer.Summary(read=12_000, stored=11_000, invalid=3)
    for stream, every in ((Terminal(), 0.2), (io.StringIO(), 5.0)):
        progress = importer.Progress(stream)
        assert progress.every == every
        progress.shown -= every
        progress.show(counts)
        progress.report("line 4: is not valid JSON")
        text = stream.getvalue()
        assert "read 12,000" in text and "stored 11,000" in text and "invalid 3" in text
        if every < 1:  # redrawn in place; cleared before a report
            assert text.startswith("\rread") and "\r\x1b[Kline 4" in text
        else:
            assert text.endswith("\nline 4: is not valid JSON\n") and "\r" not in text


# -- Flowise ----------------------------------------------------------------------


def flowise_rows() -> list[tuple[Any, ...]]:
    """(id, chatflowid, chatId, name, email, phone, createdDate), as Flowise
    stores them: two valid (both date forms Flowise writes), four it accepts and we
    do not."""
    return [
        (new_id(), FLOW, "chat-1", "Ada Lovelace", "ada@example.com",
         "+44 20 7946 0000", "2024-08-24 14:15:22"),
        (new_id(), FLOW, new_id(), "With id", None, None, "2024-08-24 14:15:22.123"),
        (new_id(), FLOW, "chat-3", None, None, None, "2024-08-24 14:15:23"),
        (new_id(), "not-a-uuid", "chat-4", "Bad flow", None, None,
         "2024-08-24 14:15:24"),
        (new_id(), FLOW, "chat-5", "Bad email", "ada@", None, "2024-08-24 14:15:25"),
        ("42", FLOW, "chat-6", "Bad id", None, None, "2024-08-24 14:15:26"),
    ]  # fmt: skip


def flowise_sqlite(path: Path, rows: list[tuple[Any, ...]]) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(FLOWISE_SQLITE_DDL)
        conn.executemany(
            'INSERT INTO "lead" ("id", "chatflowid", "chatId", "name", "email", '
            '"phone", "createdDate") VALUES (?, ?, ?, ?, ?, ?, ?)',
            rows,
        )
        conn.commit()


def check_flowise_import(
    done: subprocess.CompletedProcess[str],
    rows: list[tuple[Any, ...]],
    database_url: str,
    dates: tuple[str, str],
) -> None:
    assert done.returncode == 1, done.stderr
    assert summary(done.stdout) == {
        "read": 6, "stored": 2, "already present": 0, "conflicting": 0, "invalid": 4,
    }  # fmt: skip
    reports = done.stderr.splitlines()
    assert reports[0] == f"row id {rows[2][0]}: invalid: " + "; ".join(
        f"{f}: give at least one of name, email, phone"
        for f in ("name", "email", "phone")
    )
    assert reports[1].startswith(f"row id {rows[3][0]}: invalid: chatflowid: ")
    assert reports[2] == (
        f"row id {rows[4][0]}: invalid: email: must be a valid email address"
    )
    assert reports[3].startswith("row 6: invalid: id: must be a UUID")
    assert "Ada" not in done.stderr and "ada@" not in done.stderr
    leads = stored(database_url)
    assert leads == {
        rows[0][0]: {
            "id": rows[0][0], "name": "Ada Lovelace", "email": "ada@example.com",
            "phone": "+44 20 7946 0000", "chatflowid": FLOW, "chatId": "chat-1",
            "createdDate": dates[0],
        },
        rows[1][0]: {
            "id": rows[1][0], "name": "With id", "email": None, "phone": None,
            "chatflowid": FLOW, "chatId": rows[1][2], "createdDate": dates[1],
        },
    }  # fmt: skip


@pytest.mark.slow
def test_from_a_flowise_sqlite_database(tmp_path: Path, database_url: str) -> None:
    flowise = tmp_path / "database.sqlite"
    rows = flowise_rows()
    flowise_sqlite(flowise, rows)
    env = cli_env(LEADS_DATABASE_URL=plain_url(database_url))
    done = run_cli("import", "--from-flowise", str(flowise), cwd=tmp_path, env=env)
    dates = ("2024-08-24T14:15:22Z", "2024-08-24T14:15:22.123000Z")
    check_flowise_import(done, rows, database_url, dates)
    # Again, by URL: nothing stored twice; Flowise's file untouched.
    before = flowise.read_bytes()
    again = run_cli(
        "import", "--from-flowise", f"sqlite:///{flowise}", cwd=tmp_path, env=env
    )
    assert summary(again.stdout)["already present"] == 2
    assert summary(again.stdout)["stored"] == 0
    assert flowise.read_bytes() == before


def test_flowise_schemas_that_are_not_flowise_s(
    tmp_path: Path, database_url: str, run: Run
) -> None:
    empty = tmp_path / "empty.sqlite"
    with contextlib.closing(sqlite3.connect(empty)) as conn:
        conn.execute("CREATE TABLE chat_flow (id varchar)")
    status, _, err = run(database_url, "--from-flowise", str(empty))
    assert status == 2 and "has no `lead` table" in err
    older = tmp_path / "older.sqlite"
    with contextlib.closing(sqlite3.connect(older)) as conn:
        conn.execute(FLOWISE_SQLITE_DDL.replace('"chatId" varchar NOT NULL, ', ""))
    status, _, err = run(database_url, "--from-flowise", str(older))
    assert status == 2 and "has no column chatId" in err
    # The service's own database is not Flowise's.
    if database_url.startswith("sqlite"):
        own = database_url.partition(":///")[2]
        status, _, err = run(database_url, "--from-flowise", own)
        assert status == 2 and "service's own database" in err


@pytest.fixture
def flowise_postgres() -> Iterator[str]:
    """A database shaped as Flowise 3.1.2 makes it, in the Europe/Paris time zone
    (Flowise's `now()` wrote wall times of that zone); dropped afterwards."""
    from tests.conftest import PG_ADMIN_URL

    if not PG_ADMIN_URL:
        pytest.skip(PG_SKIP)
    name = f"flowise_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    asyncio.run(_pg_admin(f"ALTER DATABASE \"{name}\" SET timezone TO 'Europe/Paris'"))
    url = pg_url_for(name)
    asyncio.run(_pg_admin('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"', url))
    asyncio.run(_pg_admin(FLOWISE_POSTGRES_DDL, url))
    try:
        yield plain_url(url)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.slow
@pytest.mark.postgres
def test_from_a_flowise_postgres_database(
    tmp_path: Path, database_url: str, flowise_postgres: str
) -> None:
    import asyncpg

    rows = flowise_rows()
    rows[-1] = (new_id(), *rows[-1][1:6], "infinity")  # an id is a uuid here
    rows[1] = (*rows[1][:6], "2024-08-24 16:15:22.105092")

    async def fill() -> None:
        conn = await asyncpg.connect(flowise_postgres)
        try:
            await conn.executemany(
                'INSERT INTO lead (id, "chatflowid", "chatId", "name", "email", '
                '"phone", "createdDate") VALUES ($1::uuid, $2, $3, $4, $5, $6, '
                "$7::text::timestamp)",
                rows,
            )
        finally:
            await conn.close()

    asyncio.run(fill())
    env = cli_env(LEADS_DATABASE_URL=plain_url(database_url))
    done = run_cli("import", "--from-flowise", flowise_postgres, cwd=tmp_path, env=env)
    # Wall times of Europe/Paris (summer: UTC+2), read as instants.
    dates = ("2024-08-24T12:15:22Z", "2024-08-24T14:15:22.105092Z")
    last = rows[-1][0]
    assert f"row id {last}: invalid: createdDate: must be an ISO 8601" in done.stderr
    assert done.returncode == 1
    assert summary(done.stdout)["stored"] == 2 and summary(done.stdout)["invalid"] == 4
    leads = stored(database_url)
    assert {k: v["createdDate"] for k, v in leads.items()} == {
        rows[0][0]: dates[0], rows[1][0]: dates[1],
    }  # fmt: skip
    assert leads[rows[1][0]]["chatId"] == rows[1][2]
    again = run_cli("import", "--from-flowise", flowise_postgres, cwd=tmp_path, env=env)
    assert summary(again.stdout)["already present"] == 2
    nowhere = flowise_postgres.rsplit("/", 1)[0] + "/nonexistent_db"
    missing = run_cli("import", "--from-flowise", nowhere, cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
