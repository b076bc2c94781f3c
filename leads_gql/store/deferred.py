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

Works on asyncpg connections (PostgreSQL only; SQLite's import keeps its
indexes, which it maintains cheaply enough).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

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
            await connection.executemany(
                "INSERT INTO deferred_index (name, definition) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING",
                indexes,
            )
            for name, _ in indexes:
                quoted = name.replace('"', '""')
                await connection.execute(f'DROP INDEX "{quoted}"')
    except Exception as error:
        with contextlib.suppress(Exception):  # (the connection may be gone)
            await _unlock(connection)
        if getattr(error, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            return 0  # the table is busy: the import keeps its indexes
        raise
    if not indexes:
        await _unlock(connection)
    return len(indexes)


async def build(connections: Sequence[Any]) -> int:
    """Build every index waiting in `deferred_index`, the connections sharing
    them; how many. Then let go of the advisory lock (held by the first
    connection)."""
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
    if not await connection.fetchval("SELECT EXISTS (SELECT 1 FROM deferred_index)"):
        return 0
    if not await _lock(connection):
        return 0
    names = [name for name, _ in await connection.fetch(_WAITING)]
    logger.warning(
        "building %d index(es) that an interrupted import left unbuilt: %s",
        len(names),
        ", ".join(names),
    )
    return await build([connection])


async def _lock(connection: Any) -> bool:
    """The session lock of an import with indexes put off, if free."""
    key = statements.INDEX_BUILD_LOCK_KEY
    return bool(await connection.fetchval(statements.TRY_LOCK, key))


async def _unlock(connection: Any) -> None:
    await connection.execute(statements.UNLOCK, statements.INDEX_BUILD_LOCK_KEY)
