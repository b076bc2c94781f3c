"""Bearer tokens: who is calling (`Principal`), verifying and issuing JWTs."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from leads_gql.config import HMAC_ALGORITHMS, ConfigError, Settings
from leads_gql.errors import Forbidden, Unauthenticated

READ = "leads:read"
WRITE = "leads:write"
# Deleting and erasing leads; enough on its own (neither read nor write needed).
DELETE = "leads:delete"
MAX_TOKEN_LENGTH = 8192
_CACHE_SIZE = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """A verified token: its subject, scopes and (when limited) chat flows."""

    sub: str
    scopes: frozenset[str]
    # None: every chat flow; otherwise lower-case ids (an empty set grants nothing).
    chatflows: frozenset[str] | None = None
    # The client's address, for per-address write limits.
    address: str = ""
    # A visitor of a public chat widget: no token, write-only, always rate-limited.
    public: bool = False
    # When the token stops being valid (seconds since the epoch): a WebSocket
    # opened with it is closed then.
    expires: float = float("inf")

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"The token does not have the {scope} scope")
        if self.chatflows is not None and not self.chatflows:
            raise Forbidden("The token's chatflows claim is empty: it grants nothing")

    def can_access(self, chatflowid: str) -> bool:
        return self.chatflows is None or chatflowid in self.chatflows

    def require_chatflow(self, chatflowid: str) -> None:
        if not self.can_access(chatflowid):
            raise Forbidden("The token does not cover this chat flow")


class TokenVerifier:
    """Verifies bearer tokens against the configured keys and claims.

    The allowed algorithms come from configuration only; the token's `alg` header
    merely picks among them. Header fields such as `jku`, `x5u` and `kid` are never
    followed. Verified tokens are cached until they expire.
    """

    def __init__(self, settings: Settings) -> None:
        self.algorithms = frozenset(settings.jwt_algorithms)
        self.secret = settings.jwt_secret
        self.public_key: Any = None
        if settings.jwt_public_key:
            try:
                self.public_key = load_pem_public_key(settings.jwt_public_key.encode())
            except ValueError:
                raise ConfigError(
                    "LEADS_JWT_PUBLIC_KEY is not a valid PEM public key"
                ) from None
        if any(alg in HMAC_ALGORITHMS for alg in self.algorithms) and not self.secret:
            raise ConfigError("LEADS_JWT_SECRET is required for HS* algorithms")
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self._cache: dict[tuple[str, str], tuple[Principal, float]] = {}

    def authenticate(self, authorization: str | None, address: str = "") -> Principal:
        """The principal of an `Authorization` header value, or Unauthenticated.

        Cached by token and client address (the principal carries the address)."""
        if not authorization:
            raise Unauthenticated("Missing bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("The Authorization header must be 'Bearer <token>'")
        cached = self._cache.get((token, address))
        if cached is not None:
            principal, expires = cached
            if time.time() < expires:
                return principal
            del self._cache[token, address]
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("The token is too large")
        principal, expires = self._verify(token)
        principal = dataclasses.replace(principal, address=address)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[token, address] = (principal, expires)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            if not isinstance(alg, str) or alg not in self.algorithms:
                raise Unauthenticated("The token's algorithm is not allowed")
            key: Any = self.secret if alg in HMAC_ALGORITHMS else self.public_key
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("The token has expired") from None
        except Unauthenticated:
            raise
        except Exception:  # every malformed token, whatever broke in decoding it
            raise Unauthenticated("The token is invalid") from None
        # Valid while now < int(exp), exactly as PyJWT decides on the next check
        # (it drops the fraction), so cached and fresh answers agree.
        expires = float(int(claims["exp"]))
        return dataclasses.replace(_principal(claims), expires=expires), expires


def _principal(claims: dict[str, Any]) -> Principal:
    sub, scope, chatflows = claims["sub"], claims.get("scope"), claims.get("chatflows")
    if not isinstance(sub, str) or not sub:
        raise Unauthenticated("The token's sub claim must be a non-empty string")
    if scope is not None and not isinstance(scope, str):
        raise Unauthenticated("The token's scope claim must be a string")
    if chatflows is not None and not (
        isinstance(chatflows, list) and all(isinstance(c, str) for c in chatflows)
    ):
        raise Unauthenticated("The token's chatflows claim must be a list of ids")
    return Principal(
        sub=sub,
        scopes=frozenset((scope or "").split()),
        chatflows=None
        if chatflows is None
        else frozenset(c.lower() for c in chatflows),
    )


def public_principal(
    public_flows: dict[str, tuple[str, ...]], origin: str | None, address: str
) -> Principal | None:
    """A tokenless visitor posting from a page whose origin a public flow allows."""
    if not origin:
        return None
    origin = origin.lower()
    flows = frozenset(f for f, origins in public_flows.items() if origin in origins)
    if not flows:
        return None
    return Principal(
        sub=f"public:{address}",
        scopes=frozenset({WRITE}),
        chatflows=flows,
        address=address,
        public=True,
    )


def issue_token(
    settings: Settings,
    *,
    sub: str,
    scopes: Iterable[str],
    chatflows: Iterable[str] | None = None,
    ttl: int = 3600,
) -> str:
    """An HS256 token signed with the configured secret."""
    if not settings.jwt_secret:
        raise ConfigError("LEADS_JWT_SECRET is required to sign tokens")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + ttl,
    }
    if chatflows is not None:
        claims["chatflows"] = [c.lower() for c in chatflows]
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def load_or_create_dev_secret(path: Path) -> tuple[str, bool]:
    """The development secret in `path` (mode 0600), made on first use.

    Returns (secret, created). The file is written under a temporary name and
    linked into place, so concurrent starts agree on one secret.
    """
    with contextlib.suppress(FileNotFoundError):
        secret = path.read_text().strip()
        if secret:
            return secret, False
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink()
    return path.read_text().strip(), created


def with_dev_secret(settings: Settings, path: Path) -> tuple[Settings, bool]:
    """Settings with the development secret filled in when HS* has no secret.

    Returns (settings, used_dev_secret)."""
    if settings.jwt_secret or not settings.uses_hmac:
        return settings, False
    secret, _ = load_or_create_dev_secret(path)
    return dataclasses.replace(settings, jwt_secret=secret), True
