"""Per-connection bounds for `leads-gql serve`: uvicorn's httptools protocol with
limits on the request head and on pipelined requests, time limits on heads and
bodies, and connection caps.

uvicorn bounds none of these: it reads a header of any size (httptools buffers a
partial header name or value in Python bytes until it completes), queues every
pipelined request of a read chunk, arms its keep-alive timer only after a first
response (a socket that sends nothing stays open forever), and never times out a
slow head or body. Every answer written here (431, 408, 503, and 400 for
malformed HTTP) has the app's JSON error shape.

uvicorn builds the protocol itself, once per connection, in each worker process;
`serve` names it by import string (`PROTOCOL`) and it reads its limits from the
environment once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http
import ipaddress
import logging
import socket
import sys
import weakref
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import (
    WebSocketsSansIOProtocol,
)
from uvicorn.server import ServerState
from websockets.http11 import Request

from leads_gql.config import Settings
from leads_gql.limits import client_key
from leads_gql.web.live_frames import OUTBOX, Outbox

PROTOCOL = "leads_gql.web.connections:BoundedHttpProtocol"
WS_PROTOCOL = "leads_gql.web.connections:GoingAwayWebSocketProtocol"
# A request head: the request line and the header fields, as written on the wire.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_FIELDS = 100
# Requests read ahead while an earlier one is answered (HTTP pipelining). uvicorn
# parses a whole read chunk before its flow control pauses reading: a chunk of
# tiny pipelined requests would otherwise queue thousands of them.
MAX_PIPELINED = 16

log = logging.getLogger("leads_gql.connections")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int
    max_per_address: int
    proxies: tuple[Network, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            max_connections=settings.max_connections,
            max_per_address=settings.max_connections_per_address,
            proxies=tuple(
                ipaddress.ip_network(n) for n in settings.forwarded_allow_ips
            ),
        )


@functools.cache
def process_limits() -> Limits:
    """Read once per process: `serve` validated the same environment at start, and
    worker processes inherit it."""
    return Limits.from_settings(Settings.from_env())


def _is_proxy(host: str, proxies: tuple[Network, ...]) -> bool:
    if not proxies:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in proxies)


def raise_open_file_limit() -> int | None:
    """Lift the soft open-file limit to the hard one, so the connection caps, not
    the OS, bound connections. Returns the soft limit now (None: unlimited or
    unknown)."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    # An unlimited hard limit still has a kernel ceiling: ask for a common size.
    target = max(soft, 65536) if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
    return target


def response(
    status: int,
    message: str,
    default_headers: Sequence[tuple[bytes, bytes]] = (),
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A complete `connection: close` response with the app's JSON error body."""
    body = orjson.dumps({"statusCode": status, "message": message})
    phrase = http.HTTPStatus(status).phrase
    headers = [
        *default_headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"connection", b"close"),
        *extra,
    ]
    lines = [f"HTTP/1.1 {status} {phrase}".encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _Refused(Exception):
    """Raised in a parser callback to stop parsing (httptools re-raises it from
    feed_data as the context of an HttpParserCallbackError)."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.message, self.reason = status, message, reason


def _head_too_large(reason: str) -> _Refused:
    return _Refused(431, "Request header fields too large", reason)


# Open connections per client address, per server (a process runs one).
_open_by_address: weakref.WeakKeyDictionary[ServerState, Counter[str]] = (
    weakref.WeakKeyDictionary()
)


class BoundedHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = process_limits()
        # uvicorn's own keep-alive timer (idle time between requests), from the
        # same settings; uvicorn annotates it int, loop.call_later takes a float.
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._address: str | None = None  # counted against the per-address cap
        # Parser state: a head is open from on_message_begin to on_headers_complete,
        # a body from there to on_message_complete. The counters tell whether a
        # chunk of data completed a head or a message.
        self._head_open = self._body_open = False
        self._heads = self._messages = 0
        self._head_bytes = self._head_fields = 0  # of the open head, from callbacks
        self._unfinished = 0  # bytes of chunks that left a head unfinished

    # Connection caps

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        reason = self._admit()
        if reason is not None:
            self._refuse(
                503,
                "Too many connections; retry shortly",
                reason,
                extra=((b"retry-after", b"1"),),
            )
            return
        # Covers a socket that never sends anything: uvicorn's keep-alive timer is
        # only armed after a response.
        self._arm_head_timer()

    def _admit(self) -> str | None:
        """Count this connection; the reason it is over a cap, if it is."""
        # uvicorn's set of open connections, this one included.
        if len(self.connections) > self.limits.max_connections:
            return "too many connections"
        if self.client is None or _is_proxy(self.client[0], self.limits.proxies):
            return None
        key = client_key(self.client[0])
        counts = _open_by_address.setdefault(self.server_state, Counter())
        if counts[key] >= self.limits.max_per_address:
            return "too many connections from one address"
        counts[key] += 1
        self._address = key
        return None

    def _release(self) -> None:
        self._cancel_timers()
        if self._address is not None:
            counts = _open_by_address[self.server_state]
            counts[self._address] -= 1
            if counts[self._address] <= 0:
                del counts[self._address]
            self._address = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The transport goes to another protocol: this one never sees
        # connection_lost, so it lets go of its count and timers now.
        self._release()
        super().handle_websocket_upgrade()

    # Reading

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or timed out: nothing more is parsed
        self._unset_keepalive_if_required()
        heads, messages = self._heads, self._messages
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status, refused.message, refused.reason)
            else:
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
                return
            self._unsupported_upgrade_warning()

        # httptools buffers a partial header name or value until it completes, out
        # of the callbacks' sight: count the bytes of chunks that leave a head
        # unfinished. A chunk that also ended a message may hold that message's
        # body, so it is not counted; one that completed a head starts over.
        if self._heads != heads:
            self._unfinished = 0
        elif self._head_open and self._messages == messages:
            self._unfinished += len(data)
            if self._unfinished > MAX_HEAD_BYTES:
                refused = _head_too_large(f"request head over {MAX_HEAD_BYTES} bytes")
                self._refuse(refused.status, refused.message, refused.reason)
                return

        # Start a clock when none runs: a head is open, or bytes arrived while no
        # answer is owed (keep-alive's timer was just cancelled above); a body
        # is open.
        if self._body_open:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(
                    self.limits.body_timeout, self._body_timed_out
                )
        elif self._head_open or self._owes_nothing():
            self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_bytes = self._head_fields = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Trailer fields of a chunked body come here too, and count as well.
        self._head_fields += 1
        if self._head_fields > MAX_HEADER_FIELDS:
            raise _head_too_large(f"over {MAX_HEADER_FIELDS} header fields")
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _head_too_large(f"request head over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        # The request line's framing ("GET", two spaces, "HTTP/1.1", CRLF) and the
        # blank line: the head is now counted exactly as written (but for
        # optional whitespace, which is not counted).
        self._count_head(len(self.parser.get_method()) + 12 + 2)
        self._head_open = False
        self._heads += 1
        self._cancel_head_timer()
        if len(self.pipeline) >= MAX_PIPELINED:
            # Answers are owed to the queued requests: the connection is closed.
            raise _Refused(
                503,
                "Too many pipelined requests",
                f"over {MAX_PIPELINED} pipelined requests",
            )
        self._body_open = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_open = False
        self._messages += 1
        self._cancel_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            # Answered (perhaps before reading the body): no 408 for it now. A body
            # still arriving restarts the clock (see data_received) and is cut off.
            self._cancel_body_timer()
        super().on_response_complete()

    # Timers

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout, self._head_timed_out
            )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_open or self._unfinished:
            self._refuse(408, "Request timeout", "request head timed out")
        else:
            # Nothing of a request was sent (a silent socket, a browser's spare
            # preconnection): closed like an idle keep-alive connection, quietly.
            log.debug("closed an idle connection")
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        if any(queued is cycle for queued, _ in self.pipeline):
            # A pipelined request waits behind another; reading is paused for it.
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout, self._body_timed_out
            )
        elif cycle.response_complete:
            log.debug("closed a connection still sending an answered body")
            self.transport.close()
        elif not cycle.response_started:
            self._refuse(408, "Request timeout", "request body timed out", preempt=True)
        # A response under way: the app decided to answer; let it finish.

    # Refusals

    def _owes_nothing(self) -> bool:
        """No request is waiting for its response: a refusal may be written."""
        return not self.pipeline and (
            self.cycle is None or self.cycle.response_complete
        )

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "Malformed HTTP request", "malformed HTTP request")

    def _refuse(
        self,
        status: int,
        message: str,
        reason: str,
        *,
        preempt: bool = False,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Log the reason (never header contents), answer and close.

        With a response owed to an earlier request, writing ours would corrupt it:
        the connection is only closed. `preempt`: answer in place of the current
        request, whose app has not started its response; the app then reads a
        disconnect and anything it sends is dropped.
        """
        self._cancel_timers()
        answer = False
        if not self.transport.is_closing():
            answer = self._owes_nothing()
            cycle = self.cycle
            if preempt and not self.pipeline and cycle is not None:
                cycle.disconnected = True
                cycle.message_event.set()
                answer = True
        client = client_key(self.client[0]) if self.client else None
        log.warning(
            "connection refused",
            extra={
                "fields": {
                    "status": status if answer else None,  # None: only closed
                    "reason": reason,
                    "client": client,
                }
            },
        )
        if answer:
            self.transport.write(
                response(status, message, self.server_state.default_headers, extra)
            )
        self.transport.close()


class GoingAwayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, but a server that stops says 1001 (going
    away), as clients of live updates expect, where uvicorn says 1012; each
    socket's kernel send buffer is kept small (a subscriber gets small messages
    and may hold its socket for hours: one that stops reading is found, and
    dropped, after that much, not after megabytes); and the app gets an `Outbox`
    (scope extension `OUTBOX`) to write ready `next` frames to, without a
    round trip through ASGI per message."""

    SEND_BUFFER = 64 * 1024

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.SEND_BUFFER)
        super().connection_made(transport)
        self.outbox = Outbox(self, self.loop)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.close_sent:  # upgraded: the app runs with this scope
            self.scope.setdefault("extensions", {})[OUTBOX] = {"outbox": self.outbox}

    def pause_writing(self) -> None:
        super().pause_writing()
        self.outbox.pause()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.outbox.resume()

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent:
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
            self.conn.send_close(1001, "The server is going away")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.transport.close()
            return
        super().shutdown()
