"""The database: engine set-up for SQLite and PostgreSQL, connections, migrations."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Dialect, event, exc, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    create_async_engine,
)
from sqlalchemy.util import greenlet_spawn

from leads_gql.config import ConfigError, Settings
from leads_gql.errors import ServiceUnavailable
from leads_gql.store import deferred

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key: instances starting together migrate one at a time.
MIGRATION_LOCK_KEY = 0x1EAD5


# INSERT ... RETURNING (statements.py); its JSON functions are built in since 3.38
# and compiled into most earlier builds.
MIN_SQLITE = (3, 35)


# Indexes a migration makes only where the database allows (the trigram search
# index needs the pg_trgm extension), or differently per database (retention's
# index by createdDate): not in the models, not drift.
OPTIONAL_INDEXES = frozenset({"ix_lead_contact_trgm", "ix_lead_created_date"})


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic's filter of what the models are compared with."""
    return not (type_ == "index" and name in OPTIONAL_INDEXES)


class SchemaBehind(RuntimeError):
    """The database is not at the migration head (and we were told not to migrate)."""


def make_engine(settings: Settings) -> AsyncEngine:
    """The engine of the service, in autocommit.

    Every request runs statements that are atomic on their own (a create is one
    INSERT ... ON CONFLICT DO NOTHING), so BEGIN / COMMIT / ROLLBACK round trips,
    and resetting connections on their way back to the pool, buy nothing.
    Migrations open a real transaction on their own connection (`migrate`).
    """
    url = settings.database_url
    common: dict[str, Any] = {
        # Parameters are contact data: keep them out of error messages and logs.
        "hide_parameters": True,
        "isolation_level": "AUTOCOMMIT",
        "pool_reset_on_return": None,
        "pool_timeout": settings.db_pool_timeout,
    }
    if url.startswith("sqlite"):
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConfigError(
                f"SQLite {sqlite3.sqlite_version} is too old: leads-gql needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or later (INSERT ... RETURNING); "
                "use a newer Python build, or PostgreSQL"
            )
        engine = create_async_engine(
            url,
            # Each connection is a thread; a few readers suffice (writers queue
            # on a lock), and a fixed pool never reopens them.
            pool_size=4,
            max_overflow=0,
            # The driver's busy timeout (seconds).
            connect_args={"timeout": 30},
            **common,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    return create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
        connect_args={"timeout": settings.db_connect_timeout},
        **common,
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; synchronous=FULL makes each commit
    # durable before we answer 200. secure_delete zeroes what a deletion frees:
    # an erased lead's contact data does not linger in the file's free space.
    for pragma in (
        "journal_mode=WAL",
        "synchronous=FULL",
        "busy_timeout=30000",
        "foreign_keys=ON",
        "secure_delete=ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


_write_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[None]:
    """Queue SQLite writers of this process on a lock.

    SQLite has one writer at a time; waiting on an asyncio lock costs nothing,
    while waiting in SQLite's busy handler sleeps a worker thread in steps of up to
    100 ms. PostgreSQL needs no lock.
    """
    bind = engine.sync_engine
    if bind.dialect.name != "sqlite":
        yield
        return
    lock = _write_locks.setdefault(bind, asyncio.Lock())
    async with lock:
        yield


# SQLSTATE classes of a database that is away or full, not of a bad statement:
# connection exceptions, insufficient resources (too many clients), operator
# intervention (shutting down, cannot connect now).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def _unavailable(error: BaseException) -> bool:
    """Does this error mean "the database cannot be reached right now"?"""
    if isinstance(
        error,
        exc.OperationalError
        | exc.InterfaceError
        | exc.TimeoutError
        | OSError
        | asyncio.TimeoutError
        # The driver's own, on the hot paths: locked past the busy timeout, disk
        # full or unreadable (our statements are constant, never malformed).
        | sqlite3.OperationalError,
    ):
        return True
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    orig = getattr(error, "orig", None)
    for cause in (error, orig, getattr(orig, "__cause__", None)):
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
            return True
    # asyncpg's own errors on the driver path: a closed connection (InterfaceError)
    # or a protocol left mid-operation by a server that hung up (InternalClientError).
    return type(error).__module__.startswith("asyncpg") and any(
        cls.__name__ in ("InterfaceError", "InternalClientError")
        for cls in type(error).__mro__
    )


@asynccontextmanager
async def unavailable_as_503() -> AsyncIterator[None]:
    """An unreachable or full database is a 503 with Retry-After, not a 500."""
    try:
        yield
    except Exception as error:
        if _unavailable(error):
            raise ServiceUnavailable() from error
        raise


@dataclasses.dataclass(frozen=True, slots=True)
class Driver:
    """A pooled connection at the driver (asyncpg or aiosqlite), in autocommit."""

    engine: AsyncEngine
    connection: Any

    @property
    def dialect(self) -> Dialect:
        return self.engine.dialect

    @property
    def sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"


@asynccontextmanager
async def driver_scope(engine: AsyncEngine) -> AsyncIterator[Driver]:
    """A connection from the pool for one request, straight to the driver.

    Requests run a few constant statements, each atomic on its own: an ORM session
    or even a Core connection around them cost a third of a request and bought
    nothing. SQLAlchemy keeps the pool, the schema and the migrations.
    """
    async with unavailable_as_503():
        pooled = await engine.raw_connection()
        try:
            yield Driver(engine, pooled.driver_connection)
        except BaseException as error:
            # Past SQLAlchemy's own disconnect handling: a connection that broke
            # under a statement, or was left mid-statement (a cancelled request,
            # an abandoned stream), is never handed out again.
            if _unavailable(error) or not isinstance(error, Exception):
                with contextlib.suppress(Exception):
                    await greenlet_spawn(pooled.invalidate)
            raise
        finally:
            await greenlet_spawn(pooled.close)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the database to the head revision, once, even with many instances."""
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": MIGRATION_LOCK_KEY},
                )
                await conn.run_sync(_upgrade)
        else:
            # Our own transaction (the engine is in autocommit), taking SQLite's
            # write lock at once, so two processes never race on DDL.
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                await conn.run_sync(_upgrade)
            except BaseException:
                await conn.exec_driver_sql("ROLLBACK")
                raise
            await conn.exec_driver_sql("COMMIT")
    # Indexes that an import put off and was killed before it built them.
    async with driver_scope(engine) as driver:
        await deferred.build_left_over(driver.connection)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision)


async def check_schema(engine: AsyncEngine) -> None:
    """Raise SchemaBehind unless the database is at the head revision."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise SchemaBehind(
            f"the database schema is at revision {current or 'none (empty)'}, "
            f"this version needs {head}: run `leads-gql migrate` first"
        )
