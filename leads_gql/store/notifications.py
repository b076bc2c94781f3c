"""New leads announced to live subscribers, on every instance.

Each process keeps one `Feed`: subscribers of a chat flow each get a bounded
queue, and a new lead is put on the queues of its flow's subscribers without
waiting (a create never waits on a subscriber; one that falls too far behind is
told to go, see `Subscription`). What feeds the Feed:

- PostgreSQL: every insert sends `pg_notify` in its own statement (one
  transaction: a lead that is rolled back is never announced, and a committed
  one always is); each instance LISTENs on one connection of its own (not one
  per subscriber) and hands what arrives to its Feed. When that connection is
  lost, every subscriber is dropped (its socket closed with 1011) so that clients
  reconnect and refetch instead of missing leads silently, and it reconnects.
- SQLite: one process writes and reads, so the resolver hands a stored lead to
  the process's Feed itself (`announce`).

A subscription either queues its leads for its reader (Strawberry's stream, which
executes the document per lead) or, when the WebSocket layer gave it a
`Receiver`, has them written by that receiver during `publish` (one rendering per
shape of subscription, see web/live_frames.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from leads_gql.models import StoredLead, parse_datetime
from leads_gql.store.statements import NOTIFY_CHANNEL as CHANNEL
from leads_gql.telemetry import LIVE_EVENTS, LIVE_SUBSCRIPTIONS

APPLICATION_NAME = "leads-gql listener"
log = logging.getLogger("leads_gql.notifications")


class Gone(Exception):
    """The subscription was ended by the server: `code` is the WebSocket close
    code to send (1011: the feed was lost; 1013: the subscriber fell behind)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class Receiver(Protocol):
    """Delivers leads to a subscriber without its reader (web/live_frames.py)."""

    def send(self, lead: StoredLead, cache: dict[Any, bytes]) -> bool:
        """Deliver `lead` now; `cache` is shared by every receiver of this lead
        (what depends only on the lead is made once). False: the subscriber is
        too far behind and must go."""
        ...


# The receiver of the subscription that the resolver running in this task starts
# (the resolver is Strawberry's to call: the WebSocket layer, which knows the
# socket and the operation id, sets it in the operation's task).
RECEIVER: contextvars.ContextVar[Receiver | None] = contextvars.ContextVar(
    "leads_gql_receiver", default=None
)
BEHIND = "The subscriber fell too far behind"


class Subscription:
    """One subscriber's queue of a flow's new leads (or its receiver)."""

    def __init__(
        self, feed: Feed, flow: str, limit: int, receiver: Receiver | None = None
    ) -> None:
        self.feed, self.flow = feed, flow
        # With a receiver, the queue only ever holds the reason of the end.
        self.queue: asyncio.Queue[StoredLead | Gone] = asyncio.Queue(limit + 1)
        self.limit = limit
        self.receiver = receiver
        self.ended = False
        # Called when the server ends the subscription (the socket is closed with
        # the code: a reader blocked on a client that stops reading never sees
        # its queue again).
        self.on_end: Callable[[Gone], None] | None = None

    def offer(self, lead: StoredLead, cache: dict[Any, bytes]) -> bool:
        """Queue or deliver `lead`; True when delivered here (a receiver's)."""
        if self.ended:
            return False
        if self.receiver is not None:
            if self.receiver.send(lead, cache):
                return True
            self.end(Gone(1013, BEHIND))
            return False
        if self.queue.qsize() >= self.limit:
            self.end(Gone(1013, BEHIND))
            return False
        self.queue.put_nowait(lead)
        return False  # counted as delivered when its reader takes it

    def end(self, why: Gone) -> None:
        """No more leads: the reader gets `why` next (the queue keeps a slot)."""
        if not self.ended:
            self.ended = True
            self.feed.drop(self)
            while self.queue.full():  # only the reader's backlog is lost
                self.queue.get_nowait()
            self.queue.put_nowait(why)
            if self.on_end is not None:
                self.on_end(why)

    def __aiter__(self) -> AsyncIterator[StoredLead]:
        return self._leads()

    async def _leads(self) -> AsyncIterator[StoredLead]:
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, Gone):
                    raise item
                LIVE_EVENTS.inc()
                yield item
        finally:
            self.ended = True
            self.feed.drop(self)


class Feed:
    """This process's subscribers by chat flow."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit  # leads a subscriber may fall behind before it goes
        self.by_flow: dict[str, set[Subscription]] = {}
        # None: announcements flow; else why new subscribers must go at once.
        self.down: Gone | None = None

    def subscribe(
        self, flow: str, on_end: Callable[[Gone], None] | None = None
    ) -> Subscription:
        subscription = Subscription(self, flow, self.limit, RECEIVER.get())
        subscription.on_end = on_end
        if self.down is not None:
            subscription.end(self.down)
            return subscription
        self.by_flow.setdefault(flow, set()).add(subscription)
        LIVE_SUBSCRIPTIONS.inc()
        return subscription

    def drop(self, subscription: Subscription) -> None:
        subscribers = self.by_flow.get(subscription.flow)
        if subscribers is not None and subscription in subscribers:
            subscribers.discard(subscription)
            LIVE_SUBSCRIPTIONS.dec()
            if not subscribers:
                del self.by_flow[subscription.flow]

    def publish(self, lead: StoredLead) -> None:
        subscribers = self.by_flow.get(lead.chatflowid)
        if not subscribers:
            return
        cache: dict[Any, bytes] = {}
        delivered = 0
        for subscription in list(subscribers):  # a subscriber may end meanwhile
            delivered += subscription.offer(lead, cache)
        if delivered:
            LIVE_EVENTS.inc(delivered)

    def end_all(self, why: Gone) -> None:
        for subscribers in list(self.by_flow.values()):
            for subscription in list(subscribers):
                subscription.end(why)


# The Feed of each engine in this process (SQLite's resolvers announce to it).
_feeds: weakref.WeakKeyDictionary[Any, Feed] = weakref.WeakKeyDictionary()


def feed_of(engine: AsyncEngine) -> Feed | None:
    return _feeds.get(engine.sync_engine)


def announce(engine: AsyncEngine, lead: StoredLead) -> None:
    """SQLite: a lead this process just stored, to its subscribers."""
    feed = _feeds.get(engine.sync_engine)
    if feed is not None:
        feed.publish(lead)


def lead_from_payload(payload: str) -> StoredLead:
    """The lead a NOTIFY carries (the seven keys, as the API prints them)."""
    data = orjson.loads(payload)
    created: datetime = parse_datetime(data["createdDate"])
    return StoredLead(
        data["id"],
        data["name"],
        data["email"],
        data["phone"],
        data["chatflowid"],
        data["chatId"],
        created,
    )


class Listener:
    """The Feed of an engine, fed by PostgreSQL's LISTEN when the engine is one.

    `start` opens the LISTEN connection (PostgreSQL) or registers the Feed for
    the resolvers (SQLite); `stop` closes it and ends every subscription.
    """

    CHECK_SECONDS = 5.0  # how often an idle LISTEN connection is checked
    RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)

    def __init__(
        self, engine: AsyncEngine, feed: Feed, connect: Callable[[], Any] | None = None
    ) -> None:
        self.engine, self.feed = engine, feed
        self._connect = connect
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        _feeds[self.engine.sync_engine] = self.feed
        if self.engine.dialect.name != "postgresql":
            self.connected.set()
            return
        self.feed.down = Gone(1011, "Live updates are not connected yet")
        self._task = asyncio.create_task(self._run(), name="leads-gql LISTEN")
        # Serve at once; subscribers that come before the connection are told to
        # retry (1011), which beats holding start-up on the database.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), 5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.feed.end_all(Gone(1001, "The server is going away"))
        _feeds.pop(self.engine.sync_engine, None)

    async def _open(self) -> Any:
        """A connection of its own, outside the pool: it is held for good."""
        if self._connect is not None:
            return await self._connect()
        import asyncpg  # type: ignore[import-untyped]

        url = self.engine.url.set(drivername="postgresql")
        return await asyncpg.connect(
            url.render_as_string(hide_password=False),
            timeout=5,
            # Named, so that an operator sees it in pg_stat_activity.
            server_settings={"application_name": APPLICATION_NAME},
        )

    async def _run(self) -> None:
        attempt = 0
        while True:
            connection = None
            try:
                connection = await self._open()
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _c, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, self._received)
                self.feed.down = None
                self.connected.set()
                attempt = 0
                log.info("live updates connected (LISTEN %s)", CHANNEL)
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self.CHECK_SECONDS)
                    if not lost.is_set():
                        await connection.fetchval("SELECT 1", timeout=5)
                raise ConnectionError("the LISTEN connection was closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(exc)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            delay = self.RETRY_SECONDS[min(attempt, len(self.RETRY_SECONDS) - 1)]
            attempt += 1
            await asyncio.sleep(delay)

    def _lost(self, exc: Exception) -> None:
        self.connected.clear()
        why = Gone(1011, "Live updates were interrupted; reconnect and refetch")
        if self.feed.down is None:
            log.warning("live updates lost: %s; reconnecting", type(exc).__name__)
        self.feed.down = why
        self.feed.end_all(why)

    def _received(
        self, _connection: Any, _pid: int, _channel: str, payload: str
    ) -> None:
        try:
            lead = lead_from_payload(payload)
        except Exception:  # a payload of another program on our channel
            log.warning("ignored a notification that is not a lead")
            return
        self.feed.publish(lead)
