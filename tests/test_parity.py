"""REST and GraphQL agree: the same leads, the same field lists, the same outcomes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import new_id

pytestmark = pytest.mark.anyio

FIELDS = "id name email phone chatflowid chatId createdDate"
KEYS = ["id", "name", "email", "phone", "chatflowid", "chatId", "createdDate"]
CREATE = (
    "mutation Create($input: LeadInput!) "
    f"{{ createLead(input: $input) {{ {FIELDS} }} }}"
)
LIST = f"query List($flow: ID!) {{ leadsByChatflow(chatflowid: $flow) {{ {FIELDS} }} }}"
ONE = f"query One($id: ID!) {{ lead(id: $id) {{ {FIELDS} }} }}"


async def graphql(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    query: str,
    variables: dict[str, Any],
) -> dict[str, Any]:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={**headers, "Accept": "application/graphql-response+json"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def gql_create(
    client: httpx.AsyncClient, headers: dict[str, str], lead: dict[str, Any]
) -> dict[str, Any]:
    body = await graphql(client, headers, CREATE, {"input": lead})
    assert "errors" not in body, body
    created: dict[str, Any] = body["data"]["createLead"]
    return created


async def rest_create(
    client: httpx.AsyncClient, headers: dict[str, str], lead: dict[str, Any]
) -> dict[str, Any]:
    response = await client.post("/api/v1/leads/", json=lead, headers=headers)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def items(lead: dict[str, Any]) -> list[tuple[str, Any]]:
    """A lead as ordered pairs: equal dicts with the keys in another order differ."""
    return list(lead.items())


async def test_leads_read_the_same_through_both_transports(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    leads: list[tuple[str, dict[str, Any]]] = [
        ("rest", {"name": "Ada", "createdDate": "2024-08-24T14:15:22Z"}),
        ("graphql", {"email": "grace@example.com", "chatId": "c-2"}),
        ("rest", {"phone": "+1 555 0100", "createdDate": "2024-08-24 14:15:22.25"}),
        ("graphql", {"name": " Alan ", "createdDate": "2024-08-24T16:15:22+02:00"}),
        ("rest", {"name": "Edsger", "email": " ", "id": new_id().upper()}),
        (
            "graphql",
            {"name": "Barbara", "phone": "", "createdDate": "2020-01-01T00:00Z"},
        ),
    ]
    created = []
    for transport, lead in leads:
        create = rest_create if transport == "rest" else gql_create
        created.append(await create(client, auth, {"chatflowid": flow.upper(), **lead}))
    for lead in created:
        assert list(lead) == KEYS

    rest = await client.get(f"/leads/{flow}", headers=auth)
    assert rest.status_code == 200, rest.text
    body = await graphql(client, auth, LIST, {"flow": flow})
    assert "errors" not in body
    through_graphql = body["data"]["leadsByChatflow"]
    assert [items(lead) for lead in rest.json()] == [
        items(lead) for lead in through_graphql
    ]
    assert sorted(rest.json(), key=lambda lead: lead["id"]) == sorted(
        created, key=lambda lead: lead["id"]
    )
    for lead in created:
        one = await graphql(client, auth, ONE, {"id": lead["id"]})
        assert items(one["data"]["lead"]) == items(lead)


async def test_a_lead_created_by_either_transport_is_a_retry_on_the_other(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    by_rest = {"id": new_id(), "chatflowid": flow, "name": "Ada"}
    stored = await rest_create(client, auth, by_rest)
    assert items(await gql_create(client, auth, by_rest)) == items(stored)
    by_graphql = {"id": new_id(), "chatflowid": flow, "email": "ada@example.com"}
    stored = await gql_create(client, auth, by_graphql)
    assert items(await rest_create(client, auth, by_graphql)) == items(stored)
    listed = await client.get(f"/leads/{flow}", headers=auth)
    assert len(listed.json()) == 2


async def test_a_conflict_is_409_on_rest_and_conflict_on_graphql(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    lead = {"id": new_id(), "chatflowid": new_id(), "name": "Ada"}
    await gql_create(client, auth, lead)
    changed = {**lead, "name": "Grace"}
    rest = await client.post("/leads", json=changed, headers=auth)
    assert rest.status_code == 409
    assert rest.json()["statusCode"] == 409
    body = await graphql(client, auth, CREATE, {"input": changed})
    assert body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["CONFLICT"]


@pytest.mark.parametrize(
    "lead",
    [
        {"email": "not-an-email"},
        {"email": "a" * 245 + "@example.com"},
        {"phone": "1234"},
        {"phone": "555-CALL-NOW"},
        {"name": "x" * 256},
        {"name": "nul\x00byte"},
        {"name": " ", "email": "", "phone": None},
        {},
        {"name": "Ada", "id": "not-a-uuid"},
        {"name": "Ada", "id": 42},
        {"name": "Ada", "chatId": ""},
        {"name": "Ada", "chatId": "x" * 256},
        {"name": "Ada", "createdDate": "2024-08-24"},
        {"name": "Ada", "createdDate": "2024-08-24T24:00:00Z"},
        {"name": "Ada", "createdDate": 1724508922},
        {"email": "nope", "phone": "1", "id": "x", "chatId": "", "createdDate": "x"},
    ],
)
@pytest.mark.parametrize("flow", ["valid", "not-a-uuid"])
async def test_invalid_input_lists_the_same_fields_on_both_transports(
    client: httpx.AsyncClient, auth: dict[str, str], lead: dict[str, Any], flow: str
) -> None:
    chatflowid = new_id() if flow == "valid" else flow
    data = {"chatflowid": chatflowid, **lead}
    rest = await client.post("/leads", json=data, headers=auth)
    assert rest.status_code == 422, rest.text
    rest_errors = rest.json()["errors"]
    assert rest_errors
    body = await graphql(client, auth, CREATE, {"input": data})
    assert body["data"] is None
    assert len(body["errors"]) == 1
    extensions = body["errors"][0]["extensions"]
    assert extensions == {"code": "BAD_USER_INPUT", "errors": rest_errors}
    if flow == "valid":
        listed = await client.get(f"/leads/{chatflowid}", headers=auth)
        assert listed.status_code == 404


@pytest.mark.parametrize(
    "lead",
    [
        {"email": "not-an-email"},
        {"name": "Ada", "createdDate": "2024-08-24"},
        {"name": "Ada", "chatId": "", "id": "nope"},
    ],
)
async def test_inline_literals_list_the_same_fields_as_rest(
    client: httpx.AsyncClient, auth: dict[str, str], lead: dict[str, str]
) -> None:
    data = {"chatflowid": new_id(), **lead}
    rest = await client.post("/leads", json=data, headers=auth)
    assert rest.status_code == 422, rest.text
    literal = ", ".join(f'{key}: "{value}"' for key, value in data.items())
    response = await client.post(
        "/graphql",
        json={"query": f"mutation {{ createLead(input: {{{literal}}}) {{ id }} }}"},
        headers=auth,
    )
    assert response.status_code == 200
    error = response.json()["errors"][0]
    assert error["extensions"] == {
        "code": "BAD_USER_INPUT",
        "errors": rest.json()["errors"],
    }


async def test_a_token_outside_the_flow_is_refused_on_both_transports(
    client: httpx.AsyncClient, auth: dict[str, str], make_token: Callable[..., str]
) -> None:
    flow = new_id()
    secret = await rest_create(client, auth, {"chatflowid": flow, "name": "Secret"})
    other = {"Authorization": f"Bearer {make_token(chatflows=[new_id()])}"}
    rest = await client.get(f"/leads/{flow}", headers=other)
    assert rest.status_code == 403
    body = await graphql(client, other, LIST, {"flow": flow})
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    rest = await client.post(
        "/leads", json={"chatflowid": flow, "name": "Eve"}, headers=other
    )
    assert rest.status_code == 403
    body = await graphql(
        client, other, CREATE, {"input": {"chatflowid": flow, "name": "Eve"}}
    )
    assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    body = await graphql(client, other, ONE, {"id": secret["id"]})
    assert body == {"data": {"lead": None}}
    listed = await client.get(f"/leads/{flow}", headers=auth)
    assert listed.json() == [secret]
