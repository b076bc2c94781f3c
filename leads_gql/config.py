"""All configuration, read from the environment in one place.

`Settings.from_env()` runs in `create_app` and the CLI (never at import time), so tests
can pass a mapping of their own. A bad value fails at start, naming its variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import make_url

from leads_gql.limits import Rate

PREFIX = "LEADS_"
MAX_BODY_BYTES = 64 * 1024
DEV_SECRET_FILE = ".leads-gql-secret"

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
KEY_ALGORITHMS = frozenset(
    {
        "RS256", "RS384", "RS512",
        "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512",
        "EdDSA",
    }
)  # fmt: skip


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _int(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}")
    return value


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name} must be positive")
    return value


# Retention keeps leads at most this long: a century is far past any policy, and
# keeps "now minus the limit" within the dates both databases (and Python) hold.
MAX_RETENTION_DAYS = 36500
# SPEC: retention deletes a lead within a minute of it passing the limit.
MAX_RETENTION_INTERVAL = 60.0


def _retention_days(name: str, raw: str) -> int:
    value = _int(name, raw.strip(), minimum=1)
    if value > MAX_RETENTION_DAYS:
        raise ConfigError(f"{name} must be at most {MAX_RETENTION_DAYS} (days)")
    return value


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _networks(name: str, raw: str) -> tuple[str, ...]:
    """Addresses or networks, normalised to networks (`10.0.0.1/8` -> `10.0.0.0/8`):
    uvicorn would silently take a malformed entry as a literal that never matches."""
    networks = []
    for item in _list(raw):
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(
                f"{name}: {item!r} is not an IP address or network "
                "(list the proxies; 0.0.0.0/0 trusts every peer)"
            ) from None
    return tuple(networks)


def database_url(raw: str) -> str:
    """Map the user's URL to the async driver SQLAlchemy needs."""
    scheme, sep, rest = raw.partition("://")
    if not sep:
        # The value is not echoed: it may hold a password.
        raise ConfigError(
            "LEADS_DATABASE_URL must look like sqlite:///leads.db or "
            "postgresql://user@host:5432/db"
        )
    if scheme in {"sqlite", "sqlite+aiosqlite"}:
        return f"sqlite+aiosqlite://{rest}"
    if scheme in {"postgresql", "postgres", "postgresql+asyncpg"}:
        return f"postgresql+asyncpg://{rest}"
    raise ConfigError(
        f"LEADS_DATABASE_URL: unsupported scheme {scheme!r} "
        "(use sqlite:/// or postgresql://)"
    )


def _public_key(raw: str) -> str:
    if "-----BEGIN" in raw:
        return raw.replace("\\n", "\n")
    path = Path(raw)
    if path.is_file():
        return path.read_text()
    raise ConfigError("LEADS_JWT_PUBLIC_KEY must be a PEM public key (or a file path)")


def _rate(name: str, raw: str) -> Rate:
    try:
        return Rate.parse(name, raw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?")
_FLOW = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def _public_flows(raw: str) -> dict[str, tuple[str, ...]]:
    """JSON: {"<chat flow id>": ["https://shop.example", ...], ...}."""
    name = PREFIX + "PUBLIC_FLOWS"
    try:
        value = json.loads(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be a JSON object of flow id -> origins"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object of flow id -> origins")
    flows: dict[str, tuple[str, ...]] = {}
    for flow, origins in value.items():
        if not _FLOW.fullmatch(flow):
            raise ConfigError(f"{name}: {flow!r} is not a chat flow id (a UUID)")
        if not isinstance(origins, list) or not all(
            isinstance(o, str) and _ORIGIN.fullmatch(o) for o in origins
        ):
            raise ConfigError(
                f"{name}: the origins of {flow} must be a list like "
                '["https://shop.example"]'
            )
        flows[flow.lower()] = tuple(o.lower() for o in origins)
    return flows


@dataclasses.dataclass(frozen=True, repr=False)
class Settings:
    database_url: str = dataclasses.field(
        default="sqlite+aiosqlite:///leads.db", repr=False
    )
    jwt_secret: str | None = dataclasses.field(default=None, repr=False)
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_public_key: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Pool settings apply to PostgreSQL; SQLite uses its own small pool.
    # A fixed pool by default: connections opened past the pool are closed again on
    # return, and opening one (TCP, TLS probe, auth) costs more than waiting.
    db_pool_size: int = 16
    db_max_overflow: int = 0
    db_pool_timeout: float = 10.0
    db_connect_timeout: float = 5.0
    # Migrate at start (`serve --no-migrate` turns this off and only checks).
    migrate_on_start: bool = True
    graphiql: bool = True
    introspection: bool = True
    cors_origins: tuple[str, ...] = ()
    # Write limits for token holders: off unless the operator sets them.
    rate_limit_writes: Rate | None = None
    rate_limit_writes_per_address: Rate | None = None
    # Public capture: chat flow id -> origins allowed to create leads without a
    # token (Flowise's embed), limited per client address.
    public_flows: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    public_rate_limit: Rate = Rate(10, 60.0)
    # Connections (see web/connections.py), per server process: seconds a client has
    # to send a request head and a body, seconds an idle keep-alive connection
    # stays open, and how many connections are held, in all and per client address.
    header_timeout: float = 10.0
    body_timeout: float = 60.0  # a 4 MiB batch on a slow link
    keepalive_timeout: float = 5.0
    max_connections: int = 1000
    max_connections_per_address: int = 100
    # Reverse proxies (networks) whose X-Forwarded-For is believed and whose
    # connections are exempt from the per-address cap; none by default.
    forwarded_allow_ips: tuple[str, ...] = ()
    # Live updates (WebSocket), per server process: subscriptions per socket,
    # sockets per token subject and per client address, and how many new leads
    # a subscriber may fall behind before it is dropped (its socket closed).
    ws_max_subscriptions: int = 100
    ws_max_per_subject: int = 200
    ws_max_per_address: int = 500
    ws_max_behind: int = 1000
    # Retention: leads older than this many days are deleted in the background,
    # sweeping every `retention_interval` seconds; None keeps them forever.
    retention_days: int | None = None
    retention_interval: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(PREFIX + name)
            return value if value is not None and value.strip() != "" else None

        fields: dict[str, object] = {}
        if (raw := get("DATABASE_URL")) is not None:
            fields["database_url"] = database_url(raw)
        if (raw := get("JWT_SECRET")) is not None:
            fields["jwt_secret"] = raw
        if (raw := get("JWT_ALGORITHMS")) is not None:
            fields["jwt_algorithms"] = _list(raw)
        if (raw := get("JWT_PUBLIC_KEY")) is not None:
            fields["jwt_public_key"] = _public_key(raw)
        if (raw := get("JWT_ISSUER")) is not None:
            fields["jwt_issuer"] = raw
        if (raw := get("JWT_AUDIENCE")) is not None:
            fields["jwt_audience"] = raw
        if (raw := get("DB_POOL_SIZE")) is not None:
            fields["db_pool_size"] = _int(PREFIX + "DB_POOL_SIZE", raw, minimum=1)
        if (raw := get("DB_MAX_OVERFLOW")) is not None:
            fields["db_max_overflow"] = _int(PREFIX + "DB_MAX_OVERFLOW", raw)
        if (raw := get("DB_POOL_TIMEOUT")) is not None:
            fields["db_pool_timeout"] = _float(PREFIX + "DB_POOL_TIMEOUT", raw)
        if (raw := get("DB_CONNECT_TIMEOUT")) is not None:
            fields["db_connect_timeout"] = _float(PREFIX + "DB_CONNECT_TIMEOUT", raw)
        if (raw := get("GRAPHIQL")) is not None:
            fields["graphiql"] = _bool(PREFIX + "GRAPHIQL", raw)
        if (raw := get("INTROSPECTION")) is not None:
            fields["introspection"] = _bool(PREFIX + "INTROSPECTION", raw)
        if (raw := get("CORS_ORIGINS")) is not None:
            fields["cors_origins"] = _list(raw)
        for key, name in (
            ("rate_limit_writes", "RATE_LIMIT_WRITES"),
            ("rate_limit_writes_per_address", "RATE_LIMIT_WRITES_PER_ADDRESS"),
            ("public_rate_limit", "PUBLIC_RATE_LIMIT"),
        ):
            if (raw := get(name)) is not None:
                fields[key] = _rate(PREFIX + name, raw)
        if (raw := get("PUBLIC_FLOWS")) is not None:
            fields["public_flows"] = _public_flows(raw)
        for key, name in (
            ("header_timeout", "HEADER_TIMEOUT"),
            ("body_timeout", "BODY_TIMEOUT"),
            ("keepalive_timeout", "KEEPALIVE_TIMEOUT"),
        ):
            if (raw := get(name)) is not None:
                fields[key] = _float(PREFIX + name, raw)
        for key, name in (
            ("max_connections", "MAX_CONNECTIONS"),
            ("max_connections_per_address", "MAX_CONNECTIONS_PER_ADDRESS"),
            ("ws_max_subscriptions", "WS_MAX_SUBSCRIPTIONS"),
            ("ws_max_per_subject", "WS_MAX_PER_SUBJECT"),
            ("ws_max_per_address", "WS_MAX_PER_ADDRESS"),
            ("ws_max_behind", "WS_MAX_BEHIND"),
        ):
            if (raw := get(name)) is not None:
                fields[key] = _int(PREFIX + name, raw, minimum=1)
        if (raw := get("FORWARDED_ALLOW_IPS")) is not None:
            name = PREFIX + "FORWARDED_ALLOW_IPS"
            fields["forwarded_allow_ips"] = _networks(name, raw)
        if (raw := get("RETENTION_DAYS")) is not None:
            name = PREFIX + "RETENTION_DAYS"
            fields["retention_days"] = _retention_days(name, raw)
        if (raw := get("RETENTION_INTERVAL")) is not None:
            name = PREFIX + "RETENTION_INTERVAL"
            interval = _float(name, raw)
            if interval > MAX_RETENTION_INTERVAL:
                raise ConfigError(
                    f"{name} must be at most {MAX_RETENTION_INTERVAL:g} (seconds): "
                    "retention deletes a lead within a minute of it passing the limit"
                )
            fields["retention_interval"] = interval
        settings = cls(**fields)  # type: ignore[arg-type]
        settings.check_algorithms()
        return settings

    def check_algorithms(self) -> None:
        if not self.jwt_algorithms:
            raise ConfigError("LEADS_JWT_ALGORITHMS must name at least one algorithm")
        for alg in self.jwt_algorithms:
            if alg not in HMAC_ALGORITHMS | KEY_ALGORITHMS:
                raise ConfigError(f"LEADS_JWT_ALGORITHMS: {alg!r} is not allowed")
            if alg in KEY_ALGORITHMS and not self.jwt_public_key:
                raise ConfigError(
                    f"LEADS_JWT_ALGORITHMS lists {alg}, "
                    "which needs LEADS_JWT_PUBLIC_KEY"
                )

    def __repr__(self) -> str:
        # The URL may hold a password: show it masked; leave the secret out.
        fields = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.repr
        )
        url = make_url(self.database_url).render_as_string(hide_password=True)
        return f"Settings(database_url={url!r}, {fields})"

    @property
    def uses_hmac(self) -> bool:
        return any(alg in HMAC_ALGORITHMS for alg in self.jwt_algorithms)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
