"""Settings.from_env: defaults, each variable, bad values naming their variable,
secrets kept out of repr."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from leads_gql.app import create_app
from leads_gql.auth import TokenVerifier
from leads_gql.config import ConfigError, Settings
from leads_gql.limits import Rate

FLOW = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pem(rsa_private: rsa.RSAPrivateKey) -> str:
    return (
        rsa_private.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url == "sqlite+aiosqlite:///leads.db"
    assert settings.jwt_secret is None
    assert settings.jwt_algorithms == ("HS256",)
    assert settings.jwt_public_key is None
    assert settings.jwt_issuer is None
    assert settings.jwt_audience is None
    assert settings.graphiql is True
    assert settings.introspection is True
    assert settings.cors_origins == ()
    # Write limits are off for token holders unless the operator sets them.
    assert settings.rate_limit_writes is None
    assert settings.rate_limit_writes_per_address is None
    assert settings.public_flows == {}
    assert settings.header_timeout == 10.0
    assert settings.body_timeout == 60.0
    assert settings.keepalive_timeout == 5.0
    assert settings.max_connections == 1000
    assert settings.max_connections_per_address == 100
    # Proxy headers are believed from nobody unless proxies are listed.
    assert settings.forwarded_allow_ips == ()
    # Leads are kept until deleted, unless the operator sets a retention limit.
    assert settings.retention_days is None
    assert settings.retention_interval == 30.0


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADS_JWT_ISSUER", "https://issuer.example/")
    monkeypatch.setenv("LEADS_DATABASE_URL", "sqlite:///elsewhere.db")
    settings = Settings.from_env()
    assert settings.jwt_issuer == "https://issuer.example/"
    assert settings.database_url == "sqlite+aiosqlite:///elsewhere.db"


def test_only_prefixed_variables_count() -> None:
    env = {"JWT_SECRET": "x" * 40, "DATABASE_URL": "nope", "JWT_ALGORITHMS": "none"}
    assert Settings.from_env(env) == Settings()


@pytest.mark.parametrize(
    "name",
    ["LEADS_JWT_SECRET", "LEADS_JWT_ISSUER", "LEADS_JWT_AUDIENCE", "LEADS_GRAPHIQL"],
)
@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_values_are_unset(name: str, blank: str) -> None:
    assert Settings.from_env({name: blank}) == Settings()


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        (
            {"LEADS_DATABASE_URL": "sqlite:///x.db"},
            "database_url",
            "sqlite+aiosqlite:///x.db",
        ),
        (
            {"LEADS_DATABASE_URL": "sqlite:////abs/x.db"},
            "database_url",
            "sqlite+aiosqlite:////abs/x.db",
        ),
        (
            {"LEADS_DATABASE_URL": "postgresql://u@db:5432/leads"},
            "database_url",
            "postgresql+asyncpg://u@db:5432/leads",
        ),
        (
            {"LEADS_DATABASE_URL": "postgres://u@db/leads"},
            "database_url",
            "postgresql+asyncpg://u@db/leads",
        ),
        ({"LEADS_JWT_SECRET": "s" * 48}, "jwt_secret", "s" * 48),
        ({"LEADS_JWT_ALGORITHMS": "HS256,HS512"}, "jwt_algorithms", ("HS256", "HS512")),
        (
            {"LEADS_JWT_ALGORITHMS": " HS384 , HS256 ,"},
            "jwt_algorithms",
            ("HS384", "HS256"),
        ),
        (
            {"LEADS_JWT_ISSUER": "https://issuer.example/"},
            "jwt_issuer",
            "https://issuer.example/",
        ),
        ({"LEADS_JWT_AUDIENCE": "leads-api"}, "jwt_audience", "leads-api"),
        ({"LEADS_DB_POOL_SIZE": "3"}, "db_pool_size", 3),
        ({"LEADS_DB_MAX_OVERFLOW": "0"}, "db_max_overflow", 0),
        ({"LEADS_DB_POOL_TIMEOUT": "2.5"}, "db_pool_timeout", 2.5),
        ({"LEADS_DB_CONNECT_TIMEOUT": "1"}, "db_connect_timeout", 1.0),
        ({"LEADS_GRAPHIQL": "false"}, "graphiql", False),
        ({"LEADS_GRAPHIQL": "OFF"}, "graphiql", False),
        ({"LEADS_GRAPHIQL": "0"}, "graphiql", False),
        ({"LEADS_GRAPHIQL": "yes"}, "graphiql", True),
        ({"LEADS_INTROSPECTION": "no"}, "introspection", False),
        ({"LEADS_INTROSPECTION": "True"}, "introspection", True),
        (
            {"LEADS_CORS_ORIGINS": "https://a.example, https://b.example"},
            "cors_origins",
            ("https://a.example", "https://b.example"),
        ),
        (
            {"LEADS_RATE_LIMIT_WRITES": "100/minute"},
            "rate_limit_writes",
            Rate(100, 60.0),
        ),
        (
            {"LEADS_RATE_LIMIT_WRITES_PER_ADDRESS": "5 / second"},
            "rate_limit_writes_per_address",
            Rate(5, 1.0),
        ),
        (
            {"LEADS_PUBLIC_RATE_LIMIT": "1000/day"},
            "public_rate_limit",
            Rate(1000, 86400.0),
        ),
        (
            {"LEADS_PUBLIC_FLOWS": f'{{"{FLOW}": ["https://Shop.Example"]}}'},
            "public_flows",
            {FLOW.lower(): ("https://shop.example",)},
        ),
        ({"LEADS_HEADER_TIMEOUT": "2.5"}, "header_timeout", 2.5),
        ({"LEADS_BODY_TIMEOUT": "120"}, "body_timeout", 120.0),
        ({"LEADS_KEEPALIVE_TIMEOUT": "0.5"}, "keepalive_timeout", 0.5),
        ({"LEADS_MAX_CONNECTIONS": "50"}, "max_connections", 50),
        (
            {"LEADS_MAX_CONNECTIONS_PER_ADDRESS": "1"},
            "max_connections_per_address",
            1,
        ),
        (
            {"LEADS_FORWARDED_ALLOW_IPS": "10.0.0.1/8, 192.0.2.7 ,2001:db8::/32"},
            "forwarded_allow_ips",
            ("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"),
        ),
        ({"LEADS_RETENTION_DAYS": "30"}, "retention_days", 30),
        ({"LEADS_RETENTION_DAYS": " 1 "}, "retention_days", 1),
        ({"LEADS_RETENTION_DAYS": "36500"}, "retention_days", 36500),
        ({"LEADS_RETENTION_INTERVAL": "0.5"}, "retention_interval", 0.5),
        ({"LEADS_RETENTION_INTERVAL": "60"}, "retention_interval", 60.0),
    ],
)
def test_each_variable(env: dict[str, str], field: str, expected: Any) -> None:
    settings = Settings.from_env(env)
    assert getattr(settings, field) == expected
    # Nothing else moves.
    assert settings == dataclasses.replace(Settings(), **{field: expected})


def _verifies(settings: Settings, key: rsa.RSAPrivateKey) -> bool:
    now = int(time.time())
    token = jwt.encode({"sub": "x", "exp": now + 60}, key, algorithm="RS256")
    return TokenVerifier(settings).authenticate(f"Bearer {token}").sub == "x"


def test_public_key_inline(pem: str, rsa_private: rsa.RSAPrivateKey) -> None:
    settings = Settings.from_env(
        {"LEADS_JWT_ALGORITHMS": "RS256", "LEADS_JWT_PUBLIC_KEY": pem}
    )
    assert settings.jwt_algorithms == ("RS256",)
    assert settings.jwt_public_key == pem
    assert _verifies(settings, rsa_private)


def test_public_key_on_one_line_with_escaped_newlines(
    pem: str, rsa_private: rsa.RSAPrivateKey
) -> None:
    one_line = pem.replace("\n", "\\n")
    assert "\n" not in one_line
    settings = Settings.from_env(
        {"LEADS_JWT_ALGORITHMS": "RS256", "LEADS_JWT_PUBLIC_KEY": one_line}
    )
    assert settings.jwt_public_key == pem
    assert _verifies(settings, rsa_private)


def test_public_key_from_a_file(
    tmp_path: Path, pem: str, rsa_private: rsa.RSAPrivateKey
) -> None:
    path = tmp_path / "key.pem"
    path.write_text(pem)
    settings = Settings.from_env(
        {
            "LEADS_JWT_ALGORITHMS": "RS256,HS256",
            "LEADS_JWT_PUBLIC_KEY": str(path),
            "LEADS_JWT_SECRET": "s" * 48,
        }
    )
    assert settings.jwt_algorithms == ("RS256", "HS256")
    assert settings.jwt_public_key == pem
    assert _verifies(settings, rsa_private)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LEADS_DATABASE_URL", "leads.db"),
        ("LEADS_DATABASE_URL", "mysql://u@db/leads"),
        ("LEADS_JWT_ALGORITHMS", "none"),
        ("LEADS_JWT_ALGORITHMS", "HS256,none"),
        ("LEADS_JWT_ALGORITHMS", "HS257"),
        ("LEADS_JWT_ALGORITHMS", ","),
        ("LEADS_JWT_ALGORITHMS", "RS256"),
        ("LEADS_JWT_ALGORITHMS", "ES256"),
        ("LEADS_JWT_PUBLIC_KEY", "not a key and not a file"),
        ("LEADS_DB_POOL_SIZE", "ten"),
        ("LEADS_DB_POOL_SIZE", "0"),
        ("LEADS_DB_POOL_SIZE", "1.5"),
        ("LEADS_DB_MAX_OVERFLOW", "-1"),
        ("LEADS_DB_MAX_OVERFLOW", "many"),
        ("LEADS_DB_POOL_TIMEOUT", "soon"),
        ("LEADS_DB_POOL_TIMEOUT", "0"),
        ("LEADS_DB_POOL_TIMEOUT", "-3"),
        ("LEADS_DB_POOL_TIMEOUT", "nan"),
        ("LEADS_DB_CONNECT_TIMEOUT", "0"),
        ("LEADS_DB_CONNECT_TIMEOUT", "later"),
        ("LEADS_GRAPHIQL", "maybe"),
        ("LEADS_INTROSPECTION", "2"),
        ("LEADS_RATE_LIMIT_WRITES", "10 per minute"),
        ("LEADS_RATE_LIMIT_WRITES", "0/minute"),
        ("LEADS_RATE_LIMIT_WRITES_PER_ADDRESS", "10/fortnight"),
        ("LEADS_PUBLIC_RATE_LIMIT", "-1/second"),
        ("LEADS_PUBLIC_FLOWS", "not json"),
        ("LEADS_PUBLIC_FLOWS", '["https://shop.example"]'),
        ("LEADS_PUBLIC_FLOWS", '{"not-a-uuid": ["https://shop.example"]}'),
        ("LEADS_PUBLIC_FLOWS", f'{{"{FLOW}": "https://shop.example"}}'),
        ("LEADS_PUBLIC_FLOWS", f'{{"{FLOW}": ["javascript:alert(1)"]}}'),
        ("LEADS_HEADER_TIMEOUT", "0"),
        ("LEADS_HEADER_TIMEOUT", "ten"),
        ("LEADS_BODY_TIMEOUT", "-1"),
        ("LEADS_KEEPALIVE_TIMEOUT", "nan"),
        ("LEADS_MAX_CONNECTIONS", "0"),
        ("LEADS_MAX_CONNECTIONS", "many"),
        ("LEADS_MAX_CONNECTIONS_PER_ADDRESS", "0"),
        ("LEADS_MAX_CONNECTIONS_PER_ADDRESS", "2.5"),
        ("LEADS_FORWARDED_ALLOW_IPS", "*"),
        ("LEADS_FORWARDED_ALLOW_IPS", "10.0.0.1, proxy.internal"),
        ("LEADS_FORWARDED_ALLOW_IPS", "10.0.0.0/33"),
        ("LEADS_RETENTION_DAYS", "0"),
        ("LEADS_RETENTION_DAYS", "-7"),
        ("LEADS_RETENTION_DAYS", "1.5"),
        ("LEADS_RETENTION_DAYS", "30d"),
        ("LEADS_RETENTION_DAYS", "a month"),
        ("LEADS_RETENTION_DAYS", "36501"),
        ("LEADS_RETENTION_DAYS", "99999999999"),
        ("LEADS_RETENTION_INTERVAL", "0"),
        ("LEADS_RETENTION_INTERVAL", "61"),
        ("LEADS_RETENTION_INTERVAL", "inf"),
        ("LEADS_RETENTION_INTERVAL", "soon"),
    ],
)
def test_bad_values_fail_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value)


def test_a_key_algorithm_without_a_key_names_both_variables() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"LEADS_JWT_ALGORITHMS": "HS256,RS256"})
    assert "LEADS_JWT_ALGORITHMS" in str(caught.value)
    assert "LEADS_JWT_PUBLIC_KEY" in str(caught.value)


@pytest.mark.parametrize(
    "value",
    [
        "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    ],
    ids=["malformed", "private key"],
)
def test_a_bad_pem_fails_at_start_naming_the_variable(value: str) -> None:
    env = {"LEADS_JWT_ALGORITHMS": "RS256", "LEADS_JWT_PUBLIC_KEY": value}
    with pytest.raises(ConfigError) as caught:
        create_app(Settings.from_env(env))
    assert "LEADS_JWT_PUBLIC_KEY" in str(caught.value)


def test_hmac_without_a_secret_fails_at_start_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(Settings.from_env({"LEADS_JWT_ALGORITHMS": "HS256"}))
    assert "LEADS_JWT_SECRET" in str(caught.value)


SECRET = "top-secret-signing-key-0123456789abcdefghijklmnop"
DB_PASSWORD = "hunter2-db-password"


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings.from_env(
        {
            "LEADS_JWT_SECRET": SECRET,
            "LEADS_DATABASE_URL": f"postgresql://leads:{DB_PASSWORD}@db:5432/leads",
        }
    )
    assert settings.jwt_secret == SECRET
    assert settings.database_url == (
        f"postgresql+asyncpg://leads:{DB_PASSWORD}@db:5432/leads"
    )
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert SECRET not in text
        assert DB_PASSWORD not in text
    assert "db:5432/leads" in repr(settings)


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://leads:{DB_PASSWORD}@db/leads",
        f"leads:{DB_PASSWORD}@db:5432/leads",
    ],
    ids=["unsupported scheme", "no scheme"],
)
def test_a_bad_database_url_error_hides_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"LEADS_DATABASE_URL": url})
    assert "LEADS_DATABASE_URL" in str(caught.value)
    assert DB_PASSWORD not in str(caught.value)
