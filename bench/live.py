"""Live updates (issue #10): create-to-delivery latency, throughput and memory.

    .venv/bin/python bench/live.py                # ~4 min: PostgreSQL, then SQLite
    .venv/bin/python bench/live.py --quick        # ~1 min: 100 subscribers, 50/s
    .venv/bin/python bench/live.py --db postgres --seconds 30

PostgreSQL: three instances of the real service (`python -m leads_gql serve`, one
uvicorn worker each, auth on, a real token) over one migrated database
(leads_bench_live). Instances A and B carry the subscribers, C takes the creates,
so every delivery goes through PostgreSQL's NOTIFY and each instance's LISTEN.

1. Latency: `--subscribers` WebSockets (graphql-transport-ws, the token in
   connection_init, one `leadCreated` subscription each, half on A, half on B) in
   two client processes (bench/live.py --role subscribers); once all are
   subscribed, this process POSTs /api/v1/leads to C, open loop, at a steady
   `--rate` for `--seconds`. Each lead carries its send time (wall clock, taken
   just before the request goes out) in its name; a subscriber takes the arrival
   time of each `next` as it reads it, so latency = arrival - send, over every
   delivery. Every subscriber must receive every acknowledged lead exactly once
   (an array of counts per socket). Target: p99 < 100 ms, none lost or repeated.
   The CPU seconds each process used during the run are recorded (a saturated
   client would show up as its own latency).
2. Throughput: wrk (bench/leads.lua, rest_create, closed loop, `--connections`)
   against a fresh instance T (B2 LISTENs too) for `--tp-seconds`, with
   `--subscribers` idle subscribers on T (one client process, subscribed to a
   flow that gets no leads) and without,
   alternating (without, with, with, without, ...); per pair the ratio of
   with / without, median over pairs. Target >= 0.9.
3. Memory: T's VmRSS before and after the idle subscribers connect (each
   throughput round), per 1,000 subscriptions (recorded, no target).

SQLite (`--db sqlite`): the latency run of 1 on one instance (subscribers and
creates on the same process), for comparison.

Writes bench/results/YYYY-MM-DD-HHMM-live[-quick].{md,json}, exits 1 when a target
fails, stops every process it starts and drops its database (also on Ctrl-C,
SIGTERM or an error). Traffic goes to 127.0.0.1 only. The service's code is
whatever `python -m leads_gql` imports: PYTHONPATH=/tmp/tree
BENCH_SERVICE_COMMIT=<commit> measures a worktree (recorded).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as harness  # noqa: E402

say = harness.say
MB = harness.MB
PG_DB = "leads_bench_live"
LIVE_FLOW = "00000000-0000-4000-b000-000000000001"  # gets the creates of run 1
IDLE_FLOW = "00000000-0000-4000-b000-000000000002"  # gets no leads at all
PROTOCOL = "graphql-transport-ws"
SUBSCRIPTION = (
    "subscription Live($f: ID!) { leadCreated(chatflowid: $f) "
    "{ id name email createdDate } }"
)
# Far above what the run opens, so that the service's caps never refuse the
# bench's own sockets (they are all from 127.0.0.1, with one token subject).
LIMITS = {
    "LEADS_MAX_CONNECTIONS": "5000",
    "LEADS_MAX_CONNECTIONS_PER_ADDRESS": "5000",
    "LEADS_WS_MAX_PER_ADDRESS": "5000",
    "LEADS_WS_MAX_PER_SUBJECT": "5000",
}


def leads_gql(*args: str) -> list[str]:
    return [sys.executable, "-m", "leads_gql", *args]


def pct(values: Any, q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds every process of the machine has used so far (not idle, not
    waiting on I/O): with the run's own, it tells what else was running."""
    with open("/proc/stat") as handle:
        ticks = [int(v) for v in handle.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def lead_id(nonce: str, k: int) -> str:
    return f"{nonce}-0000-4000-8000-{k:012x}"


# -- the subscriber client (a process of its own) -------------------------------------


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client's frame (masked, as RFC 6455 asks of clients); payload < 64 KiB."""
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([0x80 | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    else:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def _frames(buf: bytes) -> tuple[list[tuple[int, int, int]], bytes]:
    """(opcode, start, end) of each complete server frame in `buf`; the rest."""
    frames, pos, size = [], 0, len(buf)
    while pos + 2 <= size:
        length, head = buf[pos + 1] & 0x7F, 2
        if length == 126:
            if pos + 4 > size:
                break
            length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            if pos + 10 > size:
                break
            length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        end = pos + head + length
        if end > size:
            break
        frames.append((buf[pos] & 0x0F, pos + head, end))
        pos = end
    return frames, buf[pos:]


def _open_sockets(args: argparse.Namespace, token: str) -> list[socket.socket]:
    """`--count` sockets upgraded, acknowledged and subscribed; each step is sent
    on every socket before the answers are read, so the server works on many."""
    import base64

    socks = []
    for _ in range(args.count):
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {PROTOCOL}\r\n\r\n"
            ).encode()
        )
        socks.append(sock)
    init = json.dumps(
        {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
    ).encode()
    for i, sock in enumerate(socks):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"socket {i}: closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"socket {i}: {head[:200]!r}")
        sock.sendall(_masked(0x1, init))
    subscribe = json.dumps(
        {
            "id": "1",
            "type": "subscribe",
            "payload": {"query": SUBSCRIPTION, "variables": {"f": args.flow}},
        }
    ).encode()
    for i, sock in enumerate(socks):
        buf = b""
        while True:
            frames, rest = _frames(buf)
            if frames:
                break
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"socket {i}: closed before connection_ack")
            buf += chunk
        opcode, start, end = frames[0]
        if json.loads(buf[start:end]) != {"type": "connection_ack"} or rest:
            raise RuntimeError(f"socket {i}: {buf[:200]!r}")
        sock.sendall(_masked(0x1, subscribe))
    return socks


def subscribers_main(args: argparse.Namespace) -> None:
    """`--count` sockets to `--port`, each subscribed to `--flow`; prints READY,
    then follows commands on stdin: `DRAIN <leads>` (wait for every socket to
    have `leads` leads, or for 5 s without progress, at most 60 s; then write
    `--out` and exit), `STOP` (close everything and exit).

    Cheap per message, so that the client is not what is measured: plain
    sockets and epoll (no asyncio, no WebSocket library), one recv per readable
    socket for every frame that arrived, and of each `next` only the lead's id
    and the send time in its name are read (from the bytes, without a JSON
    parser). Server pings are answered; anything else is counted and kept."""
    token = os.environ["BENCH_LIVE_TOKEN"]
    socks = _open_sockets(args, token)
    counts = [bytearray(args.max_leads) for _ in socks]
    latencies = array.array("d")
    nonce = args.nonce.encode()
    key = b'"leadCreated":{"id":"'
    name = b'"name":"Live '
    foreign = received = 0
    others: list[str] = []
    closed: dict[int, int | None] = {}  # socket -> close code (None: no frame)
    buffers = [b""] * len(socks)
    poll = select.epoll()
    by_fd = {}
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        by_fd[sock.fileno()] = i
        poll.register(sock.fileno(), select.EPOLLIN)
    stdin = sys.stdin.fileno()
    poll.register(stdin, select.EPOLLIN)
    time.sleep(0.5)  # the last subscribe messages reach the server
    sys.stdout.write(f"READY {len(socks)}\n")
    sys.stdout.flush()
    cpu0 = os.times()
    drain: int | None = None
    last, still, give_up = -1, 0.0, 0.0
    while True:
        for fd, _ in poll.poll(0.1):
            if fd == stdin:
                line = sys.stdin.readline().split()
                poll.unregister(stdin)
                if not line or line[0] != "DRAIN":
                    for sock in socks:
                        sock.close()
                    return
                drain = int(line[1])
                last, still, give_up = -1, time.monotonic(), time.monotonic() + 60
                continue
            i = by_fd[fd]
            try:
                data = socks[i].recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            now = time.time()
            if not data:
                poll.unregister(fd)
                closed.setdefault(i, None)
                continue
            buf = buffers[i] + data if buffers[i] else data
            frames, buffers[i] = _frames(buf)
            mine = counts[i]
            for opcode, start, end in frames:
                at = buf.find(key, start, end) if opcode == 0x1 else -1
                if at < 0:
                    if opcode == 0x9:  # a server ping: pong with its payload
                        socks[i].sendall(_masked(0xA, buf[start:end]))
                    elif opcode == 0x8:
                        closed[i] = int.from_bytes(buf[start : start + 2], "big")
                    elif len(others) < 20:
                        others.append(buf[start : min(end, start + 200)].decode())
                    continue
                at += 21
                if buf[at : at + 8] != nonce:
                    foreign += 1
                    continue
                k = int(buf[at + 24 : at + 36], 16)
                if mine[k] < 255:
                    mine[k] += 1
                at = buf.find(name, at + 36, end) + 13
                at = buf.find(b" ", at, end) + 1
                sent = int(buf[at : buf.find(b'"', at, end)])
                latencies.append(now - sent / 1e9)
                received += 1
        if drain is None:
            continue
        if received != last:
            last, still = received, time.monotonic()
        done = received >= drain * len(socks)
        if done or time.monotonic() - still > 5 or time.monotonic() > give_up:
            break
    cpu1 = os.times()
    missing = repeated = 0
    acked = set(json.loads(Path(args.acked).read_text()))
    for mine in counts:
        for k in range(drain):
            if k in acked:
                missing += mine[k] == 0
                repeated += mine[k] > 1
    Path(args.out).write_text(
        json.dumps(
            {
                "sockets": len(socks),
                "sockets_open": len(socks) - len(closed),
                "close_codes": {
                    str(c): list(closed.values()).count(c) for c in set(closed.values())
                },
                "deliveries": received,
                # from READY to the end of the drain
                "cpu_seconds": round(
                    cpu1.user + cpu1.system - cpu0.user - cpu0.system, 2
                ),
                "missing": missing,
                "repeated": repeated,
                "foreign": foreign,
                "other_messages": others,
                "latencies": latencies.tolist(),
            }
        )
    )
    sys.stdout.flush()
    os._exit(0)  # the server sees the sockets drop; no close handshakes


class Subscribers:
    """A subscriber client process."""

    def __init__(
        self, workdir: Path, name: str, port: int, count: int, flow: str, token: str
    ) -> None:
        self.out = workdir / f"{name}.json"
        self.acked = workdir / "acked.json"
        self.count = count
        env = dict(os.environ, BENCH_LIVE_TOKEN=token)
        self.nonce = NONCE
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__)),
                "--role",
                "subscribers",
                "--port",
                str(port),
                "--count",
                str(count),
                "--flow",
                flow,
                "--nonce",
                NONCE,
                "--max-leads",
                str(MAX_LEADS),
                "--out",
                str(self.out),
                "--acked",
                str(self.acked),
            ],  # fmt: skip
            env=env,
            cwd=workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(workdir / f"{name}.err").open("wb"),
            text=True,
        )
        CLIENTS.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 150) -> float:
        start = time.monotonic()
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"subscriber client not ready: {line!r}")
        return time.monotonic() - start

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        """After `DRAIN <leads>`: the client's figures (it gives up after 60 s)."""
        try:
            self.proc.wait(240)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        return dict(json.loads(self.out.read_text()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.command("STOP")
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


CLIENTS: list[Subscribers] = []
NONCE = secrets.token_hex(4)
MAX_LEADS = 0


# -- creates ---------------------------------------------------------------------------


async def create_steady(
    port: int, token: str, rate: float, seconds: float, nonce: str, workers: int = 32
) -> dict[str, Any]:
    """POST /api/v1/leads at a steady `rate` for `seconds`: lead k is due at
    t0 + k / rate and goes out on the first free one of `workers` keep-alive
    connections (a plain HTTP/1.1 client: its cost per request is constant
    however far the server falls behind). The send time in the lead's name is
    taken just before its request is written; how late that was is recorded."""
    n = int(rate * seconds)
    due_q: asyncio.Queue[int | None] = asyncio.Queue()
    acked: list[int] = []
    rtts: list[float] = []
    late: list[float] = []
    errors: list[str] = []
    t0 = time.monotonic() + 0.2
    head = (
        "POST /api/v1/leads HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    )

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (k := await due_q.get()) is not None:
                sent = time.time_ns()
                late.append(max(0.0, time.monotonic() - (t0 + k / rate)))
                body = json.dumps(
                    {
                        "id": lead_id(nonce, k),
                        "chatflowid": LIVE_FLOW,
                        "chatId": f"live-{nonce}-{k}",
                        "name": f"Live {k} {sent}",
                        "email": f"live{k}@example.com",
                        "phone": f"+1 555 {k:07d}",
                    }
                ).encode()
                start = time.perf_counter()
                writer.write(
                    f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
                )
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                answer = await reader.readexactly(length)
                rtts.append(time.perf_counter() - start)
                status = int(status_line.split()[1]) if status_line else 0
                if status in (200, 201):
                    acked.append(k)
                else:
                    errors.append(f"{status} {answer[:100]!r}")
        finally:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    for k in range(n):
        delay = t0 + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        due_q.put_nowait(k)
    for _ in tasks:
        due_q.put_nowait(None)
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), seconds + 60)
    except TimeoutError:
        errors.append("the creates did not finish within 60 s of the schedule")
        for t in tasks:
            t.cancel()
    wall = time.monotonic() - t0
    return {
        "sent": len(late),
        "acked": sorted(acked),
        "errors": errors[:20],
        "n_errors": len(errors),
        "achieved_rate": len(acked) / wall,
        "post_ms": {
            "p50": pct(rtts, 0.5) * 1000,
            "p99": pct(rtts, 0.99) * 1000,
            "max": max(rtts, default=0) * 1000,
        },
        "send_late_ms_p99": pct(late, 0.99) * 1000,
    }


async def with_probe(
    creates: Any, dsn: str, nonce: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `creates` while a LISTEN of this process's own timestamps each NOTIFY
    of the run on arrival: the database's share of create-to-delivery latency
    (POST sent -> notification at a listener), apart from the fan-out's."""
    import asyncpg

    connection = await asyncpg.connect(dsn)
    delays = array.array("d")

    def arrived(_c: Any, _pid: int, _channel: str, payload: str) -> None:
        now = time.time()
        lead = json.loads(payload)
        if lead["id"].startswith(nonce):
            delays.append(now - int(lead["name"].rsplit(" ", 1)[1]) / 1e9)

    await connection.add_listener("leads_created", arrived)
    try:
        created = await creates
        deadline = time.monotonic() + 30  # what is still in the database's queue
        while len(delays) < len(created["acked"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
    return created, {
        "n": len(delays),
        "p50_ms": pct(delays, 0.5) * 1000,
        "p99_ms": pct(delays, 0.99) * 1000,
        "max_ms": max(delays, default=float("nan")) * 1000,
    }


# -- runs ------------------------------------------------------------------------------


def start_server(name: str, env: dict[str, str], workdir: Path) -> harness.Server:
    server = harness.Server(
        name,
        leads_gql("serve", "--host", "127.0.0.1", "--port", "{port}"),
        env,
        workdir,
    )
    server.start()
    server.wait_ready()
    return server


def live_subscriptions(server: harness.Server) -> int:
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("leads_live_subscriptions "):
                return int(float(line.split()[1]))
    return -1


def latency_run(
    db: str,
    subs_servers: list[harness.Server],
    create_server: harness.Server,
    others: list[harness.Server],
    args: argparse.Namespace,
    token: str,
    workdir: Path,
    probe_dsn: str | None = None,
) -> dict[str, Any]:
    global NONCE, MAX_LEADS
    NONCE = secrets.token_hex(4)
    n_leads = int(args.rate * args.seconds)
    MAX_LEADS = n_leads
    per = [args.subscribers // len(subs_servers)] * len(subs_servers)
    per[0] += args.subscribers - sum(per)
    clients = [
        Subscribers(workdir, f"{db}-subs-{s.name}", s.port, n, LIVE_FLOW, token)
        for s, n in zip(subs_servers, per, strict=True)
    ]
    connect_s = max(c.wait_ready() for c in clients)
    counted = {s.name: live_subscriptions(s) for s in subs_servers}
    say(f"[{db}] {args.subscribers} subscribers in {connect_s:.1f} s: {counted}")
    procs = {s.name: s.pid for s in {*subs_servers, create_server, *others}}
    procs.update(
        {f"client-{s.name}": c.pid for s, c in zip(subs_servers, clients, strict=True)}
    )
    procs["creator (this process)"] = os.getpid()
    cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
    busy0 = machine_busy_seconds()
    rss0 = {s.name: s.rss() for s in subs_servers}
    t0 = time.monotonic()
    creates = create_steady(create_server.port, token, args.rate, args.seconds, NONCE)
    notify: dict[str, Any] | None = None
    if probe_dsn is None:
        created = asyncio.run(creates)
    else:
        created, notify = asyncio.run(with_probe(creates, probe_dsn, NONCE))
    (workdir / "acked.json").write_text(json.dumps(created["acked"]))
    cpu1 = {name: cpu_seconds(pid) for name, pid in procs.items()}
    busy1 = machine_busy_seconds()
    wall = time.monotonic() - t0
    rss1 = {s.name: s.rss() for s in subs_servers}
    say(
        f"[{db}] sent {created['sent']} at {created['achieved_rate']:.0f}/s, "
        f"acked {len(created['acked'])}, errors {created['n_errors']}; NOTIFY "
        f"at a listener of the bench: {notify}"
    )
    for c in clients:
        c.command(f"DRAIN {n_leads}")
    got = [c.result() for c in clients]
    # Servers: from before the creates to the end of the drain (deliveries may
    # outlast the creates); clients report their own, from READY.
    cpu2 = {s.name: cpu_seconds(s.pid) for s in subs_servers}
    per_delivery = {}
    for s, g in zip(subs_servers, got, strict=True):
        n = max(1, g["deliveries"])
        per_delivery[f"server {s.name}"] = (cpu2[s.name] - cpu0[s.name]) / n * 1e6
        per_delivery[f"client of {s.name}"] = g["cpu_seconds"] / n * 1e6
    latencies = [v for g in got for v in g.pop("latencies")]
    expected = len(created["acked"]) * args.subscribers
    report = {
        "subscribers": dict(zip([s.name for s in subs_servers], per, strict=True)),
        "creates_to": create_server.name,
        "connect_seconds": connect_s,
        "server_subscriptions": counted,
        "creates": {k: v for k, v in created.items() if k != "acked"},
        "notify": notify,
        "acked": len(created["acked"]),
        "expected_deliveries": expected,
        "deliveries": sum(g["deliveries"] for g in got),
        "missing": sum(g["missing"] for g in got),
        "repeated": sum(g["repeated"] for g in got),
        "foreign": sum(g["foreign"] for g in got),
        "clients": got,
        "latency_ms": {
            "n": len(latencies),
            "p50": pct(latencies, 0.5) * 1000,
            "p90": pct(latencies, 0.9) * 1000,
            "p99": pct(latencies, 0.99) * 1000,
            "max": max(latencies, default=float("nan")) * 1000,
        },
        "cpu_seconds": {k: round(cpu1[k] - cpu0[k], 2) for k in procs},
        "cpu_seconds_to_drain": {
            **{k: round(cpu2[k] - cpu0[k], 2) for k in cpu2},
            **{
                f"client-{s.name}": g["cpu_seconds"]
                for s, g in zip(subs_servers, got, strict=True)
            },
        },
        "us_per_delivery": {k: round(v, 1) for k, v in per_delivery.items()},
        "window_seconds": round(wall, 2),
        # Every process of the machine during the creates, and what was not the
        # run's own processes (PostgreSQL, and anything else running).
        "machine_cpu_seconds": round(busy1 - busy0, 2),
        "other_cpu_seconds": round(
            busy1 - busy0 - sum(cpu1[k] - cpu0[k] for k in procs), 2
        ),
        "rss_mb_during": {
            s.name: [round(rss0[s.name] / MB, 1), round(rss1[s.name] / MB, 1)]
            for s in subs_servers
        },
    }
    lat = report["latency_ms"]
    say(
        f"[{db}] deliveries {report['deliveries']:,}/{expected:,}, missing "
        f"{report['missing']}, repeated {report['repeated']}; latency p50 "
        f"{lat['p50']:.1f} ms p90 {lat['p90']:.1f} p99 {lat['p99']:.1f} max "
        f"{lat['max']:.0f}; CPU s {report['cpu_seconds']}, machine "
        f"{report['machine_cpu_seconds']}, other {report['other_cpu_seconds']}; "
        "to the end of the drain "
        f"{report['cpu_seconds_to_drain']}; us per delivery "
        f"{report['us_per_delivery']}"
    )
    return report


def wrk_round(server: harness.Server, args: argparse.Namespace, token: str) -> dict:
    out = Path(tempfile.mktemp(prefix="wrk-", suffix=".json"))
    env = dict(
        os.environ,
        WRK_MODE="rest_create",
        WRK_TOKEN=token,
        WRK_FLOWS="100",
        WRK_NONCE=secrets.token_hex(4),
        WRK_OUT=str(out),
    )
    subprocess.run(
        [
            "wrk",
            "-t",
            "2",
            "-c",
            str(args.connections),
            "-d",
            f"{args.tp_seconds}s",
            "-s",
            str(harness.LUA),
            server.url,
        ],  # fmt: skip
        env=env,
        check=True,
        capture_output=True,
        timeout=args.tp_seconds + 60,
    )
    data = json.loads(out.read_text())
    out.unlink()
    rps = data["ok"] / (data["duration_us"] / 1e6)
    return {
        "rps": rps,
        "ok": data["ok"],
        "bad": data["bad"],
        "latency_us": data["latency_us"],
    }


def throughput_run(
    server: harness.Server, args: argparse.Namespace, token: str, workdir: Path
) -> dict[str, Any]:
    wrk_round(server, argparse.Namespace(**{**vars(args), "tp_seconds": 2}), token)
    runs: list[dict[str, Any]] = []
    order = []
    for p in range(args.pairs):
        order += [False, True] if p % 2 == 0 else [True, False]
    for i, with_subs in enumerate(order):
        client = None
        before = server.rss()
        if with_subs:
            client = Subscribers(
                workdir, f"idle-{i}", server.port, args.subscribers, IDLE_FLOW, token
            )
            client.wait_ready()
            time.sleep(1)
        after = server.rss()
        subs = live_subscriptions(server)
        got = wrk_round(server, args, token)
        got.update(
            round=i + 1,
            pair=i // 2 + 1,
            with_subscribers=with_subs,
            server_subscriptions=subs,
            rss_before_mb=before / MB,
            rss_with_mb=after / MB,
        )
        if client is not None:
            client.stop()
            CLIENTS.remove(client)
            time.sleep(1)
        runs.append(got)
        say(
            f"[tp] round {i + 1} {'with' if with_subs else 'without'} "
            f"({subs} subs): {got['rps']:.0f} creates/s, bad {got['bad']}, RSS "
            f"{before / MB:.1f} -> {after / MB:.1f} MB"
        )
    ratios = []
    for p in range(args.pairs):
        pair = [r for r in runs if r["pair"] == p + 1]
        w = next(r["rps"] for r in pair if r["with_subscribers"])
        wo = next(r["rps"] for r in pair if not r["with_subscribers"])
        ratios.append(w / wo)
    # The first round with subscribers is the figure: the process never held
    # them before. Later rounds reuse the memory the allocator kept (recorded).
    rss_per_1000 = [
        (r["rss_with_mb"] - r["rss_before_mb"]) * 1000 / args.subscribers
        for r in runs
        if r["with_subscribers"]
    ]
    return {
        "runs": runs,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "rps_without": statistics.median(
            r["rps"] for r in runs if not r["with_subscribers"]
        ),
        "rps_with": statistics.median(r["rps"] for r in runs if r["with_subscribers"]),
        "rss_mb_per_1000": rss_per_1000,
        "rss_mb_per_1000_first": rss_per_1000[0],
    }


# -- report ----------------------------------------------------------------------


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for db, report in result["databases"].items():
        lat = report["latency"]
        out.append(
            {
                "db": db,
                "target": "create-to-delivery p99",
                "value": f"{lat['latency_ms']['p99']:.1f} ms (p50 "
                f"{lat['latency_ms']['p50']:.1f}, p90 {lat['latency_ms']['p90']:.1f})",
                "need": "< 100 ms",
                "pass": lat["latency_ms"]["p99"] < 100,
            }
        )
        out.append(
            {
                "db": db,
                "target": "every lead to every subscriber exactly once",
                "value": f"{lat['deliveries']:,} of {lat['expected_deliveries']:,}; "
                f"missing {lat['missing']:,}, repeated {lat['repeated']:,}",
                "need": "0 missing, 0 repeated",
                # Leads whose POST got no answer may be stored and delivered
                # too: they count in deliveries but not in what is expected.
                "pass": lat["missing"] == 0 and lat["repeated"] == 0,
            }
        )
        if "throughput" in report:
            tp = report["throughput"]
            out.append(
                {
                    "db": db,
                    "target": "create throughput with / without idle subscribers",
                    "value": f"{tp['median_ratio']:.2f} ({tp['rps_with']:.0f} vs "
                    f"{tp['rps_without']:.0f} creates/s)",
                    "need": ">= 0.90",
                    "pass": tp["median_ratio"] >= 0.9,
                }
            )
            out.append(
                {
                    "db": db,
                    "target": "server RSS per 1,000 idle subscriptions",
                    "value": f"{tp['rss_mb_per_1000_first']:.1f} MB (first "
                    "connect on a fresh process)",
                    "need": "recorded",
                    "pass": None,
                }
            )
    return out


def verdict(ok: bool | None) -> str:
    return "recorded" if ok is None else "PASS" if ok else "**FAIL**"


def markdown(result: dict[str, Any]) -> str:
    args, mach = result["args"], result["machine"]
    table = harness.md_table
    out = [
        f"# leads-gql live updates (issue #10), {result['started']} ({result['mode']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Service commit {mach['commit']}, code from `{result['service_package']}`; "
        f"wall time {result['wall_seconds'] / 60:.1f} min.  ",
        f"Machine: {mach['nproc']} cores ({mach['cpu']}), memory {mach['memory']}, "
        f"Linux {mach['kernel']}, Python {mach['python']}, {mach['postgres']}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()) + ".",
        "",
        f"Latency: {args['subscribers']} subscribers (`{SUBSCRIPTION}`), creates "
        f"POST /api/v1/leads open loop at {args['rate']}/s for {args['seconds']} s; "
        "PostgreSQL: subscribers half on A, half on B, creates to C (three "
        "instances, one worker each, one database); SQLite: one instance. Latency = "
        "arrival at the subscriber - send time of the POST, over every delivery.  ",
        f"Throughput: wrk rest_create, 2 threads, {args['connections']} connections, "
        f"{args['tp_seconds']} s per round against a fresh instance T, "
        f"{args['pairs']} pairs of rounds "
        f"with / without {args['subscribers']} idle subscribers on T (subscribed to a "
        "flow that gets no leads), alternating; RSS of T before and after they "
        "connect.",
        "",
        "## Targets",
        "",
        table(
            ["db", "target", "measured", "need", "result"],
            [
                [c["db"], c["target"], c["value"], c["need"], verdict(c["pass"])]
                for c in result["checks"]
            ],
        ),
    ]
    for db, report in result["databases"].items():
        lat = report["latency"]
        c = lat["creates"]
        out += [
            "",
            f"## {db}",
            "",
            f"Subscribers {lat['subscribers']} (server counts "
            f"{lat['server_subscriptions']}), connected and subscribed in "
            f"{lat['connect_seconds']:.1f} s. Creates to {lat['creates_to']}: "
            f"{c['sent']} sent at {c['achieved_rate']:.1f}/s, {lat['acked']} "
            f"acknowledged, {c['n_errors']} errors; POST p50 {c['post_ms']['p50']:.1f} "
            f"ms, p99 {c['post_ms']['p99']:.1f} ms; sends late p99 "
            f"{c['send_late_ms_p99']:.1f} ms."
            + (
                f" NOTIFY at a LISTEN of the bench's own (POST sent -> notification "
                f"arrived, {n['n']} of them): p50 {n['p50_ms']:.1f} ms, p99 "
                f"{n['p99_ms']:.1f} ms, max {n['max_ms']:.0f} ms: the database's "
                "share of the latency."
                if (n := lat.get("notify"))
                else ""
            ),
            "",
            table(
                [
                    "deliveries",
                    "expected",
                    "missing",
                    "repeated",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                ],  # fmt: skip
                [
                    [
                        f"{lat['deliveries']:,}",
                        f"{lat['expected_deliveries']:,}",
                        lat["missing"],
                        lat["repeated"],
                        f"{lat['latency_ms']['p50']:.1f}",
                        f"{lat['latency_ms']['p90']:.1f}",
                        f"{lat['latency_ms']['p99']:.1f}",
                        f"{lat['latency_ms']['max']:.0f}",
                    ]
                ],
            ),
            "",
            "Per client process: "
            + "; ".join(
                f"{g['sockets']} sockets ({g['sockets_open']} open at the end, close "
                f"codes {g['close_codes']}), {g['deliveries']:,} deliveries"
                for g in lat["clients"]
            )
            + ".",
            "",
            f"CPU seconds during the {lat['window_seconds']} s of creates: "
            + ", ".join(f"{k} {v}" for k, v in lat["cpu_seconds"].items())
            + f"; the whole machine {lat['machine_cpu_seconds']} (of "
            f"{lat['window_seconds'] * (os.cpu_count() or 1):.0f}), of which "
            f"{lat['other_cpu_seconds']} not the run's own processes (PostgreSQL, "
            "and whatever else ran). "
            f"RSS (MB, before / after the creates): {lat['rss_mb_during']}.",
            "",
            "CPU seconds from the first create to the end of the drain: "
            + ", ".join(f"{k} {v}" for k, v in lat["cpu_seconds_to_drain"].items())
            + "; CPU us per delivery: "
            + ", ".join(f"{k} {v}" for k, v in lat["us_per_delivery"].items())
            + " (a server's covers its LISTEN, its subscribers' frames and, on "
            "SQLite, the creates).",
        ]
        if "throughput" in report:
            tp = report["throughput"]
            out += [
                "",
                "### Throughput and memory (a fresh instance T)",
                "",
                table(
                    [
                        "round",
                        "subscribers",
                        "creates/s",
                        "bad",
                        "p50 ms",
                        "p99 ms",
                        "RSS before MB",
                        "RSS with MB",
                    ],  # fmt: skip
                    [
                        [
                            r["round"],
                            r["server_subscriptions"],
                            f"{r['rps']:.0f}",
                            r["bad"],
                            f"{r['latency_us']['p50'] / 1000:.1f}",
                            f"{r['latency_us']['p99'] / 1000:.1f}",
                            f"{r['rss_before_mb']:.1f}",
                            f"{r['rss_with_mb']:.1f}",
                        ]
                        for r in tp["runs"]
                    ],
                ),
                "",
                "Ratios with / without, pair by pair: "
                + " ".join(f"{v:.2f}" for v in tp["ratios"])
                + f"; median **{tp['median_ratio']:.2f}**. RSS per 1,000 idle "
                "subscriptions: "
                + " ".join(f"{v:.1f}" for v in tp["rss_mb_per_1000"])
                + f" MB (round by round; the first, "
                f"{tp['rss_mb_per_1000_first']:.1f} MB, on a process that never held "
                "them, is the figure: later rounds reuse memory the allocator kept).",
            ]
    out += ["", f"Service log error lines: {result['log_errors']}.", ""]
    return "\n".join(out)


# -- main ----------------------------------------------------------------------


def run_postgres(args: argparse.Namespace, token: str, workdir: Path) -> dict[str, Any]:
    url = harness.fresh_pg(args.pg, PG_DB)
    harness.migrate(url, args.secret, workdir)
    env = {**harness.service_env(url, args.secret), **LIMITS}
    servers = [start_server(n, env, workdir) for n in ("A", "B", "C")]
    a, b, c = servers
    report: dict[str, Any] = {}
    report["idle_rss_mb"] = {s.name: round(s.rss() / MB, 1) for s in servers}
    # warm C's create path and both LISTENs
    asyncio.run(create_steady(c.port, token, 50, 0.2, "ffffffff"))
    report["latency"] = latency_run(
        "postgres", [a, b], c, [], args, token, workdir, probe_dsn=url
    )
    harness.stop_all()
    if not args.skip_throughput:
        # A fresh instance (the latency run leaves its buffers behind), over
        # the same database, with B's LISTEN alive as in production.
        t = start_server("T", env, workdir)
        start_server("B2", env, workdir)
        asyncio.run(create_steady(t.port, token, 50, 0.2, "fffffffd"))
        report["throughput"] = throughput_run(t, args, token, workdir)
    return report


def run_sqlite(args: argparse.Namespace, token: str, workdir: Path) -> dict[str, Any]:
    path = workdir / "live.db"
    url = f"sqlite:///{path}"
    harness.migrate(url, args.secret, workdir)
    env = {**harness.service_env(url, args.secret), **LIMITS}
    s = start_server("S", env, workdir)
    report: dict[str, Any] = {"idle_rss_mb": {"S": round(s.rss() / MB, 1)}}
    asyncio.run(create_steady(s.port, token, 50, 0.2, "fffffffe"))
    report["latency"] = latency_run("sqlite", [s], s, [], args, token, workdir)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run, ~1 min")
    p.add_argument("--db", default="postgres,sqlite")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--rate", type=float, default=200.0, help="creates/s")
    p.add_argument("--seconds", type=float, default=20.0, help="of steady creates")
    p.add_argument("--tp-seconds", type=int, default=10)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--out", type=Path, default=harness.RESULTS)
    p.add_argument("--tag", default="", help="appended to the result file name")
    p.add_argument("--keep-workdir", action="store_true")
    # the subscriber client process
    p.add_argument("--role", default="main", choices=["main", "subscribers"])
    p.add_argument("--port", type=int)
    p.add_argument("--count", type=int)
    p.add_argument("--flow")
    p.add_argument("--nonce")
    p.add_argument("--max-leads", type=int)
    p.add_argument("--acked")
    args = p.parse_args(argv)
    if args.quick:
        args.subscribers = min(args.subscribers, 100)
        args.rate, args.seconds = min(args.rate, 50.0), min(args.seconds, 5.0)
        args.tp_seconds, args.pairs = min(args.tp_seconds, 3), min(args.pairs, 1)
    args.seconds = min(args.seconds, 120.0)  # bounded: at most 120 s of creates
    args.subscribers = min(args.subscribers, 4000)
    args.dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    args.secret = secrets.token_urlsafe(48)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "subscribers":
        subscribers_main(args)
        return 0
    if shutil.which("wrk") is None and not args.skip_throughput:
        say("bench: needs wrk (apt-get install -y wrk) or --skip-throughput")
        return 2
    started = datetime.now()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="leads-live-"))
    say(f"bench: work directory {workdir}")

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        env = harness.service_env("sqlite:///unused.db", args.secret)
        token = subprocess.run(
            leads_gql("token", "--scope", "leads:read leads:write", "--ttl", "86400"),
            env=env,
            cwd=workdir,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        package = subprocess.run(
            [sys.executable, "-c", "import leads_gql; print(leads_gql.__file__)"],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
        ).stdout.strip()
        reports: dict[str, Any] = {}
        for db in args.dbs:
            say(f"[{db}] starting")
            reports[db] = (run_postgres if db == "postgres" else run_sqlite)(
                args, token, workdir
            )
            harness.stop_all()
        errors = 0
        for log in workdir.glob("*.log"):
            errors += sum(
                1
                for line in log.read_text(errors="replace").splitlines()
                if '"level": "error"' in line.lower() or "Traceback" in line
            )
        result: dict[str, Any] = {
            "started": started.strftime("%Y-%m-%d %H:%M"),
            "mode": "quick" if args.quick else "full",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": {
                k: v
                for k, v in vars(args).items()
                if k
                in (
                    "subscribers",
                    "rate",
                    "seconds",
                    "tp_seconds",
                    "pairs",
                    "connections",
                    "dbs",
                )  # fmt: skip
            },
            "machine": harness.machine(),
            "service_package": package,
            "databases": reports,
            "log_errors": errors,
            "wall_seconds": time.monotonic() - t0,
        }
        result["checks"] = checks(result)
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"{started:%Y-%m-%d-%H%M}-live{'-quick' if args.quick else ''}"
        stem = args.out / (name + (f"-{args.tag}" if args.tag else ""))
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        stem.with_suffix(".md").write_text(markdown(result))
        say("")
        for c in result["checks"]:
            say(
                f"{verdict(c['pass']).strip('*')}  [{c['db']}] {c['target']}: "
                f"{c['value']} (need {c['need']})"
            )
        say(
            f"\nbench: wrote {stem}.md and .json in "
            f"{result['wall_seconds'] / 60:.1f} min"
        )
        return 1 if any(c["pass"] is False for c in result["checks"]) else 0
    finally:
        for client in CLIENTS:
            with contextlib.suppress(Exception):
                client.stop()
        harness.stop_all()
        harness.drop_pg(args.pg)
        if args.keep_workdir:
            say(f"bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
