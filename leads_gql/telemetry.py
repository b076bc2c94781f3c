"""Request telemetry: request ids, Prometheus metrics and JSON request logs.

Logs and labels never carry tokens, query strings, bodies or contact data: a
request is logged by method, route path, status, duration and request id.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("leads_gql.access")

REQUESTS = Counter(
    "leads_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
LATENCY = Histogram(
    "leads_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
GRAPHQL_OPERATIONS = Counter(
    "leads_graphql_operations_total",
    "GraphQL operations by operation name and outcome (ok, error, refused)",
    ["operation", "outcome"],
)
LEADS_CREATED = Counter("leads_created_total", "Leads stored (retries not counted)")

INTERNAL_ERROR = Response(
    b'{"statusCode":500,"message":"Internal server error"}',
    500,
    media_type="application/json",
)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_OPERATION_NAMES = 200
_operation_names: set[str] = set()


def operation_label(name: str | None) -> str:
    """A bounded label for a client-chosen operation name (no cardinality bombs)."""
    if not name:
        return "anonymous"
    if name in _operation_names:
        return name
    if len(_operation_names) < _MAX_OPERATION_NAMES and re.fullmatch(r"\w{1,64}", name):
        _operation_names.add(name)
        return name
    return "other"


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        return "unmatched"
    return f"{scope.get('root_path', '')}{path}"


class Telemetry:
    """Pure ASGI middleware: times each request, counts it, logs one JSON line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        raw_id = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = raw_id if _REQUEST_ID.fullmatch(raw_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status, started = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # The client learns nothing of the internals; the log has the traceback
            # (SQL parameters are hidden by the engine, so no contact data).
            access_log.exception(
                "unhandled error", extra={"fields": {"request_id": request_id}}
            )
            if not started:
                await INTERNAL_ERROR(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - start
            route, method = _route_label(scope), scope["method"]
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(duration)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "fields": {
                            "method": method,
                            "path": scope["path"],
                            "route": route,
                            "status": status,
                            "duration_ms": round(duration * 1000, 3),
                            "request_id": request_id,
                        }
                    },
                )


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class JSONFormatter(logging.Formatter):
    """One JSON object per line; `extra={"fields": {...}}` adds keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's and ours, all as JSON lines on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JSONFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {
                "handlers": ["stderr"],
                "level": level.upper(),
                "propagate": False,
            },
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "leads_gql": {
                "handlers": ["stderr"],
                "level": level.upper(),
                "propagate": False,
            },
        },
    }
