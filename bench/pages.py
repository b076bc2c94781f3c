"""Pages, search and export of a large flow (issue #9): one command, a dated result.

    .venv/bin/python bench/pages.py               # 1M leads + one flow of 100k
    .venv/bin/python bench/pages.py --quick       # 10k leads + one flow of 10k
    .venv/bin/python bench/pages.py --db postgres --rounds 30
    .venv/bin/python bench/pages.py --layout oldest   # the flow older than the rest

The dataset is bench/run.py's "1m" (1,000,000 leads over 10,000 flows of 100) with
one more flow of 100,000 leads, each created between two leads of the rest, so the
large flow is spread over the whole table (datasets.rows_with_big_flow); 1 % of its
leads are named "Ada Lovelace", the search term (`--layout oldest`: the same flow,
all older than the rest, a worst case for an index on `created_date` alone). For
each database it starts the real service (`python -m leads_gql serve`, one uvicorn
worker, auth on with a real token) on 127.0.0.1 and measures, client-side and one
request at a time:

1. the `leads` connection's first page (`first: 50`) and last page (`last: 50`) of
   the large flow, and `leadsByChatflow` on a 100-lead flow, with the same lead
   fields: p50 / p90 / p99 over every request, and the per-round ratios of p50s
   (targets: first / last within 1.5x, each page within 2x of the list);
2. a search page (`first: 50, search: "lovelace"`) in the same rounds, and the
   plans of the statements the service runs (PostgreSQL: EXPLAIN (ANALYZE,
   BUFFERS) of asyncpg's own prepared statement after the service's warm-up, so a
   generic plan shows up as it does in the service; SQLite: EXPLAIN QUERY PLAN);
3. `GET /leads/{id}/export` of the large flow in csv, ndjson and json, and on
   PostgreSQL the physical ceiling `psql -c "COPY (<the service's own export
   SELECT>) TO STDOUT WITH CSV"`, alternating round by round, both read by this
   process the same way (and, for information, the same COPY through asyncpg
   into a sink that only counts); leads/s, and the server's RSS sampled every
   10 ms against its idle RSS (targets: CSV >= 0.5x of the psql ceiling, peak -
   idle <= 30 MB).

Targets alternate within each round (A B C D, then D C B A, ...); ratios compare
figures of the same round and the median over the rounds is the figure. Writes
bench/results/YYYY-MM-DD-HHMM-pages[-quick].{md,json}, exits 1 when a target
fails, and stops every process and drops every database it made (also on Ctrl-C,
SIGTERM or an error).

The service's code is whatever `python -m leads_gql` imports: to measure a commit
without touching the checkout, `git worktree add /tmp/tree <commit>` and run with
PYTHONPATH=/tmp/tree BENCH_SERVICE_COMMIT=<commit> (the result records both).
Needs asyncpg and psql for PostgreSQL (`--pg`, default
postgresql://postgres@127.0.0.1:5432/test, used to create leads_bench_pages).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import datasets  # noqa: E402
import run as harness  # noqa: E402

say = harness.say
MB = harness.MB
PG_DB = "leads_bench_pages"
FIELDS = "id name email phone chatflowid chatId createdDate"
PAGE_INFO = "pageInfo { hasNextPage hasPreviousPage startCursor endCursor }"
EDGES = f"edges {{ cursor node {{ {FIELDS} }} }}"
DOCUMENTS = {
    "first": (
        f"query First($f: ID!) {{ leads(chatflowid: $f, first: 50) "
        f"{{ {EDGES} {PAGE_INFO} }} }}"
    ),
    "last": (
        f"query Last($f: ID!) {{ leads(chatflowid: $f, last: 50) "
        f"{{ {EDGES} {PAGE_INFO} }} }}"
    ),
    "list100": (
        f"query List($f: ID!) {{ leadsByChatflow(chatflowid: $f) {{ {FIELDS} }} }}"
    ),
    "search": (
        f"query Search($f: ID!, $s: String) {{ leads(chatflowid: $f, first: 50, "
        f"search: $s) {{ {EDGES} {PAGE_INFO} }} }}"
    ),
    # Information (a few requests, not in the rounds): what a dashboard's count
    # of the search costs.
    "search_count": (
        f"query SearchCount($f: ID!, $s: String) {{ leads(chatflowid: $f, "
        f"first: 50, search: $s) {{ totalCount {EDGES} {PAGE_INFO} }} }}"
    ),
}
ROUND_TARGETS = ("first", "last", "list100", "search")


# -- the service's own SQL ------------------------------------------------------------

SQL_PROBE = """
import json, leads_gql
from leads_gql.store import exports, statements
out = {"package": leads_gql.__file__}
for d in ("postgresql", "sqlite"):
    out[d] = {
        "first": statements.page_rows(d, ("flow",), False),
        "last": statements.page_rows(d, ("flow",), True),
        "search": statements.page_rows(d, ("flow", "search"), False),
        "search_count": statements.page_count(d, ("flow", "search")),
    }
out["postgresql"]["export_csv"] = exports.postgres_sql("csv")
out["sqlite"]["export_csv_batch"] = exports.sqlite_batch_sql("csv", False)
print(json.dumps(out))
"""


def service_sql(env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """The statements of the code under test, from that code (as the service
    imports it: same interpreter, same PYTHONPATH)."""
    out = subprocess.run(
        [sys.executable, "-c", SQL_PROBE],
        env=env,
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return json.loads(out)


def leads_gql(*args: str) -> list[str]:
    return [sys.executable, "-m", "leads_gql", *args]


# -- measuring ------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": pct(values, 0.50) * 1000,
        "p90_ms": pct(values, 0.90) * 1000,
        "p99_ms": pct(values, 0.99) * 1000,
        "max_ms": max(values) * 1000,
    }


class GraphQL:
    """One keep-alive connection; a request at a time, timed from send to last
    byte; any status but 200 or any GraphQL error stops the run."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        }
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def body(self, name: str, variables: dict[str, Any]) -> bytes:
        return json.dumps({"query": DOCUMENTS[name], "variables": variables}).encode()

    def post(self, body: bytes) -> tuple[float, bytes]:
        for attempt in (1, 2):
            try:
                start = time.perf_counter()
                self.conn.request("POST", "/graphql", body, self.headers)
                response = self.conn.getresponse()
                data = response.read()
                elapsed = time.perf_counter() - start
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                # The server closed an idle keep-alive connection: reconnect
                # once; the failed attempt is not counted.
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, 60)
                if attempt == 2:
                    raise
        if response.status != 200 or b'"errors":' in data:
            raise RuntimeError(f"GraphQL answer {response.status}: {data[:300]!r}")
        return elapsed, data

    def close(self) -> None:
        self.conn.close()


class RssSampler(harness.RssSampler):
    """bench/run.py's sampler, every 10 ms (an export lasts under a second)."""

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, harness.proc_status(self.pid, "VmRSS"))
            self._stop.wait(0.01)


def consume(stream: Any, fmt: str) -> tuple[int, int]:
    """Read a stream to its end in 1 MiB reads: (bytes, records). Records are
    lines (csv: with the header) or, for json, objects (`{"id":` openings)."""
    size = records = 0
    tail = b""
    while chunk := stream.read(1 << 20):
        size += len(chunk)
        if fmt == "json":
            records += (tail + chunk).count(b'{"id":')
            tail = chunk[-5:]  # an opening split across two reads
        else:
            records += chunk.count(b"\n")
    return size, records


# -- one database ---------------------------------------------------------------------


def prepare(db: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Create, migrate and load the database; its URL and the load time."""
    if db == "sqlite":
        path = workdir / "leads_bench_pages.db"
        url = f"sqlite:///{path}"
    else:
        asyncio.run(
            harness.pg_admin(
                args.pg,
                f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)",
                f"CREATE DATABASE {PG_DB}",
            )
        )
        CREATED_PG.append(PG_DB)
        url = harness.pg_dsn(args.pg, PG_DB)
    subprocess.run(
        leads_gql("migrate"),
        env=harness.service_env(url, args.secret),
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=300,
    )
    if db == "sqlite":
        seconds = datasets.load_sqlite(
            str(path), args.leads, args.flows, args.big, args.layout
        )
        return {"url": url, "path": str(path), "load_seconds": seconds}
    seconds = asyncio.run(
        datasets.load_postgres(url, args.leads, args.flows, args.big, args.layout)
    )
    return {"url": url, "dsn": url, "load_seconds": seconds}


CREATED_PG: list[str] = []


def drop_pg(admin: str) -> None:
    for name in CREATED_PG:
        with contextlib.suppress(Exception):
            asyncio.run(
                harness.pg_admin(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            )
    CREATED_PG.clear()


def facts(
    db: str, data: dict[str, Any], sql: dict[str, Any], like: str
) -> dict[str, Any]:
    """The large flow's size, the search term's matches (in the flow and in the
    whole table), and the sizes of the table and its indexes."""
    flow = datasets.big_flow_id()
    if db == "sqlite":
        conn = sqlite3.connect(data["path"])
        try:
            count = conn.execute(sql["sqlite"]["search_count"], (flow, like)).fetchone()
            return {
                "big_flow_leads": conn.execute(
                    "SELECT count(*) FROM lead WHERE chatflowid = ?", (flow,)
                ).fetchone()[0],
                "search_matches_in_flow": count[0],
                "all_leads": conn.execute("SELECT count(*) FROM lead").fetchone()[0],
                "file_mb": round(os.path.getsize(data["path"]) / MB, 1),
            }
        finally:
            conn.close()

    async def fetch() -> dict[str, Any]:
        import asyncpg

        conn = await asyncpg.connect(data["dsn"])
        try:
            sizes = await conn.fetch(
                "SELECT c.relname, pg_relation_size(c.oid) AS bytes FROM pg_class c "
                "WHERE c.relname = 'lead' OR c.oid IN (SELECT indexrelid FROM "
                "pg_index WHERE indrelid = 'lead'::regclass) ORDER BY 1"
            )
            return {
                "big_flow_leads": await conn.fetchval(
                    "SELECT count(*) FROM lead WHERE chatflowid = $1", flow
                ),
                "search_matches_in_flow": await conn.fetchval(
                    sql["postgresql"]["search_count"], flow, like
                ),
                "search_matches_in_table": await conn.fetchval(
                    "SELECT count(*) FROM lead WHERE name ILIKE $1 OR email ILIKE $1 "
                    "OR phone ILIKE $1",
                    like,
                ),
                "all_leads": await conn.fetchval("SELECT count(*) FROM lead"),
                "relation_mb": {r["relname"]: round(r["bytes"] / MB, 1) for r in sizes},
                "shared_buffers": await conn.fetchval("SHOW shared_buffers"),
                "plan_cache_mode": await conn.fetchval("SHOW plan_cache_mode"),
            }
        finally:
            await conn.close()

    return asyncio.run(fetch())


def sanity(
    client: GraphQL, variables: dict[str, dict[str, Any]], big: int
) -> dict[str, Any]:
    """The pages hold what they should, before anything is timed."""
    got = {
        name: json.loads(client.post(client.body(name, variables[name]))[1])["data"]
        for name in ROUND_TARGETS
    }
    first, last = got["first"]["leads"], got["last"]["leads"]
    search = got["search"]["leads"]
    checks = {
        "first: 50 edges, hasNextPage": len(first["edges"]) == 50
        and first["pageInfo"]["hasNextPage"] is True,
        "last: 50 edges, hasPreviousPage": len(last["edges"]) == 50
        and last["pageInfo"]["hasPreviousPage"] is True,
        "last page ends with the flow's newest lead": last["edges"][-1]["node"][
            "chatId"
        ]
        == f"big-{big - 1:08d}",
        "first page starts with the flow's oldest lead": first["edges"][0]["node"][
            "chatId"
        ]
        == "big-00000000",
        "search: 50 edges, each an Ada Lovelace": len(search["edges"]) == 50
        and all("Lovelace" in e["node"]["name"] for e in search["edges"]),
        "leadsByChatflow: 100 leads": len(got["list100"]["leadsByChatflow"]) == 100,
    }
    if not all(checks.values()):
        raise RuntimeError(f"the pages are not what they should be: {checks}")
    return checks


def page_rounds(
    client: GraphQL, variables: dict[str, dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """Warm-up, then rounds of `per_round` requests per target, alternating."""
    bodies = {name: client.body(name, variables[name]) for name in ROUND_TARGETS}
    sizes = {}
    for name in ROUND_TARGETS:
        for _ in range(args.warmup):
            sizes[name] = len(client.post(bodies[name])[1])
    times: dict[str, list[float]] = {name: [] for name in ROUND_TARGETS}
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        order = ROUND_TARGETS if r % 2 == 0 else tuple(reversed(ROUND_TARGETS))
        p50s = {}
        for name in order:
            these = [client.post(bodies[name])[0] for _ in range(args.per_round)]
            times[name] += these
            p50s[name] = statistics.median(these) * 1000
        rounds.append(p50s)
    info = {}
    body = client.body("search_count", variables["search"])
    for _ in range(3):
        client.post(body)
    counted = [client.post(body)[0] for _ in range(args.count_requests)]
    info["search_count"] = spread(counted)
    return {
        "targets": {
            name: {**spread(values), "bytes": sizes[name]}
            for name, values in times.items()
        },
        "rounds_p50_ms": rounds,
        "info": info,
        "samples_ms": {k: [round(v * 1000, 3) for v in vs] for k, vs in times.items()},
    }


def export_once(server: harness.Server, token: str, fmt: str) -> dict[str, Any]:
    flow = datasets.big_flow_id()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    before = server.rss()
    try:
        with RssSampler(server.pid) as sampler:
            start = time.perf_counter()
            conn.request(
                "GET",
                f"/api/v1/leads/{flow}/export?format={fmt}",
                headers={"Authorization": f"Bearer {token}"},
            )
            response = conn.getresponse()
            first_byte = time.perf_counter() - start
            size, records = consume(response, fmt)
            seconds = time.perf_counter() - start
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"export {fmt}: HTTP {response.status}")
    return {
        "seconds": seconds,
        "first_byte_ms": first_byte * 1000,
        "bytes": size,
        "records": records,
        "rss_before_mb": before / MB,
        "peak_rss_mb": sampler.peak / MB,
    }


def copy_once(dsn: str, select: str) -> dict[str, Any]:
    """psql's COPY of the same rows, read through a pipe as an export is read."""
    command = f"COPY ({select}) TO STDOUT WITH CSV"
    start = time.perf_counter()
    with subprocess.Popen(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    ) as proc:
        try:
            assert proc.stdout is not None
            size, records = consume(proc.stdout, "csv")
            proc.wait(300)
        finally:
            if proc.poll() is None:
                proc.kill()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"psql COPY failed: {proc.stderr.read()[:300]!r}")
    return {"seconds": seconds, "bytes": size, "records": records}


def asyncpg_copy_once(dsn: str, select: str) -> dict[str, Any]:
    """Information: the same COPY through asyncpg into a sink that only counts,
    the connection opened before the clock starts (the driver's own ceiling)."""

    async def go() -> dict[str, Any]:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        got = {"bytes": 0, "records": 0}

        async def sink(data: bytes) -> None:
            got["bytes"] += len(data)
            got["records"] += data.count(b"\n")

        try:
            start = time.perf_counter()
            await conn.copy_from_query(select, output=sink, format="csv")
            got["seconds"] = time.perf_counter() - start
        finally:
            await conn.close()
        return got

    return asyncio.run(go())


def export_rounds(
    db: str,
    server: harness.Server,
    token: str,
    data: dict[str, Any],
    sql: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    flow = datasets.big_flow_id()
    select = sql["postgresql"]["export_csv"].replace("$1", f"'{flow}'")
    targets: dict[str, Callable[[], dict[str, Any]]] = {
        "svc-csv": lambda: export_once(server, token, "csv"),
    }
    if db == "postgres":
        targets["psql-copy-csv"] = lambda: copy_once(data["dsn"], select)
        targets["asyncpg-copy-csv"] = lambda: asyncpg_copy_once(data["dsn"], select)
    targets["svc-ndjson"] = lambda: export_once(server, token, "ndjson")
    targets["svc-json"] = lambda: export_once(server, token, "json")
    expected = {
        "svc-csv": args.big + 1,
        "psql-copy-csv": args.big,
        "asyncpg-copy-csv": args.big,
        "svc-ndjson": args.big,
        "svc-json": args.big,
    }
    for name, go in targets.items():  # warm-up (and the row counts)
        got = go()
        if got["records"] != expected[name]:
            raise RuntimeError(
                f"{name}: {got['records']} records, not {expected[name]}"
            )
    runs: list[dict[str, Any]] = []
    names = list(targets)
    for r in range(args.export_rounds):
        for name in names if r % 2 == 0 else list(reversed(names)):
            got = targets[name]()
            if got["records"] != expected[name]:
                raise RuntimeError(f"{name}: {got['records']} records")
            got.update(round=r + 1, target=name, leads_per_s=args.big / got["seconds"])
            runs.append(got)
            time.sleep(args.gap)
    return {"runs": runs, "select": select if db == "postgres" else None}


# -- plans ----------------------------------------------------------------------------


def literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def postgres_plans(dsn: str, sql: dict[str, Any], like: str) -> dict[str, Any]:
    """Each page statement as the service runs it: through asyncpg's statement
    cache (a named prepared statement), executed `WARM` times as a pooled
    connection would have been by then, then EXPLAIN (ANALYZE, BUFFERS) EXECUTE
    of that same statement; and, when PostgreSQL has switched to a generic plan,
    the custom plan of the first five executions too. Plus the export's SELECT
    (COPY is not prepared) and the statements' own times through asyncpg."""
    flow = datasets.big_flow_id()
    statements = {
        "first": (sql["first"], [flow, 51]),
        "last": (sql["last"], [flow, 51]),
        "search": (sql["search"], [flow, like, 51]),
        "search_count": (sql["search_count"], [flow, like]),
    }

    async def explain() -> dict[str, Any]:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        out: dict[str, Any] = {}
        try:
            for name, (text, values) in statements.items():
                for _ in range(WARM):
                    await conn.fetch(text, *values)
                times = []
                for _ in range(30):
                    start = time.perf_counter()
                    await conn.fetch(text, *values)
                    times.append(time.perf_counter() - start)
                row = await conn.fetchrow(
                    "SELECT name, generic_plans, custom_plans FROM "
                    "pg_prepared_statements WHERE statement = $1",
                    text,
                )
                call = f"EXECUTE {row['name']}({', '.join(map(literal, values))})"
                plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {call}")
                entry = {
                    "sql": text,
                    "values": values,
                    "generic_plans": row["generic_plans"],
                    "custom_plans": row["custom_plans"],
                    "asyncpg_p50_ms": statistics.median(times) * 1000,
                    "plan": "\n".join(r[0] for r in plan),
                }
                if row["generic_plans"]:
                    await conn.execute("SET plan_cache_mode = force_custom_plan")
                    custom = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {call}")
                    times = []
                    for _ in range(30):
                        start = time.perf_counter()
                        await conn.fetch(text, *values)
                        times.append(time.perf_counter() - start)
                    await conn.execute("RESET plan_cache_mode")
                    entry["custom_plan"] = "\n".join(r[0] for r in custom)
                    entry["asyncpg_custom_p50_ms"] = statistics.median(times) * 1000
                out[name] = entry
            export = sql["export_csv"].replace("$1", literal(flow))
            plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {export}")
            out["export_csv"] = {
                "sql": export,
                "plan": "\n".join(r[0] for r in plan),
            }
        finally:
            await conn.close()
        return out

    return asyncio.run(explain())


WARM = 10  # > 5: PostgreSQL weighs a generic plan from the sixth execution on


def sqlite_plans(path: str, sql: dict[str, Any], like: str) -> dict[str, Any]:
    flow = datasets.big_flow_id()
    statements = {
        "first": (sql["first"], (flow, 51)),
        "last": (sql["last"], (flow, 51)),
        "search": (sql["search"], (flow, like, 51)),
        "search_count": (sql["search_count"], (flow, like)),
        "export_csv_batch": (sql["export_csv_batch"], (flow,)),
    }
    out = {}
    conn = sqlite3.connect(path)
    try:
        for name, (text, values) in statements.items():
            plan = conn.execute("EXPLAIN QUERY PLAN " + text, values).fetchall()
            for _ in range(3):
                conn.execute(text, values).fetchall()
            times = []
            for _ in range(10 if name == "search_count" else 30):
                start = time.perf_counter()
                conn.execute(text, values).fetchall()
                times.append(time.perf_counter() - start)
            out[name] = {
                "sql": text,
                "plan": "\n".join(row[3] for row in plan),
                "sqlite3_p50_ms": statistics.median(times) * 1000,
            }
    finally:
        conn.close()
    return out


# -- one database, start to end -------------------------------------------------------


def run_database(
    db: str, args: argparse.Namespace, token: str, workdir: Path
) -> dict[str, Any]:
    report: dict[str, Any] = {"db": db}
    say(f"[{db}] loading {args.leads:,} leads + a flow of {args.big:,} ({args.layout})")
    data = prepare(db, args, workdir)
    report["load_seconds"] = round(data["load_seconds"], 1)
    say(f"[{db}]   loaded in {data['load_seconds']:.1f} s")
    env = harness.service_env(data["url"], args.secret) | dict(
        kv.split("=", 1) for kv in args.service_env
    )
    sql = service_sql(env, workdir)
    report["service_package"] = sql["package"]
    dialect = "sqlite" if db == "sqlite" else "postgresql"
    like = f"%{args.term}%"
    report["facts"] = facts(db, data, sql, like)
    say(f"[{db}]   {report['facts']}")

    server = harness.Server(
        f"svc-{db}",
        leads_gql("serve", "--host", "127.0.0.1", "--port", "{port}"),
        env,
        workdir,
    )
    server.start()
    server.wait_ready()
    time.sleep(1)
    server.idle_rss = server.rss()
    report["idle_rss_mb"] = server.idle_rss / MB
    say(f"[{db}] service pid {server.pid}, idle RSS {server.idle_rss / MB:.1f} MB")

    say(f"[{db}] exports: {args.export_rounds} rounds")
    report["exports"] = export_rounds(db, server, token, data, sql, args)
    for run in report["exports"]["runs"]:
        rss = f"  peak RSS {run['peak_rss_mb']:.1f} MB" if "peak_rss_mb" in run else ""
        say(
            f"  r{run['round']} {run['target']:<14} {run['seconds']:6.3f} s "
            f"{run['leads_per_s']:9,.0f} leads/s{rss}"
        )
    report["rss_after_exports_mb"] = server.rss() / MB

    big_flow = datasets.big_flow_id()
    small_flow = datasets.flow_id(args.flows // 3)
    variables = {
        "first": {"f": big_flow},
        "last": {"f": big_flow},
        "list100": {"f": small_flow},
        "search": {"f": big_flow, "s": args.term},
    }
    client = GraphQL(server.port, token)
    try:
        report["sanity"] = sanity(client, variables, args.big)
        say(
            f"[{db}] pages: {args.warmup} warm-up, {args.rounds} rounds of "
            f"{args.per_round} requests per target"
        )
        with RssSampler(server.pid) as sampler:
            report["pages"] = page_rounds(client, variables, args)
        report["peak_rss_pages_mb"] = sampler.peak / MB
    finally:
        client.close()
    for name, row in report["pages"]["targets"].items():
        say(
            f"  {name:<8} p50 {row['p50_ms']:7.2f}  p90 {row['p90_ms']:7.2f}  "
            f"p99 {row['p99_ms']:7.2f} ms  ({row['n']} requests)"
        )
    report["variables"] = variables
    log = server.log.read_text(errors="replace")
    report["log_errors"] = log.count('"level": "error"')
    server.stop()
    harness.RUNNING.remove(server)

    say(f"[{db}] plans")
    if db == "postgres":
        report["plans"] = postgres_plans(data["dsn"], sql[dialect], like)
    else:
        report["plans"] = sqlite_plans(data["path"], sql[dialect], like)
    if db == "postgres":
        with contextlib.suppress(Exception):
            asyncio.run(
                harness.pg_admin(
                    args.pg, f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"
                )
            )
            CREATED_PG.remove(PG_DB)
    else:
        Path(data["path"]).unlink(missing_ok=True)
    return report


# -- analysis -------------------------------------------------------------------------


def per_round(rounds: list[dict[str, float]], a: str, b: str) -> list[float]:
    return [r[a] / r[b] for r in rounds if r.get(b)]


def analyse(reports: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    ratios, checks = [], []

    def ratio(db: str, name: str, values: list[float], bound: str) -> float:
        median = statistics.median(values)
        ratios.append(
            {"db": db, "name": name, "rounds": values, "median": median, "need": bound}
        )
        return median

    for db, report in reports.items():
        rounds = report["pages"]["rounds_p50_ms"]
        first_last = ratio(
            db, "first page / last page, p50", per_round(rounds, "first", "last"),
            "1/1.5 .. 1.5",
        )  # fmt: skip
        checks.append(
            {
                "db": db,
                "target": "1. `leads` first page / last page (p50, "
                f"{args.big:,}-lead flow)",
                "value": f"{first_last:.2f}x",
                "need": "within 1.5x either way",
                "pass": 1 / 1.5 <= first_last <= 1.5,
            }
        )
        for page in ("first", "last"):
            value = ratio(
                db, f"{page} page / leadsByChatflow (100), p50",
                per_round(rounds, page, "list100"), "<= 2",
            )  # fmt: skip
            checks.append(
                {
                    "db": db,
                    "target": f"1. `leads` {page} page / `leadsByChatflow` of a "
                    "100-lead flow (p50)",
                    "value": f"{value:.2f}x",
                    "need": "<= 2",
                    "pass": value <= 2,
                }
            )
        ratio(
            db, "search page / first page, p50", per_round(rounds, "search", "first"),
            "information",
        )  # fmt: skip
        search = report["pages"]["targets"]["search"]
        checks.append(
            {
                "db": db,
                "target": f'2. search page (`first: 50, search: "{args.term}"`, '
                f"{report['facts']['search_matches_in_flow']:,} of "
                f"{report['facts']['big_flow_leads']:,} leads), recorded",
                "value": f"p50 {search['p50_ms']:.2f} ms, p90 {search['p90_ms']:.2f}, "
                f"p99 {search['p99_ms']:.2f}",
                "need": "recorded, plan in docs",
                "pass": None,
            }
        )
        runs = report["exports"]["runs"]
        svc = [r for r in runs if r["target"].startswith("svc-")]
        peak = max(r["peak_rss_mb"] for r in svc)
        checks.append(
            {
                "db": db,
                "target": "3. peak RSS during the exports - idle RSS",
                "value": f"{peak - report['idle_rss_mb']:+.1f} MB (idle "
                f"{report['idle_rss_mb']:.1f}, peak {peak:.1f})",
                "need": "<= 30 MB",
                "pass": peak - report["idle_rss_mb"] <= 30,
            }
        )
        by_round: dict[int, dict[str, float]] = {}
        for r in runs:
            by_round.setdefault(r["round"], {})[r["target"]] = r["leads_per_s"]
        csv_rate = statistics.median(
            r["leads_per_s"] for r in runs if r["target"] == "svc-csv"
        )
        if db == "postgres":
            value = ratio(
                db, "CSV export / psql COPY, leads/s",
                [r["svc-csv"] / r["psql-copy-csv"] for r in by_round.values()],
                ">= 0.5",
            )  # fmt: skip
            checks.append(
                {
                    "db": db,
                    "target": "3. CSV export / psql `COPY (SELECT ...) TO STDOUT WITH "
                    "CSV` (leads/s)",
                    "value": f"{value:.2f}x ({csv_rate:,.0f} leads/s)",
                    "need": ">= 0.5",
                    "pass": value >= 0.5,
                }
            )
        else:
            checks.append(
                {
                    "db": db,
                    "target": "3. CSV export rate, recorded",
                    "value": f"{csv_rate:,.0f} leads/s",
                    "need": "recorded (no ceiling)",
                    "pass": None,
                }
            )
        if db == "postgres":
            ratio(
                db, "CSV export / asyncpg COPY into a no-op sink, leads/s",
                [r["svc-csv"] / r["asyncpg-copy-csv"] for r in by_round.values()],
                "information",
            )  # fmt: skip
        for fmt in ("ndjson", "json"):
            ratio(
                db, f"{fmt} export / CSV export, leads/s",
                [r[f"svc-{fmt}"] / r["svc-csv"] for r in by_round.values()],
                "information",
            )  # fmt: skip
    return {"ratios": ratios, "checks": checks}


# -- report ---------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "recorded" if ok is None else "PASS" if ok else "**FAIL**"


def export_summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in dict.fromkeys(r["target"] for r in runs):
        rs = [r for r in runs if r["target"] == name]
        out.append(
            {
                "target": name,
                "runs": len(rs),
                "leads_per_s": statistics.median(r["leads_per_s"] for r in rs),
                "seconds": statistics.median(r["seconds"] for r in rs),
                "mb_per_s": statistics.median(r["bytes"] / r["seconds"] for r in rs)
                / MB,
                "bytes": rs[0]["bytes"],
                "first_byte_ms": statistics.median(r["first_byte_ms"] for r in rs)
                if "first_byte_ms" in rs[0]
                else None,
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)
                if "peak_rss_mb" in rs[0]
                else None,
            }
        )
    return out


def short_sql(text: str) -> str:
    """A statement for the report: an export's long select list elided."""
    if len(text) <= 400 or " FROM lead " not in text:
        return text
    return "SELECT <the export's columns> " + text[text.index("FROM lead ") :]


def markdown(result: dict[str, Any]) -> str:
    args, mach = result["args"], result["machine"]
    table = harness.md_table
    out = [
        f"# leads-gql pages, search and export (issue #9), {result['started']} "
        f"({result['mode']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Service commit {mach['commit']}, code from `{result['service_package']}`; "
        f"wall time {result['wall_seconds'] / 60:.1f} min.  ",
        f"Dataset: {args['leads']:,} leads over {args['flows']:,} flows of "
        f"{args['leads'] // args['flows']}, plus one flow of {args['big']:,} leads "
        + (
            "interleaved in time with the rest"
            if args.get("layout", "interleaved") == "interleaved"
            else "all older than the rest"
        )
        + " (bench/datasets.py `rows_with_big_flow`).  ",
        f"Latency: one keep-alive connection, one request at a time, timed by the "
        f"client from send to last byte; {args['warmup']} warm-up requests per "
        f"target, then {args['rounds']} rounds of {args['per_round']} requests per "
        "target in alternating order (A B C D, D C B A, ...). Exports: "
        f"{args['export_rounds']} alternating rounds after one warm-up each.  ",
        f"Machine: {mach['nproc']} cores ({mach['cpu']}), memory {mach['memory']}, "
        f"Linux {mach['kernel']}, Python {mach['python']}, SQLite {mach['sqlite']}, "
        f"{mach['postgres']}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()) + ".",
        "",
        "## Targets",
        "",
        table(
            ["db", "target", "measured", "need", "result"],
            [
                [c["db"], c["target"], c["value"], c["need"], verdict(c["pass"])]
                for c in result["analysis"]["checks"]
            ],
        ),
        "",
        "## Ratios, round by round",
        "",
        table(
            ["db", "ratio", "rounds", "median", "need"],
            [
                [
                    r["db"],
                    r["name"],
                    " ".join(f"{v:.2f}" for v in r["rounds"]),
                    f"**{r['median']:.2f}**",
                    r["need"],
                ]
                for r in result["analysis"]["ratios"]
            ],
        ),
        "",
        "## Documents",
        "",
    ]
    out += [f"- {name}: `{doc}`" for name, doc in DOCUMENTS.items()]
    for db, report in result["databases"].items():
        facts_text = ", ".join(f"{k} {v}" for k, v in report["facts"].items())
        out += [
            "",
            f"## {db}",
            "",
            f"Loaded in {report['load_seconds']} s; {facts_text}. Idle RSS "
            f"{report['idle_rss_mb']:.1f} MB; after the exports "
            f"{report['rss_after_exports_mb']:.1f} MB; peak during the pages "
            f"{report['peak_rss_pages_mb']:.1f} MB; error lines in the service's log: "
            f"{report['log_errors']}.",
            "",
            "### Pages (every request of the rounds)",
            "",
            table(
                ["target", "requests", "p50 ms", "p90 ms", "p99 ms", "max ms", "bytes"],
                [
                    [
                        name,
                        row["n"],
                        f"{row['p50_ms']:.2f}",
                        f"{row['p90_ms']:.2f}",
                        f"{row['p99_ms']:.2f}",
                        f"{row['max_ms']:.1f}",
                        row["bytes"],
                    ]
                    for name, row in report["pages"]["targets"].items()
                ],
            ),
            "",
            "Information, outside the rounds: search page with `totalCount`, "
            + ", ".join(
                f"{name} p50 {row['p50_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms "
                f"({row['n']} requests)"
                for name, row in report["pages"]["info"].items()
            )
            + ".",
            "",
            "p50 per round, ms:",
            "",
            table(
                ["round", *ROUND_TARGETS],
                [
                    [n + 1, *(f"{r[name]:.2f}" for name in ROUND_TARGETS)]
                    for n, r in enumerate(report["pages"]["rounds_p50_ms"])
                ],
            ),
            "",
            "### Exports of the large flow (medians over the rounds)",
            "",
            table(
                [
                    "target",
                    "runs",
                    "leads/s",
                    "s",
                    "MB/s",
                    "bytes",
                    "first byte ms",
                    "peak RSS MB",
                ],
                [
                    [
                        e["target"],
                        e["runs"],
                        f"{e['leads_per_s']:,.0f}",
                        f"{e['seconds']:.3f}",
                        f"{e['mb_per_s']:.1f}",
                        f"{e['bytes']:,}",
                        ""
                        if e["first_byte_ms"] is None
                        else f"{e['first_byte_ms']:.1f}",
                        "" if e["peak_rss_mb"] is None else f"{e['peak_rss_mb']:.1f}",
                    ]
                    for e in export_summary(report["exports"]["runs"])
                ],
            ),  # fmt: skip
            "",
            "### Plans",
        ]
        for name, plan in report["plans"].items():
            out += ["", f"`{name}`: `{short_sql(plan['sql'])}`", ""]
            if name == "export_csv":
                out.append(
                    "EXPLAIN (ANALYZE, BUFFERS) of the SELECT inside the export's "
                    "COPY (not a prepared statement; the flow as a literal):"
                )
            elif db == "postgres" and "generic_plans" in plan:
                out.append(
                    f"Through asyncpg's prepared statement after {WARM} executions "
                    f"(generic plans {plan['generic_plans']}, custom plans "
                    f"{plan['custom_plans']}; p50 of the statement alone "
                    f"{plan['asyncpg_p50_ms']:.2f} ms):"
                )
            elif db == "sqlite":
                out.append(
                    f"EXPLAIN QUERY PLAN (p50 of the statement alone through sqlite3 "
                    f"{plan['sqlite3_p50_ms']:.2f} ms):"
                )
            out += ["", "```", plan["plan"], "```"]
            if "custom_plan" in plan:
                out += [
                    "",
                    "The custom plan (the first five executions, or "
                    "`plan_cache_mode = force_custom_plan`; p50 of the statement "
                    f"alone {plan['asyncpg_custom_p50_ms']:.2f} ms):",
                    "",
                    "```",
                    plan["custom_plan"],
                    "```",
                ]
    return "\n".join(out) + "\n"


# -- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="leads-gql pages, search and export benchmark (issue #9)"
    )
    parser.add_argument("--quick", action="store_true", help="10k + a flow of 10k")
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument("--rounds", type=int, help="alternating rounds (20; quick 4)")
    parser.add_argument("--per-round", type=int, help="requests per target a round "
                        "(20; quick 10)")  # fmt: skip
    parser.add_argument("--warmup", type=int, help="warm-up requests (50; quick 10)")
    parser.add_argument("--export-rounds", type=int, help="(5; quick 2)")
    parser.add_argument("--count-requests", type=int, help="(30; quick 5)")
    parser.add_argument("--gap", type=float, default=0.2, help="pause between exports")
    parser.add_argument("--term", default=datasets.SEARCH_TERM)
    parser.add_argument(
        "--layout", choices=datasets.LAYOUTS, default="interleaved",
        help="the large flow: interleaved in time with the rest (issue #9), or "
        "all older than the rest (a worst case for a created_date index)",
    )  # fmt: skip
    parser.add_argument(
        "--pg", default="postgresql://postgres@127.0.0.1:5432/test",
        help=f"an existing PostgreSQL database, used to create {PG_DB}",
    )  # fmt: skip
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="LEADS_X=VALUE",
        help="extra environment for the service",
    )  # fmt: skip
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument("--out", type=Path, default=harness.RESULTS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.leads, args.flows, args.big = (
        (10_000, 100, 10_000) if quick else (1_000_000, 10_000, 100_000)
    )
    args.rounds = args.rounds or (4 if quick else 20)
    args.per_round = args.per_round or (10 if quick else 20)
    args.warmup = args.warmup or (10 if quick else 50)
    args.export_rounds = args.export_rounds or (2 if quick else 5)
    args.count_requests = args.count_requests or (5 if quick else 30)
    args.dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    for db in args.dbs:
        if db not in ("sqlite", "postgres"):
            parser.error(f"--db: unknown database {db!r}")
    if "postgres" in args.dbs and not shutil.which("psql"):
        parser.error("PostgreSQL needs psql (the COPY ceiling)")
    args.secret = secrets.token_urlsafe(48)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="leads-bench-pages-"))
    say(f"bench: work directory {workdir}")

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    reports: dict[str, Any] = {}
    try:
        token = subprocess.run(
            leads_gql("token", "--scope", "leads:read", "--ttl", "86400"),
            env=harness.service_env("sqlite:///unused.db", args.secret),
            cwd=workdir,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for db in args.dbs:
            reports[db] = run_database(db, args, token, workdir)
        packages = {r["service_package"] for r in reports.values()}
        result = {
            "started": started.strftime("%Y-%m-%d %H:%M"),
            "mode": "quick" if args.quick else "full",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": {k: v for k, v in vars(args).items() if k not in ("secret", "out")},
            "machine": harness.machine(),
            "service_package": ", ".join(sorted(packages)),
            "documents": DOCUMENTS,
            "databases": reports,
            "wall_seconds": time.monotonic() - t0,
        }
        result["analysis"] = analyse(reports, args)
        args.out.mkdir(parents=True, exist_ok=True)
        suffix = "-pages" + ("" if args.layout == "interleaved" else f"-{args.layout}")
        suffix += "-quick" if args.quick else ""
        stem = args.out / f"{started:%Y-%m-%d-%H%M}{suffix}"
        n = 1
        while stem.with_suffix(".md").exists():
            n += 1
            stem = args.out / f"{started:%Y-%m-%d-%H%M}{suffix}-{n}"
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
        return 1 if any(c["pass"] is False for c in result["analysis"]["checks"]) else 0
    except KeyboardInterrupt as stop:
        say(f"bench: interrupted ({str(stop) or 'Ctrl-C'}); cleaning up")
        return 130
    finally:
        harness.stop_all()
        drop_pg(args.pg)
        if args.keep_workdir:
            say(f"bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
