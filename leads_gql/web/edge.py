"""What every HTTP request goes through, in one pure ASGI middleware.

Path normalisation (`/leads/` is `/leads`), a request id, security headers,
metrics, the access log, and a JSON 500 instead of a stack trace. One middleware,
one `send` wrapper: on the hot paths each layer of Starlette middleware costs
as much as a validation rule.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leads_gql.telemetry import (
    INTERNAL_ERROR,
    LATENCY,
    REQUESTS,
    AccessLog,
    access_log,
)
from leads_gql.web.pages import GRAPHIQL_CSP

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# New ids: 32 hex digits, a random half per process and a counter (unique across
# instances without a random draw per request).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4)))
_ALWAYS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
_HTML_ONLY = [
    (b"content-security-policy", GRAPHIQL_CSP.encode()),
    (b"x-frame-options", b"DENY"),
]


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is a sane token, else a new random one."""
    for name, value in headers:
        if name == b"x-request-id":
            raw = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(raw):
                return raw
            break
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _route_label(scope: Scope) -> str:
    path = getattr(scope.get("route"), "path", None)
    return "unmatched" if path is None else f"{scope.get('root_path', '')}{path}"


def _with_headers(message: Message, request_id: str) -> Message:
    headers = list(message.get("headers", ()))
    html = csp = False
    for name, value in headers:
        if name == b"content-type":
            html = value.startswith(b"text/html")
        elif name == b"content-security-policy":
            csp = True
    headers += _ALWAYS
    headers.append((b"x-request-id", request_id.encode()))
    if html and not csp:
        headers += _HTML_ONLY
    return {**message, "headers": headers}


class Edge:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = AccessLog()
        # Metric children by label values (routes are templates: a bounded set).
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._flushing(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope["path"] = path.rstrip("/") or "/"  # answered, never redirected
        request_id = _request_id(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        status, started = 500, False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = _with_headers(message, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # The client learns nothing of the internals; the log has the traceback
            # (SQL parameters are hidden by the engine, so no contact data).
            access_log.exception(
                "unhandled error", extra={"fields": {"request_id": request_id}}
            )
            if not started:
                await INTERNAL_ERROR(scope, receive, send_with_headers)
        finally:
            self.record(scope, status, time.perf_counter() - start, request_id)

    def _flushing(self, send: Send) -> Send:
        """At shutdown, the buffered access lines are written first."""

        async def send_after_flush(message: Message) -> None:
            if message["type"].startswith("lifespan.shutdown"):
                self.log.flush()
            await send(message)

        return send_after_flush

    def record(self, scope: Scope, status: int, duration: float, rid: str) -> None:
        route, method = _route_label(scope), scope["method"]
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = REQUESTS.labels(method, route, str(status))
            self._counters[method, route, status] = counter
        counter.inc()
        timer = self._timers.get((method, route))
        if timer is None:
            timer = self._timers[method, route] = LATENCY.labels(method, route)
        timer.observe(duration)
        self.log.request(
            method=method,
            path=scope["path"],
            route=route,
            status=status,
            duration_ms=round(duration * 1000, 3),
            request_id=rid,
        )
