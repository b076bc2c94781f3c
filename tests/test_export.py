"""Exports: GET /leads/{id}/export in CSV, NDJSON and JSON, streamed; the REST list
streamed past one batch; `leads-gql export` writing the same bytes."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import pty
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from starlette.applications import Starlette

from leads_gql.models import Lead
from leads_gql.store import exports
from leads_gql.store.exports import BATCH
from tests.conftest import SECRET, new_id
from tests.server import CLI, Server, cli_env, run_cli

pytestmark = pytest.mark.anyio

HEADER = ["id", "name", "email", "phone", "chatflowid", "chatId", "createdDate"]
TYPES = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "json": "application/json",
}
# Names a spreadsheet would run, or that CSV must quote.
HOSTILE = [
    '=HYPERLINK("http://evil.example")',
    "+1+2",
    "-2+3",
    "@SUM(A1)",
    "plain, with a comma",
    'a "quoted" word',
    "two\nlines",
    "carriage\rreturn",
    "<img src=x onerror=alert(1)>",
    "Zoë 😀",
]


async def seed(client: httpx.AsyncClient, auth: dict[str, str], flow: str) -> None:
    for n, name in enumerate(HOSTILE):
        body: dict[str, Any] = {
            "chatflowid": flow,
            "name": name,
            "email": f"lead{n}@example.com" if n % 2 else None,
            "phone": "+44 20 7946 0958" if n % 3 == 0 else None,
            "createdDate": f"2024-08-24T14:15:{n:02d}.25Z",
        }
        if n == 4:
            body["chatId"] = "\tchat"
        answer = await client.post("/leads", json=body, headers=auth)
        assert answer.status_code == 200, answer.text


async def bulk(app: Starlette, flow: str, count: int) -> None:
    """`count` leads straight into the table (fast), one second apart."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "name": f"Lead {n}",
            "email": f"lead{n}@example.com",
            "phone": None,
            "chatflowid": flow,
            "chat_id": f"chat-{n}",
            "created_date": start + timedelta(seconds=n),
        }
        for n in range(count)
    ]
    async with app.state.engine.begin() as conn:
        await conn.execute(insert(Lead), rows)


def guarded(text: str | None) -> str:
    if text is None:
        return ""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def test_every_format_holds_the_lists_leads(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    await seed(client, auth, flow)
    listed = (await client.get(f"/leads/{flow}", headers=auth)).json()
    answers = {
        fmt: await client.get(
            f"/api/v1/leads/{flow}/export/?format={fmt}", headers=auth
        )
        for fmt in TYPES
    }
    for fmt, answer in answers.items():
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == TYPES[fmt]
        assert answer.headers["content-disposition"] == (
            f'attachment; filename="{flow}-leads.{fmt}"'
        )
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert answers["json"].json() == listed
    lines = answers["ndjson"].content.split(b"\n")
    assert lines[-1] == b""  # every line ends with \n
    assert [json.loads(line) for line in lines[:-1]] == listed
    body = answers["csv"].content
    assert not body.startswith(b"\xef\xbb\xbf")
    assert body.endswith(b"\r\n")
    rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert rows[0] == HEADER
    expected = [
        [
            lead["id"],
            guarded(lead["name"]),
            guarded(lead["email"]),
            guarded(lead["phone"]),
            lead["chatflowid"],
            guarded(lead["chatId"]),
            lead["createdDate"],
        ]
        for lead in listed
    ]
    assert rows[1:] == expected
    # Records end in CRLF; a line break inside a quoted cell is the cell's own.
    assert body.count(b"\r\n") == len(listed) + 1  # the header and each record
    assert b'"two\nlines"' in body and b'"carriage\rreturn"' in body
    # The default format is CSV.
    default = await client.get(f"/leads/{flow}/export", headers=auth)
    assert default.content == body


async def test_export_checks_like_the_list(
    client: httpx.AsyncClient, make_token: Callable[..., str], auth: dict[str, str]
) -> None:
    flow = new_id()
    await seed(client, auth, flow)

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    cases: dict[str, tuple[str, dict[str, str]]] = {
        "no token": (f"/leads/{flow}/export", {}),
        "bad token": (f"/leads/{flow}/export", bearer("nope")),
        "write only": (f"/leads/{flow}/export", bearer(make_token("leads:write"))),
        "other flow": (
            f"/leads/{flow}/export",
            bearer(make_token(chatflows=[new_id()])),
        ),
        "not a uuid": ("/leads/not-a-uuid/export", auth),
        "bad format": (f"/leads/{flow}/export?format=xml", auth),
        "empty format": (f"/leads/{flow}/export?format=", auth),
        "no leads": (f"/leads/{new_id()}/export", auth),
        "upper-case flow": (f"/leads/{flow.upper()}/export?format=json", auth),
    }
    got = {}
    for case, (path, headers) in cases.items():
        answer = await client.get(path, headers=headers)
        body = answer.json()
        got[case] = (answer.status_code, set(body) if answer.status_code != 200 else 0)
    error = {"statusCode", "message"}
    assert got == {
        "no token": (401, error),
        "bad token": (401, error),
        "write only": (403, error),
        "other flow": (403, error),
        "not a uuid": (400, error),
        "bad format": (400, error),
        "empty format": (400, error),
        "no leads": (404, error),
        "upper-case flow": (200, 0),
    }


async def test_large_flows_stream_in_pieces_with_the_same_bytes(
    app: Starlette, auth: dict[str, str]
) -> None:
    """Past one batch the list and the export are streamed: several body
    messages, the first sent before the last rows are read; the bytes are those
    of the one-statement answer's rules (a JSON array of compact objects)."""
    flow = new_id()
    await bulk(app, flow, 2 * BATCH + 10)
    paths = [f"/leads/{flow}", *(f"/leads/{flow}/export?format={f}" for f in TYPES)]
    pieces = {path: await body_messages(app, path, auth) for path in paths}
    listed = b"".join(pieces[f"/leads/{flow}"])
    assert len(pieces[f"/leads/{flow}"]) > 2
    assert listed == b"".join(pieces[f"/leads/{flow}/export?format=json"])
    leads = json.loads(listed)
    assert len(leads) == 2 * BATCH + 10
    order = [(lead["createdDate"], lead["id"]) for lead in leads]
    assert order == sorted(order)
    for fmt in TYPES:
        assert len(pieces[f"/leads/{flow}/export?format={fmt}"]) > 2, fmt
    csv_rows = b"".join(pieces[f"/leads/{flow}/export?format=csv"]).split(b"\r\n")
    assert len(csv_rows) == 2 * BATCH + 10 + 2  # the header, and "" after the last
    ndjson = b"".join(pieces[f"/leads/{flow}/export?format=ndjson"]).split(b"\n")
    assert [json.loads(line) for line in ndjson[:-1]] == leads


async def body_messages(app: Starlette, path: str, auth: dict[str, str]) -> list[bytes]:
    """The non-empty body messages of a GET, as the app sends them."""
    messages: list[bytes] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await answered.wait()  # the client stays until the whole answer is in
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            if message.get("body"):
                messages.append(message["body"])
            if not message.get("more_body"):
                answered.set()

    path_only, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"authorization", auth["Authorization"].encode())],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    return messages


def test_crlf_records_keep_line_breaks_inside_quotes_across_pieces() -> None:
    records = exports._CRLF()
    pieces = [b'a,"one\n', b'two",b\nc,"x""', b'y"\n', b"d,e\n"]
    converted = [records.convert(piece) for piece in pieces]
    assert b"".join(p for p, _ in converted) == (
        b'a,"one\ntwo",b\r\nc,"x""y"\r\nd,e\r\n'
    )
    assert [n for _, n in converted] == [0, 1, 1, 1]


async def test_an_abandoned_export_leaves_the_pool_healthy(
    app: Starlette, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    await bulk(app, flow, 3 * BATCH)
    for fmt in ("csv", "json"):
        async with client.stream(
            "GET", f"/leads/{flow}/export?format={fmt}", headers=auth
        ) as answer:
            assert answer.status_code == 200
            async for _ in answer.aiter_bytes():
                break  # the client goes away after the first piece
    for _ in range(20):  # more than the pool holds
        answer = await client.get(f"/leads/{flow}/export?format=ndjson", headers=auth)
        assert answer.status_code == 200
        assert answer.content.count(b"\n") == 3 * BATCH


@pytest.mark.slow
def test_the_command_writes_the_bytes_the_server_sends(
    tmp_path: Path, database_url: str
) -> None:
    env = cli_env(
        LEADS_JWT_SECRET=SECRET,
        LEADS_DATABASE_URL=database_url.replace("+aiosqlite", "").replace(
            "+asyncpg", ""
        ),
    )
    flow = new_id()
    with Server(tmp_path, env, "--no-migrate") as server:
        token = run_cli("token", cwd=tmp_path, env=env).stdout.strip()
        auth = {"Authorization": f"Bearer {token}"}
        for n, name in enumerate(HOSTILE):
            body = {"chatflowid": flow, "name": name, "phone": f"+1 555 010{n}"}
            answer = httpx.post(f"{server.url}/leads", json=body, headers=auth)
            assert answer.status_code == 200
        served = {
            fmt: httpx.get(
                f"{server.url}/leads/{flow}/export?format={fmt}", headers=auth
            ).content
            for fmt in TYPES
        }
    for fmt in TYPES:
        output = tmp_path / f"out.{fmt}"
        done = run_cli(
            "export", "--chatflow", flow, "--format", fmt, "--output", str(output),
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert output.read_bytes() == served[fmt], fmt
        assert done.stderr == ""  # not a terminal: no progress line
        assert not list(tmp_path.glob(".*.partial"))
    stdout = subprocess.run(
        [*CLI, "export", "--chatflow", flow.upper()],
        cwd=tmp_path, env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert stdout.returncode == 0 and stdout.stdout == served["csv"]
    missing = run_cli("export", "--chatflow", new_id(), cwd=tmp_path, env=env)
    assert missing.returncode == 1
    assert "has no leads" in missing.stderr and missing.stdout == ""
    nothing = tmp_path / "nothing.csv"
    missing = run_cli(
        "export",
        "--chatflow",
        new_id(),
        "--output",
        str(nothing),
        cwd=tmp_path,
        env=env,
    )
    assert missing.returncode == 1 and not nothing.exists()
    bad = run_cli("export", "--chatflow", "nope", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "UUID" in bad.stderr
    # On a terminal, a progress line that ends with the total written.
    primary, secondary = pty.openpty()
    with subprocess.Popen(
        [*CLI, "export", "--chatflow", flow, "--output", str(tmp_path / "tty.csv")],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=secondary,
    ) as process:  # fmt: skip
        os.close(secondary)
        assert process.wait(60) == 0
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(primary)
    assert f"exported {len(HOSTILE)} leads to ".encode() in shown, shown
    assert (tmp_path / "tty.csv").read_bytes() == served["csv"]
    assert sys.platform != "win32"
