"""Retention: old leads deleted by the server in the background, in batches, by one
instance at a time; `leads-gql purge` doing it once; a real `serve` doing it."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from leads_gql import resolvers
from leads_gql.app import create_app
from leads_gql.config import Settings
from leads_gql.models import format_datetime
from leads_gql.retention import Retention, expiry
from leads_gql.store import db, statements
from tests.conftest import SECRET, _pg_admin, new_id
from tests.server import Server, cli_env, run_cli

pytestmark = pytest.mark.anyio

DAY = timedelta(days=1)


def ago(delta: timedelta) -> datetime:
    return datetime.now(UTC) - delta


async def seed(engine: AsyncEngine, count: int, when: datetime, flow: str) -> list[str]:
    """`count` leads of `flow` created at `when` (a microsecond apart), stored in
    statements of 1,000 rows."""
    ids = [new_id() for _ in range(count)]
    rows = [
        {
            "id": lead_id,
            "name": f"old {i}",
            "email": f"old{i}@example.com",
            "chatflowid": flow,
            "chat_id": "c",
            "created_date": when + timedelta(microseconds=i),
        }
        for i, lead_id in enumerate(ids)
    ]
    async with engine.connect() as conn:
        for start in range(0, count, 1000):
            await conn.execute(
                statements.LEAD.insert().values(rows[start : start + 1000])
            )
    return ids


async def stored_ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return {row[0] for row in await conn.exec_driver_sql("SELECT id FROM lead")}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(
    settings: Settings,
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t"
        ) as client:
            yield app, client


def retention_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        getattr(record, "fields", {})
        for record in caplog.records
        if record.name == "leads_gql.audit"
        and getattr(record, "fields", {}).get("cause") == "retention"
    ]


@pytest.fixture
def audit(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="leads_gql.audit")
    return caplog


# --- In the app's lifespan ------------------------------------------------------


async def test_old_leads_disappear_within_the_sweep_interval(
    settings: Settings, auth: dict[str, str], audit: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        database_url=settings.database_url,
        jwt_secret=SECRET,
        retention_days=1,
        retention_interval=0.2,
    )
    flow = new_id()
    async with running(settings) as (app, client):
        assert isinstance(app.state.retention, Retention)

        async def create(created: datetime) -> dict[str, Any]:
            lead = {
                "chatflowid": flow,
                "name": "Ada",
                "email": "ada@example.com",
                "createdDate": format_datetime(created),
            }
            answer = await client.post("/leads", json=lead, headers=auth)
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body

        async def listed() -> set[str]:
            answer = await client.get(f"/leads/{flow}", headers=auth)
            return (
                {lead["id"] for lead in answer.json()} if answer.is_success else set()
            )

        old = await create(ago(DAY * 400))
        soon = await create(ago(DAY - timedelta(seconds=3)))
        fresh = await create(ago(timedelta(hours=23)))
        # The old one may be gone already: a sweep runs every 0.2 s.
        assert {soon["id"], fresh["id"]} <= await listed()

        async def only(*ids: str) -> bool:
            return await listed() == set(ids)

        await eventually(lambda: only(soon["id"], fresh["id"]), timeout=2.5)
        # Past the limit 3 s after it was made, gone within an interval after.
        await eventually(lambda: only(fresh["id"]), timeout=6)
        retention = app.state.retention
    assert retention._task is None  # stopped with the app
    assert retention_lines(audit) == [
        {
            "sub": "retention",
            "lead_id": lead["id"],
            "chatflowid": flow,
            "cause": "retention",
        }
        for lead in (old, soon)
    ]


async def test_no_retention_unless_configured(app: Starlette) -> None:
    assert app.state.retention is None


async def test_a_sweep_deletes_the_oldest_first_in_batches(
    app: Starlette, audit: pytest.LogCaptureFixture
) -> None:
    engine: AsyncEngine = app.state.engine
    flow = new_id()
    old = await seed(engine, 1234, ago(DAY * 30), flow)
    kept = await seed(engine, 5, ago(DAY * 6), flow)
    before = expiry(7)
    async with db.driver_scope(engine) as driver:
        assert await resolvers.count_expired(driver=driver, before=before) == 1234
        # One batch: the oldest `limit` leads, one short statement.
        assert (
            await resolvers.delete_expired(driver=driver, before=before, limit=100)
            == 100
        )
    assert await stored_ids(engine) == set(old[100:]) | set(kept)

    sweeper = Retention(engine, 7, batch_size=100, pause=0)
    assert await sweeper.sweep() == 1134
    assert await stored_ids(engine) == set(kept)
    assert await sweeper.sweep() == 0
    logged = [line["lead_id"] for line in retention_lines(audit)]
    assert sorted(logged) == sorted(old)  # each once
    # Oldest first, batch by batch (in any order within a batch).
    for start in range(0, len(old), 100):
        assert set(logged[start : start + 100]) == set(old[start : start + 100])


async def test_creates_during_a_sweep_are_never_refused(
    app: Starlette, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """SQLite: the sweep's batches and the creates queue on one write lock; no
    "database is locked", no 5xx. PostgreSQL: nothing waits on a batch."""
    engine: AsyncEngine = app.state.engine
    old = await seed(engine, 3000, ago(DAY * 30), new_id())
    flow = new_id()
    sweeper = Retention(engine, 1, batch_size=50, pause=0)

    async def create(i: int) -> httpx.Response:
        lead = {"chatflowid": flow, "name": f"new {i}"}
        return await client.post("/leads", json=lead, headers=auth)

    sweep = asyncio.create_task(sweeper.sweep())
    answers = await asyncio.gather(*(create(i) for i in range(200)))
    assert await sweep == len(old)
    assert [a.status_code for a in answers] == [200] * 200
    created = {a.json()["id"] for a in answers}
    assert await stored_ids(engine) == created


async def test_a_failing_sweep_is_logged_and_the_next_one_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="leads_gql")
    engine = db.make_engine(
        Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/later.db")
    )
    try:
        sweeper = Retention(engine, 1, interval=0.05)
        sweeper.start()

        async def failures() -> bool:
            failed = [r for r in caplog.records if r.name == "leads_gql.retention"]
            return len(failed) >= 3

        async def gone() -> bool:
            return lead not in await stored_ids(engine)

        # No table yet: every sweep fails, is logged, and the task goes on.
        await eventually(failures)
        assert sweeper._task is not None and not sweeper._task.done()
        await db.migrate(engine)
        (lead,) = await seed(engine, 1, ago(DAY * 2), new_id())
        await eventually(gone)
        await sweeper.stop()
        assert sweeper._task is None
    finally:
        await engine.dispose()


# --- Several instances over one PostgreSQL ---------------------------------------


@pytest.mark.postgres
async def test_one_instance_sweeps_at_a_time(
    pg_database: str, audit: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL's advisory lock (SQLite has one writer anyway)."""
    database_url = pg_database
    await _pg_admin("TRUNCATE lead", database_url)
    settings = Settings(database_url=database_url, jwt_secret=SECRET)
    async with running(settings) as (first, _), running(settings) as (second, _):
        engine: AsyncEngine = first.state.engine
        old = await seed(engine, 200, ago(DAY * 30), new_id())
        sweepers = [
            Retention(app.state.engine, 1, batch_size=20, pause=0.05)
            for app in (first, second)
        ]
        results = await asyncio.gather(*(s.sweep() for s in sweepers))
        # One swept (10 batches, half a second), the other found it sweeping.
        assert sorted(results, key=str) == [200, None]
        assert await stored_ids(engine) == set()
        lines = retention_lines(audit)
        assert sorted(line["lead_id"] for line in lines) == sorted(old)
        # The lock was let go: either sweeps again (and finds nothing).
        assert [await s.sweep() for s in sweepers] == [0, 0]

        # A holder that goes away (its connection closed) lets go of it too.
        holder = db.make_engine(settings)
        try:
            async with db.driver_scope(holder) as driver:
                assert await driver.connection.fetchval(
                    statements.TRY_LOCK, statements.RETENTION_LOCK_KEY
                )
            await seed(engine, 3, ago(DAY * 30), new_id())
            assert await sweepers[0].sweep() is None
        finally:
            await holder.dispose()  # closes the holder's connection
        assert await sweepers[0].sweep() == 3


# --- `leads-gql purge` -----------------------------------------------------------


@pytest.mark.slow
async def test_purge_counts_then_deletes_the_old_leads(
    database_url: str, tmp_path: Path
) -> None:
    engine = db.make_engine(Settings(database_url=database_url))
    try:
        await db.migrate(engine)
        flow = new_id()
        old = await seed(engine, 3, ago(DAY * 31), flow)
        kept = await seed(engine, 2, ago(DAY * 29), flow)
        env = cli_env(LEADS_DATABASE_URL=database_url)

        dry = run_cli(
            "purge", "--older-than-days", "30", "--dry-run", cwd=tmp_path, env=env
        )
        assert (dry.returncode, dry.stdout) == (
            0,
            "would delete 3 leads older than 30 days (dry run)\n",
        )
        assert dry.stderr == ""
        assert await stored_ids(engine) == set(old) | set(kept)

        done = run_cli("purge", "--older-than-days", "30", cwd=tmp_path, env=env)
        assert (done.returncode, done.stdout) == (
            0,
            "deleted 3 leads older than 30 days\n",
        )
        assert await stored_ids(engine) == set(kept)
        lines = [json.loads(line) for line in done.stderr.splitlines()]
        assert [
            {
                k: line[k]
                for k in ("logger", "msg", "sub", "lead_id", "chatflowid", "cause")
            }
            for line in lines
        ] == [
            {
                "logger": "leads_gql.audit",
                "msg": "lead deleted",
                "sub": "retention",
                "lead_id": lead_id,
                "chatflowid": flow,
                "cause": "retention",
            }
            for lead_id in old
        ]
        assert "example.com" not in done.stderr

        again = run_cli("purge", "--older-than-days", "1", cwd=tmp_path, env=env)
        assert (again.returncode, again.stdout) == (
            0,
            "deleted 2 leads older than 1 days\n",
        )
    finally:
        await engine.dispose()


# --- A real server ----------------------------------------------------------------


@pytest.mark.slow
def test_serve_with_retention_deletes_old_leads(tmp_path: Path) -> None:
    database = tmp_path / "leads.db"
    env = cli_env(LEADS_JWT_SECRET=SECRET, LEADS_DATABASE_URL=f"sqlite:///{database}")
    assert run_cli("migrate", cwd=tmp_path, env=env).returncode == 0
    flow = new_id()
    # Already past the limit when the server starts.
    waiting = new_id()
    with closing(sqlite3.connect(database)) as conn, conn:
        conn.execute(
            "INSERT INTO lead (id, email, chatflowid, chat_id, created_date) "
            "VALUES (?, 'ada@example.com', ?, 'c', ?)",
            (waiting, flow, (ago(DAY * 3)).strftime("%Y-%m-%d %H:%M:%S.%f")),
        )
    token = run_cli("token", "--scope", "leads:read leads:write", cwd=tmp_path, env=env)
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    env = {**env, "LEADS_RETENTION_DAYS": "1", "LEADS_RETENTION_INTERVAL": "0.5"}
    with Server(tmp_path, env) as server:
        old = httpx.post(
            f"{server.url}/leads",
            json={
                "chatflowid": flow,
                "phone": "+44 20 7946 0958",
                "createdDate": format_datetime(ago(DAY * 2)),
            },
            headers=headers,
        ).json()
        fresh = httpx.post(
            f"{server.url}/leads",
            json={"chatflowid": flow, "name": "Grace"},
            headers=headers,
        ).json()

        def listed() -> set[str]:
            answer = httpx.get(f"{server.url}/leads/{flow}", headers=headers)
            return {lead["id"] for lead in answer.json()}

        deadline = time.monotonic() + 10
        while listed() != {fresh["id"]}:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        output = server.output()
    audit = [
        line
        for line in (
            json.loads(raw) for raw in output.splitlines() if raw.startswith("{")
        )
        if line.get("logger") == "leads_gql.audit"
    ]
    assert {(line["sub"], line["lead_id"], line["cause"]) for line in audit} == {
        ("retention", waiting, "retention"),
        ("retention", old["id"], "retention"),
    }
    for secret in ("ada@example.com", "7946", "Grace"):
        assert secret not in output


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["0", "-3", "1.5", "week", "36501"])
def test_serve_refuses_a_bad_retention_limit(tmp_path: Path, bad: str) -> None:
    env = cli_env(LEADS_JWT_SECRET=SECRET, LEADS_RETENTION_DAYS=bad)
    out = run_cli("serve", cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert "LEADS_RETENTION_DAYS" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "leads.db").exists()
