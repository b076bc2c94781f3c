"""Property-based fuzzing with schemathesis, against a real `leads-gql serve`.

The REST shim is fuzzed from the OpenAPI document it serves at /openapi.json, and
/graphql from its own schema (by introspection), with a valid read+write+delete
token, with missing, malformed, forged and expired tokens, and with tokens that lack
a scope or a chat flow. For every generated request:

- no 5xx; on GraphQL, no error without an `extensions.code` and none coded
  INTERNAL_SERVER_ERROR;
- the response conforms to the document: a documented status, content type, body
  schema and headers (REST; checks of schemathesis), a well-formed GraphQL response
  with the media type the client accepts (GraphQL), `X-Content-Type-Options: nosniff`
  and, on a 401, `WWW-Authenticate: Bearer`;
- the status is the one the token allows: 401 for a bad token (or a case that went
  out without one), 403 where a scope or chat flow is missing, never 401 or 403 for
  a full token; a limited token reads, creates and deletes nothing outside its grant;
- nothing is stored or deleted that the response does not hand back: the SQLite
  file's lead count is taken before and after every request, a returned lead must
  be there (or, deleted, gone). Deleted seed leads are stored again.

The default run is bounded: 100 examples per operation with a full token, 50 with
the other tokens, derandomized (the same cases on every run), about 25 s in all on
two cores. `LEADS_FUZZ_LONG=1` (read when the module is imported) is the opt-in long
run: 1,000 examples per test from a fresh random seed, 6 to 10 minutes on two
cores; `LEADS_FUZZ_LONG=<n>` runs n examples per test.

schemathesis' own pytest integration (`schema.parametrize()` and
`schemathesis.pytest.from_fixture`) is not used: its lazy loader sets
`Function._nodeid`, which pytest 9.2 no longer has. The tests draw cases from
`operation.as_strategy()` under Hypothesis' `@given` instead, which is the same
generator without the pytest plumbing.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jwt
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis import Case, GenerationMode, checks
from schemathesis.graphql import nodes

from tests.conftest import SECRET
from tests.server import Server, cli_env

pytestmark = pytest.mark.slow


def _budget(raw: str) -> tuple[bool, int, int]:
    """(long?, examples with a full token, examples with other tokens).

    LEADS_FUZZ_LONG unset, empty or 0: the bounded run, 100 and 50. 1 (or any
    other word): the long run, 1,000 each. A number above 1: that many each.
    """
    raw = raw.strip()
    if raw in {"", "0"}:
        return False, 100, 50
    examples = int(raw) if raw.isdigit() and int(raw) > 1 else 1000
    return True, examples, examples


# Read at import time: the suite's autouse `clean_environ` fixture removes every
# LEADS_* variable while a test runs.
LONG, FULL_EXAMPLES, OTHER_EXAMPLES = _budget(os.environ.get("LEADS_FUZZ_LONG", ""))

# Bounded runs are derandomized: the same cases on every run, so CI is stable.
FUZZ = settings(
    max_examples=OTHER_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not LONG,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
FUZZ_FULL = settings(FUZZ, max_examples=FULL_EXAMPLES)

REST_OPERATIONS = [
    ("GET", "/leads/{id}"),
    ("GET", "/leads/{id}/export"),
    ("POST", "/leads"),
    ("POST", "/leads/batch"),
    ("GET", "/api/v1/leads/{id}"),
    ("GET", "/api/v1/leads/{id}/export"),
    ("POST", "/api/v1/leads"),
    ("POST", "/api/v1/leads/batch"),
]
EXPORT_FORMATS = ("csv", "ndjson", "json")
GRAPHQL_OPERATIONS = [
    "Query.leadsByChatflow",
    "Query.lead",
    "Query.leads",
    "Mutation.createLead",
    "Mutation.createLeads",
    "Mutation.deleteLead",
    "Mutation.eraseContact",
]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]

OPENAPI_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
# Only the shape of the response: schemathesis' `not_a_server_error` counts every
# error with a `path` as a server error, FORBIDDEN and CONFLICT included, which SPEC
# answers with HTTP 200 by design. Server errors are judged in `graphql_case`: no 5xx,
# no error coded INTERNAL_SERVER_ERROR, none without a code.
GRAPHQL_CHECKS = [checks.response_schema_conformance]

GRAPHQL_RESPONSE = "application/graphql-response+json"
# Every code a GraphQL error may carry (SPEC, "GraphQL at /graphql"), less
# INTERNAL_SERVER_ERROR, which no request here should cause.
GRAPHQL_CODES = {
    "BAD_USER_INPUT",
    "FORBIDDEN",
    "CONFLICT",
    "BAD_REQUEST",
    "GRAPHQL_PARSE_FAILED",
    "GRAPHQL_VALIDATION_FAILED",
}
UUID_ANY = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
UUID_LOWER = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
REQUEST_TIMEOUT = 30

# Chat flows that have leads before the run (so reads find something), one that
# never has any, and one that a limited token is restricted to.
FLOW_A = "6f1c2d3e-4a5b-4c6d-8e7f-0123456789ab"
FLOW_B = "0b9a8c7d-6e5f-4a3b-9c2d-1e0f2a3b4c5d"
FLOW_EMPTY = "00000000-0000-4000-8000-000000000000"
FLOW_OTHER = "ffffffff-ffff-4fff-bfff-ffffffffffff"
SEED_LEADS = [
    {
        "id": "11111111-1111-4111-8111-111111111111",
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "chatflowid": FLOW_A,
        "createdDate": "2024-08-24T14:15:22Z",
    },
    {
        "id": "22222222-2222-4222-8222-222222222222",
        "phone": "+44 (20) 7946-0958",
        "chatflowid": FLOW_A,
        "chatId": "chat-1",
    },
    {
        "id": "33333333-3333-4333-8333-333333333333",
        "name": "Grace Hopper",
        "chatflowid": FLOW_B,
        "createdDate": "2024-08-24T14:15:22.123456+02:00",
    },
]
KNOWN_IDS = [
    FLOW_A,
    FLOW_A.upper(),
    FLOW_B,
    FLOW_EMPTY,
    *(lead["id"] for lead in SEED_LEADS),
]


def spread(values: list[str]) -> st.SearchStrategy[str]:
    """One of `values`, spread out: within a small example budget `sampled_from`
    mostly draws its first element, so draw a wide integer and index with it."""
    return st.integers(0, 2**32).map(lambda n: values[n % len(values)])


# Tokens ------------------------------------------------------------------------


def token(
    scope: str | None = "leads:read leads:write leads:delete",
    *,
    key: str = SECRET,
    algorithm: str = "HS256",
    ttl: int = 3600,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"sub": "fuzz", "iat": now, "exp": now + ttl, **claims}
    if scope is not None:
        body["scope"] = scope
    for name in drop:
        body.pop(name)
    return jwt.encode(body, key, algorithm=algorithm)


def bearer(value: str) -> str:
    return f"Bearer {value}"


def bad_tokens() -> dict[str, str | None]:
    """Authorization header values (None: no header) that must get 401."""
    return {
        "none": None,
        "empty": "Bearer ",
        "not-a-jwt": bearer("not-a-jwt"),
        "basic": "Basic ZnV6ejpmdXp6",
        "expired": bearer(token(ttl=-120)),
        "forged": bearer(token(key="another-secret-that-is-long-enough-0123456789")),
        "alg-none": bearer(jwt.encode({"sub": "fuzz", "exp": 2**33}, "", "none")),
        "alg-hs512": bearer(token(key=SECRET * 2, algorithm="HS512")),
        "no-sub": bearer(token(drop=("sub",))),
        "no-exp": bearer(token(drop=("exp",))),
        "huge": bearer(token(padding="x" * 9000)),
    }


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a token allows: reading, writing, and which chat flows (None: all)."""

    read: bool
    write: bool
    delete: bool = False
    flows: frozenset[str] | None = None


def limited_tokens() -> dict[str, tuple[str, Grant]]:
    """Valid tokens that lack a scope or a chat flow: 403 where they fall short."""
    nothing = Grant(read=False, write=False)
    return {
        "no-scope": (bearer(token(None)), nothing),
        "empty-scope": (bearer(token("")), nothing),
        "empty-chatflows": (bearer(token(chatflows=[])), nothing),
        "read-only": (bearer(token("leads:read")), Grant(read=True, write=False)),
        "write-only": (bearer(token("leads:write")), Grant(read=False, write=True)),
        "delete-only": (
            bearer(token("leads:delete")),
            Grant(read=False, write=False, delete=True),
        ),
        "other-flow": (
            bearer(token(chatflows=[FLOW_OTHER.upper()])),
            Grant(read=True, write=True, delete=True, flows=frozenset({FLOW_OTHER})),
        ),
    }


FULL = Grant(read=True, write=True, delete=True)


# The server under test ---------------------------------------------------------


@dataclasses.dataclass
class Target:
    server: Server
    db: Path
    session: requests.Session

    @property
    def url(self) -> str:
        return self.server.url

    def lead_count(self) -> int:
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as conn:
            return int(conn.execute("SELECT count(*) FROM lead").fetchone()[0])

    def stored(self, lead_id: str) -> bool:
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as conn:
            row = conn.execute("SELECT 1 FROM lead WHERE id = ?", (lead_id,))
            return row.fetchone() is not None

    def log_tail(self) -> str:
        return self.server.output()[-4000:]

    def reseed(self) -> None:
        """Store the seed leads again (those deleted); a seed id taken since by a
        lead of other content is a 409, left as it is."""
        for lead in SEED_LEADS:
            response = self.session.post(
                f"{self.url}/leads",
                json=lead,
                headers={"Authorization": bearer(token())},
                timeout=REQUEST_TIMEOUT,
            )
            assert response.status_code in {200, 409}, response.text


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One `leads-gql serve` on a fresh SQLite file for the module, seeded."""
    workdir = tmp_path_factory.mktemp("fuzz")
    db = workdir / "leads.db"
    env = cli_env(LEADS_JWT_SECRET=SECRET, LEADS_DATABASE_URL=f"sqlite:///{db}")
    with Server(workdir, env) as server, requests.Session() as session:
        for lead in SEED_LEADS:
            response = session.post(
                f"{server.url}/leads",
                json=lead,
                headers={"Authorization": bearer(token())},
                timeout=REQUEST_TIMEOUT,
            )
            assert response.status_code == 200, response.text
        yield Target(server=server, db=db, session=session)


@pytest.fixture(scope="module")
def rest_schema(target: Target) -> Any:
    return schemathesis.openapi.from_url(
        f"{target.url}/openapi.json", timeout=REQUEST_TIMEOUT
    )


@pytest.fixture(scope="module")
def graphql_schema(target: Target) -> Iterator[Any]:
    # Biased scalars, so that resolvers often run past their input checks: ids are
    # often UUIDs (in any case, or ids that exist), strings often look like an
    # email, a phone number or a name, and DateTime is often valid, sometimes not.
    ids = st.one_of(
        spread(KNOWN_IDS).map(nodes.String),
        st.uuids().map(lambda u: nodes.String(str(u))),
        st.uuids().map(lambda u: nodes.String(str(u).upper())),
        st.text().map(nodes.String),
        st.integers().map(nodes.Int),
    )
    # An email is a valid name, email and chatId; a blank is a null contact field.
    # The seed leads' contacts, in other letter cases and formats, so that
    # eraseContact (given both arguments, nearly always) finds leads to delete.
    seed_contacts = ["ADA@example.COM", "44 20 7946 0958"]
    strings = st.one_of(
        st.emails(),
        st.emails(),
        st.sampled_from(["", "  ", "chat-1"]),
        spread(seed_contacts),
        spread(seed_contacts),
        st.from_regex(r"\+?[0-9][0-9 ().-]{4,24}", fullmatch=True),
        st.text(),
        st.text(min_size=250, max_size=260),
    ).map(nodes.String)
    instants = st.one_of(
        st.datetimes().map(lambda d: d.isoformat() + "Z"),
        st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
        st.dates().map(str),
        st.text(),
    ).map(nodes.String)
    schemathesis.graphql.scalar("ID", ids)
    schemathesis.graphql.scalar("String", strings)
    schemathesis.graphql.scalar("DateTime", instants)
    try:
        yield schemathesis.graphql.from_url(
            f"{target.url}/graphql",
            headers={"Authorization": bearer(token())},
            timeout=REQUEST_TIMEOUT,
        )
    finally:
        # schemathesis keeps custom scalars in a process-wide registry.
        from schemathesis.specs.graphql.scalars import CUSTOM_SCALARS

        for name in ("ID", "String", "DateTime"):
            CUSTOM_SCALARS.pop(name, None)


# Running one case --------------------------------------------------------------


def send(
    target: Target, case: Case[Any], authorization: str | None, **headers: str
) -> tuple[Any, str | None]:
    """Send `case` with this Authorization (None: none); return the response and
    the Authorization header that actually went out (negative cases may drop it).
    """
    if case.headers is not None:
        # A generated placeholder or mutation must not stand in for ours.
        for name in [h for h in case.headers if h.lower() == "authorization"]:
            del case.headers[name]
    if authorization is not None:
        headers["Authorization"] = authorization
    response = case.call(
        session=target.session, headers=headers or None, timeout=REQUEST_TIMEOUT
    )
    sent = response.request.headers.get("Authorization")
    return response, None if sent is None else str(sent)


def reproduce(case: Case[Any], response: Any, target: Target, token_name: str) -> str:
    """How to see a failing case again: the token, a curl command, the answer."""
    sent = {
        name: value
        for name, value in response.request.headers.items()
        if name.lower() in {"authorization", "accept"}
    }
    text = (
        f"\ntoken: {token_name}\n{case.as_curl_command(headers=sent)}"
        f"\n-> {response.status_code} {response.text}"
    )
    if response.status_code >= 500:
        text += f"\n--- server log (tail) ---\n{target.log_tail()}"
    return text


def header(response: Any, name: str) -> str:
    values = response.headers.get(name.lower()) or [""]
    return str(values[0])


def check_common(response: Any, why: Callable[[], str]) -> None:
    assert response.status_code < 500, f"server error{why()}"
    assert header(response, "x-content-type-options") == "nosniff", why()
    if response.status_code == 401:
        assert header(response, "www-authenticate").startswith("Bearer"), why()


def check_storage(
    target: Target,
    before: int,
    created: list[str],
    why: Callable[[], str],
    deleted: int = 0,
) -> None:
    """Nothing stored unless the response hands back the stored lead(s), nothing
    deleted beyond the `deleted` it answered."""
    after = target.lead_count()
    assert before - deleted <= after <= before + len(created), (
        f"{after - before} lead(s) stored, {len(created)} answered, "
        f"{deleted} deleted{why()}"
    )
    for lead_id in filter(None, created):
        assert target.stored(lead_id), f"answered lead {lead_id} is not stored{why()}"


def check_leads(leads: list[dict[str, Any]], why: Callable[[], str]) -> None:
    """Leads as SPEC prints them: lower-case UUIDs, instants in UTC with a Z."""
    for lead in leads:
        assert UUID_LOWER.fullmatch(lead["id"]), why()
        assert UUID_LOWER.fullmatch(lead["chatflowid"]), why()
        if "createdDate" in lead:
            assert INSTANT.fullmatch(lead["createdDate"]), why()


# REST --------------------------------------------------------------------------


def rest_statuses(
    grant: Grant | None,
    flow: str | None,
    export_format: str | None = None,
    batch: bool = False,
) -> set[int]:
    """The statuses a request may get with this grant (None: no valid token);
    `flow` is the chat flow id a GET asked for, None for a POST; `export_format`
    the format an export asked for; `batch` for POST /leads/batch (each item's
    error is in the 200's body)."""
    if grant is None:
        return {401}
    if batch:
        return {200, 400, 413, 415} if grant.write else {403}
    if flow is not None:  # GET /leads/{id}: scope, then the id, then the flows
        if not grant.read or grant.flows == frozenset():
            return {403}
        if not UUID_ANY.fullmatch(flow):
            return {400}
        if export_format is not None and export_format not in EXPORT_FORMATS:
            return {400}
        if grant.flows is not None and flow.lower() not in grant.flows:
            return {403}
        return {200, 404}
    if not grant.write or grant.flows == frozenset():
        return {403}
    if grant.flows is None:
        return {200, 400, 409, 413, 415, 422}
    return {400, 403, 413, 415, 422}  # never generated: a lead of FLOW_OTHER


def requested_flow(case: Case[Any], response: Any) -> tuple[bool, str | None]:
    """(whether the request reached the operation's path, the GET's flow id).

    A generated path parameter may hold a `/` or be a dot segment (`..`), and then
    names another path, which is not this operation's to answer.
    """
    path = unquote(urlsplit(response.request.url).path)
    prefix = case.operation.path.split("/leads")[0]
    if case.method.upper() == "POST":
        return path.rstrip("/") == case.operation.path, None
    tail = "/export" if case.operation.path.endswith("/export") else ""
    match = re.fullmatch(rf"{re.escape(prefix)}/leads/([^/]+){tail}/*", path)
    return match is not None, match.group(1) if match else None


def export_format(case: Case[Any]) -> str | None:
    """The format an export asked for (csv when none); None for other paths."""
    if not case.operation.path.endswith("/export"):
        return None
    return str((case.query or {}).get("format", "csv"))


def exported_leads(fmt: str, response: Any) -> list[dict[str, Any]]:
    """The leads of an export's body, read back by its format's rules."""
    if fmt == "json":
        return response.json()  # type: ignore[no-any-return]
    if fmt == "ndjson":
        assert response.text.endswith("\n")
        return [json.loads(line) for line in response.text.splitlines()]
    assert response.content.endswith(b"\r\n")
    rows = list(csv.reader(io.StringIO(response.text, newline="")))
    assert rows[0] == [
        "id",
        "name",
        "email",
        "phone",
        "chatflowid",
        "chatId",
        "createdDate",
    ]
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def rest_strategy(operation: Any, modes: list[GenerationMode]) -> Any:
    strategies = [operation.as_strategy(generation_mode=mode) for mode in modes]
    if operation.method.upper() == "GET":
        # Random strings are rarely UUIDs: also read flows that exist.
        strategies += [
            operation.as_strategy(generation_mode=mode, path_parameters={"id": i})
            for mode in modes
            for i in KNOWN_IDS
        ]
    return st.one_of(strategies)


def rest_case(
    target: Target,
    case: Case[Any],
    token_name: str,
    authorization: str | None,
    grant: Grant | None,
) -> None:
    method = case.method.upper()
    before = target.lead_count()
    response, sent = send(target, case, authorization)
    if sent != authorization:  # a negative case that replaced or dropped it
        grant, token_name = None, f"{token_name}, replaced by {sent!r}"
    why = functools.partial(reproduce, case, response, target, token_name)
    check_common(response, why)
    reached, flow = requested_flow(case, response)
    if not reached:
        # Another path: an error of the router (404, 405), nothing stored.
        assert response.status_code in {401, 404, 405}, why()
        check_storage(target, before, [], why)
        return
    case.validate_response(response, checks=OPENAPI_CHECKS)
    fmt = export_format(case)
    batch = case.operation.path.endswith("/batch")
    allowed = rest_statuses(grant, flow, fmt, batch)
    assert response.status_code in allowed, f"expected one of {sorted(allowed)}{why()}"
    created = []
    if response.status_code == 200:
        answer = response.json() if fmt is None else exported_leads(fmt, response)
        leads = answer if isinstance(answer, list) else [answer]
        if batch:
            assert isinstance(case.body, list) and len(answer) == len(case.body), why()
            leads = [item["lead"] for item in answer if "lead" in item]
            created = [lead["id"] for lead in leads]
            check_leads(leads, why)
        elif method == "POST":
            check_leads(leads, why)
            created = [answer["id"]]
            sent_flow = (
                case.body.get("chatflowid") if isinstance(case.body, dict) else None
            )
            assert answer["chatflowid"] == str(sent_flow).lower(), why()
        else:
            check_leads(leads, why)
            assert flow is not None and leads, why()
            assert all(lead["chatflowid"] == flow.lower() for lead in leads), why()
            order = [(instant(lead["createdDate"]), lead["id"]) for lead in leads]
            assert order == sorted(order), f"not oldest first{why()}"
    check_storage(target, before, created, why)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize(("method", "path"), REST_OPERATIONS)
def test_rest_with_a_full_token(
    target: Target, rest_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = rest_schema[path][method]
    authorization = bearer(token())

    @FUZZ_FULL
    @given(case=rest_strategy(operation, [mode]))
    def run(case: Case[Any]) -> None:
        rest_case(target, case, "full", authorization, FULL)

    run()


@pytest.mark.parametrize(("method", "path"), REST_OPERATIONS)
def test_rest_with_bad_tokens(
    target: Target, rest_schema: Any, method: str, path: str
) -> None:
    operation = rest_schema[path][method]
    tokens = bad_tokens()

    @FUZZ
    @given(case=rest_strategy(operation, MODES), name=spread(sorted(tokens)))
    def run(case: Case[Any], name: str) -> None:
        rest_case(target, case, name, tokens[name], None)

    run()


@pytest.mark.parametrize(("method", "path"), REST_OPERATIONS)
def test_rest_with_limited_tokens(
    target: Target, rest_schema: Any, method: str, path: str
) -> None:
    operation = rest_schema[path][method]
    tokens = limited_tokens()

    @FUZZ
    @given(case=rest_strategy(operation, MODES), name=spread(sorted(tokens)))
    def run(case: Case[Any], name: str) -> None:
        authorization, grant = tokens[name]
        rest_case(target, case, name, authorization, grant)

    run()


def test_every_rest_operation_is_fuzzed(rest_schema: Any) -> None:
    found = {
        (result.ok().method.upper(), result.ok().path)
        for result in rest_schema.get_all_operations()
    }
    assert found == set(REST_OPERATIONS)


# GraphQL -----------------------------------------------------------------------


def leads_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every Lead object in a GraphQL `data` value (recognised by its id + flow)."""
    if isinstance(value, dict):
        if "id" in value and "chatflowid" in value:
            yield value
        for item in value.values():
            yield from leads_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from leads_in(item)


def graphql_case(
    target: Target,
    case: Case[Any],
    token_name: str,
    authorization: str | None,
    grant: Grant | None,
    accept: str | None,
) -> None:
    extra = {"Accept": accept} if accept else {}
    before = target.lead_count()
    response, sent = send(target, case, authorization, **extra)
    if sent != authorization:  # a negative case that replaced or dropped it
        grant, token_name = None, f"{token_name}, replaced by {sent!r}"
    why = functools.partial(reproduce, case, response, target, token_name)
    check_common(response, why)
    strict = accept is not None and GRAPHQL_RESPONSE in accept
    media = header(response, "content-type").split(";")[0].strip()
    assert media == (GRAPHQL_RESPONSE if strict else "application/json"), why()
    body = json.loads(response.content)
    assert isinstance(body, dict), why()
    errors = body.get("errors") or []
    codes = [(error.get("extensions") or {}).get("code") for error in errors]

    if grant is None:
        assert response.status_code == 401, why()
        assert codes == ["UNAUTHENTICATED"], why()
        assert body.get("data") is None, why()
        check_storage(target, before, [], why)
        return

    case.validate_response(response, checks=GRAPHQL_CHECKS)
    assert "data" in body or errors, why()
    assert response.status_code in ({200, 400} if strict else {200}), why()
    if response.status_code == 400:
        assert body.get("data") is None and errors, why()
    for error, code in zip(errors, codes, strict=True):
        assert code in GRAPHQL_CODES, f"unexpected error code {code!r}{why()}"
        if code == "BAD_USER_INPUT" and error.get("path"):
            fields = error["extensions"].get("errors")
            assert isinstance(fields, list) and fields, why()
            assert all(set(f) == {"field", "message"} for f in fields), why()
    if grant == FULL:
        assert "FORBIDDEN" not in codes, why()

    data = body.get("data")
    leads = list(leads_in(data))
    check_leads(leads, why)
    # A limited token reads and creates nothing beyond what it grants.
    if grant.flows is not None:
        assert all(lead["chatflowid"] in grant.flows for lead in leads), why()
    if not grant.read and case.operation.label.startswith("Query."):
        assert not leads, why()
    created = []
    if isinstance(data, dict) and isinstance(data.get("createLead"), dict):
        assert grant.write, why()
        # The selection set is generated: the id is there only when selected.
        created = [data["createLead"].get("id") or ""]
    if isinstance(data, dict) and isinstance(data.get("createLeads"), list):
        assert grant.write, why()
        # An item failed when it says why; else it may be stored (its lead's
        # id is there only when selected).
        created = [
            (item.get("lead") or {}).get("id") or ""
            for item in data["createLeads"]
            if not any(item.get(key) for key in ("code", "errors", "message"))
        ]
    deleted = 0
    if isinstance(data, dict) and isinstance(data.get("deleteLead"), dict):
        deleted = 1
        if data["deleteLead"].get("id"):
            assert not target.stored(data["deleteLead"]["id"]), why()
    if isinstance(data, dict) and isinstance(data.get("eraseContact"), int):
        deleted = data["eraseContact"]
        assert deleted >= 0, why()
    assert grant.delete or not deleted, why()
    check_storage(target, before, created, why, deleted)
    if deleted:
        target.reseed()


ACCEPTS = st.one_of(
    st.none(),
    spread(
        [
            "application/json",
            GRAPHQL_RESPONSE,
            f"{GRAPHQL_RESPONSE}, application/json",
            "*/*",
        ]
    ),
)


def graphql_strategy(operation: Any, modes: list[GenerationMode]) -> Any:
    return st.one_of([operation.as_strategy(generation_mode=mode) for mode in modes])


def graphql_operation(schema: Any, label: str) -> Any:
    root, field = label.split(".")
    return schema[root][field]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("label", GRAPHQL_OPERATIONS)
def test_graphql_with_a_full_token(
    target: Target, graphql_schema: Any, label: str, mode: GenerationMode
) -> None:
    operation = graphql_operation(graphql_schema, label)
    authorization = bearer(token())

    @FUZZ_FULL
    @given(case=graphql_strategy(operation, [mode]), accept=ACCEPTS)
    def run(case: Case[Any], accept: str | None) -> None:
        graphql_case(target, case, "full", authorization, FULL, accept)

    run()


@pytest.mark.parametrize("label", GRAPHQL_OPERATIONS)
def test_graphql_with_bad_tokens(
    target: Target, graphql_schema: Any, label: str
) -> None:
    operation = graphql_operation(graphql_schema, label)
    tokens = bad_tokens()

    @FUZZ
    @given(
        case=graphql_strategy(operation, MODES),
        name=spread(sorted(tokens)),
        accept=ACCEPTS,
    )
    def run(case: Case[Any], name: str, accept: str | None) -> None:
        graphql_case(target, case, name, tokens[name], None, accept)

    run()


@pytest.mark.parametrize("label", GRAPHQL_OPERATIONS)
def test_graphql_with_limited_tokens(
    target: Target, graphql_schema: Any, label: str
) -> None:
    operation = graphql_operation(graphql_schema, label)
    tokens = limited_tokens()

    @FUZZ
    @given(
        case=graphql_strategy(operation, MODES),
        name=spread(sorted(tokens)),
        accept=ACCEPTS,
    )
    def run(case: Case[Any], name: str, accept: str | None) -> None:
        authorization, grant = tokens[name]
        graphql_case(target, case, name, authorization, grant, accept)

    run()


def test_every_graphql_operation_is_fuzzed(graphql_schema: Any) -> None:
    found = {result.ok().label for result in graphql_schema.get_all_operations()}
    assert found == set(GRAPHQL_OPERATIONS)
