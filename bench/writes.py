"""Writes (issue #13): single creates against Flowise 3.1.2 and a bare insert; import.

    .venv/bin/python bench/flowise.py install      # once: Flowise 3.1.2 beside the repo
    .venv/bin/python bench/writes.py               # everything (~10 min)
    .venv/bin/python bench/writes.py --quick       # ~4 min: short runs, 10k/100k import
    .venv/bin/python bench/writes.py --part creates --db sqlite

Creates: wrk (bench/leads.lua, `rest_create`: a new lead per request, each with its
own id) at --connections clients in a closed loop, --duration seconds a run, the
targets of a comparison alternating round by round (A B C, then C B A, ...):
- SQLite: leads-gql (`leads-gql serve`, auth on, a fresh database) against Flowise
  3.1.2 on its own fresh SQLite (bench/flowise.py; no token needed) — target: leads-gql
  at least 3x Flowise's rate;
- PostgreSQL: leads-gql against bench/ceilings.py's bare asyncpg insert endpoint, both
  on one fresh database — target: at least 0.9x.
GraphQL `createLead` runs in the same rounds, for information. A rate counts the
creates answered 200 with a lead (Flowise answers some with 500 under load); every
acknowledged id is looked up in the database afterwards.

Import: 1,000,000 leads (and 100,000, to see that memory does not grow with the
file) as NDJSON, the export format (SPEC.md), stored by `leads-gql import --format
ndjson FILE` into a fresh, migrated database (SQLite file; PostgreSQL database) with
LEADS_DATABASE_URL set — target: 50,000 leads/s or more; the importer's peak RSS
(the highest VmRSS sampled every 0.1 s, its parsing process included) for 1M within
20 MB of that for 100k (keeping as little as 25 bytes a row would pass it), less, on
SQLite, the import connection's 128 MiB page cache, which a 100k-lead database
cannot fill; its RSS from half way through the 1M import to three quarters within
10 MB; every lead stored; a re-run of the smaller file stores nothing twice.
Skipped, saying so, while `leads-gql import` does not exist. For information, each
import records its CPU time (the importer's, and the whole machine's busy time: the
rest is the database's), and the million is also stored by the database alone
(`database_rate`) and, on PostgreSQL, imported into a table that holds a lead,
which keeps its indexes (`kept_indexes_import`).

Results: bench/results/YYYY-MM-DD-HHMM-writes[-quick].{md,json}; exit 1 when a target
fails. Everything listens on 127.0.0.1; every process started is stopped and every
database created (leads_writes_*) dropped. Needs wrk, node + Flowise (see
bench/flowise.py), asyncpg and PostgreSQL (`--pg`) for --db postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import datasets  # noqa: E402
import flowise  # noqa: E402
import run as harness  # noqa: E402

say = harness.say
MB = harness.MB
TARGET_VS_FLOWISE = 3.0
TARGET_VS_BARE = 0.9
TARGET_IMPORT_RATE = 50_000
IMPORT_RSS_GROWTH_MB = 20.0  # peak, 1M leads - 100k leads (- the SQLite page cache)
IMPORT_RSS_DRIFT_MB = 10.0  # during the 1M import, from 50 % to 75 % of its time
# The import connection's SQLite page cache (leads_gql.importer.SQLITE_CACHE_KIB).
IMPORT_SQLITE_CACHE_MB = 128.0
PG_CREATE_DB = "leads_writes_create"


# -- creates ----------------------------------------------------------------------


def load_average(where: str, loads: dict[str, float]) -> None:
    """Record the 1-minute load: other work on this 2-core box skews every figure."""
    loads[where] = round(os.getloadavg()[0], 2)
    if loads[where] > 1.5:
        say(
            f"bench: warning: load average {loads[where]} ({where}): something else "
            "is running; these figures are not comparable"
        )


def proc_stat() -> list[int]:
    """All cores' time so far, in ticks, by state (/proc/stat's `cpu` line: user,
    nice, system, idle, iowait, irq, softirq, steal, ...)."""
    with open("/proc/stat") as handle:
        return [int(v) for v in handle.readline().split()[1:]]


def cpu_ticks() -> tuple[int, int, int]:
    """All cores' time so far (/proc/stat, in ticks): busy (user, nice, system,
    irq, softirq), stolen by the hypervisor, and in all. Stolen time: a virtual
    machine whose host is busy runs slower, which a run's own figures cannot
    tell from a slower program. Busy time, less the importer's own: what the
    database (and the kernel for it) spent on the run."""
    values = proc_stat()
    busy = values[0] + values[1] + values[2] + values[5] + values[6]
    return busy, values[7], sum(values)


def cpu_shares(before: tuple[int, int, int]) -> dict[str, float]:
    """Since `before` (`cpu_ticks`): the machine's busy CPU-seconds, and the share
    of its time stolen."""
    busy, steal, ticks = (b - a for a, b in zip(before, cpu_ticks(), strict=True))
    return {
        "machine_busy_cpu_s": round(busy / os.sysconf("SC_CLK_TCK"), 1),
        "stolen_pct": round(100 * steal / max(1, ticks), 1),
    }


def cpu_busy(seconds: float = 3.0) -> float:
    """The share of all cores' time spent busy over `seconds` (/proc/stat)."""

    def sample() -> tuple[int, int]:
        values = proc_stat()
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(minutes: float) -> None:
    """Wait (at most `minutes`) until the machine is idle: under 10 % busy for 3 s."""
    deadline = time.monotonic() + minutes * 60
    while True:
        busy = cpu_busy()
        if busy < 0.10:
            return
        if time.monotonic() > deadline:
            say(f"bench: still {busy:.0%} busy after {minutes} min; going on anyway")
            return
        say(f"bench: the machine is {busy:.0%} busy (not this benchmark); waiting")
        time.sleep(10)


def seconds_of(run: dict[str, Any]) -> float:
    return float(run["requests"]) / run["rps"] if run["rps"] else 0.0


def add_ok_rate(runs: list[dict[str, Any]]) -> None:
    """Creates answered 200 with a lead, per second (wrk's rate counts errors too)."""
    for run in runs:
        seconds = seconds_of(run)
        run["ok_rps"] = run.get("acked", 0) / seconds if seconds else 0.0


def leads_gql_server(
    name: str, url: str, args: argparse.Namespace, workdir: Path
) -> harness.Server:
    return harness.Server(
        name,
        harness.leads_gql("serve", "--host", "127.0.0.1", "--port", "{port}"),
        harness.service_env(url, args.secret)
        | dict(kv.split("=", 1) for kv in args.service_env),
        workdir,
    )


def sqlite_creates(
    bench: harness.Bench, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """leads-gql on SQLite against Flowise 3.1.2 on SQLite, each on a fresh file."""
    report: dict[str, Any] = {"db": "sqlite"}
    path = workdir / "creates.db"
    service = leads_gql_server("svc-sqlite", f"sqlite:///{path}", args, workdir)
    fw: flowise.Flowise | None = None
    if flowise.is_installed(args.flowise_dir):
        fw = flowise.Flowise(args.flowise_dir, workdir / "flowise", name="flowise")
    else:
        report["flowise"] = (
            f"not installed in {args.flowise_dir}: bench/flowise.py install "
            f"--dir {args.flowise_dir}"
        )
        say(f"[sqlite] Flowise {report['flowise']}; its comparison is skipped")
    servers = [service] + ([fw] if fw else [])
    for server in servers:
        server.start()
    for server in servers:
        server.wait_ready()
    verify = harness.verify_sqlite(path)
    targets = [
        harness.Target("svc-rest-create", service, "rest_create", verify=verify),
        harness.Target("svc-gql-create", service, "gql_create", verify=verify),
    ]
    if fw is not None:
        report["flowise_version"] = fw.version()
        report["flowise_db"] = "SQLite (its default), journal_mode=delete"
        say(f"[sqlite] Flowise {report['flowise_version']} at {fw.url}")
        targets.append(
            harness.Target(
                "flowise-create",
                fw,
                "rest_create",
                verify=harness.verify_sqlite(fw.db_path),
            )
        )
    time.sleep(1)
    report["idle_rss_mb"] = {s.name: s.rss() / MB for s in servers}
    log_start = fw.log.stat().st_size if fw is not None else 0
    if fw is not None and args.flowise_warmup > 0:
        # Node's JIT and TypeORM warm up for many seconds: the first seconds under
        # load run at a third of the later rate.
        say(f"[sqlite] warming Flowise up for {args.flowise_warmup:.0f} s")
        bench.wrk(targets[-1], args.flowise_warmup, "sqlite/create", None)
    say(f"[sqlite] create rounds: {', '.join(t.label for t in targets)}")
    bench.rounds("sqlite/create", targets)
    log = service.log.read_text(errors="replace")
    report["service_log_locked"] = log.lower().count("database is locked")
    report["service_log_errors"] = log.count('"level": "error"')
    if fw is not None:
        with fw.log.open("rb") as handle:  # the lines written under load
            handle.seek(log_start)
            fw_log = handle.read().decode(errors="replace")
        report["flowise_log_errors_under_load"] = fw_log.count("[ERROR]")
        errors = [line for line in fw_log.splitlines() if "[ERROR]" in line]
        report["flowise_log_first_error"] = errors[0][:300] if errors else None
    for server in servers:
        server.stop()
        with contextlib.suppress(ValueError):
            harness.RUNNING.remove(server)
    return report


def postgres_creates(
    bench: harness.Bench, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """leads-gql on PostgreSQL against the bare asyncpg insert, one fresh database."""
    dsn = harness.fresh_pg(args.pg, PG_CREATE_DB)
    service = leads_gql_server("svc-postgres", dsn, args, workdir)
    service.start()
    service.wait_ready()  # `serve` migrates first: the ceiling needs the table
    ceiling = harness.Server(
        "ceil-postgres",
        [sys.executable, str(BENCH / "ceilings.py"), "postgres", "--port", "{port}",
         "--dsn", dsn],
        dict(os.environ),
        workdir,
    )  # fmt: skip
    ceiling.start()
    ceiling.wait_ready()
    verify = harness.verify_postgres(dsn)
    sessions = harness.pg_sessions(args.pg, PG_CREATE_DB)
    targets = [
        harness.Target(
            "svc-rest-create", service, "rest_create", verify=verify, sessions=sessions
        ),
        harness.Target(
            "svc-gql-create", service, "gql_create", verify=verify, sessions=sessions
        ),
        harness.Target(
            "ceil-insert", ceiling, "rest_create", verify=verify, sessions=sessions
        ),
    ]
    time.sleep(1)
    report: dict[str, Any] = {
        "db": "postgres",
        "idle_rss_mb": {s.name: s.rss() / MB for s in (service, ceiling)},
    }
    say(f"[postgres] create rounds: {', '.join(t.label for t in targets)}")
    bench.rounds("postgres/create", targets)
    log = service.log.read_text(errors="replace")
    report["service_log_errors"] = log.count('"level": "error"')
    for server in (service, ceiling):
        server.stop()
        harness.RUNNING.remove(server)
    drop_database(args.pg, PG_CREATE_DB)
    return report


def drop_database(admin: str, name: str) -> None:
    asyncio.run(harness.pg_admin(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    with contextlib.suppress(ValueError):
        harness.CREATED_PG.remove(name)


# -- import -----------------------------------------------------------------------


def import_available() -> tuple[bool, str]:
    """Whether this tree's `leads-gql` has the `import` command (issue #13)."""
    proc = subprocess.run(
        harness.leads_gql("import", "--help"),
        capture_output=True,
        text=True,
        timeout=60,
        env=harness.service_env("sqlite:///unused.db", "x" * 32),
    )
    if proc.returncode == 0 and "--format" in proc.stdout:
        return True, ""
    why = (proc.stderr or proc.stdout).strip().splitlines()
    return False, why[-1][:100] if why else f"exit {proc.returncode}"


def write_ndjson(path: Path, n: int) -> float:
    """n leads, a JSON object a line with the export's seven keys; seconds taken."""
    start = time.perf_counter()
    with path.open("w", encoding="utf-8") as out:
        for lead in datasets.rows(n, max(1, n // 100)):
            row = dict(zip(datasets.COLUMNS, lead, strict=True))
            out.write(
                json.dumps(
                    {
                        "id": row["id"],
                        "name": row["name"],
                        "email": row["email"],
                        "phone": row["phone"],
                        "chatflowid": row["chatflowid"],
                        "chatId": row["chat_id"],
                        "createdDate": row["created_date"].strftime(
                            "%Y-%m-%dT%H:%M:%SZ"
                        ),
                    },
                    separators=(",", ":"),
                )
                + "\n"
            )
    return time.perf_counter() - start


def _children(pid: int) -> list[int]:
    """The process's children (the importer's parsing process)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


class RssSeries:
    """VmRSS of one process and its children (summed) every `every` seconds
    while it runs."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.monotonic()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = harness.proc_status(self.pid, "VmRSS")
            if rss:
                rss += sum(
                    harness.proc_status(child, "VmRSS") for child in _children(self.pid)
                )
                self.samples.append((time.monotonic() - self._t0, rss))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def peak(self) -> int:
        """The highest VmRSS sampled once the program ran (the first samples may
        still be the forked copy of this process)."""
        after = [rss for t, rss in self.samples if t >= 0.3] or [0]
        return max(after)

    def at_fractions(self, fractions: tuple[float, ...]) -> list[float]:
        """RSS in MB at these fractions of the sampled time (the last sample before)."""
        if not self.samples:
            return []
        end = self.samples[-1][0]
        out = []
        for fraction in fractions:
            before = [rss for t, rss in self.samples if t <= fraction * end]
            out.append((before[-1] if before else self.samples[0][1]) / MB)
        return out


def run_import(
    url: str, path: Path, args: argparse.Namespace, log: Path
) -> dict[str, Any]:
    """`leads-gql import --format ndjson PATH` once: wall time, exit, peak RSS."""
    cmd = harness.leads_gql("import", "--format", "ndjson", str(path))
    stdout = log.with_suffix(".out")
    with log.open("wb") as err, stdout.open("wb") as out:
        start, ticks = time.perf_counter(), cpu_ticks()
        proc = subprocess.Popen(
            cmd,
            env=harness.service_env(url, args.secret),
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        series = RssSeries(proc.pid)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            series.stop()
        seconds = time.perf_counter() - start
        shares = cpu_shares(ticks)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = log.read_text(errors="replace").splitlines()
    printed = stdout.read_text(errors="replace").splitlines()
    return {
        "seconds": seconds,
        "exit": proc.returncode,
        # The highest RSS sampled after the exec: the child's ru_maxrss counts the
        # pages it shared with this process between fork and exec.
        "peak_rss_mb": series.peak() / MB,
        "rss_mb_at_25_50_75_100": [
            round(v, 1) for v in series.at_fractions((0.25, 0.5, 0.75, 1.0))
        ],
        "user_cpu_s": usage.ru_utime,
        "sys_cpu_s": usage.ru_stime,
        **shares,
        "stderr_tail": lines[-6:],
        "stdout_tail": printed[-6:],
    }


def count_sqlite(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM lead").fetchone()[0])
    finally:
        conn.close()


def count_postgres(dsn: str) -> int:
    async def count() -> int:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM lead"))
        finally:
            await conn.close()

    return asyncio.run(count())


def database_rate(db: str, url: str, data: Path, count: int) -> dict[str, Any]:
    """The database's own rate for the import's writes: the file's rows, made
    beforehand by the importer's own `prepare` (not timed), stored as the importer
    stores them (GROUP_LEADS leads a transaction, `count` connections each
    storing its `_shares` at its own pace; on SQLite by `bulk.insert_rows`, on
    PostgreSQL by `bulk.copy_rows`; the indexes put off and built after, as into
    an empty table), with nothing else to do (the split is made beforehand too).
    The importer's rate over this one is what validating, in the same two
    cores, costs it."""
    from leads_gql import importer
    from leads_gql.config import Settings, database_url
    from leads_gql.store import bulk, db as store, deferred

    driver_name = "sqlite+aiosqlite" if db == "sqlite" else "postgresql+asyncpg"
    copies = 0 if db == "sqlite" else count
    with data.open("rb") as stream:
        batches = [
            importer.prepare(chunk, "line", driver_name, False, copies)
            for chunk in importer._ndjson(stream)
        ]
    leads = sum(batch.records - len(batch.invalid) for batch in batches)

    async def store_all() -> float:
        engine = store.make_engine(Settings(database_url=database_url(url)))
        try:
            async with contextlib.AsyncExitStack() as scope:
                drivers = [
                    await scope.enter_async_context(store.driver_scope(engine))
                    for _ in range(count)
                ]
                if db == "sqlite":
                    await drivers[0].connection.execute(
                        f"PRAGMA cache_size = -{importer.SQLITE_CACHE_KIB}"
                    )
                shares = [importer._shares(batch, count) for batch in batches]
                start = time.perf_counter()
                await deferred.put_off(drivers[0].connection)

                async def lane(k: int) -> None:
                    # As Importer._lane: its own transactions, at its own pace.
                    driver = drivers[k]
                    transaction = importer._Transaction(driver)
                    pending = 0
                    savepoints = 0
                    for share in shares:
                        if not transaction.active:
                            await transaction.begin()
                        if share[k].copy is not None:
                            assert await bulk.copy_rows(driver, share[k].copy)
                            savepoints += 1
                        else:
                            await bulk.insert_rows(driver, share[k].rows)
                        pending += len(share[k].positions)
                        if (
                            pending >= importer.GROUP_LEADS // count
                            or savepoints >= importer.SAVEPOINTS
                        ):
                            await transaction.commit()
                            pending = savepoints = 0
                    if transaction.active:
                        await transaction.commit()

                await asyncio.gather(*(lane(k) for k in range(count)))
                await deferred.build([d.connection for d in drivers])
                return time.perf_counter() - start
        finally:
            await engine.dispose()

    ticks = cpu_ticks()
    seconds = asyncio.run(store_all())
    return {"leads": leads, "connections": count, "seconds": seconds,
            "rate": leads / seconds, **cpu_shares(ticks)}  # fmt: skip


def own_rates(
    db: str, args: argparse.Namespace, workdir: Path, data: Path, rate: float
) -> list[dict[str, Any]]:
    """`database_rate` into a fresh database: through the importer's number of
    connections and, on PostgreSQL, through one as well (what a second backend
    adds where the database has a core for it)."""
    from leads_gql import importer

    counts = [1] if db == "sqlite" else sorted({1, importer.POSTGRES_WRITERS})
    rates = []
    for count in counts:
        bare = workdir / "import-bare.db"
        name = "leads_writes_import_bare"
        url = f"sqlite:///{bare}" if db == "sqlite" else harness.fresh_pg(args.pg, name)
        harness.migrate(url, args.secret, workdir)
        say(f"[{db}] the database's own rate: the rows made beforehand, {count} conn.")
        own = database_rate(db, url, data, count)
        say(
            f"[{db}]   {own['seconds']:.1f} s, {own['rate']:,.0f} leads/s, CPU stolen "
            f"{own['stolen_pct']} %; the importer's rate is {rate / own['rate']:.0%} "
            "of it"
        )
        rates.append(own)
        discard(db, bare, args.pg, name)
    return rates


def discard(db: str, path: Path, admin: str, name: str) -> None:
    """An import's database, once measured: the SQLite file or the PostgreSQL one."""
    if db == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        drop_database(admin, name)


def imports(db: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Each size into a fresh, migrated database; the smallest imported twice."""
    report: dict[str, Any] = {"db": db, "runs": []}
    for n in args.import_sizes:
        data = workdir / f"leads-{n}.ndjson"
        if not data.exists():
            say(f"[import] writing {n:,} leads to {data.name}")
            seconds = write_ndjson(data, n)
            say(f"[import]   {data.stat().st_size / MB:.0f} MB in {seconds:.1f} s")
        tag = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}m"
        path = workdir / f"import-{tag}.db"
        name = f"leads_writes_import_{tag}"
        url = f"sqlite:///{path}" if db == "sqlite" else harness.fresh_pg(args.pg, name)
        harness.migrate(url, args.secret, workdir)

        def count() -> int:
            return count_sqlite(path) if db == "sqlite" else count_postgres(url)  # noqa: B023

        say(f"[{db}] import {n:,} leads")
        result = run_import(url, data, args, workdir / f"import-{db}-{tag}.log")
        result.update(leads=n, stored=count(), rate=n / result["seconds"])
        say(
            f"[{db}]   {result['seconds']:.1f} s, {result['rate']:,.0f} leads/s, exit "
            f"{result['exit']}, stored {result['stored']:,}, peak RSS "
            f"{result['peak_rss_mb']:.1f} MB (RSS at 25/50/75/100 %: "
            f"{result['rss_mb_at_25_50_75_100']}), CPU stolen "
            f"{result['stolen_pct']} %; {cpu_line(result)}"
        )
        for line in result["stderr_tail"][-2:] + result["stdout_tail"][-3:]:
            say(f"[{db}]   | {line}")
        if n == min(args.import_sizes):
            again = run_import(
                url, data, args, workdir / f"import-{db}-{tag}-again.log"
            )
            again.update(leads=n, stored=count(), rate=n / again["seconds"])
            result["rerun"] = again
            say(
                f"[{db}]   re-run: {again['seconds']:.1f} s, exit {again['exit']}, "
                f"stored {again['stored']:,}"
            )
        report["runs"].append(result)
        if n == max(args.import_sizes):
            report["database"] = own_rates(db, args, workdir, data, result["rate"])
        discard(db, path, args.pg, name)
        if db == "postgres" and n == max(args.import_sizes):
            report["indexes_kept"] = kept_indexes_import(args, workdir, data)
    return report


def kept_indexes_import(
    args: argparse.Namespace, workdir: Path, data: Path
) -> dict[str, Any]:
    """The same import into PostgreSQL with the indexes maintained row by row
    (information): a table that holds a lead already keeps its indexes, so
    this is what putting them off gains the import into an empty table."""
    name = "leads_writes_import_kept"
    url = harness.fresh_pg(args.pg, name)
    harness.migrate(url, args.secret, workdir)
    asyncio.run(
        harness.pg_admin(
            url,
            "INSERT INTO lead (id, chatflowid, chat_id, created_date, name) VALUES "
            "('00000000-0000-4000-8000-0000000000ff', "
            "'00000000-0000-4000-8000-0000000000ff', 'c', now(), 'one lead')",
        )
    )
    say(f"[postgres] import {data.name} into a table that holds a lead")
    result = run_import(url, data, args, workdir / "import-postgres-kept.log")
    result.update(stored=count_postgres(url) - 1)
    result["rate"] = result["stored"] / result["seconds"]
    say(
        f"[postgres]   {result['seconds']:.1f} s, {result['rate']:,.0f} leads/s, "
        f"exit {result['exit']}, {cpu_line(result)}"
    )
    drop_database(args.pg, name)
    return result


def cpu_line(run: dict[str, Any]) -> str:
    """An import's CPU time: the machine's, the importer's, and the rest (the
    database, mostly)."""
    own = run["user_cpu_s"] + run["sys_cpu_s"]
    busy = run["machine_busy_cpu_s"]
    return (
        f"CPU-s: machine {busy:.1f}, importer {own:.1f}, "
        f"the rest (the database) {busy - own:.1f}"
    )


# -- analysis ---------------------------------------------------------------------


def ratio(
    runs: list[dict[str, Any]], phase: str, a: str, b: str
) -> dict[str, Any] | None:
    values = harness.ratio_rounds(runs, phase, a, b, "ok_rps")
    if not values:
        return None
    return {
        "phase": phase,
        "a": a,
        "b": b,
        "rounds": values,
        "median": statistics.median(values),
    }


def create_rows(runs: list[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
    rows = harness.summarize(runs, phase)
    for row in rows:
        mine = [r for r in runs if r["phase"] == phase and r["target"] == row["target"]]
        row["ok_rps"] = statistics.median(r["ok_rps"] for r in mine)
    return rows


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    runs = result["runs"]
    ratios, checks = [], []

    def check(db: str, target: str, value: str, need: str, ok: bool | None) -> None:
        checks.append(
            {"db": db, "target": target, "value": value, "need": need, "pass": ok}
        )

    for db, (b, bound) in {
        "sqlite": ("flowise-create", TARGET_VS_FLOWISE),
        "postgres": ("ceil-insert", TARGET_VS_BARE),
    }.items():
        if db not in result["creates"]:
            continue
        phase = f"{db}/create"
        r = ratio(runs, phase, "svc-rest-create", b)
        gql = ratio(runs, phase, "svc-gql-create", b)
        for entry in (r, gql):
            if entry is not None:
                ratios.append(entry)
        name = f"REST creates/s at {result['args']['connections']} clients / {b}"
        if r is None:
            check(db, name, str(result["creates"][db].get("flowise")), f">= {bound}",
                  None)  # fmt: skip
        else:
            check(db, name, f"{r['median']:.2f}x", f">= {bound}", r["median"] >= bound)
        rows = create_rows(runs, phase)
        svc = [row for row in rows if row["target"].startswith("svc-")]
        acked = sum(row["acked"] for row in svc)
        stored = sum(row["acked_stored"] for row in svc)
        errors = sum(row["errors"] for row in svc)
        locked = sum(row["locked"] for row in svc) + result["creates"][db].get(
            "service_log_locked", 0
        )
        check(
            db,
            "leads-gql creates: no error, no 'locked', every acknowledged lead stored",
            f"{errors} errors, {locked} locked, {stored:,}/{acked:,} stored",
            "0, 0, all",
            errors == 0 and locked == 0 and stored == acked and acked > 0,
        )
    for db, report in result["imports"].items():
        if "skipped" in report:
            check(db, "import of NDJSON, leads/s", report["skipped"],
                  f">= {TARGET_IMPORT_RATE:,}", None)  # fmt: skip
            continue
        imported = report["runs"]
        big = max(imported, key=lambda r: r["leads"])
        small = min(imported, key=lambda r: r["leads"])
        check(
            db,
            f"import of {big['leads']:,} leads (NDJSON), leads/s",
            f"{big['rate']:,.0f} ({big['seconds']:.1f} s)",
            f">= {TARGET_IMPORT_RATE:,}",
            big["rate"] >= TARGET_IMPORT_RATE,
        )
        check(
            db,
            "import: every lead stored, exit 0",
            "; ".join(
                f"{r['stored']:,}/{r['leads']:,} exit {r['exit']}" for r in imported
            ),
            "all, 0",
            all(r["stored"] == r["leads"] and r["exit"] == 0 for r in imported),
        )
        series = big["rss_mb_at_25_50_75_100"]
        if len(series) == 4:
            # From half way: by then SQLite's page cache, a fixed allowance
            # (importer.SQLITE_CACHE_KIB), is full; what still grows grows with
            # the input.
            drift = series[2] - series[1]
            check(
                db,
                f"importer RSS through the {big['leads']:,}-lead import, at 75 % "
                "- at 50 % of its time",
                f"{drift:+.1f} MB ({series[1]} -> {series[2]})",
                f"<= {IMPORT_RSS_DRIFT_MB:.0f} MB",
                drift <= IMPORT_RSS_DRIFT_MB,
            )
        if big is not small:
            growth = big["peak_rss_mb"] - small["peak_rss_mb"]
            # A small database cannot fill the page cache that a large one fills.
            cache = IMPORT_SQLITE_CACHE_MB if db == "sqlite" else 0.0
            check(
                db,
                f"importer peak RSS, {big['leads']:,} - {small['leads']:,} leads"
                + (f", less the {cache:.0f} MB page cache" if cache else ""),
                f"{growth - cache:+.1f} MB ({small['peak_rss_mb']:.1f} -> "
                f"{big['peak_rss_mb']:.1f})",
                f"<= {IMPORT_RSS_GROWTH_MB:.0f} MB",
                growth - cache <= IMPORT_RSS_GROWTH_MB,
            )
        again = small.get("rerun")
        if again is not None:
            check(
                db,
                f"re-run of the {small['leads']:,}-lead file stores nothing twice",
                f"{again['stored']:,} stored after it, exit {again['exit']}, "
                f"{again['rate']:,.0f} leads/s",
                f"{small['leads']:,}",
                again["stored"] == small["leads"],
            )
    return {"ratios": ratios, "checks": checks}


# -- report -----------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else "PASS" if ok else "**FAIL**"


def markdown(result: dict[str, Any]) -> str:
    args, mach = result["args"], result["machine"]
    table = harness.md_table
    out = [
        f"# leads-gql writes benchmark, {result['started']} ({result['mode']})",
        "",
        f"Command: `{result['command']}`  ",
        f"Service commit {result['commit_at_start']} at start, {mach['commit']} at the "
        f"end. Creates: wrk -t{args['threads']} -c{args['connections']}, "
        f"{args['duration']} s a run after a {args['warmup']} s warm-up, "
        f"{args['pairs']} alternating rounds; wall time "
        f"{result['wall_seconds'] / 60:.1f} min.  ",
        f"Machine: {mach['nproc']} cores ({mach['cpu']}; a fixed Python loop, "
        f"`harness.cpu_reference`: {mach.get('cpu_reference_s')} s), "
        f"memory {mach['memory']}, "
        f"Linux {mach['kernel']}, Python {mach['python']}, SQLite {mach['sqlite']}, "
        f"{mach['postgres']}, {mach['wrk']}, node {result['node']}, Flowise "
        f"{result['flowise']}.  ",
        "Load average (1 min): "
        + ", ".join(f"{v} {k}" for k, v in result["load_average_1min"].items())
        + " (above ~1.5 something else was running).",
        "",
        "## Targets (issue #13)",
        "",
        table(
            ["db", "target", "measured", "need", "result"],
            [
                [c["db"], c["target"], c["value"], c["need"], verdict(c["pass"])]
                for c in result["analysis"]["checks"]
            ],
        ),
    ]
    if result["analysis"]["ratios"]:
        out += ["", "## Ratios of successful creates/s, round by round", ""]
        out.append(
            table(
                ["ratio", "rounds", "median"],
                [
                    [
                        f"{r['phase']}: {r['a']} / {r['b']}",
                        " ".join(f"{v:.2f}" for v in r["rounds"]),
                        f"**{r['median']:.2f}**",
                    ]
                    for r in result["analysis"]["ratios"]
                ],
            )
        )
    for db, report in result["creates"].items():
        phase = f"{db}/create"
        out += ["", f"## Creates, {db} (medians over the rounds)", ""]
        out.append(
            table(
                [
                    "target",
                    "ok creates/s",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                    "acked",
                    "acked & stored",
                    "peak RSS MB",
                ],
                [
                    [
                        r["target"],
                        f"{r['ok_rps']:.0f}",
                        f"{r['rps']:.0f}",
                        f"{r['p50_ms']:.2f}",
                        f"{r['p99_ms']:.2f}",
                        r["errors"],
                        f"{r['acked']:,}",
                        f"{r['acked_stored']:,}",
                        f"{r['peak_rss_mb']:.1f}",
                    ]
                    for r in create_rows(result["runs"], phase)
                ],
            )  # fmt: skip
        )
        notes = {k: v for k, v in report.items() if k != "db"}
        out += ["", "Details: " + json.dumps(notes, default=str)]
    for db, report in result["imports"].items():
        out += ["", f"## Import, {db}", ""]
        if "skipped" in report:
            out.append(f"Skipped: {report['skipped']}")
            continue
        rows = []
        for r in report["runs"]:
            for label, run in (("", r), (" (re-run)", r.get("rerun"))):
                if run is None:
                    continue
                rows.append(
                    [
                        f"{r['leads']:,}{label}",
                        f"{run['seconds']:.1f}",
                        f"{run['rate']:,.0f}",
                        f"{run['peak_rss_mb']:.1f}",
                        " / ".join(str(v) for v in run["rss_mb_at_25_50_75_100"]),
                        f"{run['user_cpu_s']:.1f} + {run['sys_cpu_s']:.1f}",
                        run.get("machine_busy_cpu_s", "-"),
                        run.get("stolen_pct", "-"),
                        f"{run['stored']:,}",
                        run["exit"],
                        "<br>".join(
                            run["stderr_tail"][-1:] + run["stdout_tail"][-3:]
                        ).replace("|", "\\|"),
                    ]
                )
        out.append(
            table(
                [
                    "leads",
                    "seconds",
                    "leads/s",
                    "peak RSS MB",
                    "RSS at 25/50/75/100 %",
                    "importer CPU user + sys s",
                    "machine busy CPU s",
                    "CPU stolen %",
                    "stored after",
                    "exit",
                    "last line of stderr, then of stdout",
                ],
                rows,
            )  # fmt: skip
        )
        if report.get("database"):
            big = max(report["runs"], key=lambda r: r["leads"])
            out += [
                "",
                "The database's own rate (information; `database_rate`): the same "
                "rows, validated beforehand, stored as the importer stores them:",
                "",
            ]
            for own in report["database"]:
                share = big["rate"] / own["rate"]
                out.append(
                    f"- through {own['connections']} connection(s): "
                    f"{own['leads']:,} in {own['seconds']:.1f} s, **{own['rate']:,.0f} "
                    f"leads/s** (CPU stolen: {own['stolen_pct']} %); the importer's "
                    f"rate is {share:.0%} of it"
                )
        kept = report.get("indexes_kept")
        if kept:
            out += [
                "",
                "The same import into a table that holds a lead, which keeps its "
                "indexes and maintains them row by row (information; "
                f"`kept_indexes_import`): {kept['stored']:,} stored in "
                f"{kept['seconds']:.1f} s, **{kept['rate']:,.0f} leads/s**, "
                f"exit {kept['exit']}; {cpu_line(kept)}.",
            ]
    if not result["runs"]:
        return "\n".join(out) + "\n"
    out += ["", "## Every create run", ""]
    out.append(
        table(
            [
                "phase",
                "round",
                "target",
                "ok/s",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "acked",
                "stored",
                "peak RSS MB",
            ],
            [
                [
                    r["phase"],
                    r["round"],
                    r["target"],
                    f"{r['ok_rps']:.0f}",
                    f"{r['rps']:.0f}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    r["errors"],
                    r["acked"],
                    r.get("acked_stored", ""),
                    f"{r['peak_rss_mb']:.1f}",
                ]
                for r in result["runs"]
            ],
        )  # fmt: skip
    )
    return "\n".join(out) + "\n"


# -- main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, small files")
    parser.add_argument("--duration", type=float, help="seconds per run (10; quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up (3; quick 1)")
    parser.add_argument("--pairs", type=int, help="alternating rounds (5; quick 3)")
    parser.add_argument("--gap", type=float, default=0.3, help="pause between runs")
    parser.add_argument(
        "--flowise-warmup", type=float, help="Flowise's own warm-up, s (15; quick 8)"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument("--part", default="creates,import", help="creates,import")
    parser.add_argument(
        "--import-sizes", help="leads per file (100000,1000000; quick 10000,100000)"
    )
    parser.add_argument(
        "--flowise-dir", type=Path, default=flowise.DEFAULT_DIR,
        help=f"Flowise's install (bench/flowise.py install; {flowise.DEFAULT_DIR})",
    )  # fmt: skip
    parser.add_argument(
        "--pg", default="postgresql://postgres@127.0.0.1:5432/test",
        help="an existing PostgreSQL database, used to create leads_writes_*",
    )  # fmt: skip
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="LEADS_X=VALUE",
        help="extra environment for the service under test",
    )  # fmt: skip
    parser.add_argument(
        "--wait-quiet", type=float, default=0, metavar="MINUTES",
        help="first wait up to MINUTES for the machine to be idle (shared machines)",
    )  # fmt: skip
    parser.add_argument("--install-wrk", action="store_true")
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument("--out", type=Path, default=harness.RESULTS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.warmup = args.warmup or (1.0 if quick else 3.0)
    args.pairs = args.pairs or (3 if quick else 5)
    if args.flowise_warmup is None:
        args.flowise_warmup = 8.0 if quick else 15.0
    sizes = args.import_sizes or ("10000,100000" if quick else "100000,1000000")
    args.import_sizes = sorted({int(s) for s in sizes.split(",") if s.strip()})
    args.dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    args.parts = [p.strip() for p in args.part.split(",") if p.strip()]
    for db in args.dbs:
        if db not in ("sqlite", "postgres"):
            parser.error(f"--db: unknown database {db!r}")
    for part in args.parts:
        if part not in ("creates", "import"):
            parser.error(f"--part: unknown part {part!r}")
    args.flowise_dir = args.flowise_dir.resolve()
    args.secret = secrets.token_urlsafe(48)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "creates" in args.parts:
        harness.ensure_wrk(args.install_wrk)
    started = datetime.now()
    commit_at_start = harness.service_commit()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="leads-bench-writes-"))
    say(f"bench: work directory {workdir}")

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        token = subprocess.run(
            harness.leads_gql("token", "--scope", "leads:read leads:write",
                              "--ttl", "86400"),
            env=harness.service_env("sqlite:///unused.db", args.secret),
            cwd=workdir, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        bench = harness.Bench(args, workdir, token)
        creates: dict[str, Any] = {}
        imported: dict[str, Any] = {}
        loads: dict[str, float] = {}
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        load_average("start", loads)
        if "creates" in args.parts:
            for db in args.dbs:
                creates[db] = (sqlite_creates if db == "sqlite" else postgres_creates)(
                    bench, args, workdir
                )
                load_average(f"after {db} creates", loads)
        if "import" in args.parts:
            ok, why = import_available()
            for db in args.dbs:
                if ok:
                    imported[db] = imports(db, args, workdir)
                else:
                    imported[db] = {
                        "db": db,
                        "skipped": "`leads-gql import` does not exist in this tree "
                        f"yet ({why})",
                    }
                    say(f"[{db}] import skipped: {imported[db]['skipped']}")
                load_average(f"after {db} import", loads)
        add_ok_rate(bench.runs)
        node = shutil.which("node")
        result: dict[str, Any] = {
            "started": started.strftime("%Y-%m-%d %H:%M"),
            "mode": "quick" if args.quick else "full",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": {k: v for k, v in vars(args).items() if k not in ("secret", "out")},
            "machine": harness.machine(),
            "node": harness.sh("node --version") if node else "(none)",
            "flowise": flowise.installed_version(args.flowise_dir) or "(not installed)",
            "commit_at_start": commit_at_start,
            "load_average_1min": loads,
            "creates": creates,
            "imports": imported,
            "runs": bench.runs,
            "wall_seconds": time.monotonic() - t0,
        }
        result["analysis"] = analyse(result)
        args.out.mkdir(parents=True, exist_ok=True)
        suffix = "-writes" + ("-quick" if args.quick else "")
        stem = args.out / f"{started:%Y-%m-%d-%H%M}{suffix}"
        n = 1
        while stem.with_suffix(".md").exists():
            n += 1
            stem = args.out / f"{started:%Y-%m-%d-%H%M}{suffix}-{n}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
        stem.with_suffix(".md").write_text(markdown(result))
        say("")
        for c in result["analysis"]["checks"]:
            say(
                f"{verdict(c['pass']).strip('*')}  [{c['db']}] {c['target']}: "
                f"{c['value']} (need {c['need']})"
            )
        minutes = result["wall_seconds"] / 60
        say(f"\nbench: wrote {stem}.md and .json in {minutes:.1f} min")
        return 1 if any(c["pass"] is False for c in result["analysis"]["checks"]) else 0
    except KeyboardInterrupt as stop:
        say(f"bench: interrupted ({str(stop) or 'Ctrl-C'}); cleaning up")
        return 130
    finally:
        harness.stop_all()
        harness.drop_pg(args.pg)
        if args.keep_workdir:
            say(f"bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
