"""Indexes put off by an import into an empty PostgreSQL table: built once the
leads are in, by the import, or by the next `migrate` when the import was
killed; never lost, never built under a running import. Each test has a
database of its own: these drop the table's indexes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leads_gql import importer
from leads_gql.store import deferred, statements
from tests.conftest import fresh_pg_database
from tests.server import CLI, cli_env, run_cli
from tests.test_import import Run, lead, ndjson, plain_url, stored, summary

pytestmark = pytest.mark.postgres

PUT_OFF = "secondary indexes are built once the leads are in"


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh database, migrated to head, dropped afterwards."""
    yield from fresh_pg_database("leads_deferred")


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(monkeypatch, capsys)


async def _connect(database_url: str) -> Any:
    import asyncpg

    return await asyncpg.connect(plain_url(database_url))


async def _query(database_url: str, sql: str) -> list[Any]:
    connection = await _connect(database_url)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


def indexes(database_url: str) -> dict[str, str]:
    """The lead table's indexes: name -> definition."""
    rows = asyncio.run(
        _query(database_url, "SELECT indexname, indexdef FROM pg_indexes "
                             "WHERE tablename = 'lead'")
    )  # fmt: skip
    return dict(rows)


def waiting(database_url: str) -> list[str]:
    rows = asyncio.run(_query(database_url, "SELECT name FROM deferred_index"))
    return sorted(name for (name,) in rows)


def kill_once_put_off(path: Path, cwd: Path, env: dict[str, str]) -> None:
    """`leads-gql import PATH`, SIGKILLed once it has put the indexes off and
    stored for a moment (shared with tests/test_deferred_sqlite.py)."""
    importing = subprocess.Popen(
        [*CLI, "import", str(path)], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert importing.stderr is not None
        first = importing.stderr.readline()
        assert PUT_OFF in first, first
        time.sleep(0.3)  # storing by then, far from done
        importing.send_signal(signal.SIGKILL)
        importing.wait(10)
    finally:
        importing.kill()
        importing.wait(10)
        if importing.stderr is not None:
            importing.stderr.close()


def test_an_import_into_the_empty_table_builds_its_indexes_after(
    tmp_path: Path, database_url: str, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "PUT_OFF_FROM", 100)
    before = indexes(database_url)
    assert len(before) == 6  # the primary key and five others
    leads = [lead(name=f"Lead {n}") for n in range(300)]
    path = tmp_path / "leads.ndjson"
    path.write_bytes(ndjson(*leads[:150], b"{not json", *leads[150:]))

    status, out, err = run(database_url, str(path))
    assert status == 1  # the line that is not JSON
    assert f"its 5 {PUT_OFF}" in err and "built 5 indexes in" in err
    assert "line 151: is not valid JSON" in err
    assert summary(out)["stored"] == 300 and len(stored(database_url)) == 300
    assert indexes(database_url) == before and waiting(database_url) == []

    # With --strict, refused: nothing stored, the indexes built all the same.
    asyncio.run(_query(database_url, "TRUNCATE lead"))
    status, out, err = run(database_url, "--strict", str(path))
    assert status == 1 and f"its 5 {PUT_OFF}" in err and "built 5 indexes" in err
    assert stored(database_url) == {}
    assert indexes(database_url) == before and waiting(database_url) == []
    path.write_bytes(ndjson(*leads))
    status, out, err = run(database_url, "--strict", str(path))
    assert status == 0 and summary(out)["stored"] == 300

    # Into a table that holds leads, the indexes stay.
    path.write_bytes(ndjson(*(lead(name=f"More {n}") for n in range(200))))
    status, out, err = run(database_url, str(path))
    assert status == 0 and err == "" and summary(out)["stored"] == 200
    assert indexes(database_url) == before


def test_a_small_import_keeps_the_indexes(
    tmp_path: Path, database_url: str, run: Run
) -> None:
    path = tmp_path / "leads.ndjson"
    path.write_bytes(ndjson(*(lead() for _ in range(50))))
    status, out, err = run(database_url, str(path))
    assert (status, err) == (0, "") and summary(out)["stored"] == 50
    assert len(indexes(database_url)) == 6


@pytest.mark.slow
def test_an_import_killed_with_its_indexes_off_leaves_them_to_migrate(
    tmp_path: Path, database_url: str
) -> None:
    """SIGKILL while the indexes are off: their definitions wait in
    deferred_index, the next `migrate` builds them as they were, and a re-run
    stores the rest."""
    before = indexes(database_url)
    leads = [lead(name=f"Lead {n}") for n in range(150_000)]
    path = tmp_path / "many.ndjson"
    path.write_bytes(ndjson(*leads))
    env = cli_env(LEADS_DATABASE_URL=plain_url(database_url))
    kill_once_put_off(path, tmp_path, env)
    assert len(waiting(database_url)) == 5
    assert set(indexes(database_url)) == {"lead_pkey"}
    kept = len(stored(database_url))  # committed before the kill
    assert kept < len(leads)

    migrated = run_cli("migrate", cwd=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert indexes(database_url) == before and waiting(database_url) == []

    again = run_cli("import", str(path), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert summary(again.stdout)["stored"] == len(leads) - kept
    # (Put off again if nothing was committed before the kill.)
    assert (PUT_OFF in again.stderr) == (kept == 0)
    assert len(stored(database_url)) == len(leads)
    assert indexes(database_url) == before and waiting(database_url) == []


def test_migrate_leaves_the_indexes_to_the_import_that_has_them_off(
    database_url: str,
) -> None:
    async def scenario() -> None:
        importing, migrating = (
            await _connect(database_url),
            await _connect(database_url),
        )
        try:
            assert await deferred.put_off(importing) == 5
            # A second import, and a `migrate` meanwhile, leave them alone.
            assert await deferred.put_off(migrating) == 0
            assert await deferred.build_left_over(migrating) == 0
            count = "SELECT count(*) FROM deferred_index"
            assert await migrating.fetchval(count) == 5
        finally:
            await importing.close()  # killed: its session, and lock, end
        try:
            assert await deferred.build_left_over(migrating) == 5
        finally:
            await migrating.close()

    before = indexes(database_url)
    asyncio.run(scenario())
    assert indexes(database_url) == before and waiting(database_url) == []


def test_a_retention_sweep_does_not_stop_an_import_putting_indexes_off(
    database_url: str,
) -> None:
    """The two take session locks of their own (before, they shared a key)."""

    async def scenario() -> None:
        importing, sweeping = await _connect(database_url), await _connect(database_url)
        try:
            lock = statements.TRY_LOCK
            assert await sweeping.fetchval(lock, statements.RETENTION_LOCK_KEY)
            assert await deferred.put_off(importing) == 5
            assert await deferred.build([importing]) == 5
        finally:
            await importing.close()
            await sweeping.close()

    before = indexes(database_url)
    asyncio.run(scenario())
    assert indexes(database_url) == before and waiting(database_url) == []


def test_a_table_that_holds_leads_or_is_busy_keeps_its_indexes(
    tmp_path: Path, database_url: str, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deferred, "LOCK_TIMEOUT", "200ms")

    async def scenario() -> None:
        importing, other = await _connect(database_url), await _connect(database_url)
        try:
            async with other.transaction():
                # Another instance reading the table: the import waits for it
                # no longer than LOCK_TIMEOUT, then keeps the indexes.
                await other.fetch("SELECT * FROM lead LIMIT 1")
                assert await deferred.put_off(importing) == 0
            await other.execute(
                "INSERT INTO lead (id, chatflowid, chat_id, created_date, name) "
                "VALUES ('x', 'f', 'c', now(), 'n')"
            )
            assert await deferred.put_off(importing) == 0
            # The advisory lock was let go both times.
            assert await other.fetchval(
                statements.TRY_LOCK, statements.INDEX_BUILD_LOCK_KEY
            )
        finally:
            await importing.close()
            await other.close()

    before = indexes(database_url)
    asyncio.run(scenario())
    assert indexes(database_url) == before and waiting(database_url) == []
