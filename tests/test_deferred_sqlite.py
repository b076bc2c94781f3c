"""Indexes put off by an import into an empty SQLite table (store/deferred.py):
built once the leads are in, by the import, or by the next `migrate` when the
import was killed; never lost, never built under a running import (whose lock
is a `flock` on `<database>-import`, let go by the kernel when it dies)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from leads_gql import importer
from leads_gql.config import Settings
from leads_gql.store import db, deferred
from tests.server import cli_env, run_cli
from tests.test_db import _migrate_to
from tests.test_deferred import PUT_OFF, kill_once_put_off
from tests.test_import import Run, lead, ndjson, stored, summary


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A fresh SQLite database, migrated to head."""
    path = tmp_path / "leads.db"
    migrated = run_cli("migrate", cwd=tmp_path, env=_env(path))
    assert migrated.returncode == 0, migrated.stderr
    return path


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(monkeypatch, capsys)


def _env(path: Path) -> dict[str, str]:
    return cli_env(LEADS_DATABASE_URL=f"sqlite:///{path}")


def _query(path: Path, sql: str) -> list[Any]:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        return connection.execute(sql).fetchall()


def indexes(path: Path) -> dict[str, str | None]:
    """The lead table's indexes: name -> definition (None: the primary key's)."""
    return dict(
        _query(path, "SELECT name, sql FROM sqlite_master "
                     "WHERE type = 'index' AND tbl_name = 'lead'")
    )  # fmt: skip


def waiting(path: Path) -> list[str]:
    return sorted(name for (name,) in _query(path, "SELECT name FROM deferred_index"))


def test_an_import_into_the_empty_table_builds_its_indexes_after(
    tmp_path: Path, database: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "PUT_OFF_FROM", 100)
    url = f"sqlite+aiosqlite:///{database}"
    before = indexes(database)
    assert len(before) == 5  # the primary key and four others
    leads = [lead(name=f"Lead {n}") for n in range(300)]
    path = tmp_path / "leads.ndjson"
    path.write_bytes(ndjson(*leads[:150], b"{not json", *leads[150:]))

    status, out, err = run(url, str(path))
    assert status == 1  # the line that is not JSON
    assert f"its 4 {PUT_OFF}" in err and "built 4 indexes in" in err
    assert "line 151: is not valid JSON" in err
    assert summary(out)["stored"] == 300 and len(stored(url)) == 300
    assert indexes(database) == before and waiting(database) == []

    # With --strict, refused: nothing stored, the indexes built all the same.
    _query(database, "DELETE FROM lead")
    status, out, err = run(url, "--strict", str(path))
    assert status == 1 and f"its 4 {PUT_OFF}" in err and "built 4 indexes" in err
    assert stored(url) == {}
    assert indexes(database) == before and waiting(database) == []
    path.write_bytes(ndjson(*leads))
    status, out, err = run(url, "--strict", str(path))
    assert status == 0 and summary(out)["stored"] == 300

    # Into a table that holds leads, the indexes stay.
    path.write_bytes(ndjson(*(lead(name=f"More {n}") for n in range(200))))
    status, out, err = run(url, str(path))
    assert status == 0 and err == "" and summary(out)["stored"] == 200
    assert indexes(database) == before


def test_migrate_leaves_the_indexes_to_the_import_that_has_them_off(
    database: Path,
) -> None:
    async def scenario() -> None:
        async with aiosqlite.connect(database, isolation_level=None) as importing:
            assert await deferred.put_off(importing) == 4
            async with aiosqlite.connect(database, isolation_level=None) as other:
                # A second import, and a `migrate` meanwhile, leave them alone.
                assert await deferred.put_off(other) == 0
                assert await deferred.build_left_over(other) == 0
            assert len(waiting(database)) == 4
            await importing.execute("PRAGMA cache_size = -131072")  # the import's
            assert await deferred.build([importing]) == 4
            # (built with a smaller cache: SQLite's sorter would take as much)
            cache = await importing.execute_fetchall("PRAGMA cache_size")
            assert list(cache) == [(-131072,)]
            # Built and let go: the next import may put them off again.
            assert await deferred.put_off(importing) == 4
            assert await deferred.build([importing]) == 4

    before = indexes(database)
    asyncio.run(scenario())
    assert indexes(database) == before and waiting(database) == []


@pytest.mark.slow
def test_an_import_killed_with_its_indexes_off_leaves_them_to_migrate(
    tmp_path: Path, database: Path
) -> None:
    """SIGKILL while the indexes are off: their definitions wait in
    deferred_index, the kernel lets go of the import's lock, the next
    `migrate` builds them as they were, and a re-run stores the rest."""
    before = indexes(database)
    leads = [lead(name=f"Lead {n}") for n in range(150_000)]
    path = tmp_path / "many.ndjson"
    path.write_bytes(ndjson(*leads))
    env = _env(database)
    kill_once_put_off(path, tmp_path, env)
    assert len(waiting(database)) == 4
    assert list(indexes(database)) == ["sqlite_autoindex_lead_1"]
    url = f"sqlite+aiosqlite:///{database}"
    kept = len(stored(url))  # committed before the kill
    assert kept < len(leads)

    migrated = run_cli("migrate", cwd=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "interrupted import" in migrated.stderr
    assert indexes(database) == before and waiting(database) == []

    again = run_cli("import", str(path), cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert summary(again.stdout)["stored"] == len(leads) - kept
    assert (PUT_OFF in again.stderr) == (kept == 0)
    assert len(stored(url)) == len(leads)
    assert indexes(database) == before and waiting(database) == []


def test_a_downgrade_past_0004_builds_the_waiting_indexes(database: Path) -> None:
    """Their definitions would go with the deferred_index table."""

    async def scenario() -> None:
        async with aiosqlite.connect(database, isolation_level=None) as importing:
            assert await deferred.put_off(importing) == 4
        deferred._sqlite_unlock(str(database))  # (the import is gone)
        url = f"sqlite+aiosqlite:///{database}"
        engine = db.make_engine(Settings(database_url=url, jwt_secret="s" * 40))
        try:
            await _migrate_to(engine, "0003", up=False)
        finally:
            await engine.dispose()

    before = indexes(database)
    asyncio.run(scenario())
    assert indexes(database) == before
    assert "deferred_index" not in {
        name for (name,) in _query(database, "SELECT name FROM sqlite_master")
    }


def test_without_flock_the_indexes_stay(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where there is no `fcntl` (Windows), nothing could tell a `migrate` that
    an import has the indexes off: it keeps them."""
    monkeypatch.setitem(sys.modules, "fcntl", None)  # (import fcntl fails)

    async def scenario() -> None:
        async with aiosqlite.connect(database, isolation_level=None) as importing:
            assert await deferred.put_off(importing) == 0

    before = indexes(database)
    asyncio.run(scenario())
    assert indexes(database) == before and waiting(database) == []
