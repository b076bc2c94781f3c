"""Batch creates (POST /leads/batch, createLeads) and group commit of single
creates, over HTTP against the app, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from leads_gql.config import Settings
from leads_gql.limits import Rate
from leads_gql.telemetry import CREATE_GROUPS
from tests.conftest import SECRET, new_id

pytestmark = pytest.mark.anyio

KEYS = ["id", "name", "email", "phone", "chatflowid", "chatId", "createdDate"]
CREATE_LEADS = """
mutation ($input: [LeadInput!]!) {
  createLeads(input: $input) {
    lead { id name chatflowid createdDate }
    code message errors { field message }
  }
}"""


def lead(flow: str, **fields: Any) -> dict[str, Any]:
    return {"id": new_id(), "name": "Ada", "chatflowid": flow, **fields}


async def stored(
    client: httpx.AsyncClient, auth: dict[str, str], flow: str
) -> list[Any]:
    response = await client.get(f"/api/v1/leads/{flow}", headers=auth)
    return [] if response.status_code == 404 else list(response.json())


async def test_each_item_is_answered_in_order_and_one_error_fails_no_other(
    client: httpx.AsyncClient, make_token: Callable[..., str], auth: dict[str, str]
) -> None:
    flow, other = new_id(), new_id()
    token = make_token(chatflows=[flow])
    earlier = lead(flow, email="ada@example.com")
    first = await client.post(
        "/api/v1/leads", json=earlier, headers={"Authorization": f"Bearer {token}"}
    )
    assert first.status_code == 200
    items = [
        lead(flow, email="grace@example.com"),
        {"chatflowid": flow, "email": "not an email"},  # 422
        earlier,  # a retry: the stored lead
        {**earlier, "name": "Someone else"},  # 409
        lead(other),  # 403: outside the token's flows
        "not an object",  # 422
        lead(flow, phone="+44 20 7946 0958"),
    ]
    response = await client.post(
        "/api/v1/leads/batch", json=items, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    answers = response.json()
    assert [a.get("statusCode", 200) for a in answers] == [
        200, 422, 200, 409, 403, 422, 200
    ]  # fmt: skip
    assert answers[0]["lead"]["id"] == items[0]["id"]
    assert list(answers[0]["lead"]) == KEYS
    assert answers[1]["errors"] == [
        {"field": "email", "message": answers[1]["errors"][0]["message"]}
    ]
    assert answers[2] == {"lead": first.json()}
    assert set(answers[3]) == {"statusCode", "message"}
    assert answers[5]["errors"][0]["field"] == "input"
    rows = await stored(client, auth, flow)
    assert sorted(r["id"] for r in rows) == sorted(
        [earlier["id"], items[0]["id"], items[6]["id"]]
    )
    assert await stored(client, auth, other) == []


async def test_a_batch_sent_twice_stores_nothing_twice(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    items = [lead(flow, name=f"Lead {n}") for n in range(50)]
    first = await client.post("/leads/batch", json=items, headers=auth)
    again = await client.post("/leads/batch", json=items, headers=auth)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert len(await stored(client, auth, flow)) == 50


async def test_the_same_id_twice_in_one_batch(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    one = lead(flow)
    items = [one, dict(one), {**one, "name": "Other"}]
    answers = (await client.post("/leads/batch", json=items, headers=auth)).json()
    assert answers[0] == answers[1]
    assert answers[0]["lead"]["name"] == "Ada"
    assert answers[2]["statusCode"] == 409
    assert len(await stored(client, auth, flow)) == 1


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"chatflowid": "x"}', b'"leads"', b"null"],
    ids=["empty", "object", "string", "null"],
)
async def test_a_body_that_is_not_a_batch_is_400(
    client: httpx.AsyncClient, auth: dict[str, str], body: bytes
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    response = await client.post("/leads/batch", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["statusCode"] == 400


async def test_batch_size_and_body_size_limits(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    # 1,000 leads of about 1 KiB each: over /graphql's 64 KiB, within 4 MiB.
    items = [lead(flow, name="n" * 255, chatId="c" * 255) for _ in range(1000)]
    response = await client.post("/leads/batch", json=items, headers=auth)
    assert response.status_code == 200
    assert all("lead" in answer for answer in response.json())
    assert len(await stored(client, auth, flow)) == 1000
    too_many = await client.post(
        "/leads/batch", json=[*items, lead(flow)], headers=auth
    )
    assert too_many.status_code == 400
    big = [{**item, "junk": "x" * 4000} for item in items]
    assert (
        await client.post("/leads/batch", json=big, headers=auth)
    ).status_code == 413


async def test_scope_and_token_come_first(
    client: httpx.AsyncClient, make_token: Callable[..., str]
) -> None:
    flow = new_id()
    assert (await client.post("/leads/batch", json=[lead(flow)])).status_code == 401
    reader = {"Authorization": f"Bearer {make_token('leads:read')}"}
    refused = await client.post("/leads/batch", json=[lead(flow)], headers=reader)
    assert refused.status_code == 403
    # The body is not read before the scope is checked.
    junk = await client.post("/leads/batch", content=b"{", headers=reader)
    assert junk.status_code == 403


async def test_a_write_only_token_gets_back_only_what_it_sent(
    client: httpx.AsyncClient, make_token: Callable[..., str], auth: dict[str, str]
) -> None:
    flow = new_id()
    earlier = lead(flow, email="ada@example.com", phone="+1 555 0100 123")
    await client.post("/leads", json=earlier, headers=auth)
    writer = {"Authorization": f"Bearer {make_token('leads:write')}"}
    retry = {"id": earlier["id"], "chatflowid": flow, "name": "Ada"}
    (answer,) = (await client.post("/leads/batch", json=[retry], headers=writer)).json()
    assert answer["lead"]["email"] is None and answer["lead"]["phone"] is None


@pytest.fixture
def limited(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        jwt_secret=SECRET,
        rate_limit_writes=Rate.parse("rate", "10/minute"),
    )


async def test_a_batch_counts_as_its_number_of_leads_for_rate_limits(
    limited: Settings, auth: dict[str, str]
) -> None:
    from leads_gql.app import create_app

    app = create_app(limited)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            flow = new_id()
            over = await c.post(
                "/leads/batch", json=[lead(flow) for _ in range(11)], headers=auth
            )
            assert over.status_code == 429
            assert "smaller batches" in over.json()["message"]
            eight = [lead(flow) for _ in range(8)]
            assert (await c.post("/leads/batch", json=eight, headers=auth)).is_success
            three = [lead(flow) for _ in range(3)]
            refused = await c.post("/leads/batch", json=three, headers=auth)
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert len(await stored(c, auth, flow)) == 8


async def test_create_leads_in_graphql_answers_like_rest(
    client: httpx.AsyncClient, make_token: Callable[..., str]
) -> None:
    flow = new_id()
    auth = {"Authorization": f"Bearer {make_token(chatflows=[flow])}"}
    good = lead(flow, createdDate="2024-08-24T14:15:22Z")
    items = [good, {"chatflowid": flow}, {**good, "name": "Other"}, lead(new_id())]
    response = await client.post(
        "/graphql",
        json={"query": CREATE_LEADS, "variables": {"input": items}},
        headers=auth,
    )
    assert response.status_code == 200
    body = response.json()
    assert "errors" not in body
    results = body["data"]["createLeads"]
    assert results[0]["lead"] == {
        "id": good["id"],
        "name": "Ada",
        "chatflowid": flow,
        "createdDate": "2024-08-24T14:15:22Z",
    }
    assert results[0]["code"] is None and results[0]["errors"] is None
    assert results[1]["code"] == "BAD_USER_INPUT"
    assert {e["field"] for e in results[1]["errors"]} == {"name", "email", "phone"}
    assert [r["code"] for r in results[2:]] == ["CONFLICT", "FORBIDDEN"]
    assert all(r["lead"] is None and r["message"] for r in results[1:])


async def test_create_leads_over_a_thousand_is_bad_user_input(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    items = [{"chatflowid": flow, "name": "x"} for _ in range(1001)]
    response = await client.post(
        "/graphql",
        json={"query": CREATE_LEADS, "variables": {"input": items}},
        headers=auth,
    )
    assert response.status_code == 200
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert await stored(client, auth, flow) == []
    empty = {"query": CREATE_LEADS, "variables": {"input": []}}
    body = (await client.post("/graphql", json=empty, headers=auth)).json()
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    # Larger batches go through POST /leads/batch: /graphql keeps 64 KiB.
    big = [lead(flow, name="n" * 200) for _ in range(400)]
    too_large = {"query": CREATE_LEADS, "variables": {"input": big}}
    response = await client.post("/graphql", json=too_large, headers=auth)
    assert response.status_code == 413


# --- Group commit -------------------------------------------------------------


def _groups() -> tuple[float, float]:
    """(creates, statements) written by group commit so far in this process."""
    samples = {s.name: s.value for s in CREATE_GROUPS.collect()[0].samples}
    return samples["leads_create_group_size_sum"], samples[
        "leads_create_group_size_count"
    ]


async def test_concurrent_creates_share_statements_and_each_gets_its_own_answer(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    items = [lead(flow, name=f"Lead {n}") for n in range(64)]
    before = _groups()
    responses = await asyncio.gather(
        *(client.post("/leads", json=item, headers=auth) for item in items)
    )
    after = _groups()
    assert [r.status_code for r in responses] == [200] * 64
    assert [r.json()["name"] for r in responses] == [i["name"] for i in items]
    creates, statements = after[0] - before[0], after[1] - before[1]
    assert creates == 64
    assert statements < 64, "no two concurrent creates shared a statement"
    assert len(await stored(client, auth, flow)) == 64


async def test_concurrent_creates_of_one_id_store_one_row(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    same = lead(flow)
    others = [{**same, "name": f"Other {n}"} for n in range(5)]
    responses = await asyncio.gather(
        *(
            client.post("/leads", json=item, headers=auth)
            for item in [same, same, *others, same]
        )
    )
    statuses = [r.status_code for r in responses]
    rows = await stored(client, auth, flow)
    assert len(rows) == 1
    winner = rows[0]["name"]
    # Whoever was stored first, every other create is answered against it.
    for item, status in zip([same, same, *others, same], statuses, strict=True):
        assert status == (200 if item["name"] == winner else 409)


async def test_one_row_the_database_refuses_fails_no_neighbour(
    app: Starlette, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """A trigger refuses one name: its create fails (500, masked), the creates
    written in the same group are stored and answered 200."""
    engine = app.state.engine
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON lead WHEN NEW.name = 'refused' "
                "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
            )
        else:
            await conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                "IF NEW.name = 'refused' THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            await conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON lead FOR EACH ROW "
                "EXECUTE FUNCTION refuse()"
            )
    try:
        flow = new_id()
        items = [lead(flow, name=f"Lead {n}") for n in range(20)]
        items[7]["name"] = "refused"
        responses = await asyncio.gather(
            *(client.post("/leads", json=item, headers=auth) for item in items)
        )
        statuses = [r.status_code for r in responses]
        assert statuses == [500 if n == 7 else 200 for n in range(20)]
        assert "refused" not in responses[7].text
        rows = await stored(client, auth, flow)
        assert sorted(r["id"] for r in rows) == sorted(
            item["id"] for n, item in enumerate(items) if n != 7
        )
    finally:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(
                "DROP TRIGGER refuse"
                + ("" if engine.dialect.name == "sqlite" else " ON lead")
            )
