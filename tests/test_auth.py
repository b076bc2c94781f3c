"""Bearer tokens over HTTP: 401 for every bad token, 403 for every missing right,
on the REST shim (both prefixes) and on GraphQL (POST and GET) alike."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from leads_gql.app import create_app
from leads_gql.auth import TokenVerifier, issue_token
from leads_gql.config import Settings
from leads_gql.errors import Unauthenticated
from tests.conftest import SECRET, new_id, sign

pytestmark = pytest.mark.anyio

OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256-9876543210"
LEAD_FIELDS = "id name email phone chatflowid chatId createdDate"
LIST = f"query ($f: ID!) {{ leadsByChatflow(chatflowid: $f) {{ {LEAD_FIELDS} }} }}"
ONE = f"query ($id: ID!) {{ lead(id: $id) {{ {LEAD_FIELDS} }} }}"
CREATE = f"mutation ($i: LeadInput!) {{ createLead(input: $i) {{ {LEAD_FIELDS} }} }}"
SEEDED_NAME = "Seeded Secret Person"
INTRUDER_NAME = "Intruder"


# Helpers ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_built(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """An HMAC JWT built by hand: PyJWT refuses some keys (a PEM, a short one)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}.get(
        header["alg"], hashlib.sha512
    )
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{b64url(signature)}"


def claims(**over: Any) -> dict[str, Any]:
    """Valid read-and-write claims; `None` values drop a claim."""
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": "tester",
        "scope": "leads:read leads:write",
        "iat": now,
        "exp": now + 3600,
        **over,
    }
    return {key: value for key, value in body.items() if value is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def surfaces(flow: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every authenticated request a client makes: (method, url, httpx kwargs)."""
    lead = {"chatflowid": flow, "name": INTRUDER_NAME}
    graphql = {"query": LIST, "variables": {"f": flow}}
    return [
        ("POST", "/leads", {"json": lead}),
        ("POST", "/api/v1/leads/", {"json": lead}),
        ("GET", f"/leads/{flow}", {}),
        ("GET", f"/api/v1/leads/{flow}", {}),
        ("POST", "/graphql", {"json": graphql}),
        (
            "GET",
            "/graphql",
            {"params": {"query": LIST, "variables": json.dumps({"f": flow})}},
        ),
    ]


def assert_401(response: httpx.Response) -> None:
    request = f"{response.request.method} {response.request.url}"
    assert response.status_code == 401, (request, response.text)
    assert response.headers["www-authenticate"].startswith("Bearer"), request
    body = response.json()
    assert isinstance(body, dict), request
    assert body.get("data") is None, request
    assert SEEDED_NAME not in response.text, request
    if response.request.url.path != "/graphql":
        assert body == {"statusCode": 401, "message": body["message"]}, request
        assert isinstance(body["message"], str) and body["message"]


def assert_rest_403(response: httpx.Response) -> None:
    request = f"{response.request.method} {response.request.url}"
    assert response.status_code == 403, (request, response.text)
    body = response.json()
    assert body == {"statusCode": 403, "message": body["message"]}, request
    assert isinstance(body["message"], str) and body["message"]
    assert SEEDED_NAME not in response.text


def assert_forbidden(response: httpx.Response, field: str) -> None:
    """GraphQL: HTTP 200, a FORBIDDEN error on `field`, no lead data."""
    assert response.status_code == 200, response.text
    body = response.json()
    codes = [error["extensions"]["code"] for error in body["errors"]]
    assert codes == ["FORBIDDEN"], body
    assert body["errors"][0]["path"] == [field], body
    # Non-null fields null the whole data; a nullable one is null itself.
    assert body.get("data") in (None, {field: None}), body
    assert SEEDED_NAME not in response.text


async def gql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any],
    headers: dict[str, str],
    *,
    method: str = "POST",
) -> httpx.Response:
    if method == "GET":
        params = {"query": query, "variables": json.dumps(variables)}
        return await client.get("/graphql", params=params, headers=headers)
    return await client.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )


async def seed(
    client: httpx.AsyncClient, auth: dict[str, str], flow: str
) -> dict[str, Any]:
    response = await client.post(
        "/leads", json={"chatflowid": flow, "name": SEEDED_NAME}, headers=auth
    )
    assert response.status_code == 200, response.text
    lead: dict[str, Any] = response.json()
    return lead


async def stored(
    client: httpx.AsyncClient, auth: dict[str, str], flow: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/leads/{flow}", headers=auth)
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    leads: list[dict[str, Any]] = response.json()
    return leads


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app of our own (other JWT settings), with its lifespan, and a client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )


# 401: every bad token, on every surface -------------------------------------------


def _tampered() -> str:
    head, _, sig = sign(claims(scope="leads:read")).split(".")
    body = b64url(json.dumps(claims(scope="leads:read leads:write")).encode())
    return f"Bearer {head}.{body}.{sig}"


def _alg_none(alg: str, signature: str = "") -> str:
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims()).encode())
    return f"Bearer {head}.{body}.{signature}"


def _latin1_suffix() -> bytes:
    return b"Bearer " + sign(claims()).encode() + b"\xe9"


BAD_AUTHORIZATION: dict[str, Callable[[], str | bytes | None]] = {
    "missing": lambda: None,
    "empty": lambda: "",
    "basic": lambda: "Basic dXNlcjpwYXNzd29yZA==",
    "basic scheme with a valid jwt": lambda: f"Basic {sign(claims())}",
    "token without scheme": lambda: sign(claims()),
    "bearer without token": lambda: "Bearer",
    "bearer with blanks only": lambda: "Bearer    ",
    "garbage": lambda: "Bearer not-a-jwt",
    "three garbage segments": lambda: "Bearer aaaa.bbbb.cccc",
    "other secret": lambda: f"Bearer {sign(claims(), OTHER_SECRET)}",
    "payload swapped under the signature": _tampered,
    "signature stripped": lambda: "Bearer " + sign(claims()).rsplit(".", 1)[0] + ".",
    "expired": lambda: f"Bearer {sign(claims(exp=int(time.time()) - 60))}",
    "alg none": lambda: _alg_none("none"),
    "alg None": lambda: _alg_none("None"),
    "alg NONE with a signature": lambda: _alg_none("NONE", b64url(b"x" * 32)),
    "alg HS512 not allowed": lambda: (
        "Bearer "
        + hand_built({"alg": "HS512", "typ": "JWT"}, claims(), SECRET.encode())
    ),
    "alg HS384 not allowed": lambda: (
        "Bearer "
        + hand_built({"alg": "HS384", "typ": "JWT"}, claims(), SECRET.encode())
    ),
    "missing exp": lambda: f"Bearer {sign(claims(exp=None))}",
    "exp not a number": lambda: f"Bearer {sign(claims(exp='tomorrow'))}",
    "missing sub": lambda: f"Bearer {sign(claims(sub=None))}",
    "sub not a string": lambda: f"Bearer {sign(claims(sub=42))}",
    "nbf in the future": lambda: f"Bearer {sign(claims(nbf=int(time.time()) + 3600))}",
    "iat far in the future": lambda: (
        f"Bearer {sign(claims(iat=int(time.time()) + 10 * 365 * 86400))}"
    ),
    "huge garbage token": lambda: "Bearer " + "a" * 100_000,
    "huge signed token": lambda: f"Bearer {sign(claims(pad='x' * 100_000))}",
    "latin-1 garbage": lambda: b"Bearer \xe9\xff\xfe\xa0",
    "utf-8 garbage": lambda: "Bearer j\u00e9t\u00f6n".encode(),
    "valid token with a latin-1 byte appended": _latin1_suffix,
    "latin-1 scheme": lambda: b"B\xe9arer " + sign(claims()).encode(),
}


@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
async def test_bad_tokens_are_401_everywhere_and_run_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], case: str
) -> None:
    flow = new_id()
    seeded = await seed(client, auth, flow)
    value = BAD_AUTHORIZATION[case]()
    headers: dict[str, str | bytes] = {} if value is None else {"Authorization": value}
    for method, url, kwargs in surfaces(flow):
        response = await client.request(method, url, headers=headers, **kwargs)
        assert_401(response)
    assert await stored(client, auth, flow) == [seeded]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_scheme_matches_in_any_case(
    client: httpx.AsyncClient,
    make_token: Callable[..., str],
    auth: dict[str, str],
    scheme: str,
) -> None:
    flow = new_id()
    seeded = await seed(client, auth, flow)
    headers = {"Authorization": f"{scheme} {make_token()}"}
    for method, url, kwargs in surfaces(flow):
        response = await client.request(method, url, headers=headers, **kwargs)
        assert response.status_code == 200, (method, url, response.text)
    everything = await stored(client, auth, flow)
    assert everything[0] == seeded
    assert [lead["name"] for lead in everything[1:]] == [INTRUDER_NAME] * 2


def _any_bodies(flow: str) -> dict[str, dict[str, Any]]:
    json_ct = {"Content-Type": "application/json"}
    big = {"query": "{ __typename }", "chatflowid": flow, "name": "x" * (70 * 1024)}
    return {
        "a valid lead and query": {
            "json": {
                "chatflowid": flow,
                "name": INTRUDER_NAME,
                "query": CREATE,
                "variables": {"i": {"chatflowid": flow, "name": INTRUDER_NAME}},
            }
        },
        "invalid json": {"content": b"{not json", "headers": json_ct},
        "not utf-8": {"content": b'{"query": "\xff"}', "headers": json_ct},
        "text/plain": {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
        "empty": {"content": b"", "headers": json_ct},
        "no query": {"json": {"variables": {}}},
        "a batch": {"json": [{"query": "{ __typename }"}] * 3},
        "an oversized batch": {"json": [{"query": "{ __typename }"}] * 50},
        "over 64 KiB": {"content": json.dumps(big).encode(), "headers": json_ct},
    }


@pytest.mark.parametrize("token", ["none", "bad"])
async def test_without_a_valid_token_any_body_is_401(
    client: httpx.AsyncClient, auth: dict[str, str], token: str
) -> None:
    flow = new_id()
    for case, kwargs in _any_bodies(flow).items():
        headers = dict(kwargs.pop("headers", {}))
        if token == "bad":
            headers["Authorization"] = f"Bearer {sign(claims(), OTHER_SECRET)}"
        for url in ("/graphql", "/leads", "/api/v1/leads/"):
            response = await client.post(url, headers=headers, **kwargs)
            try:
                assert_401(response)
            except AssertionError as error:
                raise AssertionError(f"body {case!r}: {error}") from None
    assert await stored(client, auth, flow) == []


async def test_graphiql_page_needs_no_token_but_queries_by_get_do(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    page = await client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")

    query = {"query": "{ __typename }"}
    for accept in ("text/html", "application/json", "*/*"):
        response = await client.get(
            "/graphql", params=query, headers={"Accept": accept}
        )
        assert_401(response)
    # A client (not a browser) without a query gets no free pass either.
    assert_401(await client.get("/graphql", headers={"Accept": "application/json"}))

    ok = await client.get("/graphql", params=query, headers=auth)
    assert ok.status_code == 200
    assert ok.json() == {"data": {"__typename": "Query"}}


async def test_graphql_401_is_json_for_graphql_response_clients_too(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/graphql",
        json={"query": "{ __typename }"},
        headers={"Accept": "application/graphql-response+json"},
    )
    assert_401(response)
    assert response.headers["content-type"].startswith(
        "application/graphql-response+json"
    )


async def test_an_expired_token_is_refused_after_it_worked(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """Verified tokens may be cached, but never past their `exp`."""
    flow = new_id()
    await seed(client, auth, flow)
    expires = int(time.time()) + 2
    token = sign(claims(exp=expires))
    assert (
        await client.get(f"/leads/{flow}", headers=bearer(token))
    ).status_code == 200
    await anyio.sleep(max(0.0, expires + 0.1 - time.time()))
    assert_401(await client.get(f"/leads/{flow}", headers=bearer(token)))
    assert_401(await gql(client, LIST, {"f": flow}, bearer(token)))


def test_a_cached_token_with_a_fractional_exp_expires_when_pyjwt_says() -> None:
    """PyJWT compares the whole seconds of `exp`; the cache must too, or one token
    is accepted from one address (cached) and refused from another (verified)."""
    verifier = TokenVerifier(Settings(jwt_secret=SECRET))
    exp = int(time.time()) + 1.99
    header = f"Bearer {sign(claims(exp=exp))}"
    assert verifier.authenticate(header, "192.0.2.1").sub
    time.sleep(max(0.0, int(exp) + 0.05 - time.time()))
    verdicts = []
    for address in ("192.0.2.1", "192.0.2.2"):
        try:
            verifier.authenticate(header, address)
            verdicts.append("accepted")
        except Unauthenticated:
            verdicts.append("refused")
    assert verdicts == ["refused", "refused"]


# iss / aud ------------------------------------------------------------------------

ISSUER = "https://issuer.example/"
AUDIENCE = "leads-api"


@pytest.mark.parametrize(
    ("over", "status"),
    [
        ({}, 200),
        ({"aud": ["other-api", AUDIENCE]}, 200),
        ({"iss": "https://evil.example/"}, 401),
        ({"iss": ISSUER.upper()}, 401),
        ({"iss": None}, 401),
        ({"aud": "other-api"}, 401),
        ({"aud": ["other-api"]}, 401),
        ({"aud": None}, 401),
        ({"iss": None, "aud": None}, 401),
    ],
    ids=[
        "matching",
        "aud list containing ours",
        "wrong iss",
        "iss in other case",
        "no iss",
        "wrong aud",
        "aud list without ours",
        "no aud",
        "neither",
    ],
)
async def test_issuer_and_audience_when_configured(
    settings: Settings, over: dict[str, Any], status: int
) -> None:
    configured = dataclasses.replace(settings, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    token = sign(claims(**{"iss": ISSUER, "aud": AUDIENCE, **over}))
    flow = new_id()
    async with serving(configured) as client:
        for method, url, kwargs in surfaces(flow):
            response = await client.request(
                method, url, headers=bearer(token), **kwargs
            )
            if status == 401:
                assert_401(response)
            else:
                assert response.status_code == 200, (method, url, response.text)


# Public-key algorithms -------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_public_key_algorithms(settings: Settings, algorithm: str) -> None:
    if algorithm == "RS256":
        key: Any = rsa_key()
        stranger: Any = rsa_key()
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        stranger = ec.generate_private_key(ec.SECP256R1())
    configured = dataclasses.replace(
        settings,
        jwt_algorithms=(algorithm,),
        jwt_public_key=public_pem(key),
        jwt_secret=None,
    )
    flow = new_id()
    good = sign(claims(), key, algorithm)
    async with serving(configured) as client:
        for method, url, kwargs in surfaces(flow):
            response = await client.request(method, url, headers=bearer(good), **kwargs)
            assert response.status_code == 200, (method, url, response.text)
        for bad in (
            sign(claims(), stranger, algorithm),
            sign(claims(), SECRET, "HS256"),
            sign(claims(exp=int(time.time()) - 60), key, algorithm),
            sign(claims(sub=None), key, algorithm),
        ):
            for method, url, kwargs in surfaces(flow):
                assert_401(
                    await client.request(method, url, headers=bearer(bad), **kwargs)
                )
        assert len(await stored(client, bearer(good), flow)) == 2


async def test_rs256_only_refuses_other_algorithms_with_the_same_key(
    settings: Settings,
) -> None:
    key = rsa_key()
    configured = dataclasses.replace(
        settings, jwt_algorithms=("RS256",), jwt_public_key=public_pem(key)
    )
    flow = new_id()
    async with serving(configured) as client:
        for algorithm in ("PS256", "RS512"):
            token = sign(claims(), key, algorithm)
            for method, url, kwargs in surfaces(flow):
                assert_401(
                    await client.request(method, url, headers=bearer(token), **kwargs)
                )


async def test_hmac_signed_with_the_public_key_is_refused(settings: Settings) -> None:
    """RS256 + HS256 allowed: the public key is no HMAC secret (key confusion)."""
    key = rsa_key()
    pem = public_pem(key)
    configured = dataclasses.replace(
        settings, jwt_algorithms=("RS256", "HS256"), jwt_public_key=pem
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = [
        hand_built({"alg": "HS256", "typ": "JWT"}, claims(), secret)
        for secret in (pem.encode(), pem.strip().encode(), der)
    ]
    flow = new_id()
    async with serving(configured) as client:
        for token in forged:
            for method, url, kwargs in surfaces(flow):
                assert_401(
                    await client.request(method, url, headers=bearer(token), **kwargs)
                )
        # Both configured algorithms still work with their own keys.
        for token in (sign(claims(), key, "RS256"), sign(claims(), SECRET)):
            response = await client.get(f"/leads/{flow}", headers=bearer(token))
            assert response.status_code == 404, response.text


# Token headers are never followed ---------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local port that records whether anything connected to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}/keys.json"


async def test_jku_x5u_kid_are_never_fetched(
    client: httpx.AsyncClient, listener: socket.socket
) -> None:
    url = _url(listener)
    flow = new_id()
    pointing = [
        {"jku": url},
        {"x5u": url},
        {"kid": url},
        {"jku": url, "x5u": url, "kid": url},
        {"jku": "http://127.0.0.1:9/", "x5u": "http://127.0.0.1:9/"},
    ]
    started = time.monotonic()
    for extra in pointing:
        # Signed with our secret: the header may be ignored (200) or refused (401).
        token = jwt.encode(claims(), SECRET, algorithm="HS256", headers=extra)
        for method, url_, kwargs in surfaces(flow):
            response = await client.request(
                method, url_, headers=bearer(token), **kwargs
            )
            assert response.status_code in (200, 401), response.text
        # Signed with another secret: the header must not rescue it.
        token = jwt.encode(claims(), OTHER_SECRET, algorithm="HS256", headers=extra)
        for method, url_, kwargs in surfaces(flow):
            assert_401(
                await client.request(method, url_, headers=bearer(token), **kwargs)
            )
    assert time.monotonic() - started < 10
    assert connections(listener) == 0


async def test_keys_named_by_the_token_are_not_trusted(
    settings: Settings, listener: socket.socket
) -> None:
    """RS256 server: a token signed by an attacker's key that it points to (jku,
    x5u, kid) or embeds (jwk) is refused, and nothing is fetched."""
    ours, theirs = rsa_key(), rsa_key()
    configured = dataclasses.replace(
        settings, jwt_algorithms=("RS256",), jwt_public_key=public_pem(ours)
    )
    url = _url(listener)
    jwk = json.loads(RSAAlgorithm.to_jwk(theirs.public_key()))
    headers = [{"jku": url}, {"x5u": url}, {"kid": url}, {"jwk": jwk}]
    flow = new_id()
    started = time.monotonic()
    async with serving(configured) as client:
        for extra in headers:
            token = jwt.encode(claims(), theirs, algorithm="RS256", headers=extra)
            for method, url_, kwargs in surfaces(flow):
                assert_401(
                    await client.request(method, url_, headers=bearer(token), **kwargs)
                )
        # kid path tricks with an empty HMAC key get nowhere either.
        for kid in ("../../../../dev/null", "/dev/null", url):
            token = hand_built({"alg": "HS256", "kid": kid}, claims(), b"")
            assert_401(await client.get(f"/leads/{flow}", headers=bearer(token)))
    assert time.monotonic() - started < 10
    assert connections(listener) == 0


# 403: valid tokens without the right ----------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [
        None,
        "",
        "   ",
        "leads:admin",
        "leads:read,leads:write",
        "LEADS:READ LEADS:WRITE",
    ],
    ids=["no scope", "empty", "blank", "unknown", "comma-separated", "upper-case"],
)
async def test_a_token_without_a_known_scope_grants_nothing(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_token: Callable[..., str],
    scope: str | None,
) -> None:
    flow = new_id()
    seeded = await seed(client, auth, flow)
    headers = bearer(make_token(scope=scope))
    await _forbidden_everywhere(client, headers, flow, seeded["id"])
    assert await stored(client, auth, flow) == [seeded]


@pytest.mark.parametrize("scope", ["leads:read leads:write", "leads:read", ""])
async def test_an_empty_chatflows_claim_grants_nothing(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_token: Callable[..., str],
    scope: str,
) -> None:
    flow = new_id()
    seeded = await seed(client, auth, flow)
    headers = bearer(make_token(scope=scope, chatflows=[]))
    await _forbidden_everywhere(client, headers, flow, seeded["id"])
    # `lead` of an unknown id is FORBIDDEN too: the token grants nothing at all.
    for method in ("POST", "GET"):
        response = await gql(client, ONE, {"id": new_id()}, headers, method=method)
        assert_forbidden(response, "lead")
    assert await stored(client, auth, flow) == [seeded]


async def _forbidden_everywhere(
    client: httpx.AsyncClient, headers: dict[str, str], flow: str, lead_id: str
) -> None:
    new_lead = {"chatflowid": flow, "name": INTRUDER_NAME}
    for prefix in ("", "/api/v1"):
        assert_rest_403(await client.get(f"{prefix}/leads/{flow}", headers=headers))
        assert_rest_403(
            await client.post(f"{prefix}/leads", json=new_lead, headers=headers)
        )
    for method in ("POST", "GET"):
        response = await gql(client, LIST, {"f": flow}, headers, method=method)
        assert_forbidden(response, "leadsByChatflow")
        response = await gql(client, ONE, {"id": lead_id}, headers, method=method)
        assert_forbidden(response, "lead")
    response = await gql(client, CREATE, {"i": new_lead}, headers)
    assert_forbidden(response, "createLead")


async def test_read_only_token_cannot_create(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Callable[..., str]
) -> None:
    flow = new_id()
    seeded = await seed(client, auth, flow)
    headers = bearer(make_token(scope="leads:read"))
    new_lead = {"chatflowid": flow, "name": INTRUDER_NAME}
    for prefix in ("", "/api/v1"):
        assert_rest_403(
            await client.post(f"{prefix}/leads", json=new_lead, headers=headers)
        )
    assert_forbidden(await gql(client, CREATE, {"i": new_lead}, headers), "createLead")
    # Reading works.
    listed = await client.get(f"/leads/{flow}", headers=headers)
    assert listed.status_code == 200
    assert listed.json() == [seeded]
    response = await gql(client, ONE, {"id": seeded["id"]}, headers)
    assert response.json() == {"data": {"lead": seeded}}
    assert await stored(client, auth, flow) == [seeded]


async def test_write_only_token_cannot_read(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Callable[..., str]
) -> None:
    flow = new_id()
    seeded = await seed(client, auth, flow)
    headers = bearer(make_token(scope="leads:write"))
    for prefix in ("", "/api/v1"):
        assert_rest_403(await client.get(f"{prefix}/leads/{flow}", headers=headers))
        # Even a flow without leads: 403, not 404 (no existence oracle).
        assert_rest_403(await client.get(f"{prefix}/leads/{new_id()}", headers=headers))
    for method in ("POST", "GET"):
        response = await gql(client, LIST, {"f": flow}, headers, method=method)
        assert_forbidden(response, "leadsByChatflow")
        response = await gql(client, ONE, {"id": seeded["id"]}, headers, method=method)
        assert_forbidden(response, "lead")
    # Creating works.
    created = await client.post(
        "/leads", json={"chatflowid": flow, "email": "w@example.com"}, headers=headers
    )
    assert created.status_code == 200, created.text
    assert created.json()["email"] == "w@example.com"
    assert SEEDED_NAME not in created.text


async def test_token_limited_to_one_flow(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Callable[..., str]
) -> None:
    flow_a, flow_b = new_id(), new_id()
    lead_a = await seed(client, auth, flow_a)
    lead_b = await seed(client, auth, flow_b)
    headers = bearer(make_token(chatflows=[flow_a]))

    for prefix in ("", "/api/v1"):
        assert_rest_403(await client.get(f"{prefix}/leads/{flow_b}", headers=headers))
        assert_rest_403(
            await client.post(
                f"{prefix}/leads",
                json={"chatflowid": flow_b, "name": INTRUDER_NAME},
                headers=headers,
            )
        )
        listed = await client.get(f"{prefix}/leads/{flow_a}", headers=headers)
        assert listed.json() == [lead_a]
    for method in ("POST", "GET"):
        response = await gql(client, LIST, {"f": flow_b}, headers, method=method)
        assert_forbidden(response, "leadsByChatflow")
        response = await gql(client, LIST, {"f": flow_a}, headers, method=method)
        assert response.json() == {"data": {"leadsByChatflow": [lead_a]}}
    response = await gql(
        client, CREATE, {"i": {"chatflowid": flow_b, "name": INTRUDER_NAME}}, headers
    )
    assert_forbidden(response, "createLead")
    created = await gql(
        client, CREATE, {"i": {"chatflowid": flow_a, "name": "Allowed"}}, headers
    )
    assert created.json()["data"]["createLead"]["chatflowid"] == flow_a

    assert await stored(client, auth, flow_b) == [lead_b]


async def test_lead_outside_the_token_flows_is_null_like_an_unknown_id(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Callable[..., str]
) -> None:
    flow_a, flow_b = new_id(), new_id()
    lead_a = await seed(client, auth, flow_a)
    lead_b = await seed(client, auth, flow_b)
    headers = bearer(make_token(chatflows=[flow_a]))
    for method in ("POST", "GET"):
        outside = await gql(client, ONE, {"id": lead_b["id"]}, headers, method=method)
        unknown = await gql(client, ONE, {"id": new_id()}, headers, method=method)
        assert outside.status_code == unknown.status_code == 200
        assert outside.json() == unknown.json() == {"data": {"lead": None}}
        inside = await gql(client, ONE, {"id": lead_a["id"]}, headers, method=method)
        assert inside.json() == {"data": {"lead": lead_a}}


@pytest.mark.parametrize(
    "claim_upper", [True, False], ids=["claim upper", "claim lower"]
)
async def test_chatflows_claim_matches_in_any_case(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_token: Callable[..., str],
    claim_upper: bool,
) -> None:
    flow = new_id()
    seeded = await seed(client, auth, flow)
    claim = flow.upper() if claim_upper else flow.lower()
    asked = flow.lower() if claim_upper else flow.upper()
    headers = bearer(make_token(chatflows=[claim]))

    for prefix in ("", "/api/v1"):
        listed = await client.get(f"{prefix}/leads/{asked}", headers=headers)
        assert listed.status_code == 200, listed.text
        assert listed.json()[0] == seeded
        created = await client.post(
            f"{prefix}/leads", json={"chatflowid": asked, "name": "Ok"}, headers=headers
        )
        assert created.status_code == 200, created.text
        assert created.json()["chatflowid"] == flow.lower()
    for method in ("POST", "GET"):
        response = await gql(client, LIST, {"f": asked}, headers, method=method)
        assert response.json()["data"]["leadsByChatflow"][0] == seeded
        response = await gql(client, ONE, {"id": seeded["id"]}, headers, method=method)
        assert response.json() == {"data": {"lead": seeded}}
    created = await gql(
        client, CREATE, {"i": {"chatflowid": asked, "name": "Ok"}}, headers
    )
    assert "errors" not in created.json(), created.text
    assert created.json()["data"]["createLead"]["chatflowid"] == flow.lower()


async def test_rest_create_checks_token_scope_body_then_chatflows(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Callable[..., str]
) -> None:
    """SPEC order: the token (401), its scope (403), the body (413, 400, 422),
    then the token's chatflows (403)."""
    flow_a, flow_b = new_id(), new_id()
    json_ct = {"Content-Type": "application/json"}
    big = json.dumps({"chatflowid": flow_b, "name": "x" * (70 * 1024)}).encode()
    read_only = bearer(make_token(scope="leads:read"))
    flow_a_only = bearer(make_token(chatflows=[flow_a]))

    for prefix in ("", "/api/v1"):
        url = f"{prefix}/leads"
        # Scope before body.
        for content in (big, b"{not json", b"[1]"):
            response = await client.post(
                url, content=content, headers={**read_only, **json_ct}
            )
            assert_rest_403(response)
        # Body before chatflows.
        response = await client.post(
            url, content=big, headers={**flow_a_only, **json_ct}
        )
        assert response.status_code == 413, response.text
        response = await client.post(
            url, content=b"{not json", headers={**flow_a_only, **json_ct}
        )
        assert response.status_code == 400, response.text
        response = await client.post(
            url, json={"chatflowid": flow_b, "email": "nope"}, headers=flow_a_only
        )
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == ["email"]
        response = await client.post(
            url, json={"chatflowid": flow_b, "name": INTRUDER_NAME}, headers=flow_a_only
        )
        assert_rest_403(response)
    assert await stored(client, auth, flow_b) == []


# Tokens issued by the CLI's issue_token -----------------------------------------


async def test_issued_token_works_and_carries_its_limits(
    client: httpx.AsyncClient, settings: Settings, auth: dict[str, str]
) -> None:
    flow_a, flow_b = new_id(), new_id()
    lead_a = await seed(client, auth, flow_a)
    await seed(client, auth, flow_b)

    token = issue_token(
        settings,
        sub="dashboard",
        scopes=["leads:read", "leads:write"],
        chatflows=[flow_a.upper()],
        ttl=600,
    )
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"sub", "scope", "iat", "exp", "chatflows"}
    assert payload["exp"] - payload["iat"] == 600
    assert abs(payload["iat"] - time.time()) < 5
    assert payload["sub"] == "dashboard"

    headers = bearer(token)
    listed = await client.get(f"/api/v1/leads/{flow_a}", headers=headers)
    assert listed.status_code == 200
    assert listed.json() == [lead_a]
    response = await gql(client, LIST, {"f": flow_a}, headers)
    assert response.json() == {"data": {"leadsByChatflow": [lead_a]}}
    created = await client.post(
        "/leads", json={"chatflowid": flow_a, "name": "Via CLI"}, headers=headers
    )
    assert created.status_code == 200, created.text
    assert_rest_403(await client.get(f"/leads/{flow_b}", headers=headers))

    read_only = bearer(issue_token(settings, sub="reader", scopes=["leads:read"]))
    assert (await client.get(f"/leads/{flow_b}", headers=read_only)).status_code == 200
    assert_rest_403(
        await client.post(
            "/leads", json={"chatflowid": flow_b, "name": "x"}, headers=read_only
        )
    )
    unlimited = jwt.decode(
        read_only["Authorization"].split()[1], options={"verify_signature": False}
    )
    assert "chatflows" not in unlimited
    assert "iss" not in unlimited and "aud" not in unlimited

    expired = issue_token(settings, sub="old", scopes=["leads:read"], ttl=-60)
    assert_401(await client.get(f"/leads/{flow_a}", headers=bearer(expired)))


async def test_issued_token_has_issuer_and_audience_when_configured(
    settings: Settings,
) -> None:
    configured = dataclasses.replace(settings, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    token = issue_token(configured, sub="cli", scopes=["leads:read", "leads:write"])
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["iss"] == ISSUER
    assert payload["aud"] == AUDIENCE
    flow = new_id()
    async with serving(configured) as client:
        for method, url, kwargs in surfaces(flow):
            response = await client.request(
                method, url, headers=bearer(token), **kwargs
            )
            assert response.status_code == 200, (method, url, response.text)
        # The same token is refused by a server expecting another audience.
    other = dataclasses.replace(configured, jwt_audience="someone-else")
    async with serving(other) as client:
        assert_401(await client.get(f"/leads/{flow}", headers=bearer(token)))
