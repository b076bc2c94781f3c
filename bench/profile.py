"""Profile the service under load with py-spy: where does a request's time go?

    .venv/bin/python bench/profile.py --db postgres --mode rest_list --seconds 20
    .venv/bin/python bench/profile.py --db sqlite --mode gql_list,rest_list

Loads the 10k dataset, starts `leads-gql serve` (auth on), drives it with wrk at 32
connections (bench/leads.lua), and meanwhile samples the server with
`py-spy record --format raw` (collapsed stacks, subprocesses off, idle threads
excluded). Writes bench/results/profiles/<commit>-<db>-<mode>.txt (the folded
stacks, for speedscope or flamegraph.pl, stay in the work directory with
--keep-workdir) and prints:

  - self time by package (the innermost frame's package),
  - the functions with the most self time,
  - the functions with the most inclusive time (on the stack at all).

Needs py-spy (`.venv/bin/pip install -r bench/requirements.txt`), ptrace rights.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run  # noqa: E402

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def package(path: str) -> str:
    """py-spy prints paths relative to sys.path: `starlette/routing.py`."""
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if path.startswith("leads_gql/"):
        return path.removesuffix(".py")
    return path.split("/", 1)[0].removesuffix(".py") or "?"


def frame_name(frame: str) -> tuple[str, str]:
    match = FRAME.match(frame)
    if not match:
        return frame, "?"
    path = match["file"]
    return f"{match['func']} ({package(path)})", package(path)


def summarize(folded: Path, top: int) -> str:
    total = 0
    by_package: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        # py-spy's raw format starts with the thread ("process ... / thread ...").
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        names = [frame_name(f) for f in frames]
        leaf, leaf_package = names[-1]
        by_package[leaf_package] += count
        self_time[leaf] += count
        for name in {n for n, _ in names}:
            inclusive[name] += count

    def pct(n: int) -> str:
        return f"{100 * n / max(1, total):5.1f}%"

    out = [f"samples: {total}", "", "self time by package:"]
    out += [f"  {pct(n)}  {name}" for name, n in by_package.most_common(top)]
    out += ["", "self time by function:"]
    out += [f"  {pct(n)}  {name}" for name, n in self_time.most_common(top)]
    out += ["", "inclusive time by function:"]
    out += [f"  {pct(n)}  {name}" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--mode", default="rest_list,gql_list")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples/s")
    parser.add_argument("--gil", action="store_true", help="py-spy --gil")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument(
        "--label", default=None, help="file name prefix (default: the service commit)"
    )
    args = parser.parse_args(argv)
    label = args.label or run.service_commit().replace(" ", "-").strip("()")
    out_dir = run.RESULTS / "profiles"
    py_spy = shutil.which("py-spy") or str(run.BIN / "py-spy")
    if not Path(py_spy).exists():
        sys.exit("bench: py-spy is required: .venv/bin/pip install py-spy")
    run.ensure_wrk(False)
    args.secret = run.secrets.token_urlsafe(48)
    args.quick = True
    workdir = Path(tempfile.mkdtemp(prefix="leads-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        data = run.prepare(args.db, "10k", args, workdir)
        token = subprocess.run(
            run.leads_gql("token", "--ttl", "86400"),
            env=run.service_env(data.service_url, args.secret),
            cwd=workdir,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        server = run.Server(
            f"svc-{args.db}",
            run.leads_gql("serve", "--port", "{port}"),
            run.service_env(data.service_url, args.secret),
            workdir,
        )
        server.start()
        server.wait_ready()
        bench = run.Bench(argparse.Namespace(threads=1, connections=32), workdir, token)
        for mode in args.mode.split(","):
            target = run.Target(mode, server, mode, 100)
            bench.wrk(target, 3, "warmup", None)
            folded = workdir / f"profile-{args.db}-{mode}.folded"
            spy = subprocess.Popen(
                [py_spy, "record", "-p", str(server.pid), "-r", str(args.rate),
                 "-d", str(args.seconds), "-f", "raw", "-o", str(folded),
                 ] + (["--gil"] if args.gil else []),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            result = bench.wrk(target, args.seconds + 1, "profile", None)
            spy.wait(args.seconds + 60)
            summary = (
                f"# py-spy, service {label}, {args.db}, {mode}, "
                f"{args.seconds} s at 32 connections"
                f"{' (--gil)' if args.gil else ''}\n"
                f"# load while sampling: {result['rps']:.0f} req/s, "
                f"p50 {result['p50_ms']:.1f} ms (py-spy slows the server)\n"
                + summarize(folded, args.top)
            )
            suffix = "-gil" if args.gil else ""
            text_path = out_dir / f"{label}-{args.db}-{mode}{suffix}.txt"
            text_path.write_text(summary)
            run.say(summary)
            run.say(f"bench: wrote {text_path}")
        return 0
    finally:
        run.stop_all()
        run.drop_pg(args.pg)
        if args.keep_workdir:
            run.say(f"bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
