"""Fixtures: settings, a fresh database per test (SQLite, and PostgreSQL when
LEADS_TEST_DATABASE_URL is set), the app with its lifespan, an HTTP client, tokens."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette

from leads_gql.app import create_app
from leads_gql.config import Settings, database_url as async_url

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
PG_ADMIN_URL = os.environ.get("LEADS_TEST_DATABASE_URL")
PG_SKIP = "LEADS_TEST_DATABASE_URL is not set: PostgreSQL variant skipped"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LEADS_") and key != "LEADS_TEST_DATABASE_URL":
            monkeypatch.delenv(key)


async def _pg_admin(sql: str, url: str | None = None) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        (url or PG_ADMIN_URL or "").replace("postgresql+asyncpg://", "postgresql://")
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_url_for(database: str) -> str:
    """The admin URL with another database name, in SQLAlchemy's async form."""
    assert PG_ADMIN_URL
    base = async_url(PG_ADMIN_URL)
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}"


def fresh_pg_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database migrated to head, dropped afterwards (a
    fixture's body); skips without LEADS_TEST_DATABASE_URL."""
    if not PG_ADMIN_URL:
        pytest.skip(PG_SKIP)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    url = pg_url_for(name)

    async def migrate() -> None:
        from leads_gql.store import db

        engine = db.make_engine(Settings(database_url=url))
        await db.migrate(engine)
        await engine.dispose()

    asyncio.run(migrate())
    yield url
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head."""
    yield from fresh_pg_database("leads_test")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, copied for each test (faster than migrating)."""
    path = tmp_path_factory.mktemp("template") / "leads.db"

    async def migrate() -> None:
        from leads_gql.store import db

        engine = db.make_engine(Settings(database_url=f"sqlite+aiosqlite:///{path}"))
        await db.migrate(engine)
        async with engine.connect() as conn:  # fold the WAL into the main file
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        await engine.dispose()

    asyncio.run(migrate())
    return path


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test gets a clean database: a new SQLite file, or an emptied table."""
    if request.param == "sqlite":
        path = tmp_path / "leads.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    asyncio.run(_pg_admin("TRUNCATE lead", url))
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, jwt_secret=SECRET)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def sign(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


@pytest.fixture
def make_token() -> Callable[..., str]:
    """make_token(scope=..., chatflows=[...], ttl=..., **more_claims) -> a JWT."""

    def make(
        scope: str | None = "leads:read leads:write",
        *,
        sub: str = "tester",
        chatflows: list[str] | None = None,
        ttl: int = 3600,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl, **claims}
        if scope is not None:
            body["scope"] = scope
        if chatflows is not None:
            body["chatflows"] = chatflows
        return sign(body)

    return make


@pytest.fixture
def auth(make_token: Callable[..., str]) -> dict[str, str]:
    """Headers with a read-and-write token for every chat flow."""
    return {"Authorization": f"Bearer {make_token()}"}


def new_id() -> str:
    return str(uuid.uuid4())
