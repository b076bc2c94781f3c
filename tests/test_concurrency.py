"""Concurrent writers: one row per id, no 5xx, every 200 committed (SQLite too)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import new_id

pytestmark = pytest.mark.anyio

FIELDS = "id name email phone chatflowid chatId createdDate"
CREATE = (
    "mutation Create($input: LeadInput!) "
    f"{{ createLead(input: $input) {{ {FIELDS} }} }}"
)


async def rest_post(
    client: httpx.AsyncClient, auth: dict[str, str], lead: dict[str, Any]
) -> httpx.Response:
    return await client.post("/leads", json=lead, headers=auth)


async def gql_post(
    client: httpx.AsyncClient, auth: dict[str, str], lead: dict[str, Any]
) -> httpx.Response:
    return await client.post(
        "/graphql",
        json={"query": CREATE, "variables": {"input": lead}},
        headers={**auth, "Accept": "application/graphql-response+json"},
    )


async def stored(
    client: httpx.AsyncClient, auth: dict[str, str], flow: str
) -> list[dict[str, Any]]:
    response = await client.get(f"/leads/{flow}", headers=auth)
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    leads: list[dict[str, Any]] = response.json()
    return leads


async def test_twenty_concurrent_creates_of_one_id_store_one_row(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    lead = {"id": new_id(), "chatflowid": flow, "name": "Ada", "chatId": "c"}
    responses = await asyncio.gather(
        *(rest_post(client, auth, lead) for _ in range(20))
    )
    assert [r.status_code for r in responses] == [200] * 20, [
        r.text for r in responses if r.status_code != 200
    ]
    bodies = [r.json() for r in responses]
    assert all(body == bodies[0] for body in bodies)
    assert await stored(client, auth, flow) == [bodies[0]]


async def test_twenty_concurrent_graphql_creates_of_one_id_store_one_row(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    lead = {"id": new_id(), "chatflowid": flow, "email": "ada@example.com"}
    responses = await asyncio.gather(*(gql_post(client, auth, lead) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    bodies = [r.json() for r in responses]
    assert all("errors" not in body for body in bodies), bodies
    leads = [body["data"]["createLead"] for body in bodies]
    assert all(created == leads[0] for created in leads)
    assert await stored(client, auth, flow) == [leads[0]]


async def test_fifty_concurrent_creates_of_distinct_leads_are_all_stored(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    leads = [
        {"id": new_id(), "chatflowid": flow, "name": f"lead {i}"} for i in range(50)
    ]
    responses = await asyncio.gather(
        *(
            (rest_post if i % 2 else gql_post)(client, auth, lead)
            for i, lead in enumerate(leads)
        )
    )
    assert [r.status_code for r in responses] == [200] * 50, [
        r.text for r in responses if r.status_code != 200
    ]
    for response in responses[::2]:
        assert "errors" not in response.json(), response.text
    rows = await stored(client, auth, flow)
    assert len(rows) == 50
    assert {row["id"]: row["name"] for row in rows} == {
        lead["id"]: lead["name"] for lead in leads
    }


async def test_concurrent_creates_of_one_id_with_other_content_agree(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow, lead_id = new_id(), new_id()
    names = ["Ada", "Grace", "Alan", "Edsger"]
    requests = [
        {"id": lead_id, "chatflowid": flow, "name": names[i % 4], "chatId": "c"}
        for i in range(20)
    ]
    responses = await asyncio.gather(
        *(rest_post(client, auth, lead) for lead in requests)
    )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 409}, [r.text for r in responses]
    rows = await stored(client, auth, flow)
    assert len(rows) == 1
    winner = rows[0]
    for lead, response in zip(requests, responses, strict=True):
        if lead["name"] == winner["name"]:
            assert response.status_code == 200
            assert response.json() == winner
        else:
            assert response.status_code == 409
            assert winner["name"] not in response.text
    assert statuses.count(200) == 5


async def test_concurrent_graphql_creates_with_other_content_agree(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow, lead_id = new_id(), new_id()
    requests = [
        {"id": lead_id, "chatflowid": flow, "phone": f"1234{i % 3}"} for i in range(12)
    ]
    responses = await asyncio.gather(
        *(gql_post(client, auth, lead) for lead in requests)
    )
    assert [r.status_code for r in responses] == [200] * 12
    rows = await stored(client, auth, flow)
    assert len(rows) == 1
    for lead, response in zip(requests, responses, strict=True):
        body = response.json()
        if lead["phone"] == rows[0]["phone"]:
            assert body == {"data": {"createLead": rows[0]}}
        else:
            assert body["data"] is None
            assert [e["extensions"]["code"] for e in body["errors"]] == ["CONFLICT"]


async def test_reads_during_writes_never_fail(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    writes = [
        rest_post(client, auth, {"chatflowid": flow, "name": f"{i}"}) for i in range(20)
    ]
    reads = [client.get(f"/leads/{flow}", headers=auth) for _ in range(20)]
    responses = await asyncio.gather(
        *(item for pair in zip(writes, reads, strict=True) for item in pair)
    )
    assert all(r.status_code in (200, 404) for r in responses), [
        r.text for r in responses if r.status_code not in (200, 404)
    ]
    assert all(r.status_code == 200 for r in responses[::2])
    assert len(await stored(client, auth, flow)) == 20
