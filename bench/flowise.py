"""Flowise 3.1.2 for issue #13's comparison: installed outside the repo, run on demand.

    .venv/bin/python bench/flowise.py install          # npm, into ../flowise-bench
    .venv/bin/python bench/flowise.py check            # start, POST a lead with no
                                                       # token, read it back, stop
    .venv/bin/python bench/flowise.py serve [--port P] # run until Ctrl-C
    .venv/bin/python bench/flowise.py ... --dir DIR    # another install directory

`install` runs `npm install flowise@3.1.2 --ignore-scripts` (no install script of any
package runs, so nothing is downloaded besides the npm packages) and then
`npm rebuild sqlite3` (the one native module Flowise needs on SQLite, compiled here).
It takes a few minutes and about 3 GB; nothing of it goes into the repository.

`Flowise` (used by bench/writes.py) starts `flowise start` bound to 127.0.0.1 on a free
port with everything it writes (its SQLite `database.sqlite`, keys, logs, blobs, even
its `$HOME/.flowise`) in a directory of the caller's, waits for `GET /api/v1/ping`, and
stops it (TERM, then KILL). `POST /api/v1/leads` needs no auth in this version (it is in
Flowise's WHITELIST_URLS); `check` shows it.

Needs node 18.15+ or 20 and npm (Debian: apt-get install -y nodejs npm), a C++
toolchain for the sqlite3 rebuild (build-essential, python3).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as harness  # noqa: E402

VERSION = "3.1.2"
DEFAULT_DIR = BENCH.parent.parent / "flowise-bench"  # beside the repository


def say(message: str) -> None:
    harness.say(message)


# -- install ---------------------------------------------------------------------


def entry_point(install_dir: Path) -> Path:
    return install_dir / "node_modules" / "flowise" / "bin" / "run"


def installed_version(install_dir: Path) -> str | None:
    manifest = install_dir / "node_modules" / "flowise" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def sqlite_binding(install_dir: Path) -> Path:
    return install_dir / "node_modules/sqlite3/build/Release/node_sqlite3.node"


def is_installed(install_dir: Path) -> bool:
    return (
        installed_version(install_dir) == VERSION
        and entry_point(install_dir).exists()
        and sqlite_binding(install_dir).exists()
    )


def install(install_dir: Path, *, force: bool = False) -> None:
    """npm install flowise@VERSION --ignore-scripts, then npm rebuild sqlite3."""
    if is_installed(install_dir) and not force:
        say(f"flowise: {VERSION} is installed in {install_dir}")
        return
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            sys.exit(
                f"flowise: {tool} is required (Debian: apt-get install -y nodejs npm)"
            )
    node = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    major = int(node.lstrip("v").split(".")[0])
    if major not in (18, 20):
        say(f"flowise: warning: Flowise {VERSION} wants node 18.15+ or 20, not {node}")
    install_dir.mkdir(parents=True, exist_ok=True)
    manifest = install_dir / "package.json"
    if not manifest.exists():
        manifest.write_text(
            json.dumps(
                {"name": "flowise-bench", "private": True, "description": __doc__[:60]},
                indent=2,
            )
            + "\n"
        )
    steps = [
        # --save-exact: a later `npm install` in this directory keeps 3.1.2.
        ["npm", "install", f"flowise@{VERSION}", "--ignore-scripts", "--save-exact",
         "--no-audit", "--no-fund", "--loglevel=error"],
        ["npm", "rebuild", "sqlite3", "--loglevel=error"],
    ]  # fmt: skip
    for cmd in steps:
        say(f"flowise: {' '.join(cmd)}  (in {install_dir})")
        t0 = time.monotonic()
        subprocess.run(cmd, cwd=install_dir, check=True)
        say(f"flowise:   done in {time.monotonic() - t0:.0f} s")
    if not is_installed(install_dir):
        sys.exit(f"flowise: the install in {install_dir} is incomplete")
    say(f"flowise: {VERSION} installed in {install_dir}")


# -- run -------------------------------------------------------------------------


def postgres_env(url: str) -> dict[str, str]:
    """Flowise's DATABASE_* variables for postgresql://user[:password]@host[:port]/db."""
    parts = urlsplit(url)
    return {
        "DATABASE_TYPE": "postgres",
        "DATABASE_HOST": parts.hostname or "127.0.0.1",
        "DATABASE_PORT": str(parts.port or 5432),
        "DATABASE_USER": unquote(parts.username or "postgres"),
        "DATABASE_PASSWORD": unquote(parts.password or ""),
        "DATABASE_NAME": parts.path.lstrip("/"),
    }


class Flowise(harness.Server):
    """`flowise start` on 127.0.0.1; its files under `data_dir`, SQLite by default.

    A bench/run.py Server (RUNNING, stop_all(), RSS), so a benchmark drives it like
    the other targets; only readiness differs (GET /api/v1/ping answers "pong").
    """

    def __init__(
        self,
        install_dir: Path,
        data_dir: Path,
        *,
        name: str = "flowise",
        postgres_url: str | None = None,
        port: int | None = None,
    ) -> None:
        if not is_installed(install_dir):
            raise RuntimeError(
                f"Flowise {VERSION} is not installed in {install_dir}: run "
                f"bench/flowise.py install --dir {install_dir}"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "FLOWISE_", "SECRETKEY_", "NODE_"))
        }
        env.update(
            HOME=str(data_dir / "home"),  # Flowise always makes $HOME/.flowise
            HOST="127.0.0.1",
            PORT="{port}",
            DATABASE_TYPE="sqlite",
            DATABASE_PATH=str(data_dir),  # a directory: <it>/database.sqlite
            SECRETKEY_PATH=str(data_dir),
            LOG_PATH=str(data_dir / "logs"),
            BLOB_STORAGE_PATH=str(data_dir / "storage"),
            DISABLE_FLOWISE_TELEMETRY="true",
            LOG_LEVEL="warn",
            NODE_ENV="production",
        )
        if postgres_url is not None:
            env.pop("DATABASE_PATH")
            env.update(postgres_env(postgres_url))
        (data_dir / "home").mkdir(exist_ok=True)
        super().__init__(name, ["node", str(entry_point(install_dir)), "start"],
                         env, data_dir)  # fmt: skip
        if port is not None:
            self.port = port
        self.env = {k: v.replace("{port}", str(self.port)) for k, v in env.items()}

    @property
    def db_path(self) -> Path:
        return self.data_dir / "database.sqlite"

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self.url + "/api/v1/ping", timeout=2) as r:
                    if r.status == 200 and r.read().strip() == b"pong":
                        return
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not start in {timeout}s:\n{self.tail()}")

    def version(self) -> str:
        with urllib.request.urlopen(self.url + "/api/v1/version", timeout=5) as r:
            return str(json.loads(r.read()).get("version"))

    def stop(self, timeout: float = 20) -> None:
        super().stop(timeout)
        with contextlib.suppress(ValueError):
            harness.RUNNING.remove(self)


def post_json(
    url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers=headers
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


# -- commands --------------------------------------------------------------------


def check(install_dir: Path) -> int:
    """Start Flowise on a fresh SQLite, POST leads with no token, show the rows."""
    with tempfile.TemporaryDirectory(prefix="flowise-check-") as tmp:
        flowise = Flowise(install_dir, Path(tmp))
        t0 = time.monotonic()
        flowise.start()
        try:
            flowise.wait_ready()
            say(
                f"flowise: {flowise.version()} ready at {flowise.url} in "
                f"{time.monotonic() - t0:.1f} s (pid {flowise.pid})"
            )
            lead = {
                "chatflowid": "00000000-0000-4000-9000-000000000001",
                "name": "Ada Lovelace",
                "email": "ada@example.com",
                "phone": "+44 20 7946 0000",
                "chatId": "check-1",
            }
            results = []
            for label, headers in (
                ("no Authorization header", {}),
                ("a bogus bearer token", {"Authorization": "Bearer not-a-key"}),
            ):
                status, body = post_json(flowise.url + "/api/v1/leads", lead, headers)
                say(f"flowise: POST /api/v1/leads with {label}: {status} {body}")
                results.append(status == 200 and isinstance(body, dict))
            conn = sqlite3.connect(flowise.db_path)
            try:
                conn.row_factory = sqlite3.Row
                rows = [
                    dict(r)
                    for r in conn.execute(
                        "SELECT *, typeof(createdDate) AS stored_as FROM lead"
                    )
                ]
            finally:
                conn.close()
            for row in rows:
                say(f"flowise: stored {row}")
            ok = all(results) and len(rows) == 2
            say(f"flowise: {'OK' if ok else 'FAILED'}: creates need no auth")
            return 0 if ok else 1
        finally:
            flowise.stop()


def serve(
    install_dir: Path, port: int | None, data: Path | None, pg: str | None
) -> int:
    data_dir = data or Path(tempfile.mkdtemp(prefix="flowise-"))
    if data is None:
        say("flowise: a temporary data directory, removed when it stops")
    flowise = Flowise(install_dir, data_dir, postgres_url=pg, port=port)
    flowise.start()
    stop = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        flowise.wait_ready()
        where = pg or flowise.db_path
        say(f"flowise: {flowise.version()} at {flowise.url}, database {where}")
        say(f"flowise: log {flowise.log}; Ctrl-C stops it")
        while (
            not stop and flowise.process is not None and flowise.process.poll() is None
        ):
            time.sleep(0.5)
    finally:
        flowise.stop()
        if data is None:
            shutil.rmtree(data_dir, ignore_errors=True)
        say("flowise: stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["install", "check", "serve"])
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR,
        help=f"install directory, outside the repository (default {DEFAULT_DIR})",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="install: reinstall")
    parser.add_argument("--port", type=int, help="serve: port (default: a free one)")
    parser.add_argument("--data", type=Path, help="serve: data directory (temp)")
    parser.add_argument("--pg", help="serve: postgresql://user@host:port/existing_db")
    args = parser.parse_args(argv)
    install_dir = args.dir.resolve()
    if args.command == "install":
        install(install_dir, force=args.force)
        return 0
    if args.command == "check":
        return check(install_dir)
    return serve(install_dir, args.port, args.data, args.pg)


if __name__ == "__main__":
    sys.exit(main())
