"""The `leads` connection: keyset pages in both orders and both directions, its
page info, cursors bound to their flow, search and date filters, totalCount."""

from __future__ import annotations

import asyncio
import base64
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.applications import Starlette

from leads_gql.paging import Cursors, Position
from tests.conftest import new_id

pytestmark = pytest.mark.anyio

PAGE = """
query Page($flow: ID!, $first: Int, $after: String, $last: Int, $before: String,
           $search: String, $since: DateTime, $until: DateTime, $order: LeadOrder) {
  leads(chatflowid: $flow, first: $first, after: $after, last: $last,
        before: $before, search: $search, createdAfter: $since,
        createdBefore: $until, orderBy: $order) {
    totalCount
    edges { cursor node { id name email phone createdDate } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""
START = datetime(2024, 8, 24, 12, 0, tzinfo=UTC)


def stamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


async def seed(
    client: httpx.AsyncClient, auth: dict[str, str], flow: str, count: int
) -> list[dict[str, Any]]:
    """`count` leads, two to each instant (the id breaks the tie); oldest first."""
    leads = []
    for n in range(count):
        body = {
            "chatflowid": flow,
            "name": f"Lead {n:03d}",
            "email": f"lead{n}@example.com",
            "createdDate": stamp(START + timedelta(minutes=n // 2)),
        }
        answer = await client.post("/leads", json=body, headers=auth)
        assert answer.status_code == 200, answer.text
        leads.append(answer.json())
    return sorted(leads, key=lambda lead: (lead["createdDate"], lead["id"]))


async def page(
    client: httpx.AsyncClient, auth: dict[str, str], flow: str, **arguments: Any
) -> dict[str, Any]:
    answer = await client.post(
        "/graphql",
        json={"query": PAGE, "variables": {"flow": flow, **arguments}},
        headers=auth,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "errors" not in body, body
    return body["data"]["leads"]  # type: ignore[no-any-return]


async def refused(
    client: httpx.AsyncClient, auth: dict[str, str], flow: str, **arguments: Any
) -> tuple[str, list[str]]:
    """(code, argument names) of a refused page request."""
    answer = await client.post(
        "/graphql",
        json={"query": PAGE, "variables": {"flow": flow, **arguments}},
        headers=auth,
    )
    body = answer.json()
    assert body["data"] is None, body
    (error,) = body["errors"]
    fields = [e["field"] for e in error["extensions"].get("errors", [])]
    return error["extensions"]["code"], sorted(fields)


def ids(connection: dict[str, Any]) -> list[str]:
    return [edge["node"]["id"] for edge in connection["edges"]]


def info(connection: dict[str, Any]) -> tuple[bool, bool]:
    pi = connection["pageInfo"]
    return pi["hasPreviousPage"], pi["hasNextPage"]


@pytest.mark.parametrize("order", ["OLDEST_FIRST", "NEWEST_FIRST"])
async def test_paging_forward_and_back_visits_every_lead_once(
    client: httpx.AsyncClient, auth: dict[str, str], order: str
) -> None:
    flow = new_id()
    leads = await seed(client, auth, flow, 11)
    expected = [lead["id"] for lead in leads]
    if order == "NEWEST_FIRST":
        expected.reverse()
    seen, infos, after = [], [], None
    while True:
        connection = await page(client, auth, flow, first=4, after=after, order=order)
        seen += ids(connection)
        infos.append(info(connection))
        assert connection["totalCount"] == 11
        if not connection["pageInfo"]["hasNextPage"]:
            break
        after = connection["pageInfo"]["endCursor"]
    assert seen == expected
    assert infos == [(False, True), (True, True), (True, False)]
    back, before = [], None
    while True:
        connection = await page(client, auth, flow, last=4, before=before, order=order)
        back = ids(connection) + back
        if not connection["pageInfo"]["hasPreviousPage"]:
            break
        before = connection["pageInfo"]["startCursor"]
    assert back == expected
    # Cursors are the edges' own; start and end cursors are the first and last.
    connection = await page(client, auth, flow, first=3, order=order)
    cursors = [edge["cursor"] for edge in connection["edges"]]
    assert connection["pageInfo"]["startCursor"] == cursors[0]
    assert connection["pageInfo"]["endCursor"] == cursors[-1]
    middle = await page(client, auth, flow, first=1, after=cursors[0], order=order)
    assert ids(middle) == expected[1:2]
    assert info(middle) == (True, True)


async def test_defaults_bounds_and_empty_pages(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    leads = await seed(client, auth, flow, 60)
    everything = [lead["id"] for lead in leads]
    default = await page(client, auth, flow)
    assert ids(default) == everything[:50] and info(default) == (False, True)
    end = default["pageInfo"]["endCursor"]
    assert ids(await page(client, auth, flow, before=end)) == everything[:49]
    assert ids(await page(client, auth, flow, first=500)) == everything
    empty = await page(client, auth, flow, first=0)
    assert empty["edges"] == [] and info(empty) == (False, True)
    assert empty["pageInfo"]["startCursor"] is None
    assert empty["pageInfo"]["endCursor"] is None
    last = (await page(client, auth, flow, last=1))["pageInfo"]["endCursor"]
    past_the_end = await page(client, auth, flow, first=5, after=last)
    assert past_the_end["edges"] == [] and info(past_the_end) == (True, False)
    first = (await page(client, auth, flow, first=1))["pageInfo"]["startCursor"]
    before_the_start = await page(client, auth, flow, last=5, before=first)
    assert before_the_start["edges"] == [] and info(before_the_start) == (False, True)
    assert info(await page(client, auth, flow, last=0, before=end)) == (True, True)
    nothing = await page(client, auth, new_id())
    assert nothing == {
        "totalCount": 0,
        "edges": [],
        "pageInfo": {
            "hasNextPage": False,
            "hasPreviousPage": False,
            "startCursor": None,
            "endCursor": None,
        },
    }


async def test_bad_arguments_are_bad_user_input_naming_them(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    await seed(client, auth, flow, 2)
    cursor = (await page(client, auth, flow, first=1))["pageInfo"]["endCursor"]
    cases: dict[str, dict[str, Any]] = {
        "first over 500": {"first": 501},
        "last over 500": {"last": 501},
        "negative first": {"first": -1},
        "negative last": {"last": -1},
        "first and last": {"first": 1, "last": 1},
        "last with after": {"last": 1, "after": cursor},
        "first with before": {"first": 1, "before": cursor},
        "long search": {"search": "x" * 101},
        "search with NUL": {"search": "a\x00b"},
        "date only": {"since": "2024-08-24"},
        "not a date": {"until": "soon"},
    }
    got = {
        case: await refused(client, auth, flow, **args) for case, args in cases.items()
    }
    assert got == {
        "first over 500": ("BAD_USER_INPUT", ["first"]),
        "last over 500": ("BAD_USER_INPUT", ["last"]),
        "negative first": ("BAD_USER_INPUT", ["first"]),
        "negative last": ("BAD_USER_INPUT", ["last"]),
        "first and last": ("BAD_USER_INPUT", ["last"]),
        "last with after": ("BAD_USER_INPUT", ["after"]),
        "first with before": ("BAD_USER_INPUT", ["before"]),
        "long search": ("BAD_USER_INPUT", ["search"]),
        "search with NUL": ("BAD_USER_INPUT", ["search"]),
        "date only": ("BAD_USER_INPUT", ["createdAfter"]),
        "not a date": ("BAD_USER_INPUT", ["createdBefore"]),
    }
    assert await refused(client, auth, "not-a-uuid") == (
        "BAD_USER_INPUT",
        ["chatflowid"],
    )
    assert len((await page(client, auth, flow, search="x" * 100))["edges"]) == 0


async def test_cursors_are_bound_to_their_flow_and_cannot_be_forged(
    app: Starlette, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow, other = new_id(), new_id()
    await seed(client, auth, flow, 3)
    await seed(client, auth, other, 3)
    cursor = (await page(client, auth, flow, first=1))["pageInfo"]["endCursor"]
    foreign = (await page(client, auth, other, first=1))["pageInfo"]["endCursor"]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    edited = bytearray(raw)
    edited[3] ^= 1  # one bit of the instant
    forged = [
        foreign,
        cursor[:-2],
        cursor + "A",
        base64.urlsafe_b64encode(bytes(edited)).rstrip(b"=").decode(),
        # A well-formed position signed with another key.
        Cursors(b"not the server's key").make(
            flow, Position(datetime(2024, 8, 24, tzinfo=UTC), new_id())
        ),
        "",
        "!!!!",
        string.ascii_letters,
        "A" * 1000,
    ]
    for value in forged:
        for arguments in ({"first": 1, "after": value}, {"last": 1, "before": value}):
            name = "after" if "after" in arguments else "before"
            got = await refused(client, auth, flow, **arguments)
            assert got == ("BAD_USER_INPUT", [name]), value


async def test_a_deleted_leads_cursor_is_still_a_position(
    app: Starlette, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    leads = await seed(client, auth, flow, 5)
    first_two = await page(client, auth, flow, first=2)
    cursor = first_two["pageInfo"]["endCursor"]
    async with app.state.engine.connect() as conn:
        await conn.execute(
            text("DELETE FROM lead WHERE id = :id"), {"id": leads[1]["id"]}
        )
    rest = await page(client, auth, flow, first=10, after=cursor)
    assert ids(rest) == [lead["id"] for lead in leads[2:]]
    assert info(rest) == (True, False)
    before = await page(client, auth, flow, last=10, before=cursor)
    assert ids(before) == [leads[0]["id"]]


async def test_a_lead_created_while_paging_never_repeats_or_hides_another(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    leads = await seed(client, auth, flow, 8)
    first = await page(client, auth, flow, first=4)
    # One lead lands among those already seen, one among those still ahead.
    for minute in (0, 3):
        body = {
            "chatflowid": flow,
            "name": "Late",
            "createdDate": stamp(START + timedelta(minutes=minute, seconds=30)),
        }
        assert (await client.post("/leads", json=body, headers=auth)).status_code == 200
    rest = await page(
        client, auth, flow, first=10, after=first["pageInfo"]["endCursor"]
    )
    seen = ids(first) + ids(rest)
    assert len(seen) == len(set(seen)) == 9
    assert set(seen) >= {lead["id"] for lead in leads}


async def test_search_and_dates_filter_pages_and_the_count(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    people = [
        ("Ada Lovelace", "ada@example.com", None),
        ("ADA KING", None, "+44 20 7946 0958"),
        ("Grace Hopper", "grace@navy.example", None),
        ("100% real", "percent@example.com", None),
        ("under_score", "u@example.com", None),
        ("back\\slash", "b@example.com", None),
        ("Plain", "plain@example.com", "+1 555 0100"),
    ]
    stored = []
    for n, (name, email, phone) in enumerate(people):
        body = {"chatflowid": flow, "name": name, "email": email, "phone": phone}
        body["createdDate"] = stamp(START + timedelta(days=n))
        stored.append((await client.post("/leads", json=body, headers=auth)).json())
    by_name = {lead["name"]: lead["id"] for lead in stored}

    async def names(**arguments: Any) -> tuple[list[str], int]:
        connection = await page(client, auth, flow, first=50, **arguments)
        found = [edge["node"]["name"] for edge in connection["edges"]]
        return found, connection["totalCount"]

    assert await names(search="ada") == (["Ada Lovelace", "ADA KING"], 2)
    assert await names(search="NAVY") == (["Grace Hopper"], 1)
    assert await names(search="7946") == (["ADA KING"], 1)
    assert await names(search="%") == (["100% real"], 1)
    assert await names(search="_") == (["under_score"], 1)
    assert await names(search="\\") == (["back\\slash"], 1)
    assert await names(search="a%r") == ([], 0)
    assert await names(search="") == ([p[0] for p in people], 7)
    day = START + timedelta(days=1)
    assert await names(since=stamp(day), until=stamp(day + timedelta(days=2))) == (
        ["ADA KING", "Grace Hopper"],
        2,
    )
    assert await names(search="example", since=stamp(START + timedelta(days=3))) == (
        ["100% real", "under_score", "back\\slash", "Plain"],
        4,
    )
    newest = await page(client, auth, flow, first=1, search="a", order="NEWEST_FIRST")
    assert ids(newest) == [by_name["Plain"]]
    assert newest["totalCount"] == 7  # every example.com address has an "a"
    after = newest["pageInfo"]["endCursor"]
    nxt = await page(
        client, auth, flow, first=2, after=after, search="a", order="NEWEST_FIRST"
    )
    assert ids(nxt) == [by_name["back\\slash"], by_name["under_score"]]
    assert info(nxt) == (True, True)


async def test_leads_needs_read_and_the_flow(
    client: httpx.AsyncClient, make_token: Callable[..., str], auth: dict[str, str]
) -> None:
    flow = new_id()
    await seed(client, auth, flow, 1)
    for token in (
        make_token("leads:write"),
        make_token(chatflows=[new_id()]),
        make_token(chatflows=[]),
    ):
        headers = {"Authorization": f"Bearer {token}"}
        assert await refused(client, headers, flow) == ("FORBIDDEN", [])
    upper = await page(
        client,
        {"Authorization": f"Bearer {make_token(chatflows=[flow.upper()])}"},
        flow.upper(),
    )
    assert upper["totalCount"] == 1


async def test_repeated_documents_answer_the_same_on_every_path(
    app: Starlette, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """A compiled plan never answers `leads` differently from Strawberry: the
    same document run again (answered by its plan) gives the same answer."""
    flow = new_id()
    await seed(client, auth, flow, 4)
    queries = [
        PAGE,
        "query($flow: ID!) { leads(chatflowid: $flow, first: 2) "
        "{ edges { node { id name } } } }",
        "query($flow: ID!) { leadsByChatflow(chatflowid: $flow) { id } "
        "leads(chatflowid: $flow) { totalCount } }",
    ]
    for query in queries:
        body = {"query": query, "variables": {"flow": flow, "first": 3}}
        answers = [
            (await client.post("/graphql", json=body, headers=auth)).json()
            for _ in range(3)
        ]
        assert answers[0] == answers[1] == answers[2]
        assert "errors" not in answers[0]


async def test_pages_are_consistent_under_concurrent_creates(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    await seed(client, auth, flow, 20)

    async def create(n: int) -> None:
        body = {"chatflowid": flow, "name": f"concurrent {n}"}
        assert (await client.post("/leads", json=body, headers=auth)).status_code == 200

    async def walk() -> list[str]:
        seen, after = [], None
        while True:
            connection = await page(client, auth, flow, first=3, after=after)
            seen += ids(connection)
            if not connection["pageInfo"]["hasNextPage"]:
                return seen
            after = connection["pageInfo"]["endCursor"]

    walked, *_ = await asyncio.gather(walk(), *(create(n) for n in range(10)))
    assert len(walked) == len(set(walked)) >= 20
