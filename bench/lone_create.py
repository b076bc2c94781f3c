"""A lone create's latency, before and after group commit (issue #13).

    .venv/bin/python bench/lone_create.py                   # SQLite and PostgreSQL
    .venv/bin/python bench/lone_create.py --before 4fb1c5c --db sqlite

Group commit must not make a create that arrives alone wait for company. This
runs the service as it is (`now`) and as it was at `--before` (a git worktree of
that commit, put first on PYTHONPATH), each on a fresh database of its own, and
sends creates one at a time over one keep-alive connection (wrk -c1 -t1,
bench/leads.lua `rest_create`), alternating rounds. Target: now's median p50
latency at most 1.10x before's (the machine's noise is of that order).

Results: bench/results/YYYY-MM-DD-HHMM-lone-create.{md,json}; exit 1 when the
target fails. Servers on 127.0.0.1, stopped at the end; databases dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as harness  # noqa: E402

TARGET = 1.10
PG_DATABASES = {"now": "leads_lone_now", "before": "leads_lone_before"}


def server(
    name: str, url: str, args: argparse.Namespace, workdir: Path, tree: Path | None
) -> harness.Server:
    env = harness.service_env(url, args.secret)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return harness.Server(
        name,
        [sys.executable, "-m", "leads_gql", "serve", "--host", "127.0.0.1",
         "--port", "{port}"],
        env,
        workdir,
    )  # fmt: skip


def measure(db: str, args: argparse.Namespace, workdir: Path, tree: Path) -> Any:
    if db == "sqlite":
        urls = {name: f"sqlite:///{workdir}/{name}.db" for name in ("now", "before")}
    else:
        urls = {k: harness.fresh_pg(args.pg, v) for k, v in PG_DATABASES.items()}
    servers = {
        "now": server(f"now-{db}", urls["now"], args, workdir, None),
        "before": server(f"before-{db}", urls["before"], args, workdir, tree),
    }
    for each in servers.values():
        each.start()
    for each in servers.values():
        each.wait_ready()
    token = subprocess.run(
        harness.leads_gql("token", "--scope", "leads:write", "--ttl", "3600"),
        env=harness.service_env(urls["now"], args.secret),
        cwd=workdir,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    bench = harness.Bench(args, workdir, token)
    targets = [
        harness.Target(f"{name}-{db}", each, "rest_create")
        for name, each in servers.items()
    ]
    harness.say(f"[{db}] lone creates: {', '.join(t.label for t in targets)}")
    bench.rounds(db, targets)
    for each in servers.values():
        each.stop()
    if db == "postgres":
        harness.drop_pg(args.pg)
    runs = bench.runs
    figures = {
        name: {
            key: statistics.median(
                r[key] for r in runs if r["target"] == f"{name}-{db}"
            )
            for key in ("p50_ms", "p99_ms", "rps")
        }
        for name in servers
    }
    ratio = figures["now"]["p50_ms"] / figures["before"]["p50_ms"]
    return {"runs": runs, "figures": figures, "p50_ratio": ratio}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# A lone create, before and after group commit, {result['when']}",
        "",
        f"Command: `{result['command']}`  ",
        f"now: commit {result['commit']}; before: {result['before']}. One keep-alive "
        f"connection, one create at a time (wrk -c1 -t1), {result['duration']} s a "
        f"round, {result['pairs']} rounds alternating; medians over rounds. "
        f"Load average at the start: {result['load']}.",
        "",
        "| db | before p50 ms | now p50 ms | before p99 ms | now p99 ms | now / before"
        " (p50) | need | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for db, report in result["dbs"].items():
        f = report["figures"]
        ok = report["p50_ratio"] <= TARGET
        lines.append(
            f"| {db} | {f['before']['p50_ms']:.2f} | {f['now']['p50_ms']:.2f} | "
            f"{f['before']['p99_ms']:.2f} | {f['now']['p99_ms']:.2f} | "
            f"{report['p50_ratio']:.2f} | <= {TARGET} | "
            f"{'PASS' if ok else '**FAIL**'} |"
        )
    lines += ["", "Rounds:", "", "| db | round | target | req/s | p50 ms | p99 ms |"]
    lines.append("|---|---|---|---|---|---|")
    for db, report in result["dbs"].items():
        for r in report["runs"]:
            lines.append(
                f"| {db} | {r['round']} | {r['target']} | {r['rps']:.0f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="4fb1c5c", help="commit before #13")
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args(argv)
    # What harness.Bench reads.
    args.threads, args.connections, args.warmup, args.gap = 1, 1, 2, 0.5
    args.secret = "lone-create-bench-" + "x" * 32
    repo = BENCH.parent
    with tempfile.TemporaryDirectory(prefix="leads-lone-") as tmp:
        workdir, tree = Path(tmp), Path(tmp) / "before"
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", str(tree),
             args.before],
            check=True, capture_output=True,
        )  # fmt: skip
        try:
            result: dict[str, Any] = {
                "when": datetime.now().strftime("%Y-%m-%d %H:%M"),
                "command": " ".join(["python", "bench/lone_create.py", *sys.argv[1:]]),
                "commit": harness.service_commit(),
                "before": args.before,
                "duration": args.duration,
                "pairs": args.pairs,
                "load": round(os.getloadavg()[0], 2),
                "dbs": {
                    db: measure(db, args, workdir, tree) for db in args.db.split(",")
                },
            }
        finally:
            harness.stop_all()
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                capture_output=True,
            )
    stamp = time.strftime("%Y-%m-%d-%H%M")
    out = Path(args.out)
    (out / f"{stamp}-lone-create.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / f"{stamp}-lone-create.md").write_text(text)
    harness.say(text)
    return 0 if all(r["p50_ratio"] <= TARGET for r in result["dbs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
