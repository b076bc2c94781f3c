"""Connection bounds (leads_gql/web/connections.py) against a real `leads-gql serve`,
through raw sockets: head size and field count, unfinished heads, pipelining,
head and body timeouts, connection caps, and the JSON answers the protocol
writes itself."""

from __future__ import annotations

import asyncio
import json
import resource
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from uvicorn.config import Config
from uvicorn.importer import import_from_string
from uvicorn.server import ServerState

from leads_gql import cli
from leads_gql.web import connections
from leads_gql.web.connections import (
    MAX_HEAD_BYTES,
    MAX_HEADER_FIELDS,
    MAX_PIPELINED,
    PROTOCOL,
    BoundedHttpProtocol,
)
from tests.server import Server, cli_env

pytestmark = pytest.mark.slow

SECRET = "connections-test-secret-0123456789abcdefghijklmnop"
TIMEOUT = 1.0  # LEADS_HEADER_TIMEOUT and LEADS_BODY_TIMEOUT
PER_ADDRESS = 3
MAX_CONNECTIONS = 10
PROXY = "127.0.0.9"
MARKER = "do-not-log-this-header-value"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("connections")
    env = cli_env(
        LEADS_JWT_SECRET=SECRET,
        LEADS_DATABASE_URL=f"sqlite:///{tmp}/leads.db",
        LEADS_HEADER_TIMEOUT=str(TIMEOUT),
        LEADS_BODY_TIMEOUT=str(TIMEOUT),
        LEADS_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        LEADS_MAX_CONNECTIONS_PER_ADDRESS=str(PER_ADDRESS),
        LEADS_FORWARDED_ALLOW_IPS=PROXY,
    )
    # A low soft open-file limit, inherited by the server, which lifts it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    try:
        server = Server(tmp, env).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield server
    finally:
        server.stop()


def token() -> str:
    now = int(time.time())
    claims = {
        "sub": "connections-test",
        "scope": "leads:read leads:write",
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Conn:
    """A raw client connection with a read buffer (for pipelined responses)."""

    def __init__(self, server: Server, source: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.settimeout(5)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", server.port))
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readable(self, timeout: float) -> bool:
        return bool(select.select([self.sock], [], [], timeout)[0])

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("closed by the server")
        self.buffer += chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed_by_server(self) -> bool:
        """Wait for the server to close the connection (reading past any data), then
        close ours; a timeout (5 s) raises."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        finally:
            self.sock.close()
        return True

    def close(self) -> None:
        self.sock.close()


def get(path: str = "/healthz", *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


def assert_refusal(answer: tuple[int, dict[str, str], bytes], status: int) -> None:
    code, headers, body = answer
    assert code == status
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["connection"] == "close"
    payload = json.loads(body)
    assert payload["statusCode"] == status
    assert isinstance(payload["message"], str) and payload["message"]


def healthz(server: Server, source: str = "127.0.0.1") -> int:
    conn = Conn(server, source)
    try:
        conn.send(get())
        return conn.response()[0]
    finally:
        conn.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_for_log(server: Server, text: str, timeout: float = 3) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = server.output()
        if text in output:
            return output
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged:\n{server.output()}")


# The request head


def test_a_header_over_the_head_limit_is_431_and_closed(server: Server) -> None:
    conn = Conn(server)
    conn.send(get("/healthz", f"X-Big: {MARKER}{'a' * 20 * 1024}"))
    assert_refusal(conn.response(), 431)
    assert conn.closed_by_server()
    output = wait_for_log(server, f"request head over {MAX_HEAD_BYTES} bytes")
    assert MARKER not in output


def test_the_head_limit_is_exact(server: Server) -> None:
    """16 KiB as written on the wire, request line and blank line included."""
    base = len(get("/healthz", "X-Fill: "))
    fill = "f" * (MAX_HEAD_BYTES - base)
    assert len(get("/healthz", f"X-Fill: {fill}")) == MAX_HEAD_BYTES
    conn = Conn(server)
    conn.send(get("/healthz", f"X-Fill: {fill}"))
    assert conn.response()[0] == 200
    conn.close()

    conn = Conn(server)
    conn.send(get("/healthz", f"X-Fill: {fill}f"))
    assert_refusal(conn.response(), 431)
    conn.close()


def test_the_header_field_count_is_capped(server: Server) -> None:
    # `get` sends Host: 99 more make 100 fields, allowed; 100 more are one too many.
    fields = [f"X-F{i}: v" for i in range(MAX_HEADER_FIELDS - 1)]
    conn = Conn(server)
    conn.send(get("/healthz", *fields))
    assert conn.response()[0] == 200
    conn.close()

    conn = Conn(server)
    conn.send(get("/healthz", *fields, "X-One-Too-Many: v"))
    assert_refusal(conn.response(), 431)
    assert conn.closed_by_server()
    wait_for_log(server, f"over {MAX_HEADER_FIELDS} header fields")


def test_an_unfinished_head_is_cut_off_early(server: Server) -> None:
    """8 MB of one header value, never finished: refused after about 16 KiB plus
    one read, and the server's memory does not grow."""
    pid = server.process.pid  # type: ignore[union-attr]
    before = rss_kib(pid)
    conn = Conn(server)
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
    chunk, sent, answer = b"a" * 65536, 0, None
    try:
        while sent < 8 * 1024 * 1024:
            conn.send(chunk)
            sent += len(chunk)
            if conn.readable(0.01):
                answer = conn.response()
                break
    except OSError:
        pass  # reset by the server: it stopped reading
    if answer is None:
        try:
            answer = conn.response()
        except (OSError, EOFError):
            pass
    conn.close()
    assert sent < 1024 * 1024, f"the server took {sent} bytes of an unfinished head"
    if answer is not None:
        assert_refusal(answer, 431)
    grown = rss_kib(pid) - before
    assert grown < 4 * 1024, f"RSS grew by {grown} KiB"
    assert healthz(server) == 200


# Time limits


def test_a_silent_socket_is_closed(server: Server) -> None:
    conn = Conn(server)
    start = time.monotonic()
    assert conn.sock.recv(1) == b""
    elapsed = time.monotonic() - start
    conn.close()
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 1.5


def test_a_head_trickled_too_slowly_is_408(server: Server) -> None:
    conn = Conn(server)
    start = time.monotonic()
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    while not conn.readable(0.2) and time.monotonic() - start < TIMEOUT + 3:
        conn.send(b"a")
    assert_refusal(conn.response(), 408)
    assert time.monotonic() - start < TIMEOUT + 1.5
    assert conn.closed_by_server()
    wait_for_log(server, "request head timed out")


def test_a_body_sent_too_slowly_is_408_and_nothing_is_stored(server: Server) -> None:
    flow = str(uuid.uuid4())
    auth = f"Authorization: Bearer {token()}"
    conn = Conn(server)
    start = time.monotonic()
    conn.send(
        "\r\n".join(
            [
                "POST /leads HTTP/1.1",
                "Host: 127.0.0.1",
                "Content-Type: application/json",
                auth,
                "Content-Length: 100",
                "",
                f'{{"chatflowid": "{flow}", "name": "slow"'[:10],
            ]
        ).encode()
    )
    assert_refusal(conn.response(), 408)
    assert TIMEOUT * 0.8 < time.monotonic() - start < TIMEOUT + 1.5
    assert conn.closed_by_server()
    wait_for_log(server, "request body timed out")

    conn = Conn(server)
    conn.send(get(f"/leads/{flow}", auth))
    assert conn.response()[0] == 404  # no lead in the flow
    conn.close()
    # The app saw a disconnect: nothing errors in the log.
    time.sleep(0.3)
    output = server.output()
    assert '"level":"error"' not in output and "Traceback" not in output, output


# Connection caps


def test_connections_per_address_are_capped(server: Server) -> None:
    held = [Conn(server, "127.0.0.2") for _ in range(PER_ADDRESS)]
    start = time.monotonic()
    refused = Conn(server, "127.0.0.2")
    answer = refused.response()
    assert time.monotonic() - start < 0.5
    assert_refusal(answer, 503)
    assert answer[1]["retry-after"] == "1"
    refused.close()
    # Other addresses are served meanwhile.
    assert healthz(server, "127.0.0.1") == 200
    wait_for_log(server, "too many connections from one address")
    # The head timeout closes the silent ones; the address is served again.
    for conn in held:
        assert conn.closed_by_server()
        conn.close()
    assert healthz(server, "127.0.0.2") == 200


def test_a_trusted_proxy_is_exempt_from_the_per_address_cap(server: Server) -> None:
    conns = [Conn(server, PROXY) for _ in range(PER_ADDRESS + 1)]
    try:
        for conn in conns:
            conn.send(get())
        assert [conn.response()[0] for conn in conns] == [200] * len(conns)
    finally:
        for conn in conns:
            conn.close()


def test_connections_are_capped_in_all(server: Server) -> None:
    time.sleep(0.2)  # connections closed by earlier tests are gone from the server
    sources = [f"127.0.0.{3 + i // PER_ADDRESS}" for i in range(MAX_CONNECTIONS)]
    held = [Conn(server, source) for source in sources]
    # None was refused (a refusal is answered at once).
    assert select.select([conn.sock for conn in held], [], [], 0.1)[0] == []
    refused = Conn(server, "127.0.0.30")
    assert_refusal(refused.response(), 503)
    refused.close()
    wait_for_log(server, '"reason":"too many connections"')
    for conn in held:
        assert conn.closed_by_server()
        conn.close()
    assert healthz(server, "127.0.0.30") == 200


# Nothing else changes


def test_keep_alive_and_pipelined_requests_still_work(server: Server) -> None:
    conn = Conn(server)
    conn.send(get())
    assert conn.response()[0] == 200
    conn.send(get())
    assert conn.response()[0] == 200
    conn.send(get() + get("/readyz"))
    assert conn.response()[0] == 200
    assert conn.response()[0] == 200
    conn.close()


def test_pipelined_requests_are_bounded(server: Server) -> None:
    """One read of tiny pipelined requests would queue thousands in uvicorn: past
    MAX_PIPELINED waiting behind the one answered, the connection is closed."""
    conn = Conn(server)
    conn.send(get() * (1 + MAX_PIPELINED))  # one read: one answered, the rest queued
    assert [conn.response()[0] for _ in range(1 + MAX_PIPELINED)] == [200] * (
        1 + MAX_PIPELINED
    )
    conn.close()

    conn = Conn(server)
    conn.send(get() * (2 + MAX_PIPELINED))
    assert conn.closed_by_server()
    wait_for_log(server, f"over {MAX_PIPELINED} pipelined requests")


def test_a_request_with_a_body_still_works(server: Server) -> None:
    flow = str(uuid.uuid4())
    auth = f"Authorization: Bearer {token()}"
    body = json.dumps({"chatflowid": flow, "name": "Ada"}).encode()
    conn = Conn(server)
    conn.send(
        "\r\n".join(
            [
                "POST /leads HTTP/1.1",
                "Host: 127.0.0.1",
                "Content-Type: application/json",
                auth,
                f"Content-Length: {len(body)}",
                "",
                "",
            ]
        ).encode()
        + body
    )
    status, _, created = conn.response()
    assert status == 200, created
    conn.send(get(f"/leads/{flow}", auth))
    status, _, listed = conn.response()
    assert status == 200
    assert json.loads(listed) == [json.loads(created)]
    conn.close()


def test_malformed_http_is_a_json_400(server: Server) -> None:
    conn = Conn(server)
    conn.send(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    assert_refusal(conn.response(), 400)
    assert conn.closed_by_server()
    wait_for_log(server, "malformed HTTP request")


def test_the_open_file_limit_is_raised(server: Server) -> None:
    """Started with a soft limit of 256 (see `server`), the server lifts it."""
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()  # type: ignore[union-attr]
    (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
    soft, hard = line.split()[3:5]
    assert soft == hard


# In-process


def test_serve_passes_the_protocol_and_proxy_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    runs: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    monkeypatch.setattr(connections, "raise_open_file_limit", lambda: 150)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEADS_JWT_SECRET", SECRET)
    monkeypatch.setenv("LEADS_DATABASE_URL", f"sqlite:///{tmp_path}/leads.db")

    assert cli.main(["serve"]) == 0
    assert runs[-1]["http"] == PROTOCOL
    assert runs[-1]["proxy_headers"] is False
    # LEADS_MAX_CONNECTIONS (1000) does not fit under 150 open files.
    assert "LEADS_MAX_CONNECTIONS=1000" in capsys.readouterr().err

    monkeypatch.setenv("LEADS_FORWARDED_ALLOW_IPS", "10.0.0.1/8, 192.0.2.7")
    assert cli.main(["serve"]) == 0
    assert runs[-1]["proxy_headers"] is True
    assert runs[-1]["forwarded_allow_ips"] == ["10.0.0.0/8", "192.0.2.7/32"]


def test_the_protocol_import_string_resolves() -> None:
    assert import_from_string(PROTOCOL) is BoundedHttpProtocol


class FakeTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.extra = {"peername": peer, "sockname": ("127.0.0.1", 8000)}
        self.closing = False
        self.written = b""
        self.protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class FakeWebSocketProtocol(asyncio.Protocol):
    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any]
    ) -> None:
        pass


async def _app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("not reached")


def test_a_websocket_upgrade_and_a_lost_connection_release_their_count() -> None:
    """The per-address count drops when the transport goes to the WebSocket
    protocol (this one never sees connection_lost then) and when it is lost."""
    connections.process_limits.cache_clear()  # the test's (default) environment
    loop = asyncio.new_event_loop()
    try:
        config = Config(_app, ws=FakeWebSocketProtocol, lifespan="off")
        state = ServerState()
        counts = connections._open_by_address

        upgraded, lost = (
            FakeTransport(("192.0.2.1", 1)),
            FakeTransport(("192.0.2.1", 2)),
        )
        first = BoundedHttpProtocol(config, state, {}, _loop=loop)
        first.connection_made(upgraded)
        second = BoundedHttpProtocol(config, state, {}, _loop=loop)
        second.connection_made(lost)
        assert counts[state] == {"192.0.2.1": 2}

        first.data_received(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert isinstance(upgraded.protocol, FakeWebSocketProtocol)
        assert counts[state] == {"192.0.2.1": 1}
        assert first._head_timer is None and first._body_timer is None

        second.connection_lost(None)
        assert counts[state] == {}
        assert second._head_timer is None
    finally:
        loop.close()
        connections.process_limits.cache_clear()
