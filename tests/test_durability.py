"""Faults on a real server: killed mid-load, stopped mid-load, many writers."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import PG_ADMIN_URL, PG_SKIP, _pg_admin
from tests.server import Server, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# Small pools: the suite shares one PostgreSQL server (max_connections) with others.
SMALL_POOL = {"LEADS_DB_POOL_SIZE": "4", "LEADS_DB_MAX_OVERFLOW": "4"}
SECRET = "durability-secret-" + "x" * 32


def headers() -> dict[str, str]:
    now = int(time.time())
    claims = {
        "sub": "t",
        "scope": "leads:read leads:write",
        "iat": now,
        "exp": now + 600,
    }
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield cli_env(
            LEADS_DATABASE_URL=f"sqlite:///{tmp_path}/leads.db", LEADS_JWT_SECRET=SECRET
        )
        return
    if not PG_ADMIN_URL:
        pytest.skip(PG_SKIP)
    name = f"leads_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    head = PG_ADMIN_URL.rpartition("/")[0]
    try:
        yield cli_env(
            LEADS_DATABASE_URL=f"{head}/{name}", LEADS_JWT_SECRET=SECRET, **SMALL_POOL
        )
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def load(
    server: Server,
    flow: str,
    count: int,
    concurrency: int,
    stop_after: float | None,
    batch: int = 0,
) -> tuple[list[str], list[int]]:
    """`count` creates at `concurrency` (each a batch of `batch` leads through
    POST /leads/batch when given); with `stop_after`, the server is signalled
    mid-load. Returns the acknowledged ids and every status seen (0: no answer)."""
    acknowledged: list[str] = []
    statuses: list[int] = []
    limit = asyncio.Semaphore(concurrency)

    def lead(i: int) -> dict[str, str]:
        return {"id": str(uuid.uuid4()), "chatflowid": flow, "name": f"n{i}"}

    async def create(client: httpx.AsyncClient, i: int) -> None:
        async with limit:
            try:
                if batch:
                    body = [lead(i * batch + n) for n in range(batch)]
                    answer = await client.post(f"{server.url}/leads/batch", json=body)
                else:
                    answer = await client.post(f"{server.url}/leads", json=lead(i))
            except httpx.TransportError:
                statuses.append(0)
                return
        statuses.append(answer.status_code)
        if answer.status_code == 200 and batch:
            acknowledged.extend(item["lead"]["id"] for item in answer.json())
        elif answer.status_code == 200:
            acknowledged.append(answer.json()["id"])

    async with httpx.AsyncClient(headers=headers(), timeout=30) as client:
        tasks = [asyncio.create_task(create(client, i)) for i in range(count)]
        if stop_after is not None:
            await asyncio.sleep(stop_after)
        await asyncio.gather(*tasks)
    return acknowledged, statuses


async def stored_ids(server: Server, flow: str) -> list[str]:
    async with httpx.AsyncClient(headers=headers()) as client:
        answer = await client.get(f"{server.url}/leads/{flow}")
    if answer.status_code == 404:
        return []
    rows = answer.json()
    # Nothing half-written: every row is a whole lead.
    assert all(row["chatId"] and row["createdDate"].endswith("Z") for row in rows)
    assert all(row["name"].startswith("n") for row in rows)
    return [row["id"] for row in rows]


@pytest.mark.parametrize("batch", [0, 50], ids=["single", "batches-of-50"])
async def test_sigkill_mid_load_loses_no_acknowledged_lead(
    env: dict[str, str], tmp_path: Path, batch: int
) -> None:
    """Single creates (written in groups) or batches: whatever was answered 200
    is on disk after a SIGKILL."""
    flow = str(uuid.uuid4())
    server = Server(tmp_path, env).start()
    try:
        count = 400 if not batch else 2000  # 100,000 leads: still going at the kill
        task = asyncio.create_task(load(server, flow, count, 16, None, batch))
        await asyncio.sleep(0.6)
        server.kill()
        acknowledged, statuses = await task
    finally:
        server.stop()
    assert acknowledged, "the kill came before any create was answered"
    assert 0 in statuses, "the kill came after the load had finished"
    assert set(statuses) <= {0, 200}
    with Server(tmp_path, env) as restarted:
        stored = await stored_ids(restarted, flow)
    assert set(acknowledged) <= set(stored)


async def test_sigterm_finishes_in_flight_requests(
    env: dict[str, str], tmp_path: Path
) -> None:
    flow = str(uuid.uuid4())
    server = Server(tmp_path, env).start()
    try:
        task = asyncio.create_task(load(server, flow, 300, 16, None))
        await asyncio.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        acknowledged, statuses = await task
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert server.process.wait(20) in (0, -signal.SIGTERM)  # type: ignore[union-attr]
    finally:
        server.stop()
    assert set(statuses) <= {0, 200}
    assert "Application shutdown complete" in server.output()
    with Server(tmp_path, env) as restarted:
        assert set(acknowledged) <= set(await stored_ids(restarted, flow))


async def test_fifty_concurrent_writers_are_never_locked_out(
    env: dict[str, str], tmp_path: Path
) -> None:
    flow = str(uuid.uuid4())
    with Server(tmp_path, env) as server:
        acknowledged, statuses = await load(server, flow, 250, 50, None)
        assert statuses == [200] * 250
        assert sorted(await stored_ids(server, flow)) == sorted(acknowledged)
        assert "locked" not in server.output()
