"""The leads-gql load benchmark: one command, a dated result file.

    .venv/bin/python bench/run.py                 # everything (about 20 minutes)
    .venv/bin/python bench/run.py --quick         # 10k dataset, short runs (~3 min)
    .venv/bin/python bench/run.py --db sqlite --duration 5 --pairs 5

It loads the datasets in bulk into databases migrated by `leads-gql migrate`, starts
the real service (`leads-gql serve`, one uvicorn worker, auth on) and the ceiling
servers (bench/ceilings.py) on 127.0.0.1, drives each with wrk (bench/leads.lua) at a
fixed concurrency for a fixed time, alternating the targets of a comparison round by
round (A B C ... then ... C B A), and reports requests/s, p50, p99, errors and the
server's peak RSS per run, each ratio round by round and its median, and PASS / FAIL
per target of issue #5. It writes bench/results/YYYY-MM-DD-HHMM.{md,json}, stops every
process it started and drops the databases it made.

Another version of the service: PYTHONPATH=<a `git archive` of its leads_gql>
BENCH_SERVICE_COMMIT=<its commit> .venv/bin/python bench/run.py (the result files
record BENCH_SERVICE_COMMIT instead of this checkout's commit).

Needs: wrk (Debian: apt-get install -y wrk; `--install-wrk` does it), the service
installed in this interpreter's environment, asyncpg for PostgreSQL, and a
PostgreSQL server for `--db postgres` (`--pg`, default
postgresql://postgres@127.0.0.1:5432/test, used to create and drop leads_bench_*).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
LUA = BENCH / "leads.lua"
sys.path.insert(0, str(BENCH))
import datasets  # noqa: E402

BIN = Path(sys.executable).parent
SIZES = {"10k": (10_000, 100), "1m": (1_000_000, 10_000)}
MB = 1024 * 1024


def say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


# -- processes ----------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status(pid: int, key: str) -> int:
    """VmRSS / VmHWM of a process, in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Server:
    """A server process on 127.0.0.1; stopped (TERM, then KILL) on stop()."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], workdir: Path
    ) -> None:
        self.name = name
        self.port = free_port()
        self.cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        self.env = env
        self.log = workdir / f"{name}.log"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.idle_rss = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        RUNNING.append(self)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start in {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def rss(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def hwm(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def stop(self, timeout: float = 15) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


RUNNING: list[Server] = []


def stop_all() -> None:
    for server in reversed(RUNNING):
        with contextlib.suppress(Exception):
            server.stop()
    RUNNING.clear()


class RssSampler:
    """Samples VmRSS of one pid every 20 ms while a run lasts; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))


def http_json(
    url: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Authorization", f"Bearer {token}")
    if data:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


# -- load ---------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    label: str  # e.g. "svc-rest-list@10k"
    server: Server
    mode: str  # rest_list | gql_list | rest_create | gql_create
    flows: int = 100
    verify: Callable[[list[str], str], dict[str, Any]] | None = None
    # PostgreSQL: sessions opened so far in the target's database (pool churn).
    sessions: Callable[[], int] | None = None
    prefix: str = ""  # path prefix (the ceilings' /dbjson route)


@dataclasses.dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    token: str
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def wrk(
        self, target: Target, seconds: float, phase: str, round_no: int | None
    ) -> dict[str, Any]:
        nonce = secrets.token_hex(4)
        out = self.workdir / f"wrk-{nonce}.json"
        acked = self.workdir / f"acked-{nonce}.txt"
        env = {
            **os.environ,
            "WRK_MODE": target.mode,
            "WRK_TOKEN": self.token,
            "WRK_FLOWS": str(target.flows),
            "WRK_PREFIX": target.prefix,
            "WRK_NONCE": nonce,
            "WRK_OUT": str(out),
        }
        if target.mode.endswith("create"):
            env["WRK_ACKED"] = str(acked)
        cmd = [
            "wrk",
            f"-t{self.args.threads}",
            f"-c{self.args.connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            target.server.url,
        ]
        sessions_before = target.sessions() if target.sessions else 0
        with RssSampler(target.server.pid) as sampler:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=seconds + 60
            )
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr}")
        figures = json.loads(out.read_text())
        out.unlink()
        seconds_run = figures["duration_us"] / 1e6
        sock = figures["socket_errors"]
        run = {
            "phase": phase,
            "round": round_no,
            "target": target.label,
            "rps": figures["requests"] / seconds_run,
            "requests": figures["requests"],
            "p50_ms": figures["latency_us"]["p50"] / 1000,
            "p90_ms": figures["latency_us"]["p90"] / 1000,
            "p99_ms": figures["latency_us"]["p99"] / 1000,
            "max_ms": figures["latency_us"]["max"] / 1000,
            "errors": figures["bad"] + sock["connect"] + sock["timeout"],
            "bad_responses": figures["bad"],
            "socket_errors": sock,
            "locked": figures["locked"],
            "bytes_per_response": figures["bytes"] / max(1, figures["requests"]),
            "peak_rss_mb": sampler.peak / MB,
            "nonce": nonce,
        }
        if target.sessions is not None:
            run["pg_sessions_opened"] = target.sessions() - sessions_before
        if target.mode.endswith("create"):
            ids = [i for i in acked.read_text().split("\n") if i]
            acked.unlink()
            run["acked"] = len(ids)
            if target.verify is not None:
                run.update(target.verify(ids, nonce))
        if round_no is not None:
            self.runs.append(run)
            say(
                f"  r{round_no} {target.label:<22} {run['rps']:8.0f} req/s  "
                f"p50 {run['p50_ms']:7.2f} ms  p99 {run['p99_ms']:7.2f} ms  "
                f"err {run['errors']}  rss {run['peak_rss_mb']:.0f} MB"
            )
        return run

    def rounds(self, phase: str, targets: list[Target]) -> None:
        """Warm each target up, then A B C ..., ... C B A, ... for --pairs rounds."""
        for target in targets:
            self.wrk(target, self.args.warmup, phase, None)
        for r in range(self.args.pairs):
            order = targets if r % 2 == 0 else list(reversed(targets))
            for target in order:
                self.wrk(target, self.args.duration, phase, r + 1)
                time.sleep(self.args.gap)


# -- databases ----------------------------------------------------------------------


def leads_gql(*args: str) -> list[str]:
    exe = BIN / "leads-gql"
    return (
        [str(exe), *args]
        if exe.exists()
        else [sys.executable, "-m", "leads_gql", *args]
    )


def service_env(url: str, secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADS_")}
    env.update(LEADS_DATABASE_URL=url, LEADS_JWT_SECRET=secret)
    return env


def migrate(url: str, secret: str, workdir: Path) -> None:
    subprocess.run(
        leads_gql("migrate"),
        env=service_env(url, secret),
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=120,
    )


def pg_dsn(admin: str, database: str) -> str:
    base, _, _ = admin.rpartition("/")
    return f"{base}/{database}"


async def pg_admin(admin: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def verify_sqlite(path: Path) -> Callable[[list[str], str], dict[str, Any]]:
    def verify(ids: list[str], nonce: str) -> dict[str, Any]:
        conn = sqlite3.connect(path, timeout=60)
        try:
            conn.execute("CREATE TEMP TABLE acked (id TEXT PRIMARY KEY)")
            conn.executemany(
                "INSERT OR IGNORE INTO acked VALUES (?)", ((i,) for i in ids)
            )
            stored = conn.execute(
                "SELECT count(*) FROM lead JOIN acked USING (id)"
            ).fetchone()[0]
            in_run = conn.execute(
                "SELECT count(*) FROM lead WHERE id LIKE ?", (nonce + "-%",)
            ).fetchone()[0]
        finally:
            conn.close()
        return {"acked_stored": stored, "stored_in_run": in_run}

    return verify


def verify_postgres(dsn: str) -> Callable[[list[str], str], dict[str, Any]]:
    async def check(ids: list[str], nonce: str) -> dict[str, Any]:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetchval(
                "SELECT count(*) FROM lead WHERE id = ANY($1::text[])", ids
            )
            in_run = await conn.fetchval(
                "SELECT count(*) FROM lead WHERE id LIKE $1", nonce + "-%"
            )
        finally:
            await conn.close()
        return {"acked_stored": stored, "stored_in_run": in_run}

    def verify(ids: list[str], nonce: str) -> dict[str, Any]:
        return asyncio.run(check(ids, nonce))

    return verify


@dataclasses.dataclass
class Dataset:
    db: str  # sqlite | postgres
    size: str  # 10k | 1m
    service_url: str  # LEADS_DATABASE_URL
    ceiling_dsn: str  # ceilings.py --dsn
    load_seconds: float = 0.0
    verify: Callable[[list[str], str], dict[str, Any]] | None = None
    sessions: Callable[[], int] | None = None


def prepare(db: str, size: str, args: argparse.Namespace, workdir: Path) -> Dataset:
    n_leads, n_flows = SIZES[size]
    secret = args.secret
    if db == "sqlite":
        path = workdir / f"leads_bench_{size}.db"
        url = f"sqlite:///{path}"
        migrate(url, secret, workdir)
        seconds = datasets.load_sqlite(str(path), n_leads, n_flows)
        return Dataset(db, size, url, str(path), seconds, verify_sqlite(path))
    name = f"leads_bench_{size}"
    dsn = fresh_pg(args.pg, name)
    migrate(dsn, secret, workdir)
    seconds = asyncio.run(datasets.load_postgres(dsn, n_leads, n_flows))
    return Dataset(
        db, size, dsn, dsn, seconds, verify_postgres(dsn), pg_sessions(args.pg, name)
    )


CREATED_PG: list[str] = []


def fresh_pg(admin: str, name: str) -> str:
    """Database `name`, empty (dropped first if it was left over), dropped again
    by `drop_pg`; its DSN."""
    asyncio.run(
        pg_admin(
            admin,
            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
            f"CREATE DATABASE {name}",
        )
    )
    CREATED_PG.append(name)
    return pg_dsn(admin, name)


def pg_sessions(admin: str, database: str) -> Callable[[], int]:
    """Sessions opened in `database` so far (pg_stat_database.sessions, PG 14+)."""

    async def fetch() -> int:
        import asyncpg

        conn = await asyncpg.connect(admin)
        try:
            value = await conn.fetchval(
                "SELECT sessions FROM pg_stat_database WHERE datname = $1", database
            )
        finally:
            await conn.close()
        return int(value or 0)

    return lambda: asyncio.run(fetch())


def drop_pg(admin: str) -> None:
    for name in CREATED_PG:
        with contextlib.suppress(Exception):
            asyncio.run(pg_admin(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    CREATED_PG.clear()


# -- one database ---------------------------------------------------------------------


def same_output(a: Any, b: Any) -> bool:
    return isinstance(a, list) and len(a) == 100 and a == b


def run_database(
    db: str, bench: Bench, static: Server, args: argparse.Namespace
) -> dict[str, Any]:
    sizes = ["10k"] if args.quick else ["10k", "1m"]
    report: dict[str, Any] = {"db": db, "datasets": {}, "services": {}, "checks": {}}
    data: dict[str, Dataset] = {}
    for size in sizes:
        say(f"[{db}] loading the {size} dataset ({SIZES[size][0]:,} leads)")
        data[size] = prepare(db, size, args, bench.workdir)
        report["datasets"][size] = {
            "leads": SIZES[size][0],
            "flows": SIZES[size][1],
            "load_seconds": round(data[size].load_seconds, 1),
        }
        say(f"[{db}]   loaded in {data[size].load_seconds:.1f} s")

    services: dict[str, Server] = {}
    ceilings: dict[str, Server] = {}
    for size in sizes:
        services[size] = Server(
            f"svc-{db}-{size}",
            leads_gql("serve", "--host", "127.0.0.1", "--port", "{port}")
            + args.serve_arg,
            service_env(data[size].service_url, args.secret)
            | dict(kv.split("=", 1) for kv in args.service_env),
            bench.workdir,
        )
        ceilings[size] = Server(
            f"ceil-{db}-{size}",
            [sys.executable, str(BENCH / "ceilings.py"), db, "--port", "{port}"]
            + ["--dsn", data[size].ceiling_dsn],
            dict(os.environ),
            bench.workdir,
        )
    for server in [*services.values(), *ceilings.values()]:
        server.start()
    for server in [*services.values(), *ceilings.values()]:
        server.wait_ready()
    time.sleep(1)
    for size, server in services.items():
        server.idle_rss = server.rss()
        report["services"][size] = {
            "pid": server.pid,
            "idle_rss_mb": server.idle_rss / MB,
        }
        say(f"[{db}] service ({size}) idle RSS {server.idle_rss / MB:.1f} MB")

    # The same answer from every target: the comparison is of the same work.
    flow0 = datasets.flow_id(0)
    for size in sizes:
        _, rest = http_json(f"{services[size].url}/api/v1/leads/{flow0}", bench.token)
        _, ceil = http_json(f"{ceilings[size].url}/api/v1/leads/{flow0}", bench.token)
        _, dbjson = http_json(
            f"{ceilings[size].url}/dbjson/api/v1/leads/{flow0}", bench.token
        )
        query = (
            "query($f: ID!) { leadsByChatflow(chatflowid: $f) "
            "{ id name email phone chatflowid chatId createdDate } }"
        )
        _, gql = http_json(
            f"{services[size].url}/graphql",
            bench.token,
            {"query": query, "variables": {"f": flow0}},
        )
        gql_rows = (gql.get("data") or {}).get("leadsByChatflow")
        report["checks"][size] = {
            "rest_equals_ceiling": same_output(rest, ceil),
            "dbjson_ceiling_equals_rest": same_output(dbjson, rest),
            "graphql_equals_rest": same_output(gql_rows, rest),
        }
        say(f"[{db}] same output ({size}): {report['checks'][size]}")
        if not all(report["checks"][size].values()):
            raise RuntimeError(f"targets disagree on flow {flow0}: {rest!r:.300}")

    nflows = {size: SIZES[size][1] for size in sizes}
    s10k = data["10k"].sessions
    lists = [
        Target(
            "svc-rest-list@10k",
            services["10k"],
            "rest_list",
            nflows["10k"],
            sessions=s10k,
        ),
        Target(
            "svc-gql-list@10k",
            services["10k"],
            "gql_list",
            nflows["10k"],
            sessions=s10k,
        ),
        Target(
            "ceil-list@10k", ceilings["10k"], "rest_list", nflows["10k"], sessions=s10k
        ),
        Target("static", static, "rest_list", nflows["10k"]),
        Target(
            "ceil-dbjson@10k",
            ceilings["10k"],
            "rest_list",
            nflows["10k"],
            sessions=s10k,
            prefix="/dbjson",
        ),
    ]
    if "1m" in sizes:
        s1m = data["1m"].sessions
        lists += [
            Target("svc-rest-list@1m", services["1m"], "rest_list", nflows["1m"],
                   sessions=s1m),
            Target("ceil-list@1m", ceilings["1m"], "rest_list", nflows["1m"],
                   sessions=s1m),
        ]  # fmt: skip
    phase = f"{db}/list"
    say(f"[{db}] list rounds: {', '.join(t.label for t in lists)}")
    bench.rounds(phase, lists)
    for size, server in services.items():
        peaks = [
            r["peak_rss_mb"]
            for r in bench.runs
            if r["phase"] == phase
            and r["target"].endswith("@" + size)
            and r["target"].startswith("svc-")
        ]
        report["services"][size].update(
            peak_rss_list_mb=max(peaks), hwm_after_list_mb=server.hwm() / MB
        )

    verify = data["10k"].verify
    creates = [
        Target("svc-rest-create", services["10k"], "rest_create", verify=verify,
               sessions=s10k),
        Target("svc-gql-create", services["10k"], "gql_create", verify=verify,
               sessions=s10k),
        Target("ceil-insert", ceilings["10k"], "rest_create", verify=verify,
               sessions=s10k),
    ]  # fmt: skip
    say(f"[{db}] create rounds: {', '.join(t.label for t in creates)}")
    bench.rounds(f"{db}/create", creates)

    for size, server in services.items():
        log = server.log.read_text(errors="replace")
        report["services"][size].update(
            hwm_end_mb=server.hwm() / MB,
            log_locked=log.lower().count("database is locked"),
            log_errors=log.count('"level": "error"'),
        )
    for server in [*services.values(), *ceilings.values()]:
        server.stop()
        RUNNING.remove(server)
    return report


# -- analysis -------------------------------------------------------------------------


def by_round(runs: list[dict[str, Any]], phase: str, target: str) -> dict[int, Any]:
    return {
        r["round"]: r for r in runs if r["phase"] == phase and r["target"] == target
    }


def ratio_rounds(
    runs: list[dict[str, Any]], phase: str, a: str, b: str, key: str = "rps"
) -> list[float]:
    ra, rb = by_round(runs, phase, a), by_round(runs, phase, b)
    return [ra[n][key] / rb[n][key] for n in sorted(ra) if n in rb and rb[n][key]]


def summarize(runs: list[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
    out = []
    labels = list(dict.fromkeys(r["target"] for r in runs if r["phase"] == phase))
    for label in labels:
        rs = [r for r in runs if r["phase"] == phase and r["target"] == label]
        row = {
            "target": label,
            "rps": statistics.median(r["rps"] for r in rs),
            "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "bytes": statistics.median(r["bytes_per_response"] for r in rs),
        }
        if "pg_sessions_opened" in rs[0]:
            row["pg_sessions"] = sum(r["pg_sessions_opened"] for r in rs)
        if "acked" in rs[0]:
            row["acked"] = sum(r["acked"] for r in rs)
            row["acked_stored"] = sum(r.get("acked_stored", 0) for r in rs)
            row["locked"] = sum(r["locked"] for r in rs)
        out.append(row)
    return out


# (name, phase suffix, A, B, key, bound, higher-is-better, databases)
COMPARISONS = [
    ("REST list / bare ceiling (10k)", "list", "svc-rest-list@10k", "ceil-list@10k",
     "rps", 0.7, True, ("sqlite", "postgres")),
    ("GraphQL list / REST list (10k)", "list", "svc-gql-list@10k", "svc-rest-list@10k",
     "rps", 0.5, True, ("sqlite", "postgres")),
    ("REST create / bare insert", "create", "svc-rest-create", "ceil-insert",
     "rps", 0.6, True, ("postgres",)),
    ("GraphQL create / REST create", "create", "svc-gql-create", "svc-rest-create",
     "rps", 0.5, True, ("sqlite", "postgres")),
    ("list p50, 1M / 10k (service)", "list", "svc-rest-list@1m", "svc-rest-list@10k",
     "p50_ms", 1.2, False, ("sqlite", "postgres")),
    # Information, no target:
    ("REST list / bare ceiling (1M)", "list", "svc-rest-list@1m", "ceil-list@1m",
     "rps", None, True, ()),
    ("REST list / bare DB-JSON ceiling (10k)", "list", "svc-rest-list@10k",
     "ceil-dbjson@10k", "rps", None, True, ()),
    ("REST list / precomputed JSON", "list", "svc-rest-list@10k", "static",
     "rps", None, True, ()),
    ("bare ceiling / precomputed JSON", "list", "ceil-list@10k", "static",
     "rps", None, True, ()),
    ("list p50, 1M / 10k (bare ceiling)", "list", "ceil-list@1m", "ceil-list@10k",
     "p50_ms", None, False, ()),
]  # fmt: skip


def analyse(bench: Bench, reports: dict[str, Any]) -> dict[str, Any]:
    ratios, checks = [], []
    for db, report in reports.items():
        for name, suffix, a, b, key, bound, higher, dbs in COMPARISONS:
            values = ratio_rounds(bench.runs, f"{db}/{suffix}", a, b, key)
            if not values:
                continue
            median = statistics.median(values)
            entry = {
                "db": db,
                "name": name,
                "a": a,
                "b": b,
                "key": key,
                "rounds": values,
                "median": median,
                "bound": bound,
            }
            ratios.append(entry)
            if bound is not None and db in dbs:
                ok = median >= bound if higher else median <= bound
                need = f">= {bound}" if higher else f"<= {bound}"
                checks.append(
                    {
                        "db": db,
                        "target": name,
                        "value": f"{median:.2f}x",
                        "need": need,
                        "pass": ok,
                    }
                )
        if db == "sqlite":
            rows = summarize(bench.runs, "sqlite/create")
            svc = [r for r in rows if r["target"].startswith("svc-")]
            acked = sum(r["acked"] for r in svc)
            stored = sum(r["acked_stored"] for r in svc)
            locked = sum(r["locked"] for r in svc) + sum(
                s["log_locked"] for s in report["services"].values()
            )
            errors = sum(r["errors"] for r in svc)
            checks.append(
                {
                    "db": db,
                    "target": f"creates at {bench.args.connections} clients: no "
                    "'database is locked', every acknowledged lead stored",
                    "value": f"{locked} locked, {errors} errors, "
                    f"{stored:,}/{acked:,} acknowledged stored",
                    "need": "0 locked, all stored",
                    "pass": locked == 0 and stored == acked and acked > 0,
                }
            )
        if "1m" not in report["datasets"]:
            checks.append(
                {
                    "db": db,
                    "target": "list p50, 1M / 10k (service)",
                    "value": "not measured (--quick: 10k dataset only)",
                    "need": "<= 1.2",
                    "pass": None,
                }
            )
        for size, svc in report["services"].items():
            growth = svc["peak_rss_list_mb"] - svc["idle_rss_mb"]
            checks.append(
                {
                    "db": db,
                    "target": f"peak RSS under list load - idle RSS ({size})",
                    "value": f"{growth:+.1f} MB (idle {svc['idle_rss_mb']:.1f}, "
                    f"peak {svc['peak_rss_list_mb']:.1f})",
                    "need": "<= 100 MB",
                    "pass": growth <= 100,
                }
            )
    return {"ratios": ratios, "checks": checks}


# -- report ---------------------------------------------------------------------------


def sh(cmd: str) -> str:
    try:
        return subprocess.run(
            cmd, shell=True, capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        return f"({exc})"


def service_commit() -> str:
    """The commit of the service's code, `(dirty)` when leads_gql/ has changes."""
    if os.environ.get("BENCH_SERVICE_COMMIT"):  # code from elsewhere (PYTHONPATH)
        return os.environ["BENCH_SERVICE_COMMIT"]
    dirty = sh(f"git -C {ROOT} status --porcelain -- leads_gql")
    return sh(f"git -C {ROOT} rev-parse --short HEAD") + (" (dirty)" if dirty else "")


def cpu_reference() -> float:
    """Seconds a fixed loop of Python takes here (the best of three): one core's
    speed, so that figures recorded on different machines can be told apart
    from what the code changed (the same code imported a million leads into
    SQLite in 16 s on one machine and in 31 s on the next)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        sum(range(10_000_000))
        best = min(best, time.perf_counter() - start)
    return round(best, 3)


def machine() -> dict[str, Any]:
    versions = {}
    for dist in (
        "leads-gql", "uvicorn", "uvloop", "httptools", "starlette",
        "strawberry-graphql", "graphql-core", "sqlalchemy", "sqlmodel", "asyncpg",
        "aiosqlite", "pyjwt", "orjson", "email-validator",
    ):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "nproc": sh("nproc"),
        "cpu": sh("lscpu | sed -n 's/^Model name: *//p' | head -1"),
        "cpu_reference_s": cpu_reference(),
        "memory": sh('free -h | awk \'/^Mem:/ {print $2 " total, " $7 " available"}\''),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": sh("psql --version"),
        "wrk": sh("wrk -v 2>&1 | head -1"),
        "commit": service_commit(),
        "versions": versions,
    }


def verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else "PASS" if ok else "**FAIL**"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    args, mach = result["args"], result["machine"]
    out = [
        f"# leads-gql benchmark, {result['started']} ({result['mode']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Service commit {result['commit_at_start']} at start, {mach['commit']} at "
        f"the end; {args['duration']} s per run after a "
        f"{args['warmup']} s warm-up, {args['pairs']} alternating rounds, "
        f"{args['connections']} connections, wrk -t{args['threads']}; "
        f"wall time {result['wall_seconds'] / 60:.1f} min.  ",
        f"Machine: {mach['nproc']} cores ({mach['cpu']}), memory {mach['memory']}, "
        f"Linux {mach['kernel']}, Python {mach['python']}, SQLite {mach['sqlite']}, "
        f"{mach['postgres']}, {mach['wrk']}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()) + ".",
        "",
        "## Targets (issue #5)",
        "",
        md_table(
            ["db", "target", "measured", "need", "result"],
            [
                [c["db"], c["target"], c["value"], c["need"], verdict(c["pass"])]
                for c in result["analysis"]["checks"]
            ],
        ),  # fmt: skip
        "",
        "## Ratios, round by round",
        "",
        "Each round runs every target of the comparison once, in alternating order; "
        "a ratio compares two runs of the same round.",
        "",
        md_table(
            ["db", "ratio", "rounds", "median"],
            [
                [
                    r["db"],
                    f"{r['name']} ({r['key']})",
                    " ".join(f"{v:.2f}" for v in r["rounds"]),
                    f"**{r['median']:.2f}**",
                ]
                for r in result["analysis"]["ratios"]
            ],
        ),  # fmt: skip
    ]
    for db, report in result["databases"].items():
        out += ["", f"## {db}", ""]
        out.append(
            "Datasets: "
            + "; ".join(
                f"{size}: {d['leads']:,} leads / {d['flows']:,} flows, "
                f"loaded in {d['load_seconds']} s"
                for size, d in report["datasets"].items()
            )
            + "."
        )
        for phase in ("list", "create"):
            rows = summarize(result["runs"], f"{db}/{phase}")
            out += ["", f"### {phase} (medians over the rounds)", ""]
            headers = ["target", "req/s", "p50 ms", "p99 ms", "errors", "peak RSS MB",
                       "bytes/resp"]  # fmt: skip
            if db == "postgres":
                headers += ["PG sessions opened"]
            if phase == "create":
                headers += ["acked", "acked & stored", "locked"]
            out.append(
                md_table(
                    headers,
                    [
                        [
                            r["target"],
                            f"{r['rps']:.0f}",
                            f"{r['p50_ms']:.2f}",
                            f"{r['p99_ms']:.2f}",
                            r["errors"],
                            f"{r['peak_rss_mb']:.1f}",
                            f"{r['bytes']:.0f}",
                        ]
                        + ([r.get("pg_sessions", "")] if db == "postgres" else [])
                        + (
                            [r["acked"], r["acked_stored"], r["locked"]]
                            if phase == "create"
                            else []
                        )
                        for r in rows
                    ],
                )  # fmt: skip
            )
        out += ["", "### memory", ""]
        out.append(
            md_table(
                [
                    "service",
                    "idle RSS MB",
                    "peak RSS under list MB",
                    "VmHWM after list",
                    "VmHWM at end",
                    "'locked' in log",
                    "errors in log",
                ],
                [
                    [
                        size,
                        f"{s['idle_rss_mb']:.1f}",
                        f"{s['peak_rss_list_mb']:.1f}",
                        f"{s['hwm_after_list_mb']:.1f}",
                        f"{s['hwm_end_mb']:.1f}",
                        s["log_locked"],
                        s["log_errors"],
                    ]
                    for size, s in report["services"].items()
                ],
            )  # fmt: skip
        )
    out += ["", "## Every run", ""]
    out.append(
        md_table(
            [
                "phase",
                "round",
                "target",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "peak RSS MB",
            ],
            [
                [
                    r["phase"],
                    r["round"],
                    r["target"],
                    f"{r['rps']:.0f}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    r["errors"],
                    f"{r['peak_rss_mb']:.1f}",
                ]
                for r in result["runs"]
            ],
        )  # fmt: skip
    )
    return "\n".join(out) + "\n"


# -- main -----------------------------------------------------------------------------


def ensure_wrk(install: bool) -> None:
    if shutil.which("wrk"):
        return
    if install and shutil.which("apt-get"):
        say("installing wrk (apt-get install -y wrk)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        if shutil.which("wrk"):
            return
    sys.exit(
        "bench: wrk is required (Debian/Ubuntu: apt-get install -y wrk); "
        "or run with --install-wrk as root"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="leads-gql load benchmark (see docs/performance.md)"
    )
    parser.add_argument("--quick", action="store_true", help="10k only, short runs")
    parser.add_argument("--duration", type=float, help="seconds per run (10; quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up (3; quick 1)")
    parser.add_argument("--pairs", type=int, help="alternating rounds (5; quick 3)")
    parser.add_argument("--gap", type=float, default=0.3, help="pause between runs")
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--pg", default="postgresql://postgres@127.0.0.1:5432/test",
        help="an existing PostgreSQL database, used to create leads_bench_*",
    )  # fmt: skip
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="LEADS_X=VALUE",
        help="extra environment for the service (e.g. LEADS_DB_POOL_SIZE=20)",
    )  # fmt: skip
    parser.add_argument(
        "--serve-arg", action="append", default=[], metavar="ARG",
        help="extra `leads-gql serve` argument (--serve-arg=--log-level=warning)",
    )  # fmt: skip
    parser.add_argument("--install-wrk", action="store_true")
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.warmup = args.warmup or (1.0 if quick else 3.0)
    args.pairs = args.pairs or (3 if quick else 5)
    args.dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    for db in args.dbs:
        if db not in ("sqlite", "postgres"):
            parser.error(f"--db: unknown database {db!r}")
    args.secret = secrets.token_urlsafe(48)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk(args.install_wrk)
    started = datetime.now()
    commit_at_start = service_commit()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="leads-bench-"))
    say(f"bench: work directory {workdir}")

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    reports: dict[str, Any] = {}
    try:
        token = subprocess.run(
            leads_gql("token", "--scope", "leads:read leads:write", "--ttl", "86400"),
            env=service_env("sqlite:///unused.db", args.secret),
            cwd=workdir,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        bench = Bench(args, workdir, token)
        static = Server(
            "ceil-static",
            [sys.executable, str(BENCH / "ceilings.py"), "static", "--port", "{port}"],
            dict(os.environ),
            workdir,
        )
        static.start()
        static.wait_ready()
        for db in args.dbs:
            reports[db] = run_database(db, bench, static, args)
        result = {
            "started": started.strftime("%Y-%m-%d %H:%M"),
            "mode": "quick" if args.quick else "full",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": {k: v for k, v in vars(args).items() if k not in ("secret", "out")},
            "machine": machine(),
            "commit_at_start": commit_at_start,
            "databases": reports,
            "runs": bench.runs,
            "wall_seconds": time.monotonic() - t0,
        }
        result["analysis"] = analyse(bench, reports)
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / started.strftime("%Y-%m-%d-%H%M")
        if args.quick:
            stem = stem.with_name(stem.name + "-quick")
        n = 1
        while stem.with_suffix(".md").exists():
            n += 1
            stem = stem.with_name(
                f"{started:%Y-%m-%d-%H%M}{'-quick' if args.quick else ''}-{n}"
            )
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        stem.with_suffix(".md").write_text(markdown(result))
        say("")
        for check in result["analysis"]["checks"]:
            say(
                f"{verdict(check['pass']).strip('*')}  [{check['db']}] "
                f"{check['target']}: {check['value']} (need {check['need']})"
            )
        minutes = result["wall_seconds"] / 60
        say(f"\nbench: wrote {stem}.md and .json in {minutes:.1f} min")
        failed = [c for c in result["analysis"]["checks"] if c["pass"] is False]
        return 1 if failed else 0
    finally:
        stop_all()
        drop_pg(args.pg)
        if args.keep_workdir:
            say(f"bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
