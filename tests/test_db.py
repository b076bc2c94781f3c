"""The database layer: migrations (no drift, idempotent, once under concurrency),
SQLite set-up, and the chat-flow index."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import SAWarning
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
    with warnings.catch_warnings():
        # SQLAlchemy cannot reflect SQLite's expression indexes (lower(email)), so
        # Alembic leaves them out of the comparison there, saying so; PostgreSQL
        # compares them. SQLite's is checked by name and expression below.
        warnings.filterwarnings(
            "ignore",
            "Skipped unsupported reflection of expression-based index",
            SAWarning,
        )
        warnings.filterwarnings(
            "ignore", "autogenerate skipping metadata-specified expression-based index"
        )
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
    if engine.dialect.name == "sqlite":
        async with engine.connect() as conn:
            (sql,) = (
                await conn.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE name = 'ix_lead_email_lower'"
                )
            ).one()
        assert sql == "CREATE INDEX ix_lead_email_lower ON lead (lower(email))"
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

    for target, up in (("0002", False), ("0001", False), ("head", True)):
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn = await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                await conn.run_sync(run, target, up)
        if not up:
            assert await db.current_revision(engine) == target
            async with engine.connect() as conn:
                columns = await conn.run_sync(
                    lambda sync: {c["name"] for c in inspect(sync).get_columns("lead")}
                )
                indexes = await conn.run_sync(
                    lambda sync: {i["name"] for i in inspect(sync).get_indexes("lead")}
                )
            assert "phone_digits" not in columns
            assert not indexes & {
                "ix_lead_phone_digits",
                "ix_lead_created_date",
                "ix_lead_email_lower",
            }
    assert await db.current_revision(engine) == db.head_revision() == "0004"
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


async def _migrate_to(engine: AsyncEngine, target: str, up: bool) -> None:
    from alembic import command

    def run(sync: Connection) -> None:
        config = db.alembic_config(sync)
        (command.upgrade if up else command.downgrade)(config, target)

    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = await conn.execution_options(isolation_level="READ COMMITTED")
        async with conn.begin():
            await conn.run_sync(run)


async def test_migration_0003_fills_the_phone_digits_of_stored_leads(
    engine: AsyncEngine,
) -> None:
    """Leads stored before erasure existed are found by their phone's digits."""
    await _migrate_to(engine, "0002", up=False)
    phones = {
        "a": "+44 20 7946 0958",
        "b": "(44) 20-7946-0958",
        "c": "442079460958",
        "d": None,
        # Written by another tool, past the API's rules: mended in Python on SQLite.
        "e": "tel:+1 555/0100 ext 7",
        "f": "n/a",
    }
    async with engine.begin() as conn:
        for key, phone in phones.items():
            await conn.execute(
                text(
                    "INSERT INTO lead (id, name, phone, chatflowid, chat_id, "
                    "created_date) VALUES (:id, 'x', :phone, 'f', 'c', :when)"
                ),
                {"id": key, "phone": phone, "when": datetime(2024, 1, 1, tzinfo=UTC)},
            )
    await _migrate_to(engine, "head", up=True)
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql("SELECT id, phone_digits FROM lead")
        rows = {row.id: row.phone_digits for row in result.all()}
    assert rows == {
        "a": "442079460958",
        "b": "442079460958",
        "c": "442079460958",
        "d": None,
        "e": "155501007",
        "f": None,
    }


async def test_erasure_and_retention_find_leads_by_index(engine: AsyncEngine) -> None:
    """On a million leads an erasure or a retention batch reads a few index
    entries, never the table."""
    from leads_gql.store import statements

    before = datetime(2024, 1, 1, tzinfo=UTC)
    async with db.driver_scope(engine) as driver:
        instant = statements.created_date_in(driver.dialect)(before)
        flows: object = '["f"]' if driver.sqlite else ["f"]
        cases: dict[str, tuple[list[object], set[str]]] = {
            "ERASE": (["ada@example.com", "12345"], {"email", "phone"}),
            "ERASE_IN_FLOWS": (["ada@example.com", "12345", flows], {"email", "phone"}),
            "EXPIRED_BATCH": ([instant, 500], {"created"}),
            "COUNT_EXPIRED": ([instant], {"created"}),
        }
        names = {
            "email": "ix_lead_email_lower",
            "phone": "ix_lead_phone_digits",
            "created": "ix_lead_created_date",
        }
        if not driver.sqlite:
            await driver.connection.execute("SET enable_seqscan = off")
        for name, (values, wanted) in cases.items():
            sql = getattr(statements, name)[driver.dialect.name]
            if driver.sqlite:
                rows = await driver.connection.execute_fetchall(
                    f"EXPLAIN QUERY PLAN {sql}", values
                )
                plan = " ".join(str(row[-1]) for row in rows)
                assert "SCAN lead" not in plan, (name, plan)
            else:
                rows = await driver.connection.fetch(f"EXPLAIN {sql}", *values)
                plan = " ".join(str(row[0]) for row in rows)
                assert "Seq Scan" not in plan, (name, plan)
                if name == "ERASE_IN_FLOWS":
                    continue  # the planner may start from the flows instead
            for index in wanted:
                assert names[index] in plan, (name, plan)
        if not driver.sqlite:
            await driver.connection.execute("RESET enable_seqscan")


def test_the_sqlite_instant_text_is_sqlalchemy_s() -> None:
    """`created_date_in` writes UTC instants itself on SQLite: the same text as
    SQLAlchemy's DATETIME, which stored leads and their order rely on."""
    from sqlalchemy.dialects.sqlite import aiosqlite

    from leads_gql.store import statements

    dialect = aiosqlite.dialect()
    ours = statements.created_date_in(dialect)
    theirs = Lead.__table__.c.created_date.type.dialect_impl(dialect).bind_processor(  # type: ignore[attr-defined]
        dialect
    )
    plus_two = timezone(timedelta(hours=2))
    for value in (
        datetime(2024, 8, 24, 14, 15, 22, tzinfo=UTC),
        datetime(2024, 8, 24, 14, 15, 22, 5, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 8, 24, 16, 15, 22, 120000, tzinfo=plus_two),
        datetime.fromisoformat("2024-08-24T14:15:22.123Z"),
    ):
        assert ours(value) == theirs(value)
