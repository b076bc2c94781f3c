"""Ceiling servers: the same HTTP work as leads-gql with nothing in between.

No auth, no ORM, no GraphQL, no middleware, no validation beyond what the SQL needs.
Each runs on the same stack as the service (uvicorn, one worker, uvloop + httptools,
access log off) so that a ratio service / ceiling measures only what the service adds.

    python bench/ceilings.py static   --port P
    python bench/ceilings.py postgres --port P --dsn postgresql://postgres@127.0.0.1/db
    python bench/ceilings.py sqlite   --port P --dsn /path/to/leads.db

Routes (the service's paths):
    GET  /api/v1/leads/{id}   the leads of a flow (static: a precomputed array of 100)
    POST /api/v1/leads        insert one lead (postgres, sqlite)
    GET  /dbjson/api/v1/leads/{id}   the same list, the JSON rendered by the database
                              (one json_agg / json_group_array value; information only:
                              issue #5's ceiling is the plain SELECT above)
    GET  /healthz
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
LIST_SQL_PG = (
    "SELECT id, name, email, phone, chatflowid, chat_id, created_date "
    "FROM lead WHERE chatflowid = $1 ORDER BY created_date, id"
)
LIST_SQL_SQLITE = LIST_SQL_PG.replace("$1", "?")
# The database renders the array (one value); createdDate as SPEC prints it.
_PG_INSTANT = (
    "to_char(created_date AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
    " || CASE WHEN date_trunc('second', created_date) = created_date THEN ''"
    " ELSE to_char(created_date AT TIME ZONE 'UTC', '.US') END || 'Z'"
)
_SQLITE_INSTANT = (
    "substr(created_date, 1, 10) || 'T' || substr(created_date, 12, 8)"
    " || CASE WHEN substr(created_date, 21) IN ('', '000000') THEN ''"
    " ELSE '.' || substr(created_date, 21) END || 'Z'"
)
_PAIRS = (
    "'id', id, 'name', name, 'email', email, 'phone', phone, "
    "'chatflowid', chatflowid, 'chatId', chat_id, 'createdDate', {instant}"
)
DBJSON_SQL_PG = (
    f"SELECT coalesce(json_agg(json_build_object({_PAIRS.format(instant=_PG_INSTANT)})"
    " ORDER BY created_date, id)::text, '[]') FROM lead WHERE chatflowid = $1"
)
DBJSON_SQL_SQLITE = (
    "SELECT json_group_array(json_object("
    f"{_PAIRS.format(instant=_SQLITE_INSTANT)})) FROM "
    "(SELECT * FROM lead WHERE chatflowid = ? ORDER BY created_date, id)"
)
INSERT_SQL_PG = (
    "INSERT INTO lead (id, name, email, phone, chatflowid, chat_id, created_date) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING"
)
INSERT_SQL_SQLITE = (
    "INSERT INTO lead (id, name, email, phone, chatflowid, chat_id, created_date) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
NOT_FOUND = b'{"statusCode":404,"message":"This chat flow has no leads"}'
BAD_ID = b'{"statusCode":400,"message":"id must be a UUID"}'


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type="application/json")


def sqlite_instant(text: str) -> str:
    """SQLAlchemy's stored form `YYYY-MM-DD HH:MM:SS.ffffff` -> SPEC's `...Z`."""
    fraction = text[20:26]
    if fraction and fraction != "000000":
        return f"{text[:10]}T{text[11:19]}.{fraction}Z"
    return f"{text[:10]}T{text[11:19]}Z"


def flow_param(request: Request) -> str | None:
    flow = request.path_params["id"]
    return flow.lower() if UUID_RE.fullmatch(flow) else None


async def healthz(request: Request) -> Response:
    return json_response(b'{"status":"ok"}')


# -- static: a precomputed JSON array of 100 leads ----------------------------------


def static_app() -> Starlette:
    body = orjson.dumps(datasets.sample_flow_json(100))

    async def leads(request: Request) -> Response:
        return json_response(body)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/api/v1/leads/{id}", leads, methods=["GET"]),
        ]
    )


# -- PostgreSQL through asyncpg ---------------------------------------------------


def postgres_app(dsn: str, pool_size: int) -> Starlette:
    import asyncpg

    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(
            dsn, min_size=pool_size, max_size=pool_size
        )
        try:
            yield
        finally:
            await state["pool"].close()

    async def leads(request: Request) -> Response:
        flow = flow_param(request)
        if flow is None:
            return json_response(BAD_ID, 400)
        rows = await state["pool"].fetch(LIST_SQL_PG, flow)
        if not rows:
            return json_response(NOT_FOUND, 404)
        return json_response(
            orjson.dumps(
                [
                    {
                        "id": r[0],
                        "name": r[1],
                        "email": r[2],
                        "phone": r[3],
                        "chatflowid": r[4],
                        "chatId": r[5],
                        "createdDate": r[6],
                    }
                    for r in rows
                ],
                option=orjson.OPT_UTC_Z,
            )
        )

    async def leads_dbjson(request: Request) -> Response:
        flow = flow_param(request)
        if flow is None:
            return json_response(BAD_ID, 400)
        body = await state["pool"].fetchval(DBJSON_SQL_PG, flow)
        if body == "[]":
            return json_response(NOT_FOUND, 404)
        return json_response(body.encode())

    async def create(request: Request) -> Response:
        data = orjson.loads(await request.body())
        lead = {
            "id": (data.get("id") or str(uuid.uuid4())).lower(),
            "name": data.get("name"),
            "email": data.get("email"),
            "phone": data.get("phone"),
            "chatflowid": data["chatflowid"].lower(),
            "chatId": data.get("chatId") or str(uuid.uuid4()),
            "createdDate": datetime.now(UTC),
        }
        await state["pool"].execute(INSERT_SQL_PG, *lead.values())
        return json_response(orjson.dumps(lead, option=orjson.OPT_UTC_Z))

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/api/v1/leads/{id}", leads, methods=["GET"]),
            Route("/api/v1/leads", create, methods=["POST"]),
            Route("/dbjson/api/v1/leads/{id}", leads_dbjson, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


# -- SQLite through aiosqlite -----------------------------------------------------


def sqlite_app(path: str, pool_size: int) -> Starlette:
    import aiosqlite

    state: dict[str, Any] = {}

    async def connect() -> aiosqlite.Connection:
        conn = await aiosqlite.connect(path, timeout=30)
        # The service's pragmas (leads_gql/store/db.py): WAL, durable commits.
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "busy_timeout=30000",
            "foreign_keys=ON",
        ):
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        conns = [await connect() for _ in range(pool_size)]
        for conn in conns:
            readers.put_nowait(conn)
        writer = await connect()
        state.update(readers=readers, writer=writer, write_lock=asyncio.Lock())
        try:
            yield
        finally:
            for conn in [*conns, writer]:
                await conn.close()

    async def leads(request: Request) -> Response:
        flow = flow_param(request)
        if flow is None:
            return json_response(BAD_ID, 400)
        readers = state["readers"]
        conn = await readers.get()
        try:
            rows = await conn.execute_fetchall(LIST_SQL_SQLITE, (flow,))
        finally:
            readers.put_nowait(conn)
        if not rows:
            return json_response(NOT_FOUND, 404)
        return json_response(
            orjson.dumps(
                [
                    {
                        "id": r[0],
                        "name": r[1],
                        "email": r[2],
                        "phone": r[3],
                        "chatflowid": r[4],
                        "chatId": r[5],
                        "createdDate": sqlite_instant(r[6]),
                    }
                    for r in rows
                ]
            )
        )

    async def leads_dbjson(request: Request) -> Response:
        flow = flow_param(request)
        if flow is None:
            return json_response(BAD_ID, 400)
        readers = state["readers"]
        conn = await readers.get()
        try:
            rows = await conn.execute_fetchall(DBJSON_SQL_SQLITE, (flow,))
        finally:
            readers.put_nowait(conn)
        body = rows[0][0]
        if body == "[]":
            return json_response(NOT_FOUND, 404)
        return json_response(body.encode())

    async def create(request: Request) -> Response:
        data = orjson.loads(await request.body())
        now = datetime.now(UTC)
        lead = {
            "id": (data.get("id") or str(uuid.uuid4())).lower(),
            "name": data.get("name"),
            "email": data.get("email"),
            "phone": data.get("phone"),
            "chatflowid": data["chatflowid"].lower(),
            "chatId": data.get("chatId") or str(uuid.uuid4()),
            "createdDate": now.strftime("%Y-%m-%d %H:%M:%S.%f"),
        }
        async with state["write_lock"]:  # the service's lock, too
            writer = state["writer"]
            await writer.execute(INSERT_SQL_SQLITE, tuple(lead.values()))
            await writer.commit()
        lead["createdDate"] = sqlite_instant(lead["createdDate"])
        return json_response(orjson.dumps(lead))

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/api/v1/leads/{id}", leads, methods=["GET"]),
            Route("/api/v1/leads", create, methods=["POST"]),
            Route("/dbjson/api/v1/leads/{id}", leads_dbjson, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["static", "postgres", "sqlite"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", help="postgresql://... or a SQLite file path")
    parser.add_argument(
        "--pool",
        type=int,
        default=None,
        help="connections (default: 20 for PostgreSQL, the service's pool_size + "
        "max_overflow; 5 readers + 1 writer for SQLite, SQLAlchemy's default)",
    )
    args = parser.parse_args(argv)
    if args.kind == "static":
        app = static_app()
    elif args.kind == "postgres":
        app = postgres_app(args.dsn, args.pool or 20)
    else:
        app = sqlite_app(args.dsn, args.pool or 5)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
