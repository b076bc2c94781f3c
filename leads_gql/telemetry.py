"""Telemetry: Prometheus metrics, JSON logs and the access log.

Logs and labels never carry tokens, query strings, bodies or contact data: a
request is logged by method, route path, status, duration and request id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

access_log = logging.getLogger("leads_gql.access")
# One line per deleted lead: who, which lead, its flow, why; never contact data.
audit_log = logging.getLogger("leads_gql.audit")

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
CREATE_GROUPS = Histogram(
    "leads_create_group_size",
    "Single creates written together by one statement (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
LIVE_SOCKETS = Gauge("leads_live_sockets", "Open GraphQL WebSockets")
LIVE_SUBSCRIPTIONS = Gauge(
    "leads_live_subscriptions", "Active leadCreated subscriptions"
)
LIVE_EVENTS = Counter(
    "leads_live_events_total", "New leads delivered to leadCreated subscribers"
)
DELETION_CAUSES = ("deleteLead", "eraseContact", "retention")
LEADS_DELETED = Counter(
    "leads_deleted_total",
    "Leads deleted, by cause (deleteLead, eraseContact, retention)",
    ["cause"],
)
for _cause in DELETION_CAUSES:
    LEADS_DELETED.labels(_cause)  # every cause shows, at 0 until it happens


def lead_deleted(*, sub: str, lead_id: str, chatflowid: str, cause: str) -> None:
    """The audit trail of one deleted lead, and its count."""
    LEADS_DELETED.labels(cause).inc()
    audit_log.info(
        "lead deleted",
        extra={
            "fields": {
                "sub": sub,
                "lead_id": lead_id,
                "chatflowid": chatflowid,
                "cause": cause,
            }
        },
    )


INTERNAL_ERROR = Response(
    b'{"statusCode":500,"message":"Internal server error"}',
    500,
    media_type="application/json",
)
_MAX_OPERATION_NAMES = 200
_operation_names: set[str] = set()


def operation_label(name: str | None, *, ran: bool = True) -> str:
    """A bounded label for a client-chosen operation name (no cardinality bombs).

    The first names seen get labels of their own; only operations that ran take
    a new one, so refused documents with made-up names cannot use them all up."""
    if not name:
        return "anonymous"
    if name in _operation_names:
        return name
    if (
        ran
        and len(_operation_names) < _MAX_OPERATION_NAMES
        and re.fullmatch(r"\w{1,64}", name)
    ):
        _operation_names.add(name)
        return name
    return "other"


def timestamp(created: float) -> str:
    """A log line's time: UTC to the millisecond, `2026-11-27T22:46:07.852Z`."""
    second = int(created)
    return f"{_utc_second(second)}.{int((created - second) * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    # Formatted once a second, not once a line.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class StderrJSONHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The service's own log sink (see `log_config`): JSON lines on stderr."""


class AccessLog:
    """One JSON line per request: method, path, route, status, duration, request id.

    Under `leads-gql serve` the lines go straight to the service's stderr sink,
    buffered (one write per 100 ms or 256 lines) instead of a LogRecord, a
    formatter and a locked write per request; elsewhere (the app embedded in
    another server, tests) through `logging` as usual. Either way the
    `leads_gql.access` logger's level decides (`--log-level warning` is off).
    """

    FLUSH_SECONDS = 0.1
    MAX_LINES = 256

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self._flush: asyncio.TimerHandle | None = None

    @staticmethod
    def _sink() -> StderrJSONHandler | None:
        """Our own handler, when it is the only place access lines would go."""
        parent = access_log.parent
        if (
            access_log.handlers
            or not access_log.propagate
            or parent is None
            or parent.name != "leads_gql"
            or parent.propagate
            or len(parent.handlers) != 1
            or type(parent.handlers[0]) is not StderrJSONHandler
        ):
            return None
        return parent.handlers[0]

    def request(self, **fields: Any) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        if self._sink() is None:
            access_log.info("request", extra={"fields": fields})
            return
        entry = {
            "ts": timestamp(time.time()),
            "level": "info",
            "logger": access_log.name,
            "msg": "request",
            **fields,
        }
        self.lines.append(orjson.dumps(entry))
        if len(self.lines) >= self.MAX_LINES:
            self.flush()
        elif self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        sink = self._sink()
        if not self.lines or sink is None:
            return
        text = b"\n".join(self.lines).decode() + "\n"
        self.lines.clear()
        sink.acquire()
        try:
            sink.stream.write(text)
            sink.stream.flush()
        except Exception:
            sink.handleError(logging.makeLogRecord({"msg": "access log"}))
        finally:
            sink.release()


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class JSONFormatter(logging.Formatter):
    """One JSON object per line; `extra={"fields": {...}}` adds keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": timestamp(record.created),
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
                "()": StderrJSONHandler,
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
            # The audit trail of deletions is not a verbosity: always on.
            "leads_gql.audit": {"level": "INFO"},
        },
    }
