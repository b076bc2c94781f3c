"""Indexes put off by an import into an empty table, and built once it is in.

PostgreSQL maintains an index row by row at a cost several times that of
building it from the whole table in one pass (a million leads: the trigram
search index costs ~21 s of CPU row by row, 7 s built; the four B-trees 10 s
against 4). So an import into the empty `lead` table drops the table's
secondary indexes (`put_off`), stores the leads, and builds them again
(`build`), sharing the builds between its connections. The primary key stays:
it finds the ids already stored.

The definitions wait in `deferred_index`, written in the transaction that drops
the indexes and deleted in the one that builds each again, so an import killed
midway cannot lose one: the next `migrate` (which `serve` and `import` run)
builds what is left (`build_left_over`). An import holds an advisory lock while
its indexes are off, so a `migrate` meanwhile leaves them to it.

SQLite gains as much (a million leads: 23 s with the four indexes maintained,
12 s without them and 5 s to build them), on its one connection. It has no
advisory locks: the import holds an exclusive `flock` on a file beside the
database (`<database>-import`, left in place: removing a lock file races with
the next to open it), which the kernel lets go when the process ends, killed
or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import aiosqlite

from leads_gql.store import statements

logger = logging.getLogger("leads_gql.store")

# How long an import waits to lock the table before it keeps the indexes (other
# instances are using it: they go first).
LOCK_TIMEOUT = "2s"
LOCK_NOT_AVAILABLE = "55P03"

# The table's indexes that no constraint needs: not unique, not the primary
# key's; valid ones only (an invalid index is a failed build, not ours to keep).
_SECONDARY = """
SELECT c.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'lead'::regclass
  AND NOT i.indisunique AND NOT i.indisprimary AND i.indisvalid
ORDER BY c.relname
"""
# The largest builds first (the trigram GIN index takes twice all the rest), so
# that the connections finish together.
_WAITING = """
SELECT name, definition FROM deferred_index
ORDER BY definition LIKE '% USING gin %' DESC, name
"""


def if_not_exists(definition: str) -> str:
    """`CREATE INDEX name ...` as PostgreSQL prints it, made idempotent: two
    builders of the same index (an import and a `migrate`) both succeed."""
    return definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)


async def put_off(connection: Any) -> int:
    """Drop the secondary indexes of `lead` if it is empty and no other import
    has put them off; how many. The advisory lock stays with `connection` until
    `build` (or its session ends)."""
    if isinstance(connection, aiosqlite.Connection):
        return await _sqlite_put_off(connection)
    if not await _lock(connection):
        return 0  # another import has them off, and builds them at its end
    try:
        async with connection.transaction():
            await connection.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            # Nothing reads or writes the table meanwhile: it stays empty until
            # the drops commit.
            await connection.execute("LOCK TABLE lead IN ACCESS EXCLUSIVE MODE")
            if await connection.fetchval("SELECT EXISTS (SELECT 1 FROM lead)"):
                indexes = []
            else:
                indexes = await connection.fetch(_SECONDARY)
            await _set_aside(connection, indexes, "$1, $2")
    except Exception as error:
        with contextlib.suppress(Exception):  # (the connection may be gone)
            await _unlock(connection)
        if getattr(error, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            return 0  # the table is busy: the import keeps its indexes
        raise
    if not indexes:
        await _unlock(connection)
    return len(indexes)


async def _set_aside(connection: Any, indexes: Sequence[Any], marks: str) -> None:
    """In the caller's transaction: keep each index's (name, definition) in
    deferred_index, then drop it. `marks`: the driver's two placeholders."""
    await connection.executemany(
        f"INSERT INTO deferred_index (name, definition) VALUES ({marks}) "
        "ON CONFLICT (name) DO NOTHING",
        indexes,
    )
    for name, _ in indexes:
        quoted = name.replace('"', '""')
        await connection.execute(f'DROP INDEX "{quoted}"')


async def build(connections: Sequence[Any]) -> int:
    """Build every index waiting in `deferred_index`, the connections sharing
    them; how many. Then let go of the advisory lock (held by the first
    connection)."""
    if isinstance(connections[0], aiosqlite.Connection):
        return await _sqlite_build(connections[0])
    try:
        waiting = list(await connections[0].fetch(_WAITING))
        built = len(waiting)

        async def lane(connection: Any) -> None:
            while waiting:
                name, definition = waiting.pop(0)
                async with connection.transaction():
                    await connection.execute(if_not_exists(definition))
                    await connection.execute(
                        "DELETE FROM deferred_index WHERE name = $1", name
                    )

        await asyncio.gather(*(lane(connection) for connection in connections))
        return built
    finally:
        await _unlock(connections[0])


async def build_left_over(connection: Any) -> int:
    """`migrate`: build the indexes that an import put off and could not build
    (it was killed), unless an import is running (it builds them); how many."""
    if isinstance(connection, aiosqlite.Connection):
        return await _sqlite_build_left_over(connection)
    if not await connection.fetchval("SELECT EXISTS (SELECT 1 FROM deferred_index)"):
        return 0
    if not await _lock(connection):
        return 0
    _left_over([name for name, _ in await connection.fetch(_WAITING)])
    return await build([connection])


def _left_over(names: list[str]) -> None:
    logger.warning(
        "building %d index(es) that an interrupted import left unbuilt: %s",
        len(names),
        ", ".join(names),
    )


async def _lock(connection: Any) -> bool:
    """The session lock of an import with indexes put off, if free."""
    key = statements.INDEX_BUILD_LOCK_KEY
    return bool(await connection.fetchval(statements.TRY_LOCK, key))


async def _unlock(connection: Any) -> None:
    await connection.execute(statements.UNLOCK, statements.INDEX_BUILD_LOCK_KEY)


# -- SQLite ------------------------------------------------------------------------

_SQLITE_SECONDARY = """
SELECT name, sql FROM sqlite_master
WHERE type = 'index' AND tbl_name = 'lead' AND sql IS NOT NULL
  AND sql NOT LIKE 'CREATE UNIQUE %'
ORDER BY name
"""
# Lock files held by this process: database path -> descriptor.
_held: dict[str, int] = {}


async def _sqlite_put_off(connection: aiosqlite.Connection) -> int:
    path = await _sqlite_path(connection)
    if path is None or not _sqlite_lock(path):
        return 0  # in memory, or another import has them off
    try:
        await connection.execute("BEGIN IMMEDIATE")  # the table stays empty
        try:
            indexes: list[Any] = []
            if not await connection.execute_fetchall("SELECT 1 FROM lead LIMIT 1"):
                indexes = list(await connection.execute_fetchall(_SQLITE_SECONDARY))
            await _set_aside(connection, indexes, "?, ?")
        except BaseException:
            await connection.execute("ROLLBACK")
            raise
        await connection.execute("COMMIT")
    except BaseException:
        _sqlite_unlock(path)
        raise
    if not indexes:
        _sqlite_unlock(path)
    return len(indexes)


# SQLite's sorter may take as much memory as the page cache (PRAGMA cache_size):
# with the import's 128 MiB cache, building the indexes of a million leads took
# another 122 MB. With this cache instead they build as fast (3.9-4.3 s) on the
# memory the import's cache already holds.
SQLITE_BUILD_CACHE_KIB = 16 * 1024


async def _sqlite_build(connection: aiosqlite.Connection) -> int:
    path = await _sqlite_path(connection)
    ((cache,),) = await connection.execute_fetchall("PRAGMA cache_size")
    await connection.execute(f"PRAGMA cache_size = -{SQLITE_BUILD_CACHE_KIB}")
    try:
        waiting = list(await connection.execute_fetchall(_WAITING))
        for name, definition in waiting:
            await connection.execute("BEGIN IMMEDIATE")
            try:
                await connection.execute(if_not_exists(definition))
                await connection.execute(
                    "DELETE FROM deferred_index WHERE name = ?", (name,)
                )
            except BaseException:
                await connection.execute("ROLLBACK")
                raise
            await connection.execute("COMMIT")
        return len(waiting)
    finally:
        with contextlib.suppress(Exception):  # (the connection may be gone)
            await connection.execute(f"PRAGMA cache_size = {int(cache)}")
        if path is not None:
            _sqlite_unlock(path)


async def _sqlite_build_left_over(connection: aiosqlite.Connection) -> int:
    if not await connection.execute_fetchall("SELECT 1 FROM deferred_index LIMIT 1"):
        return 0
    path = await _sqlite_path(connection)
    if path is None or not _sqlite_lock(path):
        return 0
    _left_over([name for name, _ in await connection.execute_fetchall(_WAITING)])
    return await _sqlite_build(connection)


async def _sqlite_path(connection: aiosqlite.Connection) -> str | None:
    """The main database's file; None in memory."""
    for _, schema, path in await connection.execute_fetchall("PRAGMA database_list"):
        if schema == "main":
            return str(path) or None
    return None


def _sqlite_lock(path: str) -> bool:
    """Take the import's lock of the database at `path`, if free."""
    try:
        import fcntl
    except ImportError:  # (Windows: no flock, so the import keeps its indexes)
        return False
    if path in _held:
        return False  # (this process has it: another import in it)
    descriptor = os.open(f"{path}-import", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return False
    _held[path] = descriptor
    return True


def _sqlite_unlock(path: str) -> None:
    descriptor = _held.pop(path, None)
    if descriptor is not None:
        os.close(descriptor)  # (closing lets go of the flock)
