"""Two `leads-gql serve` processes over one PostgreSQL behave as one service."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import PG_ADMIN_URL, PG_SKIP, _pg_admin
from tests.server import Server, cli_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.anyio]

# Small pools: the suite shares one PostgreSQL server (max_connections) with others.
SMALL_POOL = {"LEADS_DB_POOL_SIZE": "4", "LEADS_DB_MAX_OVERFLOW": "4"}
SECRET = "instances-secret-" + "x" * 32
FIELDS = "id name email phone chatflowid chatId createdDate"


def token() -> str:
    now = int(time.time())
    claims = {
        "sub": "t",
        "scope": "leads:read leads:write",
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    if not PG_ADMIN_URL:
        pytest.skip(PG_SKIP)
    name = f"leads_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    head = PG_ADMIN_URL.rpartition("/")[0]
    env = cli_env(
        LEADS_DATABASE_URL=f"{head}/{name}", LEADS_JWT_SECRET=SECRET, **SMALL_POOL
    )
    cwd = tmp_path_factory.mktemp("instances")
    pair = [Server(cwd, env), Server(cwd, env)]
    try:
        # Both start (and migrate, under the advisory lock) at the same time.
        errors: list[BaseException] = []

        def start(server: Server) -> None:
            try:
                server.start()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(s,)) for s in pair]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        yield pair
    finally:
        for server in pair:
            server.stop()
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {token()}"}


async def test_created_on_one_read_on_the_other(servers: list[Server]) -> None:
    a, b = servers
    flow = str(uuid.uuid4())
    async with httpx.AsyncClient(headers=headers()) as client:
        created = await client.post(
            f"{a.url}/api/v1/leads", json={"chatflowid": flow, "name": "Ada"}
        )
        assert created.status_code == 200
        rest = await client.get(f"{b.url}/leads/{flow}")
        graphql = await client.post(
            f"{b.url}/graphql",
            json={
                "query": f'{{ leadsByChatflow(chatflowid: "{flow}") {{ {FIELDS} }} }}'
            },
        )
    assert rest.json() == [created.json()]
    assert graphql.json() == {"data": {"leadsByChatflow": [created.json()]}}


@pytest.mark.parametrize("attempt", range(3))
async def test_same_id_through_both_gives_one_row(
    servers: list[Server], attempt: int
) -> None:
    flow, lead_id = str(uuid.uuid4()), str(uuid.uuid4())
    lead = {"id": lead_id, "chatflowid": flow, "email": "ada@example.com"}
    async with httpx.AsyncClient(headers=headers(), timeout=30) as client:
        answers = await asyncio.gather(
            *(client.post(f"{servers[i % 2].url}/leads", json=lead) for i in range(20))
        )
        assert [r.status_code for r in answers] == [200] * 20
        assert len({r.text for r in answers}) == 1
        listed = await client.get(f"{servers[attempt % 2].url}/leads/{flow}")
    assert [row["id"] for row in listed.json()] == [lead_id]


async def test_spread_creates_lose_nothing(servers: list[Server]) -> None:
    flow = str(uuid.uuid4())
    limit = asyncio.Semaphore(32)
    acknowledged: list[str] = []

    async def create(client: httpx.AsyncClient, i: int) -> None:
        async with limit:
            answer = await client.post(
                f"{servers[i % 2].url}/leads",
                json={"chatflowid": flow, "name": f"lead {i}"},
            )
        assert answer.status_code == 200, answer.text
        acknowledged.append(answer.json()["id"])

    async with httpx.AsyncClient(headers=headers(), timeout=30) as client:
        await asyncio.gather(*(create(client, i) for i in range(300)))
        listed = await client.get(f"{servers[1].url}/leads/{flow}")
    assert sorted(row["id"] for row in listed.json()) == sorted(acknowledged)
    assert len(acknowledged) == 300


def test_logs_of_both_are_json(servers: list[Server], tmp_path: Path) -> None:
    for server in servers:
        lines = [line for line in server.output().splitlines() if line.startswith("{")]
        access = [
            entry
            for entry in map(json.loads, lines)
            if entry["logger"] == "leads_gql.access"
        ]
        assert access  # buffered, written within 100 ms
        assert access[-1].keys() == {
            "ts", "level", "logger", "msg", "method", "path", "route", "status",
            "duration_ms", "request_id",
        }  # fmt: skip
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", access[-1]["ts"])
