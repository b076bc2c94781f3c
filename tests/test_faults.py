"""The database going away: 503 with Retry-After (never 500), then recovery."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from leads_gql.app import create_app
from leads_gql.config import Settings
from tests.conftest import _pg_admin
from tests.server import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


class Proxy:
    """A TCP proxy to PostgreSQL that the test can cut and restore."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
def database_url(pg_database: str) -> str:
    """PostgreSQL only: SQLite is a file, it has no network to lose."""
    asyncio.run(_pg_admin("TRUNCATE lead", pg_database))
    return pg_database


@pytest.fixture
async def proxied(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, Proxy]]:
    proxy = Proxy(5432)
    await proxy.start()
    name = settings.database_url.rpartition("/")[2]
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{name}"
    app = create_app(
        dataclasses.replace(settings, database_url=url, db_connect_timeout=2)
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c, proxy
    if proxy.server is not None and proxy.server.is_serving():
        await proxy.cut()


async def test_unreachable_database_is_503_then_recovers(
    proxied: tuple[httpx.AsyncClient, Proxy], auth: dict[str, str]
) -> None:
    client, proxy = proxied
    flow = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    lead = {"chatflowid": flow, "name": "Ada"}
    assert (await client.post("/leads", json=lead, headers=auth)).status_code == 200

    await proxy.cut()
    for attempt in range(3):
        for answer in (
            await client.post("/leads", json=lead, headers=auth),
            await client.get(f"/api/v1/leads/{flow}", headers=auth),
        ):
            assert answer.status_code == 503, (attempt, answer.text)
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.json()["statusCode"] == 503
        graphql = await client.post(
            "/graphql",
            json={"query": f'{{ leadsByChatflow(chatflowid: "{flow}") {{ id }} }}'},
            headers=auth,
        )
        assert graphql.status_code == 503
        assert (await client.get("/readyz")).status_code == 503

    await proxy.start()  # the database is back: the service recovers by itself
    recovered = await client.get(f"/leads/{flow}", headers=auth)
    assert recovered.status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_exhausted_pool_is_503_not_500(
    settings: Settings, auth: dict[str, str]
) -> None:
    app = create_app(
        dataclasses.replace(
            settings, db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.2
        )
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            async with app.state.engine.connect() as held:
                await held.exec_driver_sql("SELECT 1")
                answer = await c.get(
                    "/leads/3fa85f64-5717-4562-b3fc-2c963f66afa6", headers=auth
                )
                assert answer.status_code == 503
                assert answer.headers["retry-after"]
            after = await c.get(
                "/leads/3fa85f64-5717-4562-b3fc-2c963f66afa6", headers=auth
            )
            assert after.status_code == 404


async def test_a_connection_killed_in_the_pool_is_replaced_not_reused(
    settings: Settings, auth: dict[str, str]
) -> None:
    """The hot paths talk to the driver directly; a dead pooled connection costs
    at most one 503 each, never a pool that fails for good."""
    app = create_app(dataclasses.replace(settings, db_pool_size=1, db_max_overflow=0))
    flow = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    name = settings.database_url.rpartition("/")[2]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            lead = {"chatflowid": flow, "name": "Ada"}
            for request in (
                lambda: c.post("/leads", json=lead, headers=auth),
                lambda: c.get(f"/leads/{flow}", headers=auth),
            ):
                assert (await request()).status_code == 200
                await _pg_admin(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
                statuses = [(await request()).status_code for _ in range(3)]
                assert statuses[0] in (200, 503), statuses
                assert statuses[1:] == [200, 200], statuses
