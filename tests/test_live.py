"""Live updates: `leadCreated` over real WebSockets (graphql-transport-ws) against
real `leads-gql serve` processes: on SQLite in one process, and on two instances
over one PostgreSQL (LISTEN/NOTIFY)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import PG_ADMIN_URL, PG_SKIP, pg_url_for
from tests.server import Server, cli_env, run_cli

pytestmark = pytest.mark.slow

SECRET = "live-test-secret-0123456789abcdefghijklmnopqrstuv"
PROTOCOL = "graphql-transport-ws"
CREATED = (
    "subscription($f: ID!) { leadCreated(chatflowid: $f) "
    "{ id name email phone chatflowid chatId createdDate } }"
)


def token(
    scope: str = "leads:read leads:write", ttl: float = 600, **claims: Any
) -> str:
    now = time.time()
    body = {"sub": "live", "scope": scope, "iat": int(now), "exp": now + ttl, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def bearer(jwt_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt_token}"}


class Live:
    """A graphql-transport-ws client on one socket."""

    def __init__(self, server: Server, *, protocol: str = PROTOCOL, **kw: Any) -> None:
        url = server.url.replace("http://", "ws://") + "/graphql"
        # Entered as a context manager, as websockets 17 asks.
        self.ws: ClientConnection = connect(
            url, subprotocols=[protocol], **kw
        ).__enter__()

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def recv(self, timeout: float = 5) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout=timeout))  # type: ignore[no-any-return]

    def init(self, jwt_token: str | None = None) -> Live:
        payload = {} if jwt_token is None else {"Authorization": f"Bearer {jwt_token}"}
        self.send({"type": "connection_init", "payload": payload})
        assert self.recv() == {"type": "connection_ack"}
        return self

    def subscribe(self, flow: str, id: str = "1", query: str = CREATED) -> None:
        self.send(
            {
                "id": id,
                "type": "subscribe",
                "payload": {"query": query, "variables": {"f": flow}},
            }
        )

    def quiet(self, seconds: float = 0.5) -> bool:
        """Nothing arrives for a while."""
        try:
            message = self.ws.recv(timeout=seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected message: {message}")

    def closed_with(self, timeout: float = 10) -> int | None:
        """Read until the server closes; the close code."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        raise AssertionError("the server did not close the socket")

    def close(self) -> None:
        self.ws.close()


def create(server: Server, flow: str, **fields: Any) -> dict[str, Any]:
    body = {"chatflowid": flow, "name": "Ada", **fields}
    answer = httpx.post(f"{server.url}/leads", json=body, headers=bearer(token()))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def lead_of(message: dict[str, Any]) -> dict[str, Any]:
    assert message["type"] == "next", message
    return message["payload"]["data"]["leadCreated"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("live")
    env = cli_env(
        LEADS_JWT_SECRET=SECRET,
        LEADS_DATABASE_URL=f"sqlite:///{tmp}/leads.db",
        LEADS_WS_MAX_SUBSCRIPTIONS="3",
        LEADS_WS_MAX_PER_SUBJECT="50",
        LEADS_WS_MAX_BEHIND="5",
    )
    with Server(tmp, env) as server:
        yield server


def test_a_lead_reaches_every_subscriber_of_its_flow_once(
    sqlite_server: Server,
) -> None:
    flow, other = str(uuid.uuid4()), str(uuid.uuid4())
    first, second = Live(sqlite_server).init(token()), Live(sqlite_server).init(token())
    first.subscribe(flow)
    second.subscribe(flow.upper())
    time.sleep(0.2)
    create(sqlite_server, other)  # another flow: to no one here
    started = time.monotonic()
    stored = create(sqlite_server, flow, email="ada@example.com", id=str(uuid.uuid4()))
    assert lead_of(first.recv()) == stored
    assert lead_of(second.recv()) == stored
    assert time.monotonic() - started < 1
    # A retry that stores nothing new announces nothing; GraphQL creates do.
    create(sqlite_server, flow, email="ada@example.com", id=stored["id"])
    made = httpx.post(
        f"{sqlite_server.url}/graphql",
        json={
            "query": "mutation($i: LeadInput!) { createLead(input: $i) { id } }",
            "variables": {"i": {"chatflowid": flow, "name": "Grace"}},
        },
        headers=bearer(token()),
    ).json()["data"]["createLead"]
    assert lead_of(first.recv())["id"] == made["id"]
    assert lead_of(second.recv())["id"] == made["id"]
    assert first.quiet() and second.quiet()
    # `complete` from the client ends it; the socket stays for more.
    first.send({"id": "1", "type": "complete"})
    create(sqlite_server, flow)
    assert lead_of(second.recv())["name"] == "Ada"
    assert first.quiet()
    first.send({"type": "ping"})
    assert first.recv() == {"type": "pong"}
    first.close()
    second.close()


def test_tokens_are_checked_at_init_and_when_they_expire(sqlite_server: Server) -> None:
    for payload in ({}, {"Authorization": "Bearer nope"}, {"Authorization": 7}):
        live = Live(sqlite_server)
        live.send({"type": "connection_init", "payload": payload})
        assert live.closed_with() == 4403, payload
    expired = Live(sqlite_server)
    expired.send({"type": "connection_init", "payload": bearer(token(ttl=-10))})
    assert expired.closed_with() == 4403
    lowercase = Live(sqlite_server)
    lowercase.send(
        {"type": "connection_init", "payload": {"authorization": f"bearer {token()}"}}
    )
    assert lowercase.recv() == {"type": "connection_ack"}
    lowercase.close()
    # A valid token is acknowledged whatever its scope, and the socket goes with
    # the token.
    short = Live(sqlite_server).init(token("leads:write", ttl=2))
    started = time.monotonic()
    assert short.closed_with(timeout=8) == 4403
    assert 1 < time.monotonic() - started < 5
    wrong = Live(sqlite_server, protocol="graphql-ws")
    assert wrong.closed_with() == 4406


def test_refusals_are_error_messages_and_the_socket_stays(
    sqlite_server: Server,
) -> None:
    flow = str(uuid.uuid4())
    cases = {
        "write only": (token("leads:write"), flow, "FORBIDDEN"),
        "other flows": (token(chatflows=[str(uuid.uuid4())]), flow, "FORBIDDEN"),
        "no flows": (token(chatflows=[]), flow, "FORBIDDEN"),
        "not a uuid": (token(), "nope", "BAD_USER_INPUT"),
    }
    for case, (jwt_token, chatflowid, code) in cases.items():
        live = Live(sqlite_server).init(jwt_token)
        live.subscribe(chatflowid)
        message = live.recv()
        assert message["type"] == "error", case
        assert message["payload"][0]["extensions"]["code"] == code, case
        live.send({"type": "ping"})
        assert live.recv() == {"type": "pong"}, case
        live.close()
    live = Live(sqlite_server).init(token())
    # Queries and mutations go over HTTP; document limits hold here too.
    live.send({"id": "q", "type": "subscribe", "payload": {"query": "{ __typename }"}})
    refused = live.recv()
    assert refused["type"] == "error"
    assert refused["payload"][0]["extensions"]["code"] == "BAD_REQUEST"
    huge = (
        "subscription($f: ID!) { leadCreated(chatflowid: $f) { " + "id " * 3000 + "} }"
    )
    live.subscribe(flow, id="h", query=huge)
    assert live.recv()["type"] == "error"
    live.send({"type": "ping"})
    assert live.recv() == {"type": "pong"}
    live.close()


def test_what_one_client_may_hold_is_bounded(sqlite_server: Server) -> None:
    live = Live(sqlite_server).init(token())
    for n in range(3):
        live.subscribe(str(uuid.uuid4()), id=str(n))
    live.subscribe(str(uuid.uuid4()), id="over")
    message = live.recv()
    assert message["type"] == "error" and message["id"] == "over"
    assert "limit" in message["payload"][0]["message"]
    live.close()


def _frame(text: str) -> bytes:
    """A masked text frame, as a client sends it."""
    data, mask = text.encode(), os.urandom(4)
    head = bytes([0x81])
    if len(data) < 126:
        head += bytes([0x80 | len(data)])
    else:
        head += bytes([0x80 | 126]) + len(data).to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _close_code(stream: bytes) -> int | None:
    """The code of the close frame in a server's (unmasked) frames, if any."""
    at = 0
    while at + 2 <= len(stream):
        opcode, length = stream[at] & 0x0F, stream[at + 1] & 0x7F
        at += 2
        if length == 126:
            length, at = int.from_bytes(stream[at : at + 2], "big"), at + 2
        elif length == 127:
            length, at = int.from_bytes(stream[at : at + 8], "big"), at + 8
        if opcode == 0x8:
            return int.from_bytes(stream[at : at + 2], "big")
        at += length
    return None


def subscriptions(server: Server) -> float:
    """The server's `leads_live_subscriptions` gauge."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("leads_live_subscriptions "):
            return float(line.split()[1])
    raise AssertionError("no leads_live_subscriptions in /metrics")


def test_a_subscriber_that_stops_reading_is_dropped_and_creates_go_on(
    sqlite_server: Server,
) -> None:
    """A client that subscribes, then reads nothing (a raw socket, its receive
    buffer small): once its backlog passes LEADS_WS_MAX_BEHIND the server closes
    it with 1013; no create waits on it. Creates go on until the server drops it
    (how many leads the kernel's socket buffers absorb first varies by machine),
    at most 6,000."""
    flow = str(uuid.uuid4())
    before = subscriptions(sqlite_server)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
    sock.connect(("127.0.0.1", sqlite_server.port))
    try:
        sock.sendall(
            b"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n"
            b"Sec-WebSocket-Protocol: " + PROTOCOL.encode() + b"\r\n\r\n"
        )
        handshake = b""
        while b"\r\n\r\n" not in handshake:
            handshake += sock.recv(4096)
        assert handshake.startswith(b"HTTP/1.1 101")
        init = {"type": "connection_init", "payload": bearer(token())}
        subscribe = {
            "id": "1",
            "type": "subscribe",
            "payload": {"query": CREATED, "variables": {"f": flow}},
        }
        sock.sendall(_frame(json.dumps(init)) + _frame(json.dumps(subscribe)))
        deadline = time.monotonic() + 10
        while subscriptions(sqlite_server) < before + 1:
            assert time.monotonic() < deadline, "the subscription never started"
            time.sleep(0.05)
        domain = ".".join(["b" * 61] * 3) + ".com"
        big = {"name": "x" * 255, "email": "a" * 64 + "@" + domain, "chatId": "c" * 255}
        slowest = 0.0
        with httpx.Client() as client:
            for n in range(1, 6001):  # the client reads none of them meanwhile
                started = time.monotonic()
                answer = client.post(
                    f"{sqlite_server.url}/leads",
                    json={"chatflowid": flow, **big},
                    headers=bearer(token()),
                )
                slowest = max(slowest, time.monotonic() - started)
                assert answer.status_code == 200
                if n % 100 == 0 and subscriptions(sqlite_server) == before:
                    break  # dropped
            else:
                raise AssertionError("the subscriber was never dropped")
        assert slowest < 5, slowest  # no create waited on the subscriber
        sock.settimeout(10)
        received = handshake.partition(b"\r\n\r\n")[2]
        while chunk := sock.recv(65536):  # now read it all, to the close frame
            received += chunk
    finally:
        sock.close()
    assert _close_code(received) == 1013


def test_metrics_count_sockets_subscriptions_and_events(sqlite_server: Server) -> None:
    flow = str(uuid.uuid4())
    live = Live(sqlite_server).init(token())
    live.subscribe(flow)
    time.sleep(0.2)
    text = httpx.get(f"{sqlite_server.url}/metrics").text
    create(sqlite_server, flow)
    live.recv()
    after = httpx.get(f"{sqlite_server.url}/metrics").text

    def value(body: str, name: str) -> float:
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(name)

    assert value(text, "leads_live_sockets") >= 1
    assert value(text, "leads_live_subscriptions") >= 1
    assert (
        value(after, "leads_live_events_total")
        >= value(text, "leads_live_events_total") + 1
    )
    live.close()


@pytest.mark.postgres
def test_two_instances_over_postgresql(tmp_path: Path) -> None:
    """Every instance's subscribers get every lead, whichever instance stored it;
    a lost LISTEN connection closes them with 1011 and comes back; a stopping
    server says 1001."""
    if not PG_ADMIN_URL:
        pytest.skip(PG_SKIP)
    name = f"leads_live_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://")
    subprocess.run(["psql", admin, "-qc", f'CREATE DATABASE "{name}"'], check=True)
    url = pg_url_for(name).replace("postgresql+asyncpg://", "postgresql://")
    env = cli_env(LEADS_JWT_SECRET=SECRET, LEADS_DATABASE_URL=url)
    try:
        assert run_cli("migrate", cwd=tmp_path, env=env).returncode == 0
        with (
            Server(tmp_path, env, "--no-migrate") as a,
            Server(tmp_path, env, "--no-migrate") as b,
        ):
            flow = str(uuid.uuid4())
            on_a, on_b = Live(a).init(token()), Live(b).init(token())
            on_a.subscribe(flow)
            on_b.subscribe(flow)
            time.sleep(0.3)
            for n in range(5):
                stored = create(b if n % 2 else a, flow, name=f"lead {n}")
                assert lead_of(on_a.recv()) == stored
                assert lead_of(on_b.recv()) == stored
            assert on_a.quiet() and on_b.quiet()
            subprocess.run(
                [
                    "psql", url, "-qAtc",
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'leads-gql listener'",
                ],
                check=True, capture_output=True,
            )  # fmt: skip
            assert on_a.closed_with() == 1011
            assert on_b.closed_with() == 1011
            again = None
            for _ in range(50):  # the listener reconnects by itself
                time.sleep(0.2)
                again = Live(a).init(token())
                again.subscribe(flow)
                try:
                    again.quiet(0.3)
                    break
                except ConnectionClosed:
                    again = None
            assert again is not None
            stored = create(b, flow, name="after the loss")
            assert lead_of(again.recv()) == stored
            assert a.process is not None
            os.kill(a.process.pid, signal.SIGTERM)
            assert again.closed_with() == 1001
    finally:
        subprocess.run(
            ["psql", admin, "-qc", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
            check=False,
        )
