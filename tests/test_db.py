"""The database layer: migrations (no drift, idempotent, once under concurrency),
SQLite set-up, and the chat-flow index."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlmodel import SQLModel

from leads_gql.config import ConfigError, Settings
from leads_gql.models import Lead
from leads_gql.store import db
from tests.conftest import PG_ADMIN_URL, PG_SKIP, _pg_admin, pg_url_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.make_engine(Settings(database_url=database_url))
    await db.migrate(engine)
    yield engine
    await engine.dispose()


async def test_migrations_build_exactly_the_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(
                    sync, opts={"include_object": db.include_object}
                ),
                SQLModel.metadata,
            )
        )
    assert diff == []
    assert await db.current_revision(engine) == db.head_revision()
    await db.check_schema(engine)


async def test_migrating_again_keeps_the_leads(engine: AsyncEngine) -> None:
    flow = str(uuid.uuid4())
    start = datetime(2024, 8, 24, 14, 15, 22, 5, tzinfo=UTC)
    async with AsyncSession(engine, expire_on_commit=False) as session:
        for i in range(3):
            session.add(
                Lead(
                    id=str(uuid.uuid4()),
                    name=f"lead {i}",
                    chatflowid=flow,
                    chat_id="c",
                    created_date=start + timedelta(seconds=i),
                )
            )
        await session.commit()
    await db.migrate(engine)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT name FROM lead WHERE chatflowid = :f ORDER BY name"),
                {"f": flow},
            )
        ).all()
    assert [r.name for r in rows] == ["lead 0", "lead 1", "lead 2"]


async def test_the_flow_query_uses_the_index(engine: AsyncEngine) -> None:
    query = "SELECT * FROM lead WHERE chatflowid = 'x' ORDER BY created_date, id"
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(
                str(row[-1])
                for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}")
            )
            assert "ix_lead_chatflowid_created_date_id" in plan
            assert "SCAN lead" not in plan and "TEMP B-TREE" not in plan
        else:
            await conn.exec_driver_sql("SET enable_seqscan = off")
            plan = " ".join(
                str(row[0]) for row in await conn.exec_driver_sql(f"EXPLAIN {query}")
            )
            assert "ix_lead_chatflowid_created_date_id" in plan
            assert "Sort" not in plan


async def test_migrations_go_down_and_up_again(engine: AsyncEngine) -> None:
    """Each revision's downgrade undoes it: down to the first and back to head."""
    from alembic import command

    def run(sync: Connection, target: str, up: bool) -> None:
        config = db.alembic_config(sync)
        (command.upgrade if up else command.downgrade)(config, target)

    for target, up in (("0001", False), ("head", True)):
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn = await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                await conn.run_sync(run, target, up)
        if not up:
            assert await db.current_revision(engine) == "0001"
    assert await db.current_revision(engine) == db.head_revision() == "0002"
    await db.check_schema(engine)


async def test_search_uses_the_trigram_index_on_postgresql(
    engine: AsyncEngine,
) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no trigram index: search reads the flow's rows")
    query = (
        "SELECT id FROM lead WHERE name ILIKE '%ada%' OR email ILIKE '%ada%' "
        "OR phone ILIKE '%ada%'"
    )
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SET enable_seqscan = off")
        plan = " ".join(
            str(row[0]) for row in await conn.exec_driver_sql(f"EXPLAIN {query}")
        )
    assert "ix_lead_contact_trgm" in plan


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: object) -> None:
    engine = db.make_engine(
        Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/w.db")
    )
    try:
        async with engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            busy = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
            sync = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
        assert (mode, busy, sync) == ("wal", 30000, 2)
    finally:
        await engine.dispose()


async def test_a_database_that_is_behind_is_reported(tmp_path: object) -> None:
    engine = db.make_engine(
        Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/e.db")
    )
    try:
        with pytest.raises(db.SchemaBehind, match="leads-gql migrate"):
            await db.check_schema(engine)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_instances_starting_together_migrate_once() -> None:
    if not PG_ADMIN_URL:
        pytest.skip(PG_SKIP)
    name = f"leads_test_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    engines = [
        db.make_engine(Settings(database_url=pg_url_for(name))) for _ in range(4)
    ]
    try:
        await asyncio.gather(*(db.migrate(e) for e in engines))
        async with engines[0].connect() as conn:
            versions = (
                await conn.exec_driver_sql("SELECT version_num FROM alembic_version")
            ).all()
        assert [v[0] for v in versions] == [db.head_revision()]
    finally:
        for engine in engines:
            await engine.dispose()
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_sqlite_without_returning_is_refused_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/old.db", jwt_secret="s" * 40
    )
    with pytest.raises(ConfigError, match=r"SQLite 3\.31\.1 is too old.*3\.35"):
        db.make_engine(settings)
