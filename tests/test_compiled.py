"""Compiled documents (list queries, create mutations) answer exactly as
Strawberry does, checks included."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from leads_gql.app import create_app
from leads_gql.config import Settings
from leads_gql.limits import Rate
from leads_gql.web.compiled import (
    CreatePlan,
    ListPlan,
    PagePlan,
    Plans,
    compile_plan,
)
from tests.conftest import new_id

pytestmark = pytest.mark.anyio

QUERIES = [
    "query($f: ID!) { leadsByChatflow(chatflowid: $f) "
    "{ id name email phone chatflowid chatId createdDate } }",
    "query Named($f: ID!) { leadsByChatflow(chatflowid: $f) { createdDate id } }",
    "query($f: ID!) { all: leadsByChatflow(chatflowid: $f) "
    "{ key: id, __typename, id, when: createdDate, id } }",
    '{ leadsByChatflow(chatflowid: "FLOW") { id email } }',
]


async def test_second_answer_is_the_compiled_one_and_identical(
    app: Starlette, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    for i, created in enumerate(["2024-08-24T14:15:22Z", "2024-08-24T14:15:22.5Z"]):
        body = {"chatflowid": flow, "name": f"n{i}", "email": f"a{i}@example.com"}
        body["createdDate"] = created
        assert (await client.post("/leads", json=body, headers=auth)).status_code == 200
    for query in QUERIES:
        query = query.replace("FLOW", flow.upper())
        payload = {"query": query, "variables": {"f": flow.upper()}}
        first = await client.post("/graphql", json=payload, headers=auth)
        assert isinstance(app.state.graphql.plans.get(query, None), ListPlan)
        second = await client.post("/graphql", json=payload, headers=auth)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json(), query
        assert "errors" not in second.json()


async def test_compiled_queries_keep_every_check(
    client: httpx.AsyncClient, make_token: Callable[..., str], auth: dict[str, str]
) -> None:
    query = "query($f: ID!) { leadsByChatflow(chatflowid: $f) { id } }"
    flow = new_id()
    warm = await client.post(
        "/graphql", json={"query": query, "variables": {"f": flow}}, headers=auth
    )
    assert warm.json() == {"data": {"leadsByChatflow": []}}
    cases = {
        "not-a-uuid": ("BAD_USER_INPUT", auth),
        flow: (
            "FORBIDDEN",
            {"Authorization": f"Bearer {make_token(scope='leads:write')}"},
        ),
        new_id(): (
            "FORBIDDEN",
            {"Authorization": f"Bearer {make_token(chatflows=[new_id()])}"},
        ),
    }
    for value, (code, headers) in cases.items():
        answer = await client.post(
            "/graphql",
            json={"query": query, "variables": {"f": value}},
            headers=headers,
        )
        assert answer.status_code == 200
        assert answer.json()["data"] is None
        assert answer.json()["errors"][0]["extensions"]["code"] == code
    missing = await client.post(
        "/graphql",
        json={"query": query},
        headers={**auth, "Accept": "application/graphql-response+json"},
    )
    assert missing.status_code == 400
    wrong_name = await client.post(
        "/graphql",
        json={"query": query, "variables": {"f": flow}, "operationName": "Other"},
        headers=auth,
    )
    assert "errors" in wrong_name.json()


@pytest.mark.parametrize(
    "query",
    [
        "query($f: ID!) { leadsByChatflow(chatflowid: $f) { ...F } } "
        "fragment F on Lead { id }",
        "query($f: ID!) { leadsByChatflow(chatflowid: $f) { id @skip(if: true) } }",
        'query($f: ID! = "x") { leadsByChatflow(chatflowid: $f) { id } }',
        "query($f: ID!) { leadsByChatflow(chatflowid: $f) { id } lead(id: $f) { id } }",
        'mutation { createLead(input: {chatflowid: "x"}) { id } }',
        "mutation($i: LeadInput) { createLead(input: $i) { id } }",
        "mutation($i: LeadInput!, $x: ID) { createLead(input: $i) { id } }",
        "mutation($i: LeadInput!) { createLead(input: $i) { id } } query { x }",
        "mutation($i: LeadInput!) { createLead(input: $i) { ... on Lead { id } } }",
        "mutation($i: LeadInput!) @x { createLead(input: $i) { id } }",
        "{ leadsByChatflow(chatflowid: 12) { id } }",
        '{ leadsByChatflow(chatflowid: "x") { id',
    ],
)
def test_other_documents_take_the_ordinary_path(query: str) -> None:
    assert compile_plan(query) is None


CREATES = [
    "mutation Create($input: LeadInput!) { createLead(input: $input) "
    "{ id name email phone chatflowid chatId createdDate } }",
    "mutation($input: LeadInput!) { made: createLead(input: $input) "
    "{ __typename when: createdDate id id } }",
]


async def test_compiled_creates_answer_as_strawberry_does(
    app: Starlette, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    for query in CREATES:
        lead = {"id": new_id(), "chatflowid": flow, "email": " ada@example.com "}
        lead |= {"name": None, "createdDate": "2024-08-24T14:15:22.5+02:00"}
        payload = {"query": query, "variables": {"input": lead}}
        first = await client.post("/graphql", json=payload, headers=auth)
        assert isinstance(app.state.graphql.plans.get(query, None), CreatePlan)
        retry = await client.post("/graphql", json=payload, headers=auth)
        assert first.status_code == retry.status_code == 200
        assert first.json() == retry.json(), query
        assert "errors" not in retry.json()
        # A new lead through the compiled path is stored as REST shows it.
        lead = {"chatflowid": flow, "phone": "+1 555 0100", "chatId": "c"}
        fresh = await client.post(
            "/graphql", json={"query": CREATES[0], "variables": {"input": lead}},
            headers=auth,
        )  # fmt: skip
        made = fresh.json()["data"]["createLead"]
        listed = (await client.get(f"/leads/{flow}", headers=auth)).json()
        assert made in listed


async def test_compiled_create_errors_are_strawberrys(
    client: httpx.AsyncClient, make_token: Callable[..., str], auth: dict[str, str]
) -> None:
    """Each case twice: the first answer comes from Strawberry (which then lets
    the document be compiled), the second from the compiled path."""
    query = CREATES[0]
    flow, taken = new_id(), new_id()
    warm = {"chatflowid": flow, "name": "warm", "id": taken}
    await client.post(
        "/graphql", json={"query": query, "variables": {"input": warm}}, headers=auth
    )
    read_only = {"Authorization": f"Bearer {make_token(scope='leads:read')}"}
    elsewhere = {"Authorization": f"Bearer {make_token(chatflows=[new_id()])}"}
    cases: list[tuple[Any, dict[str, str], str]] = [
        ({"chatflowid": flow, "email": "nope"}, auth, "BAD_USER_INPUT"),
        ({"chatflowid": flow}, auth, "BAD_USER_INPUT"),
        ({"chatflowid": "x", "name": "a"}, auth, "BAD_USER_INPUT"),
        ({"chatflowid": flow, "name": "a"}, read_only, "FORBIDDEN"),
        ({"chatflowid": flow, "name": "a"}, elsewhere, "FORBIDDEN"),
        ({"chatflowid": flow, "name": "other", "id": taken}, auth, "CONFLICT"),
        # Inputs that GraphQL must coerce or refuse take the ordinary path.
        ({"chatflowid": flow, "name": 5}, auth, "BAD_USER_INPUT"),
        ({"chatflowid": flow, "name": "a", "extra": "x"}, auth, "BAD_USER_INPUT"),
        ({"name": "a"}, auth, "BAD_USER_INPUT"),
        ("not an object", auth, "BAD_USER_INPUT"),
    ]
    for lead, headers, code in cases:
        payload = {"query": query, "variables": {"input": lead}}
        answers = [
            await client.post("/graphql", json=payload, headers=headers)
            for _ in range(2)
        ]
        assert answers[0].json() == answers[1].json(), lead
        body = answers[1].json()
        assert answers[1].status_code == 200
        assert body["errors"][0]["extensions"]["code"] == code, body
        assert body.get("data") is None
    # Mutations still need POST, compiled or not.
    over_get = await client.get(
        "/graphql",
        params={"query": query, "variables": '{"input": {"chatflowid": "x"}}'},
        headers=auth,
    )
    assert over_get.status_code == 405


async def test_a_compiled_create_counts_once_against_the_write_limit(
    settings: Settings, auth: dict[str, str]
) -> None:
    app = create_app(dataclasses.replace(settings, rate_limit_writes=Rate(4, 3600)))
    flow = new_id()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            codes = []
            for lead in ({"name": "a"}, {"email": "bad"}, {"name": "b"}, {}, {}):
                variables = {"input": {"chatflowid": flow, **lead}}
                answer = await c.post(
                    "/graphql",
                    json={"query": CREATES[0], "variables": variables},
                    headers=auth,
                )
                errors = answer.json().get("errors") or [{"extensions": {}}]
                codes.append(errors[0]["extensions"].get("code"))
    assert codes == [None, "BAD_USER_INPUT", None, "BAD_USER_INPUT", "RATE_LIMITED"]


def _many_keys(aliases: int) -> str:
    """A list query of `aliases` aliased fields plus every plain field."""
    fields = ["id", "name", "email", "phone", "chatflowid", "chatId", "createdDate"]
    aliased = " ".join(f"a{n}: {fields[n % len(fields)]}" for n in range(aliases))
    return (
        "query($f: ID!) { leadsByChatflow(chatflowid: $f) "
        f"{{ {aliased} {' '.join(fields)} __typename }} }}"
    )


@pytest.mark.parametrize("aliases", [42, 43, 50])
async def test_the_most_selections_answer_the_same_every_time(
    app: Starlette, client: httpx.AsyncClient, auth: dict[str, str], aliases: int
) -> None:
    """The review's 500: a list of 43 aliases (51 keys) answered once through
    Strawberry, then failed on PostgreSQL's 100-argument json_build_object."""
    flow = new_id()
    for i in range(2):
        lead = {"chatflowid": flow, "name": f"n{i}", "email": f"a{i}@example.com"}
        assert (await client.post("/leads", json=lead, headers=auth)).status_code == 200
    query = _many_keys(aliases)
    payload = {"query": query, "variables": {"f": flow}}
    answers = [
        await client.post("/graphql", json=payload, headers=auth) for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json() == answers[1].json() == answers[2].json()
    leads = answers[0].json()["data"]["leadsByChatflow"]
    assert len(leads) == 2 and len(leads[0]) == aliases + 8
    plan = app.state.graphql.plans.get(query, None)
    assert isinstance(plan, ListPlan) == (aliases + 8 <= 50)


PAGES = [
    "query($f: ID!, $first: Int, $after: String, $last: Int, $before: String, "
    "$s: String, $since: DateTime, $until: DateTime, $o: LeadOrder) { "
    "leads(chatflowid: $f, first: $first, after: $after, last: $last, "
    "before: $before, search: $s, createdAfter: $since, createdBefore: $until, "
    "orderBy: $o) { totalCount edges { cursor node { id name email phone "
    "chatflowid chatId createdDate } } pageInfo { hasNextPage hasPreviousPage "
    "startCursor endCursor } } }",
    "query Aliased($f: ID!) { p: leads(chatflowid: $f, first: 3, "
    "orderBy: NEWEST_FIRST) { __typename t: totalCount e: edges { __typename "
    "c: cursor n: node { __typename i: id name when: createdDate } } "
    "pi: pageInfo { __typename endCursor hasNextPage } } }",
    '{ leads(chatflowid: "FLOW", first: 2, search: "LEAD 1") '
    "{ edges { node { id name } } pageInfo { hasNextPage } } }",
    "query($f: ID!) { leads(chatflowid: $f, last: 2, createdAfter: "
    '"2024-08-24T14:15:22Z") { edges { cursor } totalCount } }',
]


async def test_pages_answer_the_same_compiled_or_not(
    app: Starlette,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    make_token: Callable[..., str],
) -> None:
    """The second answer of a `leads` document comes from its plan: for every
    document and variables, errors and coercions included, it is the first's."""
    flow = new_id()
    for i in range(7):
        body = {
            "chatflowid": flow,
            "name": f"Lead {i}",
            "email": f"lead{i}@example.com" if i % 2 else None,
            "createdDate": f"2024-08-24T14:15:2{i}Z",
        }
        assert (await client.post("/leads", json=body, headers=auth)).status_code == 200
    first_page = await client.post(
        "/graphql",
        json={"query": PAGES[0], "variables": {"f": flow, "first": 3}},
        headers=auth,
    )
    cursor = first_page.json()["data"]["leads"]["pageInfo"]["endCursor"]
    variables: list[dict[str, Any]] = [
        {"f": flow},
        {"f": flow, "first": 3, "after": cursor},
        {"f": flow.upper(), "last": 2, "before": cursor, "o": "NEWEST_FIRST"},
        {"f": flow, "s": "lead", "since": "2024-08-24T14:15:21Z", "o": None},
        {"f": flow, "first": 0},
        # Refused or coerced by GraphQL: the ordinary path answers.
        {"f": flow, "after": "forged"},
        {"f": flow, "first": 501},
        {"f": "not-a-uuid"},
        {"f": flow, "first": "3"},
        {"f": flow, "first": 2.0},
        {"f": flow, "first": True},
        {"f": flow, "o": "SIDEWAYS"},
        {"f": flow, "first": 1, "last": 1},
    ]
    readonly = {"Authorization": f"Bearer {make_token(chatflows=[new_id()])}"}
    cases: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        (PAGES[0], v, auth) for v in variables
    ]
    cases += [(PAGES[0], {"f": flow}, readonly)]
    cases += [(doc.replace("FLOW", flow), {"f": flow}, auth) for doc in PAGES[1:]]
    for query, values, headers in cases:
        payload = {"query": query, "variables": values}
        app.state.graphql.plans = Plans()  # the first answer is Strawberry's
        answers = [
            (await client.post("/graphql", json=payload, headers=headers)).json()
            for _ in range(2)
        ]
        if "errors" in answers[0]:  # learnt only from a document that executed
            app.state.graphql.plans.learn(query)
            answers.append(
                (await client.post("/graphql", json=payload, headers=headers)).json()
            )
        assert isinstance(app.state.graphql.plans.get(query, None), PagePlan), query
        assert all(answer == answers[0] for answer in answers), (query, values)
