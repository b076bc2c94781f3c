"""The `leads-gql` command: serve | token | export-schema | migrate | export | import |
purge."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from leads_gql import __version__
from leads_gql.config import DEV_SECRET_FILE, ConfigError, Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from leads_gql.importer import Source, Summary

# What `leads-gql token` grants unless told otherwise.
DEFAULT_SCOPES = "leads:read leads:write"


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")


def _settings_with_secret(*, announce: bool) -> Settings:
    from leads_gql.auth import with_dev_secret

    settings, dev = with_dev_secret(Settings.from_env(), Path(DEV_SECRET_FILE))
    if dev and announce:
        _say(
            f"leads-gql: LEADS_JWT_SECRET is not set; using the development secret "
            f"in ./{DEV_SECRET_FILE}.\n"
            "leads-gql: get a token (in this directory) with:\n"
            '  leads-gql token --scope "leads:read leads:write"'
        )
    return settings


async def _prepare_database(settings: Settings, *, migrate: bool) -> None:
    from leads_gql.store import db

    engine = db.make_engine(settings)
    try:
        if migrate:
            await db.migrate(engine)
        else:
            await db.check_schema(engine)
    finally:
        await engine.dispose()


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from leads_gql.store import db
    from leads_gql.telemetry import log_config
    from leads_gql.web.connections import (
        PROTOCOL,
        WS_PROTOCOL,
        raise_open_file_limit,
    )

    settings = _settings_with_secret(announce=True)
    try:
        asyncio.run(_prepare_database(settings, migrate=not args.no_migrate))
    except db.SchemaBehind as exc:
        _say(f"leads-gql: refusing to start: {exc}")
        return 1
    except ModuleNotFoundError as exc:
        _say(f"leads-gql: {exc}; for PostgreSQL: pip install 'leads-gql[postgres]'")
        return 1
    except OSError as exc:
        _say(f"leads-gql: cannot reach the database: {exc}")
        return 1
    # Worker processes inherit the limit.
    open_files = raise_open_file_limit()
    if open_files is not None and settings.max_connections + 100 > open_files:
        _say(
            f"leads-gql: warning: LEADS_MAX_CONNECTIONS={settings.max_connections} "
            f"is close to the open-file limit ({open_files}); lower it or raise "
            "the limit (ulimit -n)"
        )
    # Migrated (or checked) above, once, before the server takes requests. With
    # several workers each process builds its own app (and pool) from the same
    # environment; the parent only supervises them.
    uvicorn.run(
        server_app() if args.workers == 1 else "leads_gql.cli:server_app",
        factory=args.workers > 1,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=log_config(args.log_level),
        # uvicorn's access log prints query strings; the app logs requests as JSON.
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=20,
        # Bounds on heads, slow clients and open connections (web/connections.py),
        # named by import path so that worker processes can import it. Its
        # keep-alive timeout is LEADS_KEEPALIVE_TIMEOUT.
        http=PROTOCOL,
        # WebSockets (live updates): messages of at most 64 KiB, like bodies.
        ws=WS_PROTOCOL,
        ws_max_size=64 * 1024,
        # X-Forwarded-For is believed from the listed proxies only; from nobody
        # unless LEADS_FORWARDED_ALLOW_IPS lists some.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=list(settings.forwarded_allow_ips),
    )
    return 0


def server_app() -> Starlette:
    """The app one `serve` process runs (the database is migrated already)."""
    from leads_gql.app import create_app

    settings = _settings_with_secret(announce=False)
    return create_app(dataclasses.replace(settings, migrate_on_start=False))


def token(args: argparse.Namespace) -> int:
    from leads_gql.auth import issue_token
    from leads_gql.models import parse_uuid

    settings = _settings_with_secret(announce=False)
    if "HS256" not in settings.jwt_algorithms:
        _say("leads-gql: warning: LEADS_JWT_ALGORITHMS does not allow HS256")
    try:
        chatflows = [parse_uuid(c) for c in args.chatflow] if args.chatflow else None
    except ValueError:
        _say("leads-gql: --chatflow must be a UUID")
        return 2
    # `--scope "a b"` and `--scope a --scope b` both grant a and b.
    scopes = " ".join(args.scope or [DEFAULT_SCOPES]).split()
    print(  # noqa: T201 (the token is the command's output)
        issue_token(
            settings,
            sub=args.sub,
            scopes=list(dict.fromkeys(scopes)),
            chatflows=chatflows,
            ttl=args.ttl,
        )
    )
    return 0


def export_schema(args: argparse.Namespace) -> int:
    from leads_gql.web.schema import schema

    sys.stdout.write(schema.as_str() + "\n")
    return 0


def migrate(args: argparse.Namespace) -> int:
    from leads_gql.store import db

    settings = Settings.from_env()
    asyncio.run(_prepare_database(settings, migrate=True))
    _say(f"leads-gql: the database is at revision {db.head_revision()}")
    return 0


def export(args: argparse.Namespace) -> int:
    from leads_gql.models import parse_uuid

    try:
        flow = parse_uuid(args.chatflow)
    except ValueError:
        _say("leads-gql: --chatflow must be a UUID")
        return 2
    output = Path(args.output) if args.output not in (None, "-") else None
    progress = _Progress() if sys.stderr.isatty() else None
    try:
        return asyncio.run(
            _export(Settings.from_env(), flow, args.format, output, progress)
        )
    except OSError as exc:
        _say(f"leads-gql: export failed: {exc}")
        return 1


async def _export(
    settings: Settings,
    flow: str,
    fmt: str,
    output: Path | None,
    progress: _Progress | None,
) -> int:
    """Write the flow's export: the same pieces `GET /leads/{id}/export` sends.
    A file is written under a temporary name and renamed when complete."""
    from leads_gql.errors import ServiceUnavailable
    from leads_gql.store import db, exports

    engine = db.make_engine(settings)
    partial = output.with_name(f".{output.name}.partial") if output else None
    written = 0
    try:
        if progress is not None:
            progress.total = await exports.count(engine, flow)
        with contextlib.ExitStack() as files:
            sink = sys.stdout.buffer
            async for piece, leads in exports.counted(engine, flow, fmt):
                if written == 0 and partial is not None:
                    sink = files.enter_context(partial.open("wb"))
                sink.write(piece)
                written += leads
                if progress is not None:
                    progress.show(written)
            sink.flush()
    except BaseException as exc:
        if partial is not None:
            partial.unlink(missing_ok=True)  # never a half-written file
        if isinstance(exc, ServiceUnavailable):
            _say("leads-gql: export failed: the database is unavailable")
            return 1
        raise
    finally:
        await engine.dispose()
    if written == 0:
        _say(f"leads-gql: chat flow {flow} has no leads")
        return 1
    if partial is not None and output is not None:
        partial.replace(output)
    if progress is not None:
        progress.done(written, output)
    return 0


class _Progress:
    """`exported 12,000 of 100,000 leads (45,210/s)` on one terminal line."""

    EVERY = 0.2  # seconds between updates

    def __init__(self) -> None:
        self.total = 0
        self.start = self.shown = time.monotonic()

    def _rate(self, written: int) -> str:
        seconds = max(time.monotonic() - self.start, 1e-6)
        return f"{written / seconds:,.0f}/s"

    def show(self, written: int) -> None:
        now = time.monotonic()
        if now - self.shown >= self.EVERY:
            self.shown = now
            rate = self._rate(written)
            sys.stderr.write(f"\rexported {written:,} of {self.total:,} leads ({rate})")
            sys.stderr.flush()

    def done(self, written: int, output: Path | None) -> None:
        where = f" to {output}" if output else ""
        sys.stderr.write(
            f"\rexported {written:,} leads{where} ({self._rate(written)})\x1b[K\n"
        )
        sys.stderr.flush()


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive whole number, not {raw!r}"
        )
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="leads-gql", description=__doc__)
    root.add_argument("--version", action="version", version=__version__)
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="start the HTTP server")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="server processes (default 1; about one per core: each has its own "
        "pool, so the database sees N x LEADS_DB_POOL_SIZE connections)",
    )
    run.add_argument(
        "--no-migrate",
        action="store_true",
        help="only check the schema; refuse to start when it is behind",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    run.set_defaults(func=serve)

    sign = commands.add_parser("token", help="print a signed HS256 token")
    sign.add_argument(
        "--scope",
        action="append",
        help=f"scopes, space-separated; may be repeated (default: {DEFAULT_SCOPES})",
    )
    sign.add_argument(
        "--chatflow", action="append", metavar="ID", help="limit to a chat flow"
    )
    sign.add_argument("--ttl", type=_positive, default=3600, metavar="SECONDS")
    sign.add_argument("--sub", default="leads-gql-cli", metavar="NAME")
    sign.set_defaults(func=token)

    sdl = commands.add_parser("export-schema", help="print the GraphQL SDL")
    sdl.set_defaults(func=export_schema)

    upgrade = commands.add_parser("migrate", help="upgrade the database schema")
    upgrade.set_defaults(func=migrate)

    dump = commands.add_parser(
        "export",
        help="write every lead of a chat flow (the bytes GET /leads/{id}/export sends)",
    )
    dump.add_argument("--chatflow", required=True, metavar="ID")
    dump.add_argument("--format", choices=["csv", "ndjson", "json"], default="csv")
    dump.add_argument(
        "--output", metavar="FILE", help="default: standard output ('-' too)"
    )
    dump.set_defaults(func=export)

    load = commands.add_parser(
        "import",
        help="store leads from an export file or from Flowise's database",
        description="Store leads from a file in the export formats (FILE, or - for "
        "standard input) or from Flowise's database, each validated as a create. Ids "
        "and createdDate are kept: a re-run stores nothing twice, and a stored lead "
        "with other content is reported, never overwritten. The format is guessed "
        "from FILE's extension (.ndjson or .jsonl, .csv, .json) unless --format is "
        "given; standard input needs --format.",
        epilog="Exit status: 0 when no record was refused; 1 when a record was "
        "invalid or conflicting (or --strict stopped the import); 2 when the input "
        "or the database cannot be used.",
    )
    load.add_argument("file", nargs="?", metavar="FILE", help="a file, or - for stdin")
    load.add_argument(
        "--format",
        choices=["ndjson", "csv", "json"],
        help="the file's format (default: from FILE's extension)",
    )
    load.add_argument(
        "--from-flowise",
        metavar="URL",
        help="Flowise's database: its SQLite file (a path or sqlite:///path) or "
        "postgresql://user@host:5432/db",
    )
    load.add_argument(
        "--strict",
        action="store_true",
        help="store nothing unless every record is valid and none conflicts",
    )
    load.set_defaults(func=import_leads)

    sweep = commands.add_parser(
        "purge", help="delete the leads older than N days, once, as retention does"
    )
    sweep.add_argument(
        "--older-than-days", type=_days, required=True, metavar="N", dest="days"
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="only count what would be deleted"
    )
    sweep.set_defaults(func=purge)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _say(f"leads-gql: configuration error: {exc}")
        return 2


def _days(raw: str) -> int:
    from leads_gql.config import MAX_RETENTION_DAYS

    days = _positive(raw)
    if days > MAX_RETENTION_DAYS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_RETENTION_DAYS}")
    return days


def purge(args: argparse.Namespace) -> int:
    """Retention, once: deletes (or counts) the leads past the limit."""
    import logging.config

    from sqlalchemy.exc import DBAPIError

    from leads_gql.errors import ServiceUnavailable
    from leads_gql.retention import purge_once
    from leads_gql.store import db
    from leads_gql.telemetry import log_config

    settings = Settings.from_env()
    # The audit trail, one JSON line per deleted lead, on stderr as under serve.
    logging.config.dictConfig(log_config("warning"))

    async def run() -> int:
        engine = db.make_engine(settings)
        try:
            return await purge_once(engine, args.days, dry_run=args.dry_run)
        finally:
            await engine.dispose()

    try:
        count = asyncio.run(run())
    except db.SchemaBehind as exc:
        _say(f"leads-gql: refusing to purge: {exc}")
        return 1
    except (OSError, ServiceUnavailable) as exc:
        _say(f"leads-gql: cannot reach the database: {exc}")
        return 1
    except DBAPIError as exc:  # no such database, refused credentials...
        _say(f"leads-gql: cannot use the database: {exc.orig}")
        return 1
    leads = "lead" if count == 1 else "leads"
    if args.dry_run:
        message = f"would delete {count} {leads} older than {args.days} days (dry run)"
    else:
        message = f"deleted {count} {leads} older than {args.days} days"
    sys.stdout.write(message + "\n")
    return 0


def import_leads(args: argparse.Namespace) -> int:
    """`leads-gql import`: leads_gql.importer does the work."""
    from leads_gql import importer

    if (args.file is None) == (args.from_flowise is None):
        _say(
            "leads-gql: import needs FILE (- for standard input) or --from-flowise URL"
        )
        return 2
    settings = Settings.from_env()
    try:
        if args.file is not None:
            fmt = args.format or importer.guess_format(args.file)
            if fmt is None:
                what = (
                    "standard input"
                    if args.file == "-"
                    else f"the format of {args.file}"
                )
                _say(f"leads-gql: give --format (ndjson, csv or json) for {what}")
                return 2
            source: Source = importer.FileSource(args.file, fmt)
        else:
            if args.format:
                _say("leads-gql: --format is for files, not --from-flowise")
                return 2
            source = importer.flowise_source(args.from_flowise)
            _not_the_target(source, settings)
    except importer.UnusableInput as exc:
        _say(f"leads-gql: {exc}")
        return 2
    try:
        return asyncio.run(_import(settings, source, strict=args.strict))
    except KeyboardInterrupt:
        _say("leads-gql: import interrupted; a re-run stores nothing twice")
        return 130


def _not_the_target(source: Source, settings: Settings) -> None:
    """Flowise's SQLite file is not the service's own database."""
    from sqlalchemy.engine import make_url

    from leads_gql import importer

    if not isinstance(source, importer.FlowiseSQLite) or not settings.is_sqlite:
        return
    target = make_url(settings.database_url).database
    if target and Path(target).resolve() == source.path.resolve():
        raise importer.UnusableInput(
            "--from-flowise names the service's own database (LEADS_DATABASE_URL)"
        )


async def _import(settings: Settings, source: Source, *, strict: bool) -> int:
    from sqlalchemy.exc import DBAPIError

    from leads_gql import importer
    from leads_gql.errors import ServiceUnavailable
    from leads_gql.store import db

    # The input is checked (a file opened, a header or Flowise's schema read)
    # before the database is touched.
    try:
        await source.open()
    except importer.UnusableInput as exc:
        _say(f"leads-gql: {exc}")
        return 2
    run = importer.Importer(
        source, strict=strict, progress=importer.Progress(sys.stderr)
    )
    try:
        engine = db.make_engine(settings)
        try:
            await db.migrate(engine)  # as `serve` does at start
            summary = await run.run(engine)
        finally:
            await engine.dispose()
    except importer.UnusableInput as exc:
        sys.stdout.write(run.summary.text() + "\n")
        _say(f"leads-gql: {exc}")
        return 2
    except ModuleNotFoundError as exc:
        _say(f"leads-gql: {exc}; for PostgreSQL: pip install 'leads-gql[postgres]'")
        return 2
    except (OSError, ServiceUnavailable, DBAPIError) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else (exc.__cause__ or exc)
        _say(f"leads-gql: the import stopped: cannot use the database: {reason}")
        _say(f"leads-gql: {_kept(run.summary, strict)}")
        return 2
    except Exception as exc:  # the driver's own errors, mid-import
        _say(f"leads-gql: the import stopped: {type(exc).__name__}: {exc}")
        _say(f"leads-gql: {_kept(run.summary, strict)}")
        return 2
    finally:
        await source.close()
    sys.stdout.write(summary.text() + "\n")
    if summary.stopped_at is not None:
        _say(f"leads-gql: --strict: stopped at {summary.stopped_at}; nothing stored")
    return 1 if summary.refused else 0


def _kept(summary: Summary, strict: bool) -> str:
    if strict:
        return "nothing was stored (--strict)"
    return (
        f"{summary.stored:,} leads were stored before; "
        "run the import again to finish (it stores nothing twice)"
    )
