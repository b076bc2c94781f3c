"""Compiled list queries answer exactly as Strawberry does, checks included."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from starlette.applications import Starlette

from leads_gql.compiled import compile_list_query
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
        assert app.state.graphql.plans.get(query, None) is not None
        second = await client.post("/graphql", json=payload, headers=auth)
        assert compile_list_query(query) is not None
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
        "{ leadsByChatflow(chatflowid: 12) { id } }",
        '{ leadsByChatflow(chatflowid: "x") { id',
    ],
)
def test_other_documents_take_the_ordinary_path(query: str) -> None:
    assert compile_list_query(query) is None
