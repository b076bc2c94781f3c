"""GraphQL over WebSocket at /graphql: `leadCreated`, by the graphql-transport-ws
protocol (the protocol of the `graphql-ws` library), run by Strawberry's own
protocol handler.

A browser cannot set headers on a WebSocket, so the token travels in the
`connection_init` payload (`{"Authorization": "Bearer <JWT>"}`); it is checked
as on HTTP (a bad one closes with 4403), and the socket is closed with 4403 when
it expires. Only subscriptions run here (queries and mutations go over HTTP,
with its limits); the document limits are the schema's, as on HTTP. What one
client may hold is bounded: subscriptions per socket, sockets per token subject
and per client address; how far a subscriber may fall behind is the feed's.

Strawberry runs every subscribe; the `next` messages of a plain selection are
then written by the feed itself, rendered once per lead and shape
(web/live_frames.py): `_Handler` gives the operation's task the receiver that
`Feed.subscribe` attaches to the subscription the resolver starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncGenerator, Mapping
from datetime import timedelta
from typing import Any

import orjson
from graphql import GraphQLError
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.async_base_view import AsyncWebSocketAdapter
from strawberry.http.exceptions import (
    NonJsonMessageReceived,
    NonTextMessageReceived,
    WebSocketDisconnected,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from leads_gql.auth import Principal
from leads_gql.errors import InvalidJSON, Unauthenticated
from leads_gql.limits import client_key
from leads_gql.store.notifications import RECEIVER
from leads_gql.telemetry import LIVE_SOCKETS
from leads_gql.web.bodies import parse_json
from leads_gql.web.live_frames import OUTBOX, Direct, Outbox, Shapes
from leads_gql.web.schema import Context, coded_error

PROTOCOL = "graphql-transport-ws"
# Until connection_init names a token, the socket may do nothing.
NOBODY = Principal(sub="", scopes=frozenset())
INIT_WAIT = timedelta(seconds=10)


class Limits:
    def __init__(self, *, subscriptions: int, per_subject: int, per_address: int):
        self.subscriptions = subscriptions
        self.per_subject = per_subject
        self.per_address = per_address


class _Socket(AsyncWebSocketAdapter):
    """JSON messages in (parsed as strictly as an HTTP body) and out."""

    def __init__(self, view: Any, websocket: WebSocket) -> None:
        super().__init__(view)
        self.ws = websocket

    async def iter_json(
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncGenerator[object, None]:
        while self.ws.application_state != WebSocketState.DISCONNECTED:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                raise NonTextMessageReceived
            try:
                yield parse_json(text.encode("utf-8", "surrogatepass"))
            except InvalidJSON as exc:
                if not ignore_parsing_errors:
                    raise NonJsonMessageReceived from exc

    async def send_json(self, message: Mapping[str, object]) -> None:
        try:
            await self.ws.send_text(orjson.dumps(message).decode())
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise WebSocketDisconnected from exc

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self.ws.close(code=code, reason=reason)


class _SubscriptionsOnly:
    """The schema as the protocol handler sees it: subscriptions only, errors
    with the same `extensions.code` as on HTTP."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema

    async def stream(self, query: str, **kwargs: Any) -> AsyncGenerator[Any, None]:
        results = await self.schema.stream(
            query, allowed_operation_types=(OperationType.SUBSCRIPTION,), **kwargs
        )
        return self._coded(results)

    @staticmethod
    async def _coded(results: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
        async with contextlib.aclosing(results):
            try:
                async for result in results:
                    if getattr(result, "errors", None):
                        result.errors = [coded_error(e) for e in result.errors]
                    yield result
            except GraphQLError as error:
                # A document refused while parsing (the token limit) escapes
                # Strawberry's stream: the client gets it as the `error` message.
                yield PreExecutionError(data=None, errors=[coded_error(error)])


class _Connection:
    """One socket: the protocol handler's view (it authenticates the
    connection_init payload), its expiry timer, and its place in the counts."""

    def __init__(
        self, endpoint: LiveEndpoint, websocket: WebSocket, address: str
    ) -> None:
        self.endpoint, self.websocket, self.address = endpoint, websocket, address
        self.socket = _Socket(self, websocket)
        self.subject: str | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.closing: set[asyncio.Task[None]] = set()

    async def on_ws_connect(self, context: Context) -> UnsetType:
        params = context.connection_params or {}
        authorization = params.get("Authorization", params.get("authorization"))
        state = self.websocket.app.state
        try:
            principal = state.verifier.authenticate(
                authorization if isinstance(authorization, str) else None,
                self.websocket.client.host if self.websocket.client else "",
            )
        except Unauthenticated:
            raise ConnectionRejectionError() from None
        if self.endpoint.by_subject[principal.sub] >= self.endpoint.limits.per_subject:
            self.close(4429, "Too many connections for this token's subject")
            raise ConnectionRejectionError()
        self.endpoint.by_subject[principal.sub] += 1
        self.subject = principal.sub
        context.principal = principal
        delay = max(0.0, principal.expires - time.time())
        if delay != float("inf"):
            self.expiry = asyncio.get_running_loop().call_later(
                delay, self.close, 4403, "The token has expired"
            )
        unset: UnsetType = UNSET
        return unset

    def close(self, code: int, reason: str) -> None:
        """Close the socket with `code` (from a timer or a feed callback)."""
        task = asyncio.ensure_future(self.socket.close(code, reason))
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    def release(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
        if self.subject is not None:
            self.endpoint.by_subject[self.subject] -= 1
            if self.endpoint.by_subject[self.subject] <= 0:
                del self.endpoint.by_subject[self.subject]


class _Handler(BaseGraphQLTransportWSHandler[Context, None]):
    """Strawberry's protocol handler; a plain `leadCreated` selection's leads
    are written by the feed (see the module's doc), others by Strawberry."""

    def __init__(
        self, *args: Any, outbox: Outbox | None, shapes: Shapes, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.outbox, self.shapes = outbox, shapes

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        # The operation's own task: what is set here is seen by the resolver
        # (Strawberry calls it in this task) and by no other operation.
        feed = self.context.feed
        if self.outbox is not None and feed is not None:
            shape = self.shapes.get(operation.query, operation.operation_name)
            if shape is not None:
                RECEIVER.set(Direct(self.outbox, shape, operation.id, feed.limit))
        await super().run_operation(operation)


class LiveEndpoint:
    """The ASGI app of WebSocket requests to /graphql."""

    def __init__(self, schema: Any, limits: Limits) -> None:
        self.schema = _SubscriptionsOnly(schema)
        self.limits = limits
        self.by_subject: Counter[str] = Counter()
        self.by_address: Counter[str] = Counter()
        self.shapes = Shapes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        offered = scope.get("subprotocols") or []
        await websocket.accept(subprotocol=PROTOCOL if PROTOCOL in offered else None)
        if PROTOCOL not in offered:
            await websocket.close(4406, "Subprotocol not acceptable")
            return
        address = client_key(websocket.client.host if websocket.client else "")
        if self.by_address[address] >= self.limits.per_address:
            await websocket.close(4429, "Too many connections from this address")
            return
        self.by_address[address] += 1
        LIVE_SOCKETS.inc()
        connection = _Connection(self, websocket, address)
        state = websocket.app.state
        context = Context(
            principal=NOBODY,
            engine=state.engine,
            cursors=state.cursors,
            feed=state.feed,
            close=connection.close,
        )
        # uvicorn's protocol (connections.GoingAwayWebSocketProtocol) hands it.
        outbox = scope.get("extensions", {}).get(OUTBOX, {}).get("outbox")
        try:
            await _Handler(
                view=connection,
                websocket=connection.socket,
                context=context,
                root_value=None,
                schema=self.schema,
                connection_init_wait_timeout=INIT_WAIT,
                max_subscriptions_per_connection=self.limits.subscriptions,
                outbox=outbox if isinstance(outbox, Outbox) else None,
                shapes=self.shapes,
            ).handle()
        finally:
            connection.release()
            LIVE_SOCKETS.dec()
            self.by_address[address] -= 1
            if self.by_address[address] <= 0:
                del self.by_address[address]
