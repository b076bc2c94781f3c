"""The fast path of `leadCreated` (web/live_frames.py): a plain selection's `next`
messages are rendered once per lead and written by the feed, and must be exactly
what Strawberry sends for the same selection.

Each document is subscribed twice, over real WebSockets to a real uvicorn server
(in this process, so that the test can see which path each subscription took):
once as written (the fast path) and once inside an inline fragment (which
Strawberry serves); every message must match byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from websockets.sync.client import ClientConnection, connect

from leads_gql.app import create_app
from leads_gql.config import Settings
from leads_gql.web.connections import WS_PROTOCOL
from leads_gql.web.live_frames import Shape, compile_shape
from tests.server import free_port
from tests.test_live import PROTOCOL, SECRET, bearer, token

pytestmark = pytest.mark.slow

FIELDS = "id name email phone chatflowid chatId createdDate"
# name -> (document, operationName, variables); $f is the flow.
DOCUMENTS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "every field": (
        f"subscription($f: ID!) {{ leadCreated(chatflowid: $f) {{ {FIELDS} }} }}",
        None,
        {},
    ),
    "aliases and __typename": (
        "subscription($f: ID!) { created: leadCreated(chatflowid: $f) "
        "{ key: id __typename who: name when: createdDate kind: __typename } }",
        None,
        {},
    ),
    "a subset, out of order": (
        "subscription($f: ID!) { leadCreated(chatflowid: $f) { createdDate phone } }",
        None,
        {},
    ),
    "repeated fields": (
        "subscription($f: ID!) { leadCreated(chatflowid: $f) "
        "{ id name email id name x: chatId email x: chatId } }",
        None,
        {},
    ),
    "named among several": (
        "subscription Other($f: ID!) { leadCreated(chatflowid: $f) { id } }\n"
        "subscription Mine($f: ID!) "
        "{ leadCreated(chatflowid: $f) { email id chatflowid } }",
        "Mine",
        {},
    ),
    "a literal flow": (
        'subscription { leadCreated(chatflowid: "FLOW") { id } }',
        None,
        {},
    ),
}
# Strawberry serves these; they print like the plain documents above.
SLOW: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "a fragment": (
        "subscription($f: ID!) { leadCreated(chatflowid: $f) { ...L } } "
        "fragment L on Lead { id name email phone chatflowid chatId createdDate }",
        None,
        {},
    ),
    "an inline fragment": (
        "subscription($f: ID!) { leadCreated(chatflowid: $f) "
        "{ ... on Lead { id name email phone chatflowid chatId createdDate } } }",
        None,
        {},
    ),
    "a directive with a variable": (
        "subscription($f: ID!, $e: Boolean!) { leadCreated(chatflowid: $f) "
        f"{{ {FIELDS.replace('email', 'email @include(if: $e)')} }} }}",
        None,
        {"e": True},
    ),
}


def slow_twin(query: str) -> str:
    """The same selection inside an inline fragment."""
    return re.sub(
        r"(leadCreated\([^)]*\) *)\{([^{}]*)\}", r"\1{ ... on Lead {\2} }", query
    )


def test_plain_selections_have_a_shape_and_others_do_not() -> None:
    for name, (query, operation, _) in DOCUMENTS.items():
        assert compile_shape(query, operation) is not None, name
        assert compile_shape(slow_twin(query), operation) is None, name
    for name, (query, operation, _) in SLOW.items():
        assert compile_shape(query, operation) is None, name
    query, operation, _ = DOCUMENTS["aliases and __typename"]
    assert compile_shape(query, operation) == Shape(
        "created",
        (
            ("key", "id"),
            ("__typename", "__typename"),
            ("who", "name"),
            ("when", "createdDate"),
            ("kind", "__typename"),
        ),
    )
    not_plain = [
        "{ __typename }",  # a query: Strawberry refuses it
        "subscription { leadCreated(chatflowid: 1) { id } x: leadCreated { id } }",
        "subscription @deprecated { leadCreated(chatflowid: 1) { id } }",
        "subscription { leadCreated(chatflowid: 1) { id: name id } }",
        "subscription { leadCreated(chatflowid: 1) { nope } }",
        "subscription { leadCreated(chatflowid: 1) { id(x: 1) } }",
        "subscription { leadCreated(chatflowid: 1) }",
        "subscription {",
    ]
    for query in not_plain:
        assert compile_shape(query, None) is None, query
    assert compile_shape(DOCUMENTS["named among several"][0], None) is None
    assert compile_shape(DOCUMENTS["named among several"][0], "Nope") is None


class _InProcess:
    """`create_app` under uvicorn with the service's WebSocket protocol, on a
    thread of this process: the test can look at the app's feed."""

    def __init__(self, tmp: Path) -> None:
        settings = Settings.from_env(
            {
                "LEADS_DATABASE_URL": f"sqlite:///{tmp}/frames.db",
                "LEADS_JWT_SECRET": SECRET,
                "LEADS_WS_MAX_SUBSCRIPTIONS": "50",
            }
        )
        self.app: Starlette = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            ws=WS_PROTOCOL,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def __enter__(self) -> _InProcess:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            assert self.thread.is_alive(), "the server stopped"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_InProcess]:
    with _InProcess(tmp_path_factory.mktemp("frames")) as server:
        yield server


def _socket(server: _InProcess) -> ClientConnection:
    ws = connect(
        server.url.replace("http://", "ws://") + "/graphql", subprotocols=[PROTOCOL]
    ).__enter__()
    ws.send(json.dumps({"type": "connection_init", "payload": bearer(token())}))
    assert json.loads(ws.recv(timeout=5)) == {"type": "connection_ack"}
    return ws


def _subscribe(
    ws: ClientConnection,
    id: str,
    flow: str,
    query: str,
    operation: str | None,
    variables: dict[str, Any],
) -> None:
    payload: dict[str, Any] = {
        "query": query.replace("FLOW", flow),
        "variables": {"f": flow, **variables},
    }
    if operation is not None:
        payload["operationName"] = operation
    ws.send(json.dumps({"id": id, "type": "subscribe", "payload": payload}))


def _messages(ws: ClientConnection, count: int) -> dict[str, str]:
    """`count` messages as sent (text), by subscription id."""
    got: dict[str, str] = {}
    for _ in range(count):
        text = ws.recv(timeout=5)
        assert isinstance(text, str)
        got[json.loads(text)["id"]] = text
    return got


def _receivers(server: _InProcess, flow: str) -> list[bool]:
    """Which subscriptions of the flow the feed writes itself."""
    feed = server.app.state.feed
    return [s.receiver is not None for s in feed.by_flow.get(flow, ())]


def test_the_fast_path_sends_what_strawberry_sends(in_process: _InProcess) -> None:
    flow = str(uuid.uuid4())
    fast, slow = _socket(in_process), _socket(in_process)
    cases = list(DOCUMENTS.values())
    for n, (query, operation, variables) in enumerate(cases):
        _subscribe(fast, str(n), flow, query, operation, variables)
        _subscribe(slow, str(n), flow, slow_twin(query), operation, variables)
    # Fragments and directives print like the plain selection of the same fields.
    first = DOCUMENTS["every field"]
    for n, (query, operation, variables) in enumerate(SLOW.values(), len(cases)):
        _subscribe(fast, str(n), flow, first[0], first[1], first[2])
        _subscribe(slow, str(n), flow, query, operation, variables)
    subscribed = len(cases) + len(SLOW)
    deadline = time.monotonic() + 5
    while len(_receivers(in_process, flow)) < 2 * subscribed:
        assert time.monotonic() < deadline, _receivers(in_process, flow)
        time.sleep(0.05)
    assert (
        sorted(_receivers(in_process, flow))
        == [False] * subscribed + [True] * subscribed
    )
    leads = [
        {"name": 'Zoë "quoted" \\ 🚀\n', "email": "zoe@example.com", "phone": None},
        {"name": None, "phone": "+1 555 0100", "createdDate": "2024-08-24T14:15:22Z"},
        {
            "name": "x" * 200,
            "chatId": "c" * 255,
            "createdDate": "2024-08-24T14:15:22.5Z",
        },
    ]
    for fields in leads:
        answer = httpx.post(
            f"{in_process.url}/leads",
            json={"chatflowid": flow.upper(), **fields},
            headers=bearer(token()),
        )
        assert answer.status_code == 200, answer.text
        stored = answer.json()
        from_fast = _messages(fast, subscribed)
        from_slow = _messages(slow, subscribed)
        assert from_fast == from_slow
        message = json.loads(from_fast["0"])
        assert message == {
            "id": "0",
            "type": "next",
            "payload": {"data": {"leadCreated": stored}},
        }
    fast.close()
    slow.close()


def test_a_completed_fast_subscription_stops_and_others_go_on(
    in_process: _InProcess,
) -> None:
    flow = str(uuid.uuid4())
    ws = _socket(in_process)
    query = DOCUMENTS["every field"][0]
    for id in ("a", "b"):
        _subscribe(ws, id, flow, query, None, {})
    deadline = time.monotonic() + 5
    while _receivers(in_process, flow) != [True, True]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ws.send(json.dumps({"id": "a", "type": "complete"}))
    deadline = time.monotonic() + 5
    while _receivers(in_process, flow) != [True]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    answer = httpx.post(
        f"{in_process.url}/leads",
        json={"chatflowid": flow, "name": "Ada"},
        headers=bearer(token()),
    )
    assert answer.status_code == 200, answer.text
    assert list(_messages(ws, 1)) == ["b"]
    with pytest.raises(TimeoutError):
        ws.recv(timeout=0.5)
    ws.close()
    deadline = time.monotonic() + 5
    while _receivers(in_process, flow):
        assert time.monotonic() < deadline, "the subscription outlived its socket"
        time.sleep(0.05)
