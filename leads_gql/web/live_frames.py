"""`leadCreated` deliveries without Strawberry: each new lead is rendered once per
subscription shape and written to every subscriber's socket as a ready frame.

Strawberry runs each subscriber's own stream: an execution of the selection and a
JSON encoding per subscriber per lead (about 260 us each, issue #10). Every
subscribe still goes through Strawberry (validation, limits, auth, its errors,
its bookkeeping of operation ids); only the `next` messages of a plain selection
(lead fields, aliases, `__typename`) skip it. A selection's output depends on
nothing but the lead (no arguments, no directives), so one `Shape` renders it,
and subscribers that share a shape and an operation id share the very frame.
Anything else (fragments, directives) is left to Strawberry.

Frames are written by `Outbox`, one per socket, without waiting (those of one
turn of the event loop, or of FLUSH_INTERVAL under a steady stream, in one
write): a subscriber that stops reading gets its frames queued there once the
transport's buffers are full, and is dropped when more than the feed's limit
wait (see `Direct`).
The frames are uncompressed even when permessage-deflate was negotiated, which
RFC 7692 allows message by message (RSV1 unset): compressing per socket would
cost what sharing the frame saves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from collections import OrderedDict, deque
from typing import Any, Protocol

import orjson
from graphql import (
    FieldNode,
    GraphQLSyntaxError,
    OperationDefinitionNode,
    OperationType,
    parse,
)

from leads_gql.models import StoredLead, lead_to_dict
from leads_gql.store.json_lists import Keys
from leads_gql.web.compiled import plain_keys

# The ASGI scope extension under which the WebSocket protocol hands its Outbox.
OUTBOX = "leads_gql.outbox"
_MAX_SHAPES = 256


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """The plain selection of a `leadCreated` subscription: its response key and
    (response key, lead field) in the order GraphQL prints them."""

    response_key: str
    keys: Keys

    def render(self, lead: StoredLead) -> bytes:
        """The `next` message's payload, as Strawberry and orjson print it."""
        values = lead_to_dict(lead)
        values["__typename"] = "Lead"
        fields = {key: values[field] for key, field in self.keys}
        return orjson.dumps({"data": {self.response_key: fields}})


def compile_shape(query: str, operation_name: str | None) -> Shape | None:
    """The shape of a `leadCreated` subscription of plain lead fields, else None.

    Only the output is decided here: whether the document is valid, allowed and
    the subscriber's to make is Strawberry's to say, as it runs every subscribe.
    """
    try:
        document = parse(query)
    except GraphQLSyntaxError:
        return None
    operations = [
        d for d in document.definitions if isinstance(d, OperationDefinitionNode)
    ]
    if len(operations) != len(document.definitions):
        return None  # fragment definitions
    if operation_name is not None:
        operations = [
            o for o in operations if o.name and o.name.value == operation_name
        ]
    if len(operations) != 1:
        return None
    operation = operations[0]
    if operation.operation is not OperationType.SUBSCRIPTION or operation.directives:
        return None
    if len(operation.selection_set.selections) != 1:
        return None
    root = operation.selection_set.selections[0]
    if (
        not isinstance(root, FieldNode)
        or root.name.value != "leadCreated"
        or root.directives
        or root.selection_set is None
    ):
        return None
    keys = plain_keys(root.selection_set)
    if keys is None:
        return None
    return Shape(root.alias.value if root.alias else root.name.value, keys)


class Shapes:
    """Shapes of the documents seen (None: Strawberry delivers); bounded, most
    recently used kept."""

    def __init__(self) -> None:
        self._shapes: OrderedDict[tuple[str, str | None], Shape | None] = OrderedDict()

    def get(self, query: object, operation_name: object) -> Shape | None:
        if not isinstance(query, str) or not isinstance(operation_name, str | None):
            return None  # Strawberry answers what is malformed
        key = (query, operation_name)
        if key in self._shapes:
            self._shapes.move_to_end(key)
            return self._shapes[key]
        shape = self._shapes[key] = compile_shape(query, operation_name)
        if len(self._shapes) > _MAX_SHAPES:
            self._shapes.popitem(last=False)
        return shape


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (a server's) carrying `payload`."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 1 << 16:
        head = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return head + payload


class Wire(Protocol):
    """What an Outbox needs of uvicorn's WebSocket protocol."""

    transport: asyncio.Transport
    close_sent: bool


class Outbox:
    """Ready frames to one socket, written without waiting.

    Frames put during one turn of the event loop (or, under a steady stream,
    one FLUSH_INTERVAL) go out together, in one write: leads that arrive
    together cost one system call per socket, not one per lead, and a lead
    after a quiet spell waits for nothing but the current turn. While the
    transport is paused (its buffers are full: the client is not reading)
    frames wait here and are written when it resumes. Nothing is written after
    the close frame; `drop` forgets what waits (a subscriber that fell too far
    behind)."""

    def __init__(self, wire: Wire, loop: asyncio.AbstractEventLoop) -> None:
        self.wire = wire
        self.batch: list[bytes] = []  # to write at the end of this turn
        self.waiting: deque[bytes] = deque()  # while the transport is paused
        self.paused = False
        self.turn = _Turn.of(loop)

    def put(self, frame: bytes) -> int:
        """Write or queue `frame`; how many frames wait (0: written)."""
        if self.wire.close_sent or self.wire.transport.is_closing():
            return 0
        if self.paused or self.waiting:
            self.waiting.append(frame)
            return len(self.waiting)
        if not self.batch:
            self.turn.add(self)
        self.batch.append(frame)
        return 0

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch or self.wire.close_sent or self.wire.transport.is_closing():
            return  # dropped meanwhile, or closed: nothing goes after the close
        if self.paused:  # since the frames were put: they wait with the rest
            self.waiting.extend(batch)
            return
        self.wire.transport.write(b"".join(batch))

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        # A write may pause the transport again (it calls pause_writing at once).
        while self.waiting and not self.paused:
            if self.wire.close_sent or self.wire.transport.is_closing():
                self.waiting.clear()
                return
            self.wire.transport.write(self.waiting.popleft())

    def drop(self) -> None:
        self.waiting.clear()
        self.batch.clear()


# Writes to the subscribers' sockets go out at most this often (seconds): a lead
# that comes after a quiet spell goes at once; under a steady stream, the leads of
# one interval share each socket's write (and its reader's read). At 200 leads a
# second to 1,000 sockets, a system call per lead per socket was most of the
# servers' and the clients' CPU (bench/live.py).
FLUSH_INTERVAL = 0.020


class _Turn:
    """The outboxes with frames waiting; written by one callback, at the end of
    this turn of the event loop, or FLUSH_INTERVAL after the last write."""

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turn] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.outboxes: list[Outbox] = []
        self.last = float("-inf")  # loop time of the last write

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Turn:
        turn = cls._of_loop.get(loop)
        if turn is None:
            turn = cls._of_loop[loop] = cls(loop)
        return turn

    def add(self, outbox: Outbox) -> None:
        if not self.outboxes:
            due = self.last + FLUSH_INTERVAL
            if due <= self.loop.time():
                self.loop.call_soon(self.flush)
            else:
                self.loop.call_at(due, self.flush)
        self.outboxes.append(outbox)

    def flush(self) -> None:
        self.last = self.loop.time()
        outboxes, self.outboxes = self.outboxes, []
        for outbox in outboxes:
            outbox.flush()


class Direct:
    """Delivers a subscription's leads as frames (a `notifications.Receiver`)."""

    __slots__ = ("key", "limit", "outbox", "prefix", "shape")

    def __init__(
        self, outbox: Outbox, shape: Shape, operation_id: object, limit: int
    ) -> None:
        self.outbox, self.shape, self.limit = outbox, shape, limit
        # The message as Strawberry's handler builds it: {"id", "type", "payload"}.
        self.prefix = (
            b'{"id":' + orjson.dumps(operation_id) + b',"type":"next","payload":'
        )
        self.key = (shape, self.prefix)

    def send(self, lead: StoredLead, cache: dict[Any, bytes]) -> bool:
        """Write the lead's frame (rendered once per shape and id, in `cache`,
        which every receiver of this lead shares); False when the subscriber is
        too far behind and must go."""
        frame = cache.get(self.key)
        if frame is None:
            payload = cache.get(self.shape)
            if payload is None:
                payload = cache[self.shape] = self.shape.render(lead)
            frame = cache[self.key] = text_frame(self.prefix + payload + b"}")
        if self.outbox.put(frame) > self.limit:
            self.outbox.drop()
            return False
        return True
