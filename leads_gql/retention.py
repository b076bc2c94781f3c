"""Retention: leads older than `LEADS_RETENTION_DAYS` deleted by the server itself.

At start, then every `interval` seconds, a sweep deletes the leads created before
now minus the limit, oldest first, in batches of `batch_size` with a `pause`
between them. Each batch is one short DELETE of its own, so readers never wait and
writers wait at most a batch (on SQLite they queue with the sweep on the process's
write lock, `db.writing`, and the pause lets other processes' writers in). On
PostgreSQL a sweep runs under an advisory lock: of the instances over one
database, one sweeps and the others skip their turn. A sweep that fails (the
database away) is logged and the next one tries again; nothing stops the task
but the server's shutdown, which lets a batch in flight finish (and log) first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from leads_gql import resolvers
from leads_gql.errors import ServiceUnavailable
from leads_gql.store import db, statements

logger = logging.getLogger("leads_gql.retention")

INTERVAL = 30.0
BATCH_SIZE = 500
PAUSE = 0.1


def expiry(days: int, now: datetime | None = None) -> datetime:
    """The instant before which a lead is past the limit."""
    return (now or datetime.now(UTC)) - timedelta(days=days)


async def purge(
    driver: db.Driver,
    before: datetime,
    *,
    batch_size: int = BATCH_SIZE,
    pause: float = PAUSE,
    stopping: asyncio.Event | None = None,
) -> int:
    """Delete every lead created before `before`, a batch at a time; how many.
    Returns early, between batches, once `stopping` is set."""
    total = 0
    while stopping is None or not stopping.is_set():
        deleted = await resolvers.delete_expired(
            driver=driver, before=before, limit=batch_size
        )
        total += deleted
        # A short batch is the last (on PostgreSQL, rows another deletion held
        # were skipped: the next sweep takes them).
        if deleted < batch_size:
            break
        await asyncio.sleep(pause)
    return total


async def purge_once(engine: AsyncEngine, days: int, *, dry_run: bool = False) -> int:
    """`leads-gql purge`: how many leads past the limit were deleted (or, with
    `dry_run`, would be). Refuses a database whose schema is behind."""
    await db.check_schema(engine)
    before = expiry(days)
    async with db.driver_scope(engine) as driver:
        if dry_run:
            return await resolvers.count_expired(driver=driver, before=before)
        return await purge(driver, before)


class Retention:
    """The background sweeps of one server process (started in the lifespan)."""

    def __init__(
        self,
        engine: AsyncEngine,
        days: int,
        *,
        interval: float = INTERVAL,
        batch_size: int = BATCH_SIZE,
        pause: float = PAUSE,
    ) -> None:
        self.engine = engine
        self.days = days
        self.interval = interval
        self.batch_size = batch_size
        self.pause = pause
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def sweep(self) -> int | None:
        """One sweep: how many leads it deleted, None when another instance is
        sweeping (PostgreSQL)."""
        before = expiry(self.days)
        async with db.driver_scope(self.engine) as driver:
            if driver.sqlite:
                return await self._purge(driver, before)
            locked = await driver.connection.fetchval(
                statements.TRY_LOCK, statements.RETENTION_LOCK_KEY
            )
            if not locked:
                return None
            try:
                deleted = await self._purge(driver, before)
            except BaseException:
                # A connection left mid-statement may refuse: the pool discards
                # it (db.driver_scope), and the server drops its session locks.
                with contextlib.suppress(Exception):
                    await driver.connection.execute(
                        statements.UNLOCK, statements.RETENTION_LOCK_KEY
                    )
                raise
            await driver.connection.execute(
                statements.UNLOCK, statements.RETENTION_LOCK_KEY
            )
            return deleted

    async def _purge(self, driver: db.Driver, before: datetime) -> int:
        return await purge(
            driver,
            before,
            batch_size=self.batch_size,
            pause=self.pause,
            stopping=self._stopping,
        )

    async def run(self) -> None:
        """Sweep now, then every `interval` seconds (from the start of the last
        sweep: a long sweep is followed by the next at once)."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            try:
                deleted = await self.sweep()
            except ServiceUnavailable:
                logger.warning(
                    "retention: the database is unavailable; next sweep in %gs",
                    self.interval,
                )
            except Exception:
                logger.exception(
                    "retention: the sweep failed; next sweep in %gs", self.interval
                )
            else:
                if deleted:
                    logger.info(
                        "retention sweep",
                        extra={"fields": {"deleted": deleted, "days": self.days}},
                    )
            delay = max(0.0, started + self.interval - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="leads-gql retention")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop after the batch in flight (whose deletions are then logged); past
        `timeout` (a database that hangs), cancel."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
